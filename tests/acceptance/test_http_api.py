"""The sidecar flow against the real daemon: register over HTTP, watch the job to its end,
read its history, scrape metrics; and a non-loopback bind that insists on its token."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import Daemon, Emulator, free_port, wait_until


def _call(
    method: str, url: str, body: Any = None, token: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            ctype = resp.headers.get("Content-Type", "")
            return (
                resp.status,
                json.loads(raw) if "json" in ctype else raw.decode(),
                dict(resp.headers),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), dict(exc.headers)


def _enable_api(daemon: Daemon, port: int, bind: str = "127.0.0.1") -> str:
    text = daemon.config_path.read_text()
    daemon.config_path.write_text(
        f'{text}\n[api]\nenabled = true\nbind = "{bind}"\nport = {port}\n'
    )
    return f"http://127.0.0.1:{port}"


def test_a_sidecar_registers_over_http_and_follows_the_job_to_its_end(
    emulator: Emulator, daemon: Daemon
) -> None:
    base = _enable_api(daemon, free_port())
    daemon.start()
    wait_until("the API", lambda: _try(f"{base}/healthz") == 200, 30)
    assert _call("GET", f"{base}/readyz")[0] == 200

    jobs = emulator.create_jobs([{"duration_seconds": 2, "final_status": "Failed"}])
    op = emulator.create_operation(delay_seconds=0.5, job_count=1, jobs={"duration_seconds": 2})
    status, body, _ = _call(
        "POST",
        f"{base}/v1/jobs",
        [jobs[0]["id"], {"headers": {"Azure-AsyncOperation": op["azure_async_operation"]}}],
    )
    assert status == 201, body
    assert _call("POST", f"{base}/v1/jobs", jobs[0]["id"])[0] == 200  # already tracked

    foreign = "https://attacker.example.com" + jobs[0]["vault_id"] + "/backupOperations/x"
    status, body, _ = _call("POST", f"{base}/v1/jobs", {"operation_url": foreign})
    assert status == 400 and "endpoint" in body["error"]["message"]

    def finished() -> list[dict[str, Any]] | None:
        listed = _call("GET", f"{base}/v1/jobs?finished=true")[1]["jobs"]
        return listed if len(listed) == 2 else None

    done = wait_until("both jobs to finish", finished, 60)
    by_id = {j["job_id"]: j for j in done}
    assert by_id[jobs[0]["job_id"]]["status"] == "Failed"
    assert by_id[op["job_ids"][0]]["status"] == "Completed"
    status, history, _ = _call("GET", f"{base}/v1/jobs/{jobs[0]['job_id']}/history")
    assert status == 200
    assert [t["to_status"] for t in history["transitions"]][-1] == "Failed"

    status, text, headers = _call("GET", f"{base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    failed = [
        s.value
        for s in families["backupjobd_transitions"].samples
        if s.name.endswith("_total") and s.labels.get("to_status") == "Failed"
    ]
    assert failed == [1.0]
    assert "backupjobd_arm_request_seconds" in families
    assert daemon.stop() == 0


def test_a_non_loopback_bind_needs_the_token_and_refuses_to_start_without_one(
    emulator: Emulator, daemon: Daemon
) -> None:
    port = free_port()
    base = _enable_api(daemon, port, bind="0.0.0.0")
    out = daemon.cli("serve")
    assert out.returncode == 2 and "BACKUPJOBD_API_TOKEN" in out.stderr

    daemon.env["BACKUPJOBD_API_TOKEN"] = "sidecar-secret-token"
    daemon.start()
    wait_until("the API", lambda: _try(f"{base}/healthz") == 200, 30)
    assert _call("GET", f"{base}/v1/jobs")[0] == 401
    assert _call("GET", f"{base}/v1/jobs", token="wrong")[0] == 401
    assert _call("GET", f"{base}/v1/jobs", token="sidecar-secret-token")[0] == 200
    assert daemon.stop() == 0
    assert "sidecar-secret-token" not in daemon.log_text()


def _try(url: str) -> int | None:
    try:
        return _call("GET", url)[0]
    except OSError:
        return None
