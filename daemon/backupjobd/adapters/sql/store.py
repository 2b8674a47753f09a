"""The SQLAlchemy implementation of the store, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

`SqlStore` is a thin façade: the queries live by aggregate (`jobs`, `operations`, `outbox`,
`meta`), engines and the one transaction path with its retry in `engine`, Alembic in
`migrate` (imported only when the schema is migrated or checked). On SQLite the async engine
is created only when a migration (or a test) needs it: a command on an up-to-date database
reads the schema version on the direct engine like everything else.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from backupjobd.adapters.sql import jobs, leases, meta, operations, outbox, schema
from backupjobd.adapters.sql.engine import (
    Database,
    RetryPolicy,
    create_direct_engine,
    create_engine,
    is_read_only_url,
    read_only_url,
    sqlite_path,
    translate,
)
from backupjobd.adapters.sql.migrate import (
    SCHEMA_HEAD,
    SchemaBehind,
    _current,
    check_schema,
    migrate,
)
from backupjobd.core.azure import VaultRef
from backupjobd.core.decisions import JobDecision, OperationDecision
from backupjobd.core.leases import (
    LIVENESS_LOCK_SPACE,
    Fence,
    Lease,
    ReplicaBeat,
    ReplicaRecord,
    liveness_key,
    subscription_of,
)
from backupjobd.core.model import (
    DiscoveryState,
    JobRecord,
    JobWrite,
    OperationRecord,
    OutboxEntry,
    OutboxRecord,
    RegisterResult,
    SnapshotRecord,
    TransitionRecord,
)
from backupjobd.core.registration import Registration
from backupjobd.errors import StoreError
from backupjobd.store import Store

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["RetryPolicy", "SchemaBehind", "SqlStore"]


class SqlStore(Store):
    def __init__(
        self,
        engine: AsyncEngine | Callable[[], AsyncEngine],
        url: str,
        direct: Engine | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._db = Database(engine, direct, retry)
        self._url = url
        self._liveness: AsyncConnection | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        busy_timeout_ms: int = 5000,
        *,
        read_only: bool = False,
        retry: RetryPolicy | None = None,
    ) -> SqlStore:
        """`read_only` (SQLite, a command that only reads): a missing file is an error
        instead of a new empty database, and a file on a read-only mount is opened read-only.
        `retry`: the store's own retry of contention (default: a few attempts within 2 s)."""
        path = sqlite_path(url) if url.startswith("sqlite") else None
        if path is not None and not os.path.isdir(os.path.dirname(path) or "."):
            # SQLite says only "unable to open database file", which looks worth retrying.
            raise StoreError(f"database directory {os.path.dirname(path)} does not exist")
        if read_only and url.startswith("sqlite"):
            if path is not None and not os.path.exists(path):
                raise StoreError(
                    f"database {path} does not exist (check database.url; serve or register "
                    "creates it)"
                )
            url = read_only_url(url)
        direct = create_direct_engine(url, busy_timeout_ms)
        # PostgreSQL works on the async engine: made now, a bad URL fails here as it always
        # did. SQLite's is made if a migration needs it.
        engine = functools.partial(create_engine, url, busy_timeout_ms)
        return cls(engine if direct is not None else engine(), url, direct, retry=retry)

    @property
    def read_only(self) -> bool:
        return is_read_only_url(self._url)

    @property
    def engine(self) -> AsyncEngine:
        return self._db.engine

    @property
    def engines(self) -> list[Engine]:
        """Every engine that opens connections (for connection events)."""
        return self._db.engines

    @property
    def database(self) -> Database:
        """The transaction path every method takes (for tests of its retry)."""
        return self._db

    async def migrate(self) -> None:
        if not await self._at_head():
            await migrate(self._db, self._url, read_only=self.read_only)

    async def check_schema(self) -> None:
        if not await self._at_head():
            await check_schema(self._db)

    async def _at_head(self) -> bool:
        """On SQLite, whether the schema is at head, read on the direct engine: the async
        engine then stays uncreated unless there is something to migrate. Otherwise False,
        and `migrate` / `check_schema` read it (and say what is wrong) themselves."""
        if self._db.direct is None:
            return False
        revision = await self._db.read_once(_current, "reading the schema version")
        return revision == SCHEMA_HEAD

    async def register(
        self, registrations: Sequence[Registration], now: datetime
    ) -> list[RegisterResult]:
        work = functools.partial(jobs.register, registrations=registrations, now=now)
        return await self._db.run(work, "registering", write=True)

    async def due_jobs(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        subscriptions: Collection[str] | None = None,
    ) -> list[JobRecord]:
        where = jobs.due_where(now)
        if subscriptions is not None:
            where = (*where, leases.in_subscriptions(schema.jobs.c.vault_key, subscriptions))
        work = functools.partial(jobs.jobs_excluding, where=where, limit=limit, exclude=exclude)
        return await self._db.run(work, "reading due jobs", write=False)

    async def finished_durations(
        self, limit: int = 5000
    ) -> list[tuple[str | None, str | None, str | None, float]]:
        rows = await self._db.read(
            jobs.finished_durations_query(limit), "reading finished job durations"
        )
        return [
            (
                r.operation,
                r.job_type,
                r.entity_friendly_name,
                (r.end_time - r.start_time).total_seconds(),
            )
            for r in rows
            if r.end_time >= r.start_time
        ]

    async def sweep_candidates(
        self, vault_id: str, due_before: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[JobRecord]:
        where = jobs.sweep_where(vault_id, due_before)
        work = functools.partial(jobs.jobs_excluding, where=where, limit=limit, exclude=exclude)
        return await self._db.run(work, "reading sweep candidates", write=False)

    async def reschedule_jobs(
        self,
        pks: Sequence[int],
        next_poll_at: datetime,
        polled_at: datetime | None = None,
        polls: Sequence[int] | None = None,
        fence: Fence | None = None,
    ) -> int:
        by_polls: dict[int, list[int]] = {}
        counts = polls if polls is not None else [1] * len(pks)
        for pk, count in zip(pks, counts, strict=True):
            by_polls.setdefault(count if polled_at is not None else 0, []).append(pk)
        if not pks:
            return 0
        work: Callable[[Connection], int] = functools.partial(
            jobs.reschedule, by_polls=by_polls, next_poll_at=next_poll_at, polled_at=polled_at
        )
        if fence is not None:
            work = leases.fenced_by_jobs(work, fence, pks)
        try:
            return await self._db.run(work, f"rescheduling {len(pks)} jobs", write=True)
        except leases.StaleLease:
            return 0

    async def due_operations(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        subscriptions: Collection[str] | None = None,
    ) -> list[OperationRecord]:
        work = functools.partial(
            operations.due, now=now, limit=limit, exclude=exclude, subscriptions=subscriptions
        )
        return await self._db.run(work, "reading due operations", write=False)

    async def apply_job(
        self,
        record: JobRecord,
        decision: JobDecision,
        now: datetime,
        outbox: Sequence[OutboxEntry] = (),
        fence: Fence | None = None,
    ) -> bool:
        return (await self.apply_jobs([JobWrite(record, decision, now, outbox)], fence))[0]

    async def apply_jobs(
        self, writes: Sequence[JobWrite], fence: Fence | None = None
    ) -> list[bool]:
        """Under a fence, the writes of subscriptions whose lease has moved on are refused
        (False); the others are written in a transaction that checks their leases again."""
        if fence is None:
            return await self._apply_jobs(writes, None)
        results = dict.fromkeys(range(len(writes)), False)
        pending = list(range(len(writes)))
        while pending:
            try:
                done = await self._apply_jobs([writes[i] for i in pending], fence)
            except leases.StaleLease as exc:
                pending = [
                    i
                    for i in pending
                    if subscription_of(writes[i].record.vault_id) not in exc.subscriptions
                ]
                continue
            results.update(zip(pending, done, strict=True))
            break
        return [results[i] for i in range(len(writes))]

    async def _apply_jobs(self, writes: Sequence[JobWrite], fence: Fence | None) -> list[bool]:
        if not writes:
            return []
        run = self._db.run if fence is None else leases.fenced_run(self._db.run, fence, writes)
        what = f"job {writes[0].record.job_id}" if len(writes) == 1 else f"{len(writes)} jobs"
        if len(writes) > 1 and self._db.dialect.name == "postgresql":
            # Imported here: a command on SQLite need not load the PostgreSQL dialect. One
            # write takes the row statements below, which PostgreSQL plans once (the array
            # ones cost it 0.2 ms more per transaction).
            from backupjobd.adapters.sql import pg_writes

            work = functools.partial(pg_writes.apply_set, writes)
            return await run(work, f"saving {what}", write=True)
        distinct = len({w.record.pk for w in writes}) == len(writes)
        if len(writes) > 1 and distinct and self._db.dialect.supports_sane_multi_rowcount:
            try:
                await run(functools.partial(jobs.apply_many, writes), f"saving {what}", write=True)
                return [True] * len(writes)
            except jobs.StaleInBatch:
                pass  # rolled back whole; the per-write path sorts out who is stale
        return await run(
            functools.partial(jobs.apply_one_by_one, writes), f"saving {what}", write=True
        )

    async def apply_operation(
        self,
        record: OperationRecord,
        decision: OperationDecision,
        now: datetime,
        fence: Fence | None = None,
        outbox: Sequence[OutboxEntry] = (),
    ) -> list[RegisterResult] | None:
        work: Callable[[Connection], list[RegisterResult] | None] = functools.partial(
            operations.apply, record=record, decision=decision, now=now, outbox=outbox
        )
        if fence is not None:
            work = leases.fenced(work, fence, [subscription_of(record.vault_id)])
        try:
            return await self._db.run(work, f"saving operation {record.operation_id}", write=True)
        except leases.StaleLease:
            return None

    async def list_jobs(
        self,
        status: str | None = None,
        limit: int | None = None,
        stuck: bool = False,
        *,
        vault_id: str | None = None,
        finished: bool | None = None,
        since: datetime | None = None,
        after_pk: int | None = None,
        until: datetime | None = None,
        operation: str | None = None,
        newest_first: bool = False,
        kind: str | None = None,
    ) -> list[JobRecord]:
        query = jobs.list_query(
            status,
            limit,
            stuck,
            vault_id,
            finished,
            since,
            after_pk,
            until=until,
            operation=operation,
            newest_first=newest_first,
            kind=kind,
        )
        return [jobs.job_from_row(r) for r in await self._db.read(query, "listing jobs")]

    async def stop_tracking(self, record: JobRecord, now: datetime) -> bool:
        work = functools.partial(jobs.stop, record=record, now=now)
        return await self._db.run(work, f"stopping job {record.job_id}", write=True)

    async def find_jobs(self, job_id: str) -> list[JobRecord]:
        t = schema.jobs
        query = select(t).where(t.c.job_id == job_id.lower())
        return [jobs.job_from_row(r) for r in await self._db.read(query, "reading a job")]

    async def history(self, job_pk: int) -> tuple[list[TransitionRecord], list[SnapshotRecord]]:
        work = functools.partial(jobs.history, job_pk=job_pk)
        return await self._db.run(work, "reading job history", write=False)

    async def list_operations(self, operation_id: str | None = None) -> list[OperationRecord]:
        rows = await self._db.read(operations.list_query(operation_id), "listing operations")
        return [operations.operation_from_row(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        return await self._db.run(jobs.counts, "counting jobs", write=False)

    async def due_outbox(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        skip_webhooks: Collection[str] = (),
    ) -> list[OutboxRecord]:
        work = functools.partial(
            outbox.due, now=now, limit=limit, exclude=exclude, skip_webhooks=skip_webhooks
        )
        return await self._db.run(work, "reading due webhook deliveries", write=False)

    async def outbox_result(
        self,
        record: OutboxRecord,
        now: datetime,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        work = functools.partial(
            outbox.result,
            pk=record.pk,
            now=now,
            delivered=delivered,
            error=error,
            next_attempt_at=next_attempt_at,
        )
        await self._db.run(work, "recording a webhook delivery", write=True)

    async def outbox_list(self, state: str, limit: int = 1000) -> list[OutboxRecord]:
        rows = await self._db.read(outbox.list_query(state, limit), "listing webhook deliveries")
        return [outbox.outbox_from_row(r) for r in rows]

    async def outbox_counts(self) -> dict[str, int]:
        return await self._db.run(outbox.counts, "counting webhook deliveries", write=False)

    async def outbox_requeue_dead(self, now: datetime) -> int:
        work = functools.partial(outbox.requeue_dead, now=now)
        return await self._db.run(work, "requeueing dead letters", write=True)

    async def job_status_counts(self) -> tuple[dict[tuple[str, str], int], int]:
        return await self._db.run(jobs.status_counts, "counting jobs by status", write=False)

    async def live_instances(self, seen_since: datetime) -> int:
        work = functools.partial(meta.live_instances, seen_since=seen_since)
        return await self._db.run(work, "reading heartbeats", write=False)

    async def replica_heartbeat(self, beat: ReplicaBeat, now: datetime) -> list[Lease]:
        work = functools.partial(leases.replica_heartbeat, beat=beat, now=now)
        return await self._db.run(work, "recording a heartbeat", write=True)

    async def replicas(self, seen_since: datetime, now: datetime) -> list[ReplicaRecord]:
        work = functools.partial(leases.replicas, seen_since=seen_since, now=now)
        return await self._db.run(work, "reading replicas", write=False)

    async def hold_liveness(self, replica_id: str) -> int | None:
        """PostgreSQL: a session-level advisory lock on a connection of its own, kept open
        for the life of the process; checked at every call and taken again when the
        connection was lost (the others may have taken this replica's leases meanwhile: the
        fence then refuses its writes until its heartbeat catches up)."""
        if self._db.direct is not None:  # SQLite: one serve per file
            return None
        key = liveness_key(replica_id)
        if self._liveness is not None:
            try:
                await self._liveness.exec_driver_sql("SELECT 1")
                await self._liveness.rollback()
                return key
            except (SQLAlchemyError, OSError):
                await self._drop_liveness()
        try:
            conn = await self._db.engine.connect()
            try:
                held = await conn.scalar(
                    select(func.pg_try_advisory_lock(LIVENESS_LOCK_SPACE, key))
                )
                await conn.commit()  # the session's lock outlives the transaction
            except BaseException:
                await conn.invalidate()
                raise
        except (SQLAlchemyError, OSError) as exc:
            raise translate(exc, "taking the liveness lock") from exc
        if not held:  # another replica's key: its death shows, ours must wait for expiry
            await conn.close()
            return None
        self._liveness = conn
        return key

    async def _drop_liveness(self) -> None:
        """Close the liveness connection for good (not back to the pool with its lock)."""
        conn, self._liveness = self._liveness, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.invalidate()

    async def close(self) -> None:
        await self._drop_liveness()
        await self._db.close()

    async def discovery_states(self) -> list[DiscoveryState]:
        return await self._db.run(meta.discovery_states, "reading discovery state", write=False)

    async def save_discovery_state(
        self, vault: VaultRef, listed_until: datetime, now: datetime, jobs_found: int
    ) -> None:
        work = functools.partial(
            meta.save_discovery_state,
            vault=vault,
            listed_until=listed_until,
            now=now,
            jobs_found=jobs_found,
        )
        await self._db.run(work, "saving discovery state", write=True)
