"""The store under a full disk, a locked database and a dropped connection, and heartbeats.

A full disk is simulated with `PRAGMA max_page_count`, set on every connection the pool
hands out (a `checkout` listener), so the database cannot grow: a write that needs a new
page fails with SQLITE_FULL ("database or disk is full"). A locked database is another
connection holding `BEGIN IMMEDIATE` while the store's busy timeout is short. The store
retries a lock or a dropped connection itself, briefly (`RetryPolicy`); a full disk and a
server that is down are left to the tracker's longer retry.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import OperationalError

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import StaticTokenProvider
from backupjobd.adapters.sql.engine import RetryPolicy, retryable
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core import azure
from backupjobd.core.decisions import JobDecision, PollPolicy, Snapshot, Tracking
from backupjobd.core.leases import LEASE_SPAN, ReplicaBeat
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import JobRegistration
from backupjobd.emulator import (
    DEFAULT_VAULT_ID,
    EmulatedJob,
    EmulatorState,
    JobSpec,
    build_emulator_app,
)
from backupjobd.errors import StoreError
from backupjobd.service.tracker import Tracker
from backupjobd.store import Store
from backupjobd.testing import FakeClock, MemoryStore
from tests.integration.stores import table_rows

T = TypeVar("T")
VAULT = azure.vault_from_id(DEFAULT_VAULT_ID)
JOB_GUID = "7a1e2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
NO_LIMIT = 1_073_741_823
BIG = "x" * 40_000  # a snapshot this big needs new (overflow) pages
STEP_TIMEOUT_S = 10.0
TOKEN = "resilience-token"
API = "2025-08-01"


class DiskLimit:
    """`PRAGMA max_page_count` for every connection the engine hands out."""

    def __init__(self) -> None:
        self.pages = NO_LIMIT

    def fill(self) -> None:
        self.pages = 1  # SQLite clamps this to the current size: nothing more fits

    def free(self) -> None:
        self.pages = NO_LIMIT

    def on_checkout(self, dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA max_page_count = {int(self.pages)}")
        cursor.close()


@dataclass
class Db:
    path: Path
    url: str
    store: SqlStore
    disk: DiskLimit

    async def register(self, job_id: str = JOB_GUID) -> JobRecord:
        [result] = await self.store.register([JobRegistration(VAULT, job_id, "job-id")], NOW)
        assert result.created
        return await self.job(job_id)

    async def job(self, job_id: str = JOB_GUID) -> JobRecord:
        [record] = await self.store.find_jobs(job_id)
        return record

    async def history(self, job_id: str = JOB_GUID) -> tuple[list[Any], list[Any]]:
        record = await self.job(job_id)
        transitions, snapshots = await self.store.history(record.pk)
        return [(t.from_status, t.to_status) for t in transitions], snapshots


async def open_db(tmp_path: Path, busy_timeout_ms: int = 5000) -> Db:
    path = tmp_path / "resilience.db"
    url = f"sqlite+aiosqlite:///{path}"
    store = SqlStore.from_url(url, busy_timeout_ms)
    disk = DiskLimit()
    for engine in store.engines:
        event.listen(engine, "checkout", disk.on_checkout)
    await store.migrate()
    return Db(path, url, store, disk)


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    d = await open_db(tmp_path)
    try:
        yield d
    finally:
        await d.store.close()


def first_poll(status: str = "InProgress", body: str = BIG) -> JobDecision:
    return JobDecision(
        status=status,
        tracking=Tracking.ACTIVE,
        next_poll_at=NOW + timedelta(seconds=5),
        transition=(None, status),
        snapshot=Snapshot(f"hash-{len(body)}", {"status": status, "extendedInfo": body}),
    )


class Flaky:
    """Wraps a write: counts the transient failures and calls `fix` after `after` of them."""

    def __init__(self, write: Callable[[], Awaitable[T]], fix: Callable[[], None], after: int):
        self._write, self._fix, self._after = write, fix, after
        self.calls = 0
        self.failures: list[StoreError] = []

    async def __call__(self) -> Any:
        self.calls += 1
        try:
            return await self._write()
        except StoreError as exc:
            self.failures.append(exc)
            if len(self.failures) >= self._after:
                self._fix()
            raise


def tracker_for(store: Store, store_retry_seconds: float = 30.0) -> Tracker:
    # The ARM client is never used by `_persist`; it points nowhere.
    arm = ArmClient(None, StaticTokenProvider(TOKEN), "http://127.0.0.1:9", API)  # type: ignore[arg-type]
    return Tracker(
        store,
        arm,
        PollPolicy(),
        lambda: NOW,
        rng=random.Random(1),
        store_retry_seconds=store_retry_seconds,
    )


# --------------------------------------------------------------------------- a full disk


async def test_a_full_disk_is_a_transient_error_and_writes_nothing(db: Db) -> None:
    record = await db.register()
    db.disk.fill()
    with pytest.raises(StoreError) as raised:
        await db.store.apply_job(record, first_poll(), NOW)
    assert raised.value.transient is True
    assert "full" in str(raised.value)
    assert JOB_GUID in str(raised.value)
    assert "INSERT" not in str(raised.value) and BIG[:100] not in str(raised.value)
    # Reads still work, and show that nothing of the failed transaction was kept.
    after = await db.job()
    assert after.version == record.version
    assert after.status is None and after.poll_count == 0 and after.last_polled_at is None
    assert await db.history() == ([], [])
    # Space given back: the same record (same version) applies cleanly.
    db.disk.free()
    assert await db.store.apply_job(record, first_poll(), NOW) is True
    transitions, snapshots = await db.history()
    assert transitions == [(None, "InProgress")]
    assert len(snapshots) == 1
    assert (await db.job()).version == record.version + 1


async def test_small_writes_still_fit_on_a_full_disk(db: Db) -> None:
    """SQLite fails only what needs a new page; a row update in place goes through."""
    record = await db.register()
    db.disk.fill()
    small = JobDecision(
        status="InProgress",
        tracking=Tracking.ACTIVE,
        next_poll_at=NOW,
        transition=(None, "InProgress"),
    )
    assert await db.store.apply_job(record, small, NOW) is True
    assert (await db.history())[0] == [(None, "InProgress")]


async def test_persist_retries_a_full_disk_until_space_comes_back(db: Db) -> None:
    record = await db.register()
    tracker = tracker_for(db.store)
    db.disk.fill()
    write = Flaky(lambda: db.store.apply_job(record, first_poll(), NOW), db.disk.free, after=2)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        applied = await tracker._persist(write, {"job_id": JOB_GUID})
    assert applied is True
    assert write.calls == 3
    assert [e.transient for e in write.failures] == [True, True]
    assert all("full" in str(e) for e in write.failures)
    transitions, snapshots = await db.history()
    assert transitions == [(None, "InProgress")]  # exactly one, despite three attempts
    assert len(snapshots) == 1
    after = await db.job()
    assert after.version == record.version + 1
    assert after.poll_count == 1


async def test_persist_gives_up_after_its_deadline(db: Db) -> None:
    record = await db.register()
    tracker = tracker_for(db.store, store_retry_seconds=0.25)
    db.disk.fill()
    write = Flaky(lambda: db.store.apply_job(record, first_poll(), NOW), lambda: None, after=99)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        with pytest.raises(StoreError, match="full"):
            await tracker._persist(write, {"job_id": JOB_GUID})
    assert 2 <= write.calls <= 3
    assert await db.history() == ([], [])
    assert (await db.job()).version == record.version


async def test_persist_does_not_retry_a_permanent_error(db: Db) -> None:
    tracker = tracker_for(db.store)
    calls = 0

    async def broken() -> bool:
        nonlocal calls
        calls += 1
        raise StoreError("constraint violated", transient=False)

    async with asyncio.timeout(STEP_TIMEOUT_S):
        with pytest.raises(StoreError, match="constraint"):
            await tracker._persist(broken, {})
    assert calls == 1


# --------------------------------------------------------------------------- the whole poll


class BigBodies(EmulatorState):
    """The emulator, with an `extendedInfo` too big to fit on a full disk."""

    def render_job(self, job: EmulatedJob, *, extended: bool = True) -> dict[str, Any]:
        body = super().render_job(job, extended=extended)
        if extended:
            body["properties"]["extendedInfo"] = {"propertyBag": {"Blob": BIG}}
        return body


async def test_a_poll_on_a_full_disk_is_saved_once_space_is_back(db: Db) -> None:
    clock = FakeClock()
    state = BigBodies(clock=clock, required_token=TOKEN)
    job = state.add_job(JobSpec(duration_seconds=600))
    server = TestServer(build_emulator_app(state), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            endpoint = str(server.make_url("")).rstrip("/")
            arm = ArmClient(session, StaticTokenProvider(TOKEN), endpoint, API, timeout_seconds=5)
            tracker = Tracker(db.store, arm, PollPolicy(), clock.now, rng=random.Random(3))
            record = await db.register(job.job_id)
            real_apply = db.store.apply_job
            attempts: list[str] = []

            async def apply_job(
                rec: JobRecord,
                decision: JobDecision,
                now: datetime,
                outbox: Any = (),
                fence: Any = None,
            ) -> bool:
                try:
                    result = await real_apply(rec, decision, now, outbox, fence)
                except StoreError as exc:
                    attempts.append(str(exc))
                    if len(attempts) == 2:
                        db.disk.free()
                    raise
                attempts.append("ok")
                return result

            db.store.apply_job = apply_job  # type: ignore[method-assign]
            db.disk.fill()
            async with asyncio.timeout(STEP_TIMEOUT_S):
                decision = await tracker.poll_job(record)
    finally:
        await server.close()
    assert decision.transition == (None, "InProgress")
    assert len(attempts) == 3 and attempts[-1] == "ok"
    assert all("full" in a for a in attempts[:2])
    assert state.stats()["job_gets"][job.job_id] == 1  # retried the write, not the GET
    transitions, snapshots = await db.history(job.job_id)
    assert transitions == [(None, "InProgress")]
    assert len(snapshots) == 1
    assert snapshots[0].properties["extendedInfo"]["propertyBag"]["Blob"] == BIG
    after = await db.job(job.job_id)
    assert after.version == 1 and after.poll_count == 1 and after.status == "InProgress"


# --------------------------------------------------------------------------- a locked database


class Blocker:
    """Another connection (think: another process) holding SQLite's write lock."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self.holding = False

    def hold(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self.holding = True

    def release(self) -> None:
        if self.holding:
            self._conn.execute("ROLLBACK")
            self.holding = False

    def close(self) -> None:
        self.release()
        self._conn.close()


@pytest.fixture
async def locked_db(tmp_path: Path) -> AsyncIterator[tuple[Db, Blocker]]:
    d = await open_db(tmp_path, busy_timeout_ms=100)
    blocker = Blocker(d.path)
    try:
        yield d, blocker
    finally:
        blocker.close()
        await d.store.close()


async def test_a_locked_database_is_transient_then_succeeds(
    locked_db: tuple[Db, Blocker],
) -> None:
    db, blocker = locked_db
    record = await db.register()
    blocker.hold()
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        await db.store.apply_job(record, first_poll(body="small"), NOW)
    # The store retried within its deadline, then gave up (the tracker retries longer).
    assert 0.3 < time.monotonic() - started < RetryPolicy().deadline_seconds + 1.0
    assert raised.value.transient is True
    assert "locked" in str(raised.value)
    # Readers are not blocked by a writer in WAL mode.
    assert (await db.job()).version == record.version
    assert await db.history() == ([], [])
    blocker.release()
    assert await db.store.apply_job(record, first_poll(body="small"), NOW) is True
    assert (await db.history())[0] == [(None, "InProgress")]


async def test_registering_on_a_locked_database_is_transient(
    locked_db: tuple[Db, Blocker],
) -> None:
    db, blocker = locked_db
    blocker.hold()
    with pytest.raises(StoreError) as raised:
        await db.store.register([JobRegistration(VAULT, JOB_GUID, "job-id")], NOW)
    assert raised.value.transient is True
    blocker.release()
    await db.register()


async def test_persist_waits_out_a_lock(locked_db: tuple[Db, Blocker]) -> None:
    db, blocker = locked_db
    record = await db.register()
    tracker = tracker_for(db.store)
    blocker.hold()
    write = Flaky(
        lambda: db.store.apply_job(record, first_poll(body="small"), NOW),
        blocker.release,
        after=1,
    )
    async with asyncio.timeout(STEP_TIMEOUT_S):
        assert await tracker._persist(write, {"job_id": JOB_GUID}) is True
    assert write.calls == 2
    assert "locked" in str(write.failures[0])
    transitions, snapshots = await db.history()
    assert transitions == [(None, "InProgress")]
    assert len(snapshots) == 1


async def test_the_store_waits_out_a_lock_held_briefly(locked_db: tuple[Db, Blocker]) -> None:
    """Another writer holds the lock for longer than the busy timeout (100 ms): the write
    still succeeds, with no retry loop in the caller (API, notifier, discovery, tracker)."""
    db, blocker = locked_db
    record = await db.register()
    blocker.hold()
    asyncio.get_running_loop().call_later(0.3, blocker.release)
    started = time.monotonic()
    assert await db.store.apply_job(record, first_poll(body="small"), NOW) is True
    assert time.monotonic() - started >= 0.25
    assert (await db.history())[0] == [(None, "InProgress")]
    blocker.hold()
    asyncio.get_running_loop().call_later(0.3, blocker.release)
    await beat(db.store, "inst", "host", 1, NOW, NOW)
    assert await db.store.live_instances(NOW) == 1


def _sqlite_error(message: str, code: int) -> OperationalError:
    orig = sqlite3.OperationalError(message)
    orig.sqlite_errorcode = code  # type: ignore[attr-defined]
    return OperationalError("UPDATE jobs ...", {}, orig)


async def test_the_store_retries_contention_only_and_within_its_policy(db: Db) -> None:
    database = db.store.database
    attempts: list[int] = []

    def failing(error: Exception) -> Any:
        def work(_conn: Connection) -> None:
            attempts.append(1)
            raise error

        return work

    for error, tries in [
        (_sqlite_error("database is locked", 5), RetryPolicy().attempts),
        (_sqlite_error("database table is locked", 262), RetryPolicy().attempts),
        (_sqlite_error("database or disk is full", 13), 1),  # lasts: the tracker's to wait out
        (ConnectionResetError(104, "Connection reset by peer"), RetryPolicy().attempts),
        (ConnectionRefusedError(111, "Connection refused"), 1),  # a server down lasts too
    ]:
        attempts.clear()
        with pytest.raises(StoreError) as raised:
            await database.run(failing(error), "testing", write=True)
        assert len(attempts) == tries, error
        assert raised.value.transient is True
        assert retryable(error) is (tries > 1)

    attempts.clear()
    with pytest.raises(StoreError) as raised:
        await database.run(failing(OperationalError("x", {}, ValueError("?"))), "t", write=True)
    assert len(attempts) == 1 and raised.value.transient is True

    # Within the deadline, whatever the attempts: a tight one allows fewer.
    database.retry = RetryPolicy(attempts=100, deadline_seconds=0.3, first_delay=0.05)
    attempts.clear()
    with pytest.raises(StoreError):
        await database.run(failing(_sqlite_error("database is locked", 5)), "t", write=False)
    assert 2 <= len(attempts) <= 6


async def test_memory_store_fails_on_demand_and_writes_nothing() -> None:
    store = MemoryStore()
    store.fail_next()
    with pytest.raises(StoreError) as raised:
        await store.register([JobRegistration(VAULT, JOB_GUID, "job-id")], NOW)
    assert raised.value.transient is True
    assert await store.list_jobs() == []
    [result] = await store.register([JobRegistration(VAULT, JOB_GUID, "job-id")], NOW)
    assert result.created
    record = (await store.find_jobs(JOB_GUID))[0]
    tracker = tracker_for(store)
    store.fail_next(count=2)
    write = Flaky(lambda: store.stop_tracking(record, NOW), lambda: None, after=99)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        assert await tracker._persist(write, {}) is True
    assert write.calls == 3


# --------------------------------------------------------------------------- a lost server


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


async def test_an_unreachable_postgresql_is_a_transient_store_error() -> None:
    store = SqlStore.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/test")
    tracker = tracker_for(store, store_retry_seconds=0.25)
    try:
        with pytest.raises(StoreError) as raised:
            await beat(store, "inst", "h", 1, NOW, NOW)
        assert raised.value.transient is True
        with pytest.raises(StoreError) as raised:
            await store.live_instances(NOW)
        assert raised.value.transient is True
        # The tracker retries it like a locked database, then gives up with a StoreError.
        calls = 0

        async def write() -> list[Any]:
            nonlocal calls
            calls += 1
            return await store.due_jobs(NOW, 10)

        async with asyncio.timeout(STEP_TIMEOUT_S):
            with pytest.raises(StoreError):
                await tracker._persist(write, {})
        assert calls >= 2
    finally:
        await store.close()


@pytest.mark.postgres
async def test_a_dropped_postgresql_connection_is_retried_by_the_store(
    pg_database_url: str,
) -> None:
    store = SqlStore.from_url(pg_database_url)
    try:
        await store.migrate()
        attempts = 0

        def work(conn: Connection) -> int:
            nonlocal attempts
            attempts += 1
            if attempts == 1:  # the server ends this session mid-transaction
                conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            conn.execute(text("UPDATE discovery_state SET jobs_found = 0"))
            return attempts

        async with asyncio.timeout(STEP_TIMEOUT_S):
            assert await store.database.run(work, "testing a drop", write=True) == 2
        # And the store's own methods: every connection of the pool is killed under them.
        await beat(store, "inst", "h", 1, NOW, NOW)
        async with store.engine.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await beat(store, "inst", "h", 1, NOW, NOW + timedelta(seconds=1))
        assert await store.live_instances(NOW + timedelta(seconds=1)) == 1
    finally:
        await store.close()


# --------------------------------------------------------------------------- heartbeats


async def beat(
    store: Store,
    instance: str,
    hostname: str,
    pid: int,
    started: datetime,
    now: datetime,
    *,
    stopped: bool = False,
) -> None:
    """A replica's heartbeat, as `serve` sends it every few seconds."""
    replica = ReplicaBeat(instance, hostname, pid, started, LEASE_SPAN, LEASE_SPAN, stopped=stopped)
    await store.replica_heartbeat(replica, now)


async def instance_rows(store: Store) -> dict[str, Any]:
    return {r.instance_id: r for r in await table_rows(store, "instances")}


async def test_heartbeat_inserts_then_updates_one_row(store: Store) -> None:
    started = NOW - timedelta(minutes=10)
    await beat(store, "inst-a", "host-1", 4242, started, NOW)
    later = NOW + timedelta(seconds=5)
    await beat(store, "inst-a", "host-1", 4242, started, later)
    rows = await instance_rows(store)
    assert list(rows) == ["inst-a"]
    row = rows["inst-a"]
    assert row.hostname == "host-1" and row.pid == 4242
    assert row.started_at == started
    assert row.last_seen_at == later
    assert row.stopped_at is None


async def test_a_long_hostname_is_clipped(store: Store) -> None:
    await beat(store, "inst-h", "h" * 400, 1, NOW, NOW)
    assert len((await instance_rows(store))["inst-h"].hostname) == 255


async def test_live_instances_counts_recent_running_instances(store: Store) -> None:
    window = timedelta(seconds=15)
    assert await store.live_instances(NOW - window) == 0
    await beat(store, "fresh", "h", 1, NOW, NOW)
    await beat(store, "edge", "h", 2, NOW, NOW - window)  # exactly at the window's start
    await beat(store, "silent", "h", 3, NOW, NOW - window - timedelta(seconds=1))
    await beat(store, "stopping", "h", 4, NOW, NOW - timedelta(seconds=1))
    await beat(store, "stopping", "h", 4, NOW, NOW, stopped=True)
    assert await store.live_instances(NOW - window) == 2
    rows = await instance_rows(store)
    assert rows["stopping"].stopped_at == NOW
    # An instance that beats again after a stop (same id) counts again.
    await beat(store, "stopping", "h", 4, NOW, NOW + timedelta(seconds=1))
    assert (await instance_rows(store))["stopping"].stopped_at is None
    assert await store.live_instances(NOW - window) == 3
    # Later, with no more beats, nobody is live.
    assert await store.live_instances(NOW + timedelta(minutes=5)) == 0
