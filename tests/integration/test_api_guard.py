"""The HTTP API as `serve` starts it (`start_api`: its own listener, timeouts and connection
cap) against web pages and misbehaving clients: DNS rebinding, cross-site requests, idle and
slow clients, connection floods, a busy port, a live unix socket, malformed requests."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from backupjobd.adapters.credentials import StaticTokenProvider
from backupjobd.adapters.metrics import Metrics
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.config import ApiConfig, replace
from backupjobd.core.registration import Endpoint
from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorState, JobSpec
from backupjobd.http import ApiStartError, build_api_app, connection_guard, start_api
from backupjobd.http.guard import BUSY_ANSWER
from tests.integration.rig import api_backends

JOB = "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
JOB_ARM_ID = f"{DEFAULT_VAULT_ID}/backupJobs/{JOB}"
JSON_TYPE = {"Content-Type": "application/json"}
API_TOKEN = "guard-test-token-0123456789"
WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Api:
    base: str
    port: int
    runner: web.AppRunner
    store: SqlStore
    emulator: EmulatorState
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, f"{self.base}{path}", **kwargs) as resp:
            return resp.status, await resp.json(content_type=None)


ApiFactory = Callable[..., Awaitable[Api]]


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[ApiFactory]:
    cleanups: list[Callable[[], Awaitable[Any]]] = []

    async def make(*, api_token: str | None = None, **config: Any) -> Api:
        emulator = EmulatorState(clock=lambda: 0.0)
        backends = await api_backends(emulator, tmp_path, cleanups)
        store, arm, session = backends.store, backends.arm, backends.session
        emulator_url = backends.emulator_url
        port = config.pop("port", None) or free_port()
        api_config = replace(ApiConfig(enabled=True, port=port), **config)
        app = build_api_app(
            store=store,
            arm=arm,
            tokens=StaticTokenProvider("arm-token"),
            endpoint=Endpoint.from_url(emulator_url),
            metrics=Metrics(),
            config=api_config,
            api_token=api_token,
            last_tick_age=lambda: 1.0,
            clock=lambda: datetime(2026, 3, 1, tzinfo=UTC),
            cancel_follow_seconds=0.0,
        )
        runner = await start_api(app, api_config)
        cleanups.append(runner.cleanup)
        return Api(f"http://127.0.0.1:{port}", port, runner, store, emulator, session)

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


async def tracked_job(api: Api) -> None:
    api.emulator.add_job(JobSpec(duration_seconds=3600.0), job_id=JOB)
    status, _ = await api.request("POST", "/v1/jobs", json=JOB_ARM_ID)
    assert status == 201


# ---- web pages: DNS rebinding and cross-site requests ----------------------------------


async def test_a_foreign_host_name_is_refused_without_a_token(make_api: ApiFactory) -> None:
    """DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1."""
    api = await make_api(allowed_hosts=("backupjobd.internal",))
    await tracked_job(api)
    status, body = await api.request(
        "GET", "/v1/jobs", headers={"Host": f"attacker.example:{api.port}"}
    )
    assert status == 421 and body["error"]["code"] == "misdirected_request"
    assert JOB not in str(body)
    for host in (f"127.0.0.1:{api.port}", "localhost", f"[::1]:{api.port}", "backupjobd.internal"):
        status, body = await api.request("GET", "/v1/jobs", headers={"Host": host})
        assert status == 200, host
        assert [j["job_id"] for j in body["jobs"]] == [JOB]


async def test_with_a_token_any_host_name_is_accepted(make_api: ApiFactory) -> None:
    api = await make_api(api_token=API_TOKEN)
    status, _ = await api.request(
        "GET",
        "/v1/jobs",
        headers={"Host": "backupjobd.example.com", "Authorization": f"Bearer {API_TOKEN}"},
    )
    assert status == 200


async def test_a_cross_site_cancel_never_reaches_azure(make_api: ApiFactory) -> None:
    """What a browser sends without a preflight: text/plain, with the attacker's Origin."""
    api = await make_api()
    await tracked_job(api)
    attempts = [
        {"Origin": "http://attacker.example", "Content-Type": "text/plain"},
        {"Origin": "http://attacker.example", "Content-Type": "application/json"},
        {"Origin": "null", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/x-www-form-urlencoded"},
        {},
    ]
    for headers in attempts:
        status, body = await api.request(
            "POST", f"/v1/jobs/{JOB}/cancel", data=b"{}", headers=headers
        )
        assert status in (403, 415), (headers, status, body)
        assert set(body["error"]) == {"code", "message"}
    assert api.emulator.stats()["by_kind"].get("cancel") is None
    # The same call from a script (no Origin) or from the API's own origin goes through.
    status, _ = await api.request(
        "POST",
        f"/v1/jobs/{JOB}/cancel",
        headers={**JSON_TYPE, "Origin": f"http://127.0.0.1:{api.port}"},
    )
    assert status == 202
    assert api.emulator.stats()["by_kind"]["cancel"] == 1


async def test_stop_and_register_refuse_foreign_origins_and_non_json(make_api: ApiFactory) -> None:
    api = await make_api()
    await tracked_job(api)
    foreign = {"Origin": "https://evil.test", **JSON_TYPE}
    for headers in ({}, {"Content-Type": "text/plain"}, foreign):
        status, _ = await api.request("DELETE", f"/v1/jobs/{JOB}", headers=headers)
        assert status in (403, 415)
    other = f"{DEFAULT_VAULT_ID}/backupJobs/{uuid.uuid4()}"
    status, _ = await api.request(
        "POST", "/v1/jobs", json=other, headers={"Origin": "http://attacker.example"}
    )
    assert status == 403
    assert [j.job_id for j in await api.store.list_jobs()] == [JOB]
    status, body = await api.request("DELETE", f"/v1/jobs/{JOB}", headers=JSON_TYPE)
    assert status == 200 and body["tracking"] == "stopped"


# ---- connections -----------------------------------------------------------------------


async def until(check: Callable[[], bool], what: str) -> None:
    """Wait (bounded by WAIT_S) for a condition the server reaches on its own."""
    async with asyncio.timeout(WAIT_S):
        while not check():  # noqa: ASYNC110 - aiohttp's server has no event for this
            await asyncio.sleep(0.02)
    assert check(), what


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded by WAIT_S)."""
    return await asyncio.wait_for(reader.read(), WAIT_S)


async def test_idle_and_slow_header_clients_are_dropped(make_api: ApiFactory) -> None:
    api = await make_api(idle_timeout_seconds=1.0)
    idle_r, idle_w = await asyncio.open_connection("127.0.0.1", api.port)
    slow_r, slow_w = await asyncio.open_connection("127.0.0.1", api.port)
    slow_w.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never ends its headers
    await slow_w.drain()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await closed_by_server(idle_r) == b""
    assert await closed_by_server(slow_r) == b""
    assert loop.time() - started < 5.0
    idle_w.close()
    slow_w.close()


async def test_a_slow_body_gets_408(make_api: ApiFactory) -> None:
    api = await make_api(body_timeout_seconds=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n[\"/subs"
    )
    await writer.drain()
    answer = await closed_by_server(reader)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"request_timeout" in answer
    writer.close()
    assert await api.store.list_jobs() == []


async def test_a_flood_of_idle_connections_leaves_room_for_the_health_probe(
    make_api: ApiFactory,
) -> None:
    api = await make_api(max_connections=8, idle_timeout_seconds=300.0)
    flood = [await asyncio.open_connection("127.0.0.1", api.port) for _ in range(40)]
    status, body = await asyncio.wait_for(api.request("GET", "/healthz"), WAIT_S)
    assert status == 200 and body["status"] == "ok"
    # The oldest idle connections were closed to make room; at most the cap stays open.
    assert api.runner.server is not None
    assert len(api.runner.server.connections) <= 8
    for _, writer in flood:
        writer.close()


async def test_when_every_connection_is_busy_a_newcomer_gets_503(make_api: ApiFactory) -> None:
    """Busy connections (a request in progress) are never closed to make room."""
    api = await make_api(max_connections=4, body_timeout_seconds=30.0)
    busy = []
    for _ in range(4):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n["
        )
        await writer.drain()
        busy.append((reader, writer))
    assert api.runner.server is not None
    server = api.runner.server
    guard = connection_guard(api.runner.app)
    await until(lambda: guard.busy == 4, "four requests to be in progress")
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    assert await closed_by_server(reader) == BUSY_ANSWER
    writer.close()
    assert len(server.connections) == 4  # none of the busy ones was closed
    for _, busy_writer in busy:
        busy_writer.close()


# ---- start-up failures: one line -------------------------------------------------------


async def test_a_busy_port_is_one_line(make_api: ApiFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ApiStartError, match="address already in use") as failed:
            await make_api(port=port)
    assert "\n" not in str(failed.value)


async def test_a_live_unix_socket_is_not_taken_over(
    make_api: ApiFactory, tmp_path: Path
) -> None:
    path = str(tmp_path / "api.sock")
    first = await make_api(unix_socket=path)
    with pytest.raises(ApiStartError, match="in use by another live process"):
        await make_api(unix_socket=path)
    connector = aiohttp.UnixConnector(path=path)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get("http://localhost/healthz") as resp,
    ):
        assert resp.status == 200
    await first.runner.cleanup()
    # A stale socket file (its process gone) is replaced.
    second = await make_api(unix_socket=path)
    assert second.runner.addresses


async def test_a_unix_socket_in_a_missing_directory_is_one_line(
    make_api: ApiFactory, tmp_path: Path
) -> None:
    with pytest.raises(ApiStartError, match="does not exist"):
        await make_api(unix_socket=str(tmp_path / "nowhere" / "api.sock"))


# ---- logs ------------------------------------------------------------------------------


async def test_malformed_requests_and_vanishing_clients_log_no_errors(
    make_api: ApiFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    api = await make_api()
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(garbage)
        await writer.drain()
        answer = await closed_by_server(reader)
        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:80]
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n[\"/sub"
    )
    await writer.drain()
    writer.transport.abort()
    assert api.runner.server is not None
    server = api.runner.server
    await until(lambda: not server.connections, "the aborted connection to be handled")
    status, _ = await api.request("GET", "/healthz")
    assert status == 200
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert not any(r.exc_info for r in caplog.records)
    assert "Traceback" not in caplog.text
