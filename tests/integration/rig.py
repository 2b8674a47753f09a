"""The daemon wired as in production in one process, for the integration tests: the emulator
on loopback HTTP, a SqlStore on SQLite, an ArmClient over aiohttp and a started Tracker, all
on one `FakeClock`.

`open_rig(...)` builds one and takes it down again (an async context manager); the
`make_rig` fixture in conftest.py is the same as a factory whose rigs close after the test.
What a file needs differently is a keyword: its own emulator class, page size, policy, read
budget, tracker options, or its own `Rig` subclass (`cls`) with the helpers only it uses.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiohttp
from aiohttp.test_utils import TestServer

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.budget import ReadBudget
from backupjobd.adapters.credentials import StaticTokenProvider, TokenProvider
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core import azure
from backupjobd.core.decisions import PollPolicy
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import JobRegistration
from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorState, build_emulator_app
from backupjobd.service.tracker import Tracker
from backupjobd.testing import TEST_POLICY, FakeClock

API = "2025-08-01"
TOKEN = "rig-token-SECRET"
VAULT = azure.vault_from_id(DEFAULT_VAULT_ID)
RUN_DEADLINE_S = 5.0

R = TypeVar("R", bound="Rig")


@dataclass
class Rig:
    """One wired daemon and its emulator, with the helpers most tests of the loops use."""

    #: How long `run()` lets the tracker work before it must be idle.
    run_deadline: ClassVar[float] = RUN_DEADLINE_S

    clock: FakeClock
    state: EmulatorState
    session: aiohttp.ClientSession
    endpoint: str
    arm: ArmClient
    store: SqlStore
    tracker: Tracker
    db_url: str
    tmp_path: Path

    def arm_client(self, tokens: TokenProvider | None = None, api_version: str = API) -> ArmClient:
        """Another ARM client on the same session, e.g. with other tokens or API version."""
        return ArmClient(
            self.session,
            tokens or StaticTokenProvider(str(self.state.required_token)),
            self.endpoint,
            api_version,
            timeout_seconds=5,
        )

    async def register(self, job_id: str, vault: azure.VaultRef = VAULT) -> JobRecord:
        [result] = await self.store.register(
            [JobRegistration(vault, job_id.lower(), "job-id")], self.clock.now()
        )
        assert result.created
        return await self.job(job_id)

    async def job(self, job_id: str) -> JobRecord:
        [record] = await self.store.find_jobs(job_id)
        return record

    async def transitions(self, job_id: str) -> list[tuple[str | None, str]]:
        record = await self.job(job_id)
        transitions, _ = await self.store.history(record.pk)
        return [(t.from_status, t.to_status) for t in transitions]

    def kinds(self) -> dict[str, int]:
        return dict(self.state.stats()["by_kind"])

    def gets(self, job_id: str) -> int:
        return int(self.state.stats()["job_gets"].get(job_id, 0))

    async def run(self) -> None:
        await self.tracker.run_until_idle(self.run_deadline)

    async def run_until(
        self,
        done: Callable[[], Awaitable[bool]],
        *,
        step: float = 1.0,
        max_steps: int = 60,
        each: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Poll whatever is due, call `each`, check, advance the clock; bounded."""
        for _ in range(max_steps):
            await self.run()
            if each is not None:
                await each()
            if await done():
                return
            self.clock.advance(step)
        raise AssertionError(f"condition not reached within {max_steps} steps of {step}s")


#: The `make_rig` fixture: `await make_rig(**options)`, options as for `open_rig`.
MakeRig = Callable[..., Awaitable[Rig]]


@asynccontextmanager
async def open_rig(
    tmp_path: Path,
    *,
    cls: type[R] = Rig,  # type: ignore[assignment]
    clock: FakeClock | None = None,
    state_cls: type[EmulatorState] = EmulatorState,
    emulator: Mapping[str, Any] | None = None,
    token: str = TOKEN,
    name: str = "rig",
    store_options: Mapping[str, Any] | None = None,
    budget: Callable[[FakeClock], ReadBudget] | None = None,
    write_budget: Callable[[FakeClock], ReadBudget] | None = None,
    policy: PollPolicy = TEST_POLICY,
    concurrency: int = 4,
    seed: int = 7,
    tracker_options: Mapping[str, Any] | None = None,
    drain_seconds: float = 2.0,
    must_drain: bool = True,
    **extra: Any,
) -> AsyncIterator[R]:
    """Start every part, yield `cls(...)` (with `extra` as its further fields), then drain the
    tracker and close the session, the emulator and the store, in that order. A test that
    leaves polls parked on purpose says `must_drain=False`."""
    clock = clock or FakeClock()
    state = state_cls(clock=clock, required_token=token, **(emulator or {}))
    server = TestServer(build_emulator_app(state), host="127.0.0.1")
    await server.start_server()
    db_url = f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
    store = SqlStore.from_url(db_url, **(store_options or {}))
    session = aiohttp.ClientSession(trust_env=False)
    tracker: Tracker | None = None
    try:
        await store.migrate()
        endpoint = str(server.make_url("")).rstrip("/")
        arm = ArmClient(
            session,
            StaticTokenProvider(token),
            endpoint,
            API,
            timeout_seconds=5,
            budget=None if budget is None else budget(clock),
            write_budget=None if write_budget is None else write_budget(clock),
        )
        tracker = Tracker(
            store,
            arm,
            policy,
            clock.now,
            concurrency=concurrency,
            rng=random.Random(seed),
            **(tracker_options or {}),
        )
        tracker.start()
        yield cls(clock, state, session, endpoint, arm, store, tracker, db_url, tmp_path, **extra)
    finally:
        drained = tracker is None or await tracker.drain(drain_seconds)
        await session.close()
        await server.close()
        await store.close()
    assert drained or not must_drain, "the tracker did not drain in time"


@dataclass(frozen=True)
class ApiBackends:
    """What the API's tests build the app on: the emulator served over loopback, a fresh
    SQLite store and an ARM client to the emulator."""

    store: SqlStore
    arm: ArmClient
    session: aiohttp.ClientSession
    emulator_url: str


async def api_backends(
    emulator: EmulatorState, tmp_path: Path, cleanups: list[Callable[[], Awaitable[Any]]]
) -> ApiBackends:
    """Start them; `cleanups` gets their closes, to be awaited in reverse order."""
    arm_server = TestServer(build_emulator_app(emulator))
    await arm_server.start_server()
    cleanups.append(arm_server.close)
    emulator_url = str(arm_server.make_url("")).rstrip("/")
    store = SqlStore.from_url(f"sqlite+aiosqlite:///{tmp_path}/{uuid.uuid4().hex}.db")
    await store.migrate()
    cleanups.append(store.close)
    session = aiohttp.ClientSession()
    cleanups.append(session.close)
    arm = ArmClient(session, StaticTokenProvider("arm-token"), emulator_url, "2025-08-01")
    return ApiBackends(store, arm, session, emulator_url)
