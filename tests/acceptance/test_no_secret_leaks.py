"""The bearer token and the client secret never reach the daemon's log (JSON, at DEBUG), the
SQLite database (main file, -wal and -shm, read as raw bytes while the daemon runs and after it
stopped), or anything the CLI prints, while the daemon goes through every error path it has:
404-then-visible jobs, 500, 429, garbled and truncated answers, and 401 twice (refresh once,
then give up) with a wrong token."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from tests.acceptance.conftest import TOKEN, VAULT, Daemon, Emulator, http, wait_until

CLIENT_SECRET = "cs8Q~client-secret-5f1e9d2a-never-logged"
WRONG_TOKEN = "wrong-bearer-9c4b2e71-never-logged"
SECRETS = {"token": TOKEN, "wrong token": WRONG_TOKEN, "client secret": CLIENT_SECRET}
FAULTS = ["500", "429", "garbled", "truncated"]


class Evidence:
    """Everything the daemon and its CLI wrote that a secret could leak into."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.db_files: dict[str, bytes] = {}  # "<moment>:<file name>" -> bytes
        self.cli_output: list[tuple[str, str]] = []  # (command, stdout + stderr)

    def snapshot_db(self, moment: str) -> None:
        db = self.daemon.config_path.parent
        for path in sorted(db.glob("backupjobd.db*")):
            self.db_files[f"{moment}:{path.name}"] = path.read_bytes()

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        out = self.daemon.cli(*args, stdin=stdin)
        self.cli_output.append((" ".join(args), out.stdout + out.stderr))
        return out

    def ok(self, *args: str, stdin: str | None = None) -> str:
        out = self.cli(*args, stdin=stdin)
        assert out.returncode == 0, f"backupjobd {' '.join(args)}: {out.stderr}"
        return out.stdout

    def refused(self, *args: str, stdin: str | None = None) -> str:
        out = self.cli(*args, stdin=stdin)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        # The CLI shares the daemon's config, so its own DEBUG records (JSON) come on stderr too.
        lines = [line for line in out.stderr.splitlines() if not _is_log_record(line)]
        assert len(lines) == 1 and lines[0].startswith("backupjobd: error:"), out.stderr
        return lines[0]

    def jobs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("jobs", "list", "--json")))

    def show(self, job_id: str) -> dict[str, Any]:
        return dict(json.loads(self.ok("jobs", "show", job_id, "--json")))

    def operations(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("operations", "list", "--json")))


def _is_log_record(line: str) -> bool:
    try:
        return {"time", "level", "logger", "message"} <= json.loads(line).keys()
    except (ValueError, AttributeError):
        return False


def _debug_json_logging(daemon: Daemon) -> None:
    text = daemon.config_path.read_text()
    assert "[log]" not in text
    daemon.config_path.write_text(text + '\n[log]\nlevel = "DEBUG"\nformat = "json"\n')


def _add_fault(emulator: Emulator, kind: str, path_contains: str) -> None:
    body = {"kind": kind, "count": 1, "retry_after": 1, "path_contains": path_contains}
    assert http("POST", f"{emulator.base}/admin/faults", body)[0] == 201


def test_token_and_client_secret_never_leak(emulator: Emulator, daemon: Daemon) -> None:
    _debug_json_logging(daemon)
    assert daemon.env["BACKUPJOBD_STATIC_TOKEN"] == TOKEN
    daemon.env["AZURE_CLIENT_SECRET"] = CLIENT_SECRET
    ev = Evidence(daemon)

    # ---- run 1, the right token: lifecycles, 404-then-visible, an operation, every fault kind
    jobs = emulator.create_jobs(
        [
            {"final_status": "Completed", "duration_seconds": 3},
            {"final_status": "Failed", "duration_seconds": 3},
            {"final_status": "CompletedWithWarnings", "duration_seconds": 3},
            {"final_status": "Cancelled", "duration_seconds": 3},
        ]
    )
    for kind, job in zip(FAULTS, jobs, strict=True):
        _add_fault(emulator, kind, job["job_id"])
    ev.ok("register", *[arg for j in jobs[:2] for arg in ("--job", j["id"])])
    ev.ok("register", "--vault", VAULT, *[a for j in jobs[2:] for a in ("--job-id", j["job_id"])])
    op = emulator.create_operation(delay_seconds=1, job_count=1, jobs={"duration_seconds": 1})
    ev.ok("register", "--operation-url", op["azure_async_operation"])
    # Created last, so that it still answers 404 when the daemon first polls it.
    (late,) = emulator.create_jobs([{"duration_seconds": 3, "not_found_seconds": 8}])
    ev.ok("register", "--job", late["id"])
    jobs.append(late)
    expected = {j["job_id"] for j in jobs} | set(op["job_ids"])

    daemon.start()
    wait_until(
        "every job of run 1 to finish and every fault to be served",
        lambda: (
            emulator.stats()["faults_served"] == len(FAULTS)
            and {j["job_id"] for j in ev.jobs() if j["finished"]} == expected
        ),
        30,
        every=0.3,
    )
    ev.snapshot_db("run 1, daemon running")
    assert daemon.stop() == 0
    ev.snapshot_db("run 1, daemon stopped")
    for job in jobs:
        assert ev.show(job["job_id"])["status"] == emulator.truth(job["job_id"])["final_status"]
    ev.ok("jobs", "history", jobs[0]["job_id"], "--json")
    ev.ok("jobs", "list")
    ev.ok("operations", "list")

    # ---- run 2, a wrong token: every poll is answered 401, refreshed once, answered 401 again
    daemon.env["BACKUPJOBD_STATIC_TOKEN"] = WRONG_TOKEN
    (slow,) = emulator.create_jobs([{"final_status": "Completed", "duration_seconds": 300}])
    ev.ok("register", "--job", slow["id"])
    op2 = emulator.create_operation(delay_seconds=300, job_count=1)
    ev.ok("register", "--operation-url", op2["azure_async_operation"])
    daemon.start()
    shown = wait_until(
        "the 401 to be recorded as the job's last error",
        lambda: (s := ev.show(slow["job_id"]))["last_error"] and s,
        20,
        every=0.3,
    )
    assert "401" in shown["last_error"], shown
    assert shown["finished"] is False and shown["status"] is None, shown
    op_row = wait_until(
        "the 401 to be recorded as the operation's last error",
        lambda: [o for o in ev.operations() if o["last_error"]],
        20,
        every=0.3,
    )
    assert "401" in op_row[0]["last_error"], op_row
    ev.snapshot_db("run 2, daemon running")
    assert daemon.stop() == 0
    ev.snapshot_db("run 2, daemon stopped")

    # ---- failing CLI commands
    foreign = f"https://attacker.example.com{VAULT}/backupOperations/abc?api-version=2025-08-01"
    ev.refused("register", "--operation-url", foreign)
    ev.refused("register", "--operation-url", foreign.replace("attacker", f"u:{TOKEN}@attacker"))
    ev.refused("register", "--job-id", "not-a-guid", "--vault", VAULT)
    ev.refused("jobs", "show", "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e")
    ev.refused("register", "-", stdin="{not json")
    ev.refused("register", "-", stdin=json.dumps({"status": "Failed", "error": {"code": "X"}}))
    ev.ok("jobs", "show", slow["job_id"])  # the text form prints last_error too

    # ---- the evidence is real: JSON at DEBUG, every error path taken, WAL read while running
    log = daemon.log_path.read_bytes()
    records = [json.loads(line) for line in log.decode().splitlines() if line.strip()]
    levels = {r["level"] for r in records}
    assert "DEBUG" in levels and "WARNING" in levels, levels
    messages = "\n".join(r["message"] for r in records)
    late_polled = f"polled job {late['job_id']}: missing"
    for needle in (
        "HTTP 500",
        "HTTP 429",
        "garbled",
        "HTTP 401",
        "refreshing the token",
        late_polled,
    ):
        assert needle in messages, needle
    assert any(name.endswith("-wal") and data for name, data in ev.db_files.items())
    db_text = b"".join(ev.db_files.values())
    assert b"HTTP 401" in db_text and b"AuthenticationFailed" in db_text

    # ---- and no secret anywhere in it
    for what, secret in SECRETS.items():
        raw = secret.encode()
        assert raw not in log, f"the {what} is in the daemon log"
        for name, data in ev.db_files.items():
            assert raw not in data, f"the {what} is in {name}"
        for command, output in ev.cli_output:
            assert secret not in output, f"the {what} is in the output of `{command}`"
