"""The SQLAlchemy implementation of the store, for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Dialect quirks stay here: SQLite runs in WAL mode with a busy timeout and takes its
write lock at BEGIN (so two processes never deadlock on a lock upgrade); PostgreSQL
serialises migrations with an advisory lock.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Connection,
    Engine,
    Row,
    and_,
    bindparam,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backupjobd.adapters.sql import schema
from backupjobd.core.azure import VaultRef, vault_from_id
from backupjobd.core.decisions import JobDecision, OperationDecision, Tracking
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
from backupjobd.core.registration import JobRegistration, Registration
from backupjobd.errors import ConfigError, StoreError
from backupjobd.store import Store

logger = logging.getLogger(__name__)

_READ_ONLY = "backupjobd_read_only"
OUTBOX_PENDING, OUTBOX_DELIVERED, OUTBOX_DEAD = "pending", "delivered", "dead"
_MIGRATION_LOCK_KEY = 0x6A6F6273  # "jobs": any constant shared by every replica
# `jobs list --status` accepts these tracking states besides Azure statuses ("Failed" is a status).
JOB_TRACKING_FILTERS = frozenset(
    {Tracking.ACTIVE.value, Tracking.FINISHED.value, Tracking.LOST.value, Tracking.STOPPED.value}
)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("backupjobd.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# Query options of a PostgreSQL URL that asyncpg's connect() takes (libpq's `sslmode` is
# translated to asyncpg's `ssl`); any other option would fail every connection attempt with
# a TypeError deep in asyncpg.
_ASYNCPG_OPTIONS = frozenset(
    {
        "ssl",
        "timeout",
        "command_timeout",
        "statement_cache_size",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "direct_tls",
        "server_settings",
        "target_session_attrs",
        "krbsrvname",
        "gsslib",
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
    }
)
_SSL_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def postgres_url(url: str) -> str:
    """`?sslmode=` as libpq spells it becomes asyncpg's `?ssl=`; unknown options are a
    one-line ConfigError instead of a TypeError on every connection."""
    parsed = make_url(url)
    query = dict(parsed.query)
    if "sslmode" in query:
        mode = query.pop("sslmode")
        query.setdefault("ssl", mode)
    ssl_mode = query.get("ssl")
    if isinstance(ssl_mode, str) and ssl_mode not in _SSL_MODES | {"true", "false"}:
        raise ConfigError(
            f"database.url: sslmode/ssl must be one of {', '.join(sorted(_SSL_MODES))}"
        )
    unknown = sorted(set(query) - _ASYNCPG_OPTIONS)
    if unknown:
        raise ConfigError(f"database.url: unknown PostgreSQL option {unknown[0]!r}")
    return parsed.set(query=query).render_as_string(hide_password=False)


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for an in-memory database)."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def read_only_url(url: str) -> str:
    """The URL a command that only reads opens. On a read-only mount: the file opened
    read-only, and when its WAL `-shm` cannot be had there (no writer is running), as
    immutable, which reads the main file alone. Elsewhere the URL as it is: a read-only
    connection could not recover the WAL after a writer was killed."""
    path = sqlite_path(url)
    if path is None or not _on_read_only_mount(path):
        return url
    uri = f"file:{quote(path, safe='/')}?mode=ro"
    try:
        probe = sqlite3.connect(uri, uri=True)
        try:
            probe.execute("PRAGMA schema_version").fetchone()
        finally:
            probe.close()
    except sqlite3.OperationalError:
        uri += "&immutable=1"
    return f"{make_url(url).drivername}:///{uri}&uri=true"


def _on_read_only_mount(path: str) -> bool:
    """Only there may a reader skip the WAL (immutable): no writer can exist there."""
    try:
        return bool(os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def create_engine(url: str, busy_timeout_ms: int = 5000) -> AsyncEngine:
    if url.startswith("sqlite"):
        # Every transaction here ends explicitly (commit, or the rollback that ends a
        # read), so the pool's own rollback on return would be one more thread round trip.
        engine = create_async_engine(
            url, connect_args={"timeout": busy_timeout_ms / 1000}, pool_reset_on_return=None
        )
        _sqlite_setup(engine.sync_engine, busy_timeout_ms)
        return engine
    return create_async_engine(postgres_url(url), pool_pre_ping=True)


def create_direct_engine(url: str, busy_timeout_ms: int = 5000) -> Engine | None:
    """For SQLite, a plain (pysqlite) engine that the store's busiest calls use from its own
    threads: a whole transaction is then one hand-over to a thread, where aiosqlite makes one
    per DBAPI call (a read cost 1.1 ms of CPU through it, 0.5 ms this way). None otherwise:
    PostgreSQL runs the same code on its async engine."""
    if not url.startswith("sqlite"):
        return None
    engine = create_sync_engine(
        url.replace("+aiosqlite", "+pysqlite", 1),
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        pool_size=DIRECT_THREADS,
        pool_reset_on_return=None,
    )
    _sqlite_setup(engine, busy_timeout_ms)
    return engine


def _sqlite_setup(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not _opened_read_only(engine):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        # Writers take the lock up front so a read-then-write never fails to upgrade.
        # Reads are single statements: autocommit, each its own WAL snapshot, without a
        # BEGIN round trip.
        if not conn.get_execution_options().get(_READ_ONLY, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


class SchemaBehind(StoreError):
    """A database opened read-only is behind the schema head (it cannot migrate itself)."""


def _opened_read_only(engine: Engine) -> bool:
    return engine.url.query.get("mode") == "ro"


# Threads (and pooled connections) for the direct SQLite engine: a writer waiting on a
# lock must not hold up reads.
DIRECT_THREADS = 4
T = TypeVar("T")


class SqlStore(Store):
    def __init__(self, engine: AsyncEngine, url: str, direct: Engine | None = None) -> None:
        self._engine = engine
        self._url = url
        self._direct = direct
        self._threads = (
            ThreadPoolExecutor(DIRECT_THREADS, thread_name_prefix="backupjobd-db")
            if direct is not None
            else None
        )

    @classmethod
    def from_url(
        cls, url: str, busy_timeout_ms: int = 5000, *, read_only: bool = False
    ) -> SqlStore:
        """`read_only` (SQLite, a command that only reads): a missing file is an error
        instead of a new empty database, and a file on a read-only mount is opened read-only."""
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
        return cls(
            create_engine(url, busy_timeout_ms), url, create_direct_engine(url, busy_timeout_ms)
        )

    @property
    def read_only(self) -> bool:
        return make_url(self._url).query.get("mode") == "ro"

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def engines(self) -> list[Engine]:
        """Every engine that opens connections (for connection events)."""
        return [self._engine.sync_engine, *([self._direct] if self._direct else [])]

    async def _run(self, work: Callable[[Connection], T], doing: str, *, write: bool) -> T:
        """`work` in one transaction (a write) or as a read: on SQLite on one of the store's
        threads, on PostgreSQL through the async engine."""
        try:
            if self._direct is not None:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._threads, self._run_direct, work, write)
            if write:
                async with self._engine.begin() as conn:
                    return await conn.run_sync(work)
            async with self._engine.connect() as conn:
                await conn.execution_options(**{_READ_ONLY: True})
                result = await conn.run_sync(work)
                await conn.rollback()
                return result
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, doing) from exc

    def _run_direct(self, work: Callable[[Connection], T], write: bool) -> T:
        assert self._direct is not None
        if write:
            with self._direct.begin() as conn:
                return work(conn)
        with self._direct.connect() as conn:
            conn.execution_options(**{_READ_ONLY: True})
            result = work(conn)
            conn.rollback()
            return result

    async def migrate(self) -> None:
        cfg = alembic_config(self._url)
        # Every CLI command migrates first: when the schema is already at head, a read says
        # so without taking the write lock (which a starting daemon may be waiting for).
        head = ScriptDirectory.from_config(cfg).get_current_head()
        revision = await self._revision()
        if revision == head:
            return
        if self.read_only:
            raise SchemaBehind(
                f"database schema is at {revision}, expected {head}: run `backupjobd migrate`"
            )

        def upgrade(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(upgrade)
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, "migrating the database") from exc

    async def _revision(self) -> str | None:
        def current(conn: Connection) -> str | None:
            return MigrationContext.configure(conn).get_current_revision()

        try:
            async with self._engine.connect() as conn:
                await conn.execution_options(**{_READ_ONLY: True})
                return await conn.run_sync(current)
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, "reading the schema version") from exc

    async def check_schema(self) -> None:
        head = ScriptDirectory.from_config(alembic_config(self._url)).get_current_head()
        revision = await self._revision()
        if revision != head:
            raise StoreError(f"database schema is at {revision}, expected {head}: run migrate")

    async def register(
        self, registrations: Sequence[Registration], now: datetime
    ) -> list[RegisterResult]:

        def register(conn: Connection) -> list[RegisterResult]:
            return [_register_one(conn, reg, now, None) for reg in registrations]

        return await self._run(register, "registering", write=True)

    async def due_jobs(
        self, now: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[JobRecord]:
        t = schema.jobs
        due = (t.c.tracking == Tracking.ACTIVE.value, t.c.next_poll_at <= now)
        return await self._jobs_excluding(due, limit, exclude, "reading due jobs")

    async def _jobs_excluding(
        self, where: tuple[Any, ...], limit: int, exclude: Collection[int], what: str
    ) -> list[JobRecord]:
        """Jobs matching `where`, soonest due first, leaving out `exclude` (the jobs in
        flight, possibly thousands): their keys come from the index alone, and only the
        rows kept are read in full."""
        t = schema.jobs

        def read(conn: Connection) -> list[JobRecord]:
            if not exclude:
                query = select(t).where(*where).order_by(t.c.next_poll_at).limit(limit)
                return [_job(r) for r in conn.execute(query)]
            keys = select(t.c.pk).where(*where).order_by(t.c.next_poll_at)
            found = conn.execute(keys.limit(limit + len(exclude))).scalars()
            pks = [pk for pk in found if pk not in exclude][:limit]
            if not pks:
                return []
            query = select(t).where(t.c.pk.in_(pks), *where).order_by(t.c.next_poll_at)
            return [_job(r) for r in conn.execute(query)]

        return await self._run(read, what, write=False)

    async def finished_durations(
        self, limit: int = 5000
    ) -> list[tuple[str | None, str | None, str | None, float]]:
        t = schema.jobs
        query = (
            select(
                t.c.operation, t.c.job_type, t.c.entity_friendly_name, t.c.start_time, t.c.end_time
            )
            .where(
                t.c.tracking == Tracking.FINISHED.value,
                t.c.start_time.is_not(None),
                t.c.end_time.is_not(None),
            )
            .order_by(t.c.pk.desc())
            .limit(limit)
        )
        rows = await self._read(query, "reading finished job durations")
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
        t = schema.jobs
        where = (
            t.c.tracking == Tracking.ACTIVE.value,
            t.c.vault_key == vault_id.lower(),
            t.c.status == "InProgress",
            t.c.next_poll_at <= due_before,
        )
        return await self._jobs_excluding(where, limit, exclude, "reading sweep candidates")

    async def reschedule_jobs(
        self,
        pks: Sequence[int],
        next_poll_at: datetime,
        polled_at: datetime | None = None,
        polls: Sequence[int] | None = None,
    ) -> int:
        t = schema.jobs
        # One UPDATE per distinct poll increment (sweeps give most jobs the same one).
        by_polls: dict[int, list[int]] = {}
        counts = polls if polls is not None else [1] * len(pks)
        for pk, count in zip(pks, counts, strict=True):
            by_polls.setdefault(count if polled_at is not None else 0, []).append(pk)

        def move(conn: Connection) -> int:
            updated = 0
            for count, group in by_polls.items():
                values: dict[str, Any] = {"next_poll_at": next_poll_at}
                if polled_at is not None:
                    values.update(last_polled_at=polled_at, poll_count=t.c.poll_count + count)
                for start in range(0, len(group), _IN_CHUNK):
                    result = conn.execute(
                        update(t)
                        .where(
                            t.c.pk.in_(group[start : start + _IN_CHUNK]),
                            t.c.tracking == Tracking.ACTIVE.value,
                        )
                        .values(**values)
                    )
                    updated += result.rowcount
            return updated

        if not pks:
            return 0
        return await self._run(move, f"rescheduling {len(pks)} jobs", write=True)

    async def due_operations(
        self, now: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[OperationRecord]:
        o = schema.operations
        query = (
            select(o)
            .where(o.c.tracking == Tracking.ACTIVE.value, o.c.next_poll_at <= now)
            .order_by(o.c.next_poll_at)
            .limit(limit + len(exclude))
        )

        def read(conn: Connection) -> list[OperationRecord]:
            rows = conn.execute(query)
            return [_operation(r) for r in rows if r.pk not in exclude][:limit]

        return await self._run(read, "reading due operations", write=False)

    async def apply_job(
        self,
        record: JobRecord,
        decision: JobDecision,
        now: datetime,
        outbox: Sequence[OutboxEntry] = (),
    ) -> bool:
        return (await self.apply_jobs([JobWrite(record, decision, now, outbox)]))[0]

    async def apply_jobs(self, writes: Sequence[JobWrite]) -> list[bool]:
        if not writes:
            return []
        what = f"job {writes[0].record.job_id}" if len(writes) == 1 else f"{len(writes)} jobs"
        distinct = len({w.record.pk for w in writes}) == len(writes)
        # The dialect of the engine the work runs on (on SQLite, the direct one).
        dialect = (self._direct or self._engine).dialect
        if len(writes) > 1 and distinct and dialect.supports_sane_multi_rowcount:
            try:
                await self._run(
                    functools.partial(_apply_many, writes), f"saving {what}", write=True
                )
                return [True] * len(writes)
            except _StaleInBatch:
                pass  # rolled back whole; the per-write path sorts out who is stale
        return await self._run(
            functools.partial(_apply_one_by_one, writes), f"saving {what}", write=True
        )

    async def apply_operation(
        self, record: OperationRecord, decision: OperationDecision, now: datetime
    ) -> list[RegisterResult] | None:
        o = schema.operations
        values: dict[str, Any] = {
            "status": decision.status,
            "tracking": decision.tracking.value,
            "next_poll_at": decision.next_poll_at,
            "last_polled_at": now,
            "poll_count": o.c.poll_count + 1,
            "consecutive_failures": decision.consecutive_failures,
            "not_found_since": decision.not_found_since,
            "version": o.c.version + 1,
        }
        if decision.error is not None:
            values["last_error"] = decision.error
        if decision.job_ids:
            values["job_ids"] = json.dumps(list(decision.job_ids))
        vault = vault_from_id(record.vault_id)

        def save(conn: Connection) -> list[RegisterResult] | None:
            result = conn.execute(
                update(o)
                .where(and_(o.c.pk == record.pk, o.c.version == record.version))
                .values(**values)
            )
            if result.rowcount != 1:
                return None
            return [
                _register_one(conn, JobRegistration(vault, job_id, "operation"), now, record.pk)
                for job_id in decision.job_ids
            ]

        return await self._run(save, f"saving operation {record.operation_id}", write=True)

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
    ) -> list[JobRecord]:
        t = schema.jobs
        query = select(t).order_by(t.c.pk)
        if stuck:
            query = query.where(t.c.stuck_since.is_not(None))
        if vault_id is not None:
            query = query.where(t.c.vault_key == vault_id.lower().rstrip("/"))
        if finished is not None:
            done = t.c.tracking == Tracking.FINISHED.value
            query = query.where(done if finished else ~done)
        if since is not None:
            query = query.where(t.c.registered_at >= since)
        if after_pk is not None:
            query = query.where(t.c.pk > after_pk)
        if status is not None:
            if status.lower() in JOB_TRACKING_FILTERS:
                query = query.where(t.c.tracking == status.lower())
            else:
                query = query.where(func.lower(t.c.status) == status.lower())
        if limit is not None:
            query = query.limit(limit)
        return [_job(r) for r in await self._read(query, "listing jobs")]

    async def stop_tracking(self, record: JobRecord, now: datetime) -> bool:
        t = schema.jobs
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    update(t)
                    .where(t.c.pk == record.pk, t.c.tracking == Tracking.ACTIVE.value)
                    .values(
                        tracking=Tracking.STOPPED.value,
                        next_poll_at=None,
                        finished_at=now,
                        version=t.c.version + 1,
                    )
                )
                return bool(result.rowcount == 1)
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, f"stopping job {record.job_id}") from exc

    async def find_jobs(self, job_id: str) -> list[JobRecord]:
        t = schema.jobs
        rows = await self._read(select(t).where(t.c.job_id == job_id.lower()), "reading a job")
        return [_job(r) for r in rows]

    async def history(self, job_pk: int) -> tuple[list[TransitionRecord], list[SnapshotRecord]]:
        tr, s = schema.transitions, schema.snapshots
        transitions = await self._read(
            select(tr).where(tr.c.job_pk == job_pk).order_by(tr.c.seq), "reading transitions"
        )
        snapshots = await self._read(
            select(s).where(s.c.job_pk == job_pk).order_by(s.c.observed_at, s.c.pk),
            "reading snapshots",
        )
        return (
            [
                TransitionRecord(r.seq, r.from_status, r.to_status, r.observed_at)
                for r in transitions
            ],
            [SnapshotRecord(r.observed_at, r.status, json.loads(r.properties)) for r in snapshots],
        )

    async def list_operations(self) -> list[OperationRecord]:
        o = schema.operations
        rows = await self._read(select(o).order_by(o.c.registered_at, o.c.pk), "listing operations")
        return [_operation(r) for r in rows]

    async def counts(self) -> dict[str, int]:
        t, o = schema.jobs, schema.operations
        rows = await self._read(
            select(t.c.tracking, func.count().label("n")).group_by(t.c.tracking),
            "counting jobs",
        )
        out: dict[str, int] = {f"jobs_{r.tracking}": int(r.n) for r in rows}
        ops = await self._read(
            select(func.count().label("n")).where(o.c.tracking == Tracking.ACTIVE.value),
            "counting operations",
        )
        out["operations_active"] = int(ops[0].n)
        return out

    async def due_outbox(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        skip_webhooks: Collection[str] = (),
    ) -> list[OutboxRecord]:
        o = schema.outbox
        query = (
            select(o)
            .where(o.c.state == OUTBOX_PENDING, o.c.next_attempt_at <= now)
            .order_by(o.c.next_attempt_at, o.c.pk)
            .limit(limit + len(exclude))
        )
        if skip_webhooks:
            query = query.where(o.c.webhook.not_in(sorted(skip_webhooks)))
        rows = await self._read(query, "reading due webhook deliveries")
        return [_outbox(r) for r in rows if r.pk not in exclude][:limit]

    async def outbox_result(
        self,
        record: OutboxRecord,
        now: datetime,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        o = schema.outbox
        values: dict[str, Any] = {"attempts": o.c.attempts + 1, "last_error": error}
        if delivered:
            values.update(state=OUTBOX_DELIVERED, delivered_at=now, next_attempt_at=None)
        elif next_attempt_at is None:
            values.update(state=OUTBOX_DEAD, next_attempt_at=None)
        else:
            values.update(next_attempt_at=next_attempt_at)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(o)
                    .where(o.c.pk == record.pk, o.c.state == OUTBOX_PENDING)
                    .values(**values)
                )
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, "recording a webhook delivery") from exc

    async def outbox_list(self, state: str, limit: int = 1000) -> list[OutboxRecord]:
        o = schema.outbox
        query = select(o).where(o.c.state == state).order_by(o.c.pk).limit(limit)
        return [_outbox(r) for r in await self._read(query, "listing webhook deliveries")]

    async def outbox_counts(self) -> dict[str, int]:
        o = schema.outbox
        rows = await self._read(
            select(o.c.state, func.count().label("n")).group_by(o.c.state),
            "counting webhook deliveries",
        )
        counts = {OUTBOX_PENDING: 0, OUTBOX_DELIVERED: 0, OUTBOX_DEAD: 0}
        counts.update({r.state: int(r.n) for r in rows})
        return counts

    async def outbox_requeue_dead(self, now: datetime) -> int:
        o = schema.outbox
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    update(o)
                    .where(o.c.state == OUTBOX_DEAD)
                    .values(state=OUTBOX_PENDING, attempts=0, next_attempt_at=now)
                )
                return int(result.rowcount)
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, "requeueing dead letters") from exc

    async def job_status_counts(self) -> tuple[dict[tuple[str, str], int], int]:
        t = schema.jobs
        rows = await self._read(
            select(t.c.status, t.c.tracking, func.count().label("n")).group_by(
                t.c.status, t.c.tracking
            ),
            "counting jobs by status",
        )
        stuck = await self._read(
            select(func.count().label("n")).where(
                t.c.stuck_since.is_not(None), t.c.tracking == Tracking.ACTIVE.value
            ),
            "counting stuck jobs",
        )
        counts = {(r.status or "unseen", r.tracking): int(r.n) for r in rows}
        return counts, int(stuck[0].n)

    async def heartbeat(
        self,
        instance_id: str,
        hostname: str,
        pid: int,
        started_at: datetime,
        now: datetime,
        stopped: bool = False,
    ) -> None:
        i = schema.instances
        values: dict[str, Any] = {"last_seen_at": now, "stopped_at": now if stopped else None}

        def beat(conn: Connection) -> None:
            result = conn.execute(update(i).where(i.c.instance_id == instance_id).values(**values))
            if result.rowcount == 0:
                conn.execute(
                    insert(i).values(
                        instance_id=instance_id,
                        hostname=hostname[:255],
                        pid=pid,
                        started_at=started_at,
                        **values,
                    )
                )

        await self._run(beat, "recording a heartbeat", write=True)

    async def live_instances(self, seen_since: datetime) -> int:
        i = schema.instances
        rows = await self._read(
            select(func.count().label("n")).where(
                i.c.last_seen_at >= seen_since, i.c.stopped_at.is_(None)
            ),
            "reading heartbeats",
        )
        return int(rows[0].n)

    async def close(self) -> None:
        await self._engine.dispose()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        if self._direct is not None:
            self._direct.dispose()

    async def _read(self, query: Any, doing: str) -> Sequence[Row[Any]]:
        def read(conn: Connection) -> Sequence[Row[Any]]:
            return conn.execute(query).fetchall()

        return await self._run(read, doing, write=False)

    async def discovery_states(self) -> list[DiscoveryState]:
        d = schema.discovery_state
        rows = await self._read(select(d).order_by(d.c.vault_key), "reading discovery state")
        return [
            DiscoveryState(r.vault_id, r.last_listed_until, r.last_run_at, r.jobs_found)
            for r in rows
        ]

    async def save_discovery_state(
        self, vault: VaultRef, listed_until: datetime, now: datetime, jobs_found: int
    ) -> None:
        d = schema.discovery_state
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    update(d)
                    .where(d.c.vault_key == vault.key)
                    .values(
                        vault_id=vault.id,
                        last_listed_until=listed_until,
                        last_run_at=now,
                        jobs_found=d.c.jobs_found + jobs_found,
                    )
                )
                if result.rowcount == 0:
                    await conn.execute(
                        insert(d).values(
                            vault_key=vault.key,
                            vault_id=vault.id,
                            last_listed_until=listed_until,
                            last_run_at=now,
                            jobs_found=jobs_found,
                        )
                    )
        except (SQLAlchemyError, OSError) as exc:
            raise _translate(exc, "saving discovery state") from exc


def _translate(exc: SQLAlchemyError | OSError, doing: str) -> StoreError:
    """One line that says what is wrong, without the SQL or its parameters."""
    if isinstance(exc, OSError):  # asyncpg raises these raw when it cannot connect
        detail = exc.strerror or str(exc) or type(exc).__name__
        return StoreError(
            f"database error while {doing}: {type(exc).__name__}: {detail}", transient=True
        )
    if isinstance(exc, OperationalError | DBAPIError) and exc.orig is not None:
        detail = str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    else:
        detail = type(exc).__name__
    # Locked database, full disk, lost connection: worth retrying. Constraint violations and
    # programming errors are not.
    transient = isinstance(exc, OperationalError | DisconnectionError | InterfaceError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )
    return StoreError(f"database error while {doing}: {detail}", transient=transient)


def _job(row: Row[Any]) -> JobRecord:
    return JobRecord(
        pk=row.pk,
        vault_id=row.vault_id,
        job_id=row.job_id,
        source=row.source,
        status=row.status,
        tracking=Tracking(row.tracking),
        job_type=row.job_type,
        operation=row.operation,
        entity_friendly_name=row.entity_friendly_name,
        backup_management_type=row.backup_management_type,
        start_time=row.start_time,
        end_time=row.end_time,
        registered_at=row.registered_at,
        last_polled_at=row.last_polled_at,
        next_poll_at=row.next_poll_at,
        finished_at=row.finished_at,
        poll_count=row.poll_count,
        error_count=row.error_count,
        consecutive_failures=row.consecutive_failures,
        not_found_since=row.not_found_since,
        last_error=row.last_error,
        last_error_at=row.last_error_at,
        last_snapshot_hash=row.last_snapshot_hash,
        version=row.version,
        stuck_since=row.stuck_since,
        last_detail_at=row.last_detail_at,
    )


class _StaleInBatch(Exception):
    """A batch met a concurrent change: roll it back and apply write by write."""


# Bound parameters per `IN (...)`: well under SQLite's and asyncpg's limits.
_IN_CHUNK = 5000

_JOB_COLUMNS = (
    "status",
    "tracking",
    "next_poll_at",
    "last_polled_at",
    "poll_count",
    "consecutive_failures",
    "not_found_since",
    "stuck_since",
    "version",
    "finished_at",
    "job_type",
    "operation",
    "entity_friendly_name",
    "backup_management_type",
    "start_time",
    "end_time",
    "last_detail_at",
    "last_error",
    "last_error_at",
    "error_count",
    "last_snapshot_hash",
)
_JOB_UPDATE = (
    update(schema.jobs)
    .where(
        schema.jobs.c.pk == bindparam("b_pk"),
        schema.jobs.c.version == bindparam("b_version"),
    )
    .values({c: bindparam(f"v_{c}", type_=schema.jobs.c[c].type) for c in _JOB_COLUMNS})
)


def _apply_many(writes: Sequence[JobWrite], conn: Connection) -> None:
    """The fast path: every statement once, with many parameter sets (executemany)."""
    if not _update_jobs(conn, writes):
        raise _StaleInBatch
    _append_rows(conn, writes)


def _apply_one_by_one(writes: Sequence[JobWrite], conn: Connection) -> list[bool]:
    applied = []
    for write in writes:
        ok = _update_jobs(conn, [write])
        if ok:
            _append_rows(conn, [write])
        applied.append(ok)
    return applied


def _update_jobs(conn: Connection, writes: Sequence[JobWrite]) -> bool:
    """Compare-and-set on each job's version; True when every row matched."""
    result = conn.execute(_JOB_UPDATE, [_job_row(w) for w in writes])
    return bool(result.rowcount == len(writes))


def _append_rows(conn: Connection, writes: Sequence[JobWrite]) -> None:
    transitions = [
        {
            "job_pk": w.record.pk,
            # The job's new version: unique per job and increasing, so history sorts by
            # it, and no read is needed to number it.
            "seq": w.record.version + 1,
            "from_status": w.decision.transition[0],
            "to_status": w.decision.transition[1],
            "observed_at": w.now,
        }
        for w in writes
        if w.decision.transition is not None
    ]
    if transitions:
        conn.execute(insert(schema.transitions), transitions)
    snapshots = [
        {
            "job_pk": w.record.pk,
            "content_hash": w.decision.snapshot.content_hash,
            "observed_at": w.now,
            "status": w.decision.status,
            "properties": orjson.dumps(
                w.decision.snapshot.properties, option=orjson.OPT_SORT_KEYS
            ).decode(),
        }
        for w in writes
        if w.decision.snapshot is not None
    ]
    if snapshots:
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            dialect_insert(schema.snapshots).on_conflict_do_nothing(
                index_elements=["job_pk", "content_hash"]
            ),
            snapshots,
        )
    outbox = [
        {
            "event_id": entry.event_id,
            "webhook": entry.webhook,
            "event_type": entry.event_type,
            "job_pk": w.record.pk,
            "payload": entry.payload,
            "state": OUTBOX_PENDING,
            "created_at": w.now,
            "next_attempt_at": w.now,
            "attempts": 0,
        }
        for w in writes
        for entry in w.outbox
    ]
    if outbox:
        conn.execute(insert(schema.outbox), outbox)


def _job_row(write: JobWrite) -> dict[str, Any]:
    """Every column of the job after the decision, from the record we read: the
    compare-and-set on `version` guarantees the record is still what the row holds."""
    after = write.record.after(write.decision, write.now)
    row: dict[str, Any] = {f"v_{c}": getattr(after, c) for c in _JOB_COLUMNS}
    row["v_tracking"] = after.tracking.value
    row.update(b_pk=write.record.pk, b_version=write.record.version)
    return row


def _outbox(row: Row[Any]) -> OutboxRecord:
    return OutboxRecord(
        pk=row.pk,
        event_id=row.event_id,
        webhook=row.webhook,
        event_type=row.event_type,
        payload=row.payload,
        created_at=row.created_at,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        state=row.state,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )


def _operation(row: Row[Any]) -> OperationRecord:
    return OperationRecord(
        pk=row.pk,
        vault_id=row.vault_id,
        operation_id=row.operation_id,
        url=row.url,
        source=row.source,
        status=row.status,
        tracking=Tracking(row.tracking),
        registered_at=row.registered_at,
        last_polled_at=row.last_polled_at,
        next_poll_at=row.next_poll_at,
        poll_count=row.poll_count,
        consecutive_failures=row.consecutive_failures,
        not_found_since=row.not_found_since,
        last_error=row.last_error,
        job_ids=tuple(json.loads(row.job_ids)) if row.job_ids else (),
        version=row.version,
    )


def _register_one(
    conn: Connection, reg: Registration, now: datetime, operation_pk: int | None
) -> RegisterResult:
    """Insert the job (or operation) unless it is already known; a known one is left as is."""
    if isinstance(reg, JobRegistration):
        t = schema.jobs
        found = conn.scalar(
            select(t.c.pk).where(t.c.vault_key == reg.vault.key, t.c.job_id == reg.job_id)
        )
        if found is None:
            conn.execute(
                insert(t).values(
                    vault_key=reg.vault.key,
                    vault_id=reg.vault.id,
                    job_id=reg.job_id,
                    source=reg.source,
                    tracking=Tracking.ACTIVE.value,
                    registered_at=now,
                    next_poll_at=now,
                    poll_count=0,
                    error_count=0,
                    consecutive_failures=0,
                    operation_pk=operation_pk,
                    version=0,
                )
            )
        return RegisterResult("job", reg.vault.id, reg.job_id, found is None)
    o = schema.operations
    found = conn.scalar(
        select(o.c.pk).where(o.c.vault_key == reg.vault.key, o.c.operation_id == reg.operation_id)
    )
    if found is None:
        conn.execute(
            insert(o).values(
                vault_key=reg.vault.key,
                vault_id=reg.vault.id,
                operation_id=reg.operation_id,
                url=reg.url,
                source=reg.source,
                tracking=Tracking.ACTIVE.value,
                registered_at=now,
                next_poll_at=now,
                poll_count=0,
                consecutive_failures=0,
                version=0,
            )
        )
    return RegisterResult("operation", reg.vault.id, reg.operation_id, found is None)
