"""The emulator's admin API is unauthenticated, so its inputs are bounded: a request outside
a bound gets a one-line 400 naming the field and changes nothing. Listening beyond loopback
is allowed but warned about."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorProcess, EmulatorState, run_emulator
from backupjobd.emulator import admin as emulator_admin
from backupjobd.emulator import server as emulator_server
from tests.integration.test_emulator import Emu
from tests.integration.test_emulator import emu as emu  # the fixture, reused

SUB = "00000000-0000-0000-0000-000000000000"
NAN = float("nan")
INF = float("inf")
YEAR_AND_A_DAY = 366 * 86_400
LONG_VAULT = DEFAULT_VAULT_ID.replace("rg-emulator", "rg-" + "x" * 2_000)
#: Every request of these tests must be answered within this many seconds.
ANSWER_TIMEOUT_S = 10


def _footprint(state: EmulatorState) -> tuple[Any, ...]:
    """Everything an admin request can change (the admin API does not list faults)."""
    budget = state.read_budget
    return (
        state.stats()["jobs"],
        len(state._operations),
        len(state._faults),
        tuple(state.vaults_in_subscription(SUB)),
        state.random_faults,
        state.page_size,
        budget.burst if budget else None,
        state.read_refill_per_second,
    )


# Each case: the admin path, a body at the bound (accepted), a body beyond it, and the field
# the 400 must name.
BOUND_CASES: list[tuple[str, Any, Any, str]] = [
    (
        "/admin/jobs",
        {"duration_seconds": YEAR_AND_A_DAY},
        {"duration_seconds": NAN},
        "duration_seconds",
    ),
    ("/admin/jobs", {"duration_seconds": 0}, {"duration_seconds": INF}, "duration_seconds"),
    ("/admin/jobs", {"duration_seconds": 1}, {"duration_seconds": 1e308}, "duration_seconds"),
    ("/admin/jobs", {"not_found_seconds": 1}, {"not_found_seconds": 10**400}, "not_found_seconds"),
    (
        "/admin/jobs",
        {"started_seconds_ago": 1},
        {"started_seconds_ago": 1e12},
        "started_seconds_ago",
    ),
    ("/admin/jobs", {"job_id": "j" * 256}, {"job_id": "j" * 257}, "job_id"),
    ("/admin/jobs", {"final_status": "Failed"}, {"final_status": "F" * 100_000}, "final_status"),
    (
        "/admin/jobs",
        {"entity_friendly_name": "vm"},
        {"entity_friendly_name": "v" * 300},
        "entity_friendly_name",
    ),
    ("/admin/jobs", {}, {"vault_id": LONG_VAULT}, "vault_id"),
    ("/admin/jobs", [{}] * 10_000, [{}] * 10_001, "jobs"),
    ("/admin/operations", {"job_count": 1_000}, {"job_count": 1_001}, "job_count"),
    ("/admin/operations", {"delay_seconds": 1}, {"delay_seconds": INF}, "delay_seconds"),
    ("/admin/operations", {}, {"jobs": {"duration_seconds": NAN}}, "duration_seconds"),
    (
        "/admin/operations",
        {"item_level": True, "container_name": "c" * 256},
        {"item_level": True, "container_name": "c" * 257},
        "container_name",
    ),
    (
        "/admin/faults",
        {"kind": "500", "count": 1_000_000},
        {"kind": "500", "count": 10**18},
        "count",
    ),
    (
        "/admin/faults",
        {"kind": "429", "retry_after": 3_600},
        {"kind": "429", "retry_after": 10**9},
        "retry_after",
    ),
    (
        "/admin/faults",
        {"kind": "503", "path_contains": "p" * 1_024},
        {"kind": "503", "path_contains": "p" * 1_025},
        "path_contains",
    ),
    (
        "/admin/faults",
        {"kind": "random", "rate": 0.5, "seed": 0},
        {"kind": "random", "rate": 0.5, "seed": -1},
        "seed",
    ),
    (
        "/admin/faults",
        {"kind": "random", "rate": 0.5, "seed": 2**63 - 1},
        {"kind": "random", "rate": 0.5, "seed": 2**64},
        "seed",
    ),
    (
        "/admin/faults",
        {"kind": "random", "rate": 0.5, "kinds": ["500"] * 64},
        {"kind": "random", "rate": 0.5, "kinds": ["500"] * 65},
        "kinds",
    ),
    (
        "/admin/faults",
        {"kind": "random", "rate": 0.5, "retry_after": 3_600},
        {"kind": "random", "rate": 0.5, "retry_after": 10**6},
        "retry_after",
    ),
    ("/admin/config", {"page_size": 10_000}, {"page_size": 10**9}, "page_size"),
    ("/admin/config", {"read_burst": 1_000_000}, {"read_burst": 10**12}, "read_burst"),
    (
        "/admin/config",
        {"read_refill_per_second": 0.001},
        {"read_refill_per_second": 1e-300},
        "read_refill_per_second",
    ),
    (
        "/admin/config",
        {"read_refill_per_second": 1_000_000},
        {"read_refill_per_second": INF},
        "read_refill_per_second",
    ),
    (
        "/admin/config",
        {"read_refill_per_second": 25},
        {"read_refill_per_second": NAN},
        "read_refill_per_second",
    ),
    ("/admin/vaults", [{}] * 10_000, [{}] * 10_001, "vaults"),
]


@pytest.mark.parametrize(
    ("path", "at_bound", "beyond", "field"),
    BOUND_CASES,
    ids=[
        f"{path.rsplit('/', 1)[1]}-{field}-{i}" for i, (path, *_, field) in enumerate(BOUND_CASES)
    ],
)
async def test_admin_bounds_refuse_with_one_line_400_and_change_nothing(
    emu: Emu, path: str, at_bound: Any, beyond: Any, field: str
) -> None:
    status, answer = await emu.admin("POST", path, at_bound)
    assert status in (200, 201), answer
    before = _footprint(emu.state)
    status, answer = await emu.admin("POST", path, beyond)
    assert status == 400, answer
    assert list(answer) == ["error"]
    assert field in answer["error"]
    assert "\n" not in answer["error"] and len(answer["error"]) < 300
    assert _footprint(emu.state) == before


@pytest.mark.parametrize(
    ("body", "wanted"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (b'{"duration_seconds": ' + b"9" * 5_000 + b"}", "body"),
        (b'{"job_id": "' + b"j" * (2 * 1024 * 1024) + b'"}', "body"),
    ],
    ids=["nested", "long-integer", "two-mebibytes"],
)
async def test_unparseable_or_oversized_bodies_are_a_400_and_the_emulator_still_answers(
    emu: Emu, body: bytes, wanted: str
) -> None:
    resp = await emu.client.post(
        "/admin/jobs", data=body, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert wanted in error and "\n" not in error
    status, stats = await emu.admin("GET", "/admin/stats")
    assert status == 200 and stats["jobs"] == 0


@pytest.mark.parametrize(
    ("limit", "fill", "overflow", "field"),
    [
        (
            "MAX_JOBS",
            [("/admin/jobs", [{}, {}, {}]), ("/admin/operations", {"job_count": 2})],
            [("/admin/jobs", {}), ("/admin/operations", {"job_count": 1})],
            "jobs",
        ),
        (
            "MAX_OPERATIONS",
            [("/admin/operations", {"result": "Failed"})] * 5,
            [("/admin/operations", {"result": "Failed"})],
            "operations",
        ),
        (
            "MAX_VAULTS",
            [
                ("/admin/vaults", {"vault_id": DEFAULT_VAULT_ID.replace("emulator", str(i))})
                for i in range(5)
            ],
            [
                ("/admin/vaults", {"vault_id": DEFAULT_VAULT_ID.replace("emulator", "new")}),
                ("/admin/jobs", {"vault_id": DEFAULT_VAULT_ID.replace("emulator", "new")}),
            ],
            "vault",
        ),
        (
            "MAX_QUEUED_FAULTS",
            [("/admin/faults", {"kind": "500", "path_contains": "nothing"})] * 5,
            [("/admin/faults", {"kind": "503"})],
            "faults",
        ),
    ],
)
async def test_totals_are_bounded_until_a_reset(
    emu: Emu,
    monkeypatch: pytest.MonkeyPatch,
    limit: str,
    fill: list[tuple[str, Any]],
    overflow: list[tuple[str, Any]],
    field: str,
) -> None:
    monkeypatch.setattr(emulator_admin, limit, 5)
    for path, body in fill:
        status, answer = await emu.admin("POST", path, body)
        assert status == 201, answer
    before = _footprint(emu.state)
    for path, body in overflow:
        status, answer = await emu.admin("POST", path, body)
        assert status == 400, (path, answer)
        assert field in answer["error"]
    assert _footprint(emu.state) == before
    assert (await emu.admin("POST", "/admin/reset"))[0] == 200
    for path, body in overflow:
        status, answer = await emu.admin("POST", path, body)
        assert status == 201, (path, answer)


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[str]:
    """`backupjobd emulator` in its own process: if a request wedged it, the test's client
    would time out instead of the test's own event loop hanging."""
    with EmulatorProcess(tmp_path / "emulator.log") as emulator:
        yield emulator.base


async def test_billion_job_operation_is_refused_quickly_and_the_emulator_still_answers(
    emulator_process: str,
) -> None:
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT_S)
    async with aiohttp.ClientSession(emulator_process, timeout=timeout) as session:
        async with session.post(
            "/admin/operations", json={"job_count": 1_000_000_000, "delay_seconds": 0}
        ) as resp:
            assert resp.status == 400
            assert "job_count" in (await resp.json())["error"]
        async with session.post(
            "/admin/operations", json={"job_count": 3, "delay_seconds": 60}
        ) as resp:
            assert resp.status == 201
            assert len((await resp.json())["job_ids"]) == 3
        async with session.get("/admin/stats") as resp:
            assert resp.status == 200
            assert (await resp.json())["jobs"] == 0


async def _serve_once(host: str, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """Start ``run_emulator`` on ``host``, stop it once bound; its warnings meanwhile."""
    caplog.clear()
    loop = asyncio.get_running_loop()
    bound: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(run_emulator(host, 0, ready=bound.set_result))
    try:
        await asyncio.wait_for(bound, ANSWER_TIMEOUT_S)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return [
        r
        for r in caplog.records
        if r.name == emulator_server.__name__ and r.levelno >= logging.WARNING
    ]


async def test_listening_beyond_loopback_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=emulator_server.__name__)
    assert await _serve_once("127.0.0.1", caplog) == []
    warnings = await _serve_once("0.0.0.0", caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "0.0.0.0" in message and "loopback" in message
    assert "admin API" in message and "--token" in message
    assert "\n" not in message
