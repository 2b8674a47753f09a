"""The web page over real loopback HTTP (aiohttp app, SQLite store, jobs observed from the
in-process emulator through the real ArmClient): what it shows, that Azure's values stay
text, its headers and filters, and who may see it: the full token, the read-only token
(GET only, everywhere), the login form and its read-only session cookie."""

from __future__ import annotations

import html
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from backupjobd import config as configuration
from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import StaticTokenProvider
from backupjobd.adapters.metrics import Metrics
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.bootstrap import api_read_token
from backupjobd.config import ApiConfig
from backupjobd.core import azure
from backupjobd.core.decisions import PollPolicy, Seen, decide_job
from backupjobd.core.registration import Endpoint, JobRegistration
from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorState, JobSpec
from backupjobd.errors import ConfigError
from backupjobd.http import build_api_app
from backupjobd.http.auth import SESSION_COOKIE, SESSION_LIFETIME
from backupjobd.testing import FakeClock
from tests.integration.rig import api_backends

FULL = "page-full-token-0123456789"
READ = "page-read-token-0123456789"
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="pwned=2">'
JSON_TYPE = {"Content-Type": "application/json"}
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@dataclass
class Page:
    client: TestClient[web.Request, web.Application]
    store: SqlStore
    emulator: EmulatorState
    arm: ArmClient
    clock: FakeClock

    async def track(self, spec: JobSpec) -> str:
        """A job registered and polled once (so the store has Azure's view of it)."""
        emulated = self.emulator.add_job(spec)
        vault = azure.vault_from_id(DEFAULT_VAULT_ID)
        await self.store.register(
            [JobRegistration(vault, emulated.job_id, "job-id")], self.clock.now()
        )
        await self.poll(emulated.job_id)
        return emulated.job_id

    async def poll(self, job_id: str) -> None:
        [record] = await self.store.find_jobs(job_id)
        obs = await self.arm.get_job(azure.vault_from_id(record.vault_id), job_id)
        now = self.clock.now()
        decision = decide_job(record.state(), Seen(obs), now, PollPolicy(), 0.5)
        assert await self.store.apply_job(record, decision, now)

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.client.get(path, **kwargs) as resp:
            return resp.status, await resp.text(), resp


PageFactory = Callable[..., Awaitable[Page]]


@pytest.fixture
async def make_page(tmp_path: Path) -> AsyncIterator[PageFactory]:
    cleanups: list[Callable[[], Awaitable[Any]]] = []

    async def make(*, api_token: str | None = None, read_token: str | None = None) -> Page:
        clock = FakeClock()
        emulator = EmulatorState(clock=clock, epoch=clock.base.timestamp())
        backends = await api_backends(emulator, tmp_path, cleanups)
        store, arm, emulator_url = backends.store, backends.arm, backends.emulator_url
        app = build_api_app(
            store=store,
            arm=arm,
            tokens=StaticTokenProvider("arm-token"),
            endpoint=Endpoint.from_url(emulator_url),
            metrics=Metrics(),
            config=ApiConfig(),
            api_token=api_token,
            read_token=read_token,
            last_tick_age=lambda: 1.0,
            clock=clock.now,
        )
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        cleanups.append(client.close)
        return Page(client, store, emulator, arm, clock)

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name}"
    return match.group(1)


# ---- what it shows -----------------------------------------------------------------------


async def test_the_page_shows_jobs_in_flight_failures_vaults_and_the_timeline(
    make_page: PageFactory,
) -> None:
    p = await make_page()
    running = await p.track(JobSpec(duration_seconds=3600, entity_friendly_name="vm-running"))
    failing = await p.track(
        JobSpec(duration_seconds=10, final_status="Failed", entity_friendly_name="vm-failing")
    )
    p.clock.advance(60)
    await p.poll(failing)
    await p.poll(running)

    status, page, resp = await p.get("/")
    assert status == 200 and resp.content_type == "text/html"
    flying = section(page, "in-flight")
    assert "vm-running" in flying and "vm-failing" not in flying
    assert f'href="/jobs/{running}?vault=' in flying
    assert "<progress" in flying  # the emulator reports how far the job is
    failures = section(page, "failures")
    assert "vm-failing" in failures and "vm-running" not in failures
    [failed] = await p.store.find_jobs(failing)
    assert failed.error_details, "the emulator's failed job carries errorDetails"
    assert html.escape(failed.error_details[0].message, quote=True) in failures
    vaults = section(page, "vaults")
    assert "vault" in vaults and "InProgress 1" in vaults and "Failed 1" in vaults
    assert "0%" in vaults  # one failure, no success: 0 % over 1 day and 7 days
    timeline = section(page, "timeline")
    assert timeline.count("<rect") == 2
    assert 'class="bar running"' in timeline and 'class="bar failed"' in timeline


async def test_azure_values_stay_text(make_page: PageFactory) -> None:
    p = await make_page()
    job_id = await p.track(JobSpec(duration_seconds=3600, entity_friendly_name=HOSTILE))
    for path in ("/", f"/jobs/{job_id}"):
        status, page, resp = await p.get(path)
        assert status == 200
        assert HOSTILE not in page and "<img" not in page
        assert page.count("<script") == 1  # the page's own script, nothing else
        assert html.escape(HOSTILE, quote=True) in page
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert " style=" not in page and "<style" not in page  # the CSP would refuse them


async def test_the_job_page_shows_transitions_progress_and_tasks(make_page: PageFactory) -> None:
    p = await make_page()
    job_id = await p.track(JobSpec(duration_seconds=100, entity_friendly_name="vm-detail"))
    p.clock.advance(50)
    await p.poll(job_id)
    p.clock.advance(100)
    await p.poll(job_id)
    status, page, _ = await p.get(f"/jobs/{job_id}")
    assert status == 200
    assert "vm-detail" in page
    transitions = section(page, "transitions")
    assert transitions.count("<tr>") == 1 + 2  # header, InProgress, Completed
    assert "Completed" in transitions
    assert "<polyline" in section(page, "progress")
    assert "Take Snapshot" in section(page, "tasks")
    assert section(page, "snapshots").count("<tr>") >= 3

    status, page, _ = await p.get(f"/jobs/{job_id}", params={"vault": DEFAULT_VAULT_ID})
    assert status == 200
    status, body, _ = await p.get(f"/jobs/{uuid.uuid4()}")
    assert status == 404 and '"not_found"' in body
    status, body, _ = await p.get("/jobs/not-a-guid")
    assert status == 400


async def test_filters_narrow_every_section(make_page: PageFactory) -> None:
    p = await make_page()
    await p.track(JobSpec(duration_seconds=3600, entity_friendly_name="vm-alpha"))
    done = await p.track(JobSpec(duration_seconds=1, entity_friendly_name="vm-beta"))
    p.clock.advance(30)
    await p.poll(done)

    _, page, _ = await p.get("/", params={"status": "Completed"})
    assert "vm-beta" in page and "vm-alpha" not in page
    _, page, _ = await p.get("/", params={"kind": "DataProtection"})
    assert "vm-alpha" not in page and "vm-beta" not in page
    _, page, _ = await p.get("/", params={"vault": DEFAULT_VAULT_ID, "kind": "RecoveryServices"})
    assert "vm-alpha" in page and "vm-beta" in page
    assert '<option value="RecoveryServices" selected>' in page

    for params, name in (({"kind": "Tape"}, "kind"), ({"stauts": "x"}, "stauts")):
        status, body, resp = await p.get("/", params=params)
        assert status == 400 and resp.content_type == "application/json", body
        assert name in body


async def test_static_files_come_from_the_package(make_page: PageFactory) -> None:
    p = await make_page()
    for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css")):
        status, body, resp = await p.get(f"/ui/static/{name}")
        assert status == 200 and resp.content_type == kind and len(body) > 500
    status, _, resp = await p.get("/ui/static/icon.svg")
    assert status == 200 and resp.content_type == "image/svg+xml"
    assert (await p.get("/ui/static/..%2Fpage.py"))[0] == 404
    assert (await p.get("/ui/static/page.py"))[0] == 404


# ---- who may see it ----------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_read_only_token_reads_and_changes_nothing(make_page: PageFactory) -> None:
    p = await make_page(api_token=FULL, read_token=READ)
    job_id = await p.track(JobSpec(duration_seconds=3600))
    for path in ("/v1/jobs", f"/v1/jobs/{job_id}/history", "/metrics", "/", f"/jobs/{job_id}"):
        assert (await p.get(path, headers=bearer(READ)))[0] == 200, path
        assert (await p.get(path, headers=bearer(FULL)))[0] == 200, path
        assert (await p.get(path, headers=bearer("x" + READ)))[0] == 401, path
    refused = [
        ("POST", "/v1/jobs", [f"{DEFAULT_VAULT_ID}/backupJobs/{uuid.uuid4()}"]),
        ("DELETE", f"/v1/jobs/{job_id}", {}),
        ("POST", f"/v1/jobs/{job_id}/cancel", {}),
    ]
    for method, path, body in refused:
        async with p.client.request(method, path, json=body, headers=bearer(READ)) as resp:
            assert resp.status == 403
            error = (await resp.json())["error"]
            assert error["code"] == "read_only" and "\n" not in error["message"]
    assert len(await p.store.list_jobs()) == 1
    [record] = await p.store.find_jobs(job_id)
    assert record.tracking.value == "active"
    async with p.client.delete(f"/v1/jobs/{job_id}", json={}, headers=bearer(FULL)) as resp:
        assert resp.status == 200  # the full token keeps every right


async def test_a_browser_signs_in_and_gets_a_read_only_session(
    make_page: PageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = await make_page(api_token=FULL, read_token=READ)
    job_id = await p.track(JobSpec(duration_seconds=3600, entity_friendly_name="vm-secret"))

    status, page, resp = await p.get("/", headers=BROWSER)
    assert status == 200 and resp.content_type == "text/html"
    assert 'id="login"' in page and "vm-secret" not in page
    assert resp.headers["Cache-Control"] == "no-store"
    status, page, _ = await p.get(f"/jobs/{job_id}", headers=BROWSER)
    assert 'id="login"' in page and "vm-secret" not in page
    status, body, resp = await p.get("/")  # a script, not a browser: the API's 401
    assert status == 401 and resp.content_type == "application/json", body
    assert (await p.get("/v1/jobs", headers=BROWSER))[0] == 401  # the API itself stays JSON
    assert (await p.get("/ui/static/page.js"))[0] == 200  # the login form needs its script

    async with p.client.post("/ui/session", json={"token": "wrong-token-0123456789"}) as resp:
        assert resp.status == 401
    async with p.client.post("/ui/session", data=f"token={READ}") as resp:
        assert resp.status == 415  # a cross-site form cannot sign in
    origin = {"Origin": "https://evil.example"}
    async with p.client.post("/ui/session", json={"token": READ}, headers=origin) as resp:
        assert resp.status == 403

    for body, status in (("not json", 400), ({"token": 5}, 401), ({"t": READ}, 400)):
        raw = body if isinstance(body, str) else json.dumps(body)
        async with p.client.post("/ui/session", data=raw, headers=JSON_TYPE) as resp:
            assert resp.status == status, raw
    big = json.dumps({"token": READ, "pad": "x" * 5000})
    async with p.client.post("/ui/session", data=big, headers=JSON_TYPE) as resp:
        assert resp.status == 413

    async with p.client.post("/ui/session", json={"token": READ}) as resp:
        assert resp.status == 204
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert READ not in cookie
    status, page, _ = await p.get("/")
    assert status == 200 and "vm-secret" in page and 'id="logout"' in page
    assert (await p.get("/v1/jobs"))[0] == 200  # the page may poll the JSON API too

    # A session reads only, even one opened with the full token.
    async with p.client.post("/ui/session", json={"token": FULL}) as resp:
        assert resp.status == 204
    async with p.client.delete(f"/v1/jobs/{job_id}", json={}) as resp:
        assert resp.status == 403 and (await resp.json())["error"]["code"] == "read_only"

    p.clock.advance(SESSION_LIFETIME + timedelta(seconds=1))
    assert (await p.get("/"))[0] == 401  # expired
    assert 'id="login"' in (await p.get("/", headers=BROWSER))[1]

    async with p.client.post("/ui/session", json={"token": READ}) as resp:
        assert resp.status == 204
    async with p.client.delete("/ui/session", json={}) as resp:
        assert resp.status == 204
    assert (await p.get("/"))[0] == 401  # signed out
    assert "session opened with the read token" in caplog.text
    assert READ not in caplog.text and FULL not in caplog.text


async def test_a_forged_or_foreign_session_cookie_is_refused(make_page: PageFactory) -> None:
    p = await make_page(api_token=FULL, read_token=READ)
    other = await make_page(api_token="another-full-token-0123", read_token=READ + "x")
    async with other.client.post("/ui/session", json={"token": READ + "x"}) as resp:
        value = resp.cookies[SESSION_COOKIE].value
    forged = value.rsplit(".", 1)[0] + ".AAAA"
    for cookie in (value, forged, "read.99999999999.n.", "full.1.2.3", "garbage"):
        status, _, _ = await p.get("/v1/jobs", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"})
        assert status == 401, cookie


async def test_without_a_token_the_page_is_open_on_loopback(make_page: PageFactory) -> None:
    p = await make_page()
    status, page, _ = await p.get("/")
    assert status == 200 and 'id="logout"' not in page
    async with p.client.post("/ui/session", json={"token": READ}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["code"] == "no_token"
    status, _, _ = await p.get("/", headers={"Host": "attacker.example"})
    assert status == 421  # DNS rebinding: a token-less API answers loopback names only


def test_the_read_only_token_is_checked_at_start() -> None:
    config = configuration.build({"api": {"enabled": True}}, {})
    assert config.api.read_token_env == "BACKUPJOBD_API_READ_TOKEN"
    assert api_read_token(config, {}, FULL) is None
    assert api_read_token(config, {"BACKUPJOBD_API_READ_TOKEN": READ}, FULL) == READ
    with pytest.raises(ConfigError, match="at least 16"):
        api_read_token(config, {"BACKUPJOBD_API_READ_TOKEN": "short"}, FULL)
    with pytest.raises(ConfigError, match="needs the full token"):
        api_read_token(config, {"BACKUPJOBD_API_READ_TOKEN": READ}, None)
    with pytest.raises(ConfigError, match="must differ"):
        api_read_token(config, {"BACKUPJOBD_API_READ_TOKEN": FULL}, FULL)
    with pytest.raises(ConfigError) as refused:
        api_read_token(config, {"BACKUPJOBD_API_READ_TOKEN": READ + " x"}, FULL)
    assert READ not in str(refused.value)
