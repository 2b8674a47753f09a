"""Engines, URLs and the store's one transaction path.

Dialect quirks stay here: SQLite runs in WAL mode with a busy timeout and takes its write
lock at BEGIN (so two processes never deadlock on a lock upgrade); PostgreSQL URLs are
checked for options asyncpg would choke on. Every query of the store goes through
`Database.run`, which translates library errors into `StoreError` and retries, briefly, what
is gone in a blink (a locked SQLite database, a dropped PostgreSQL connection).

`sqlalchemy.ext.asyncio` (which pulls in `sqlalchemy.orm`, some 60 ms) is imported only when
an async engine is created: on SQLite the store works on the direct engine, so a command on
an up-to-date database never needs one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from sqlalchemy import Connection, Dialect, Engine, Row, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from backupjobd.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

logger = logging.getLogger(__name__)

READ_ONLY = "backupjobd_read_only"
# Threads (and pooled connections) for the direct SQLite engine: a writer waiting on a
# lock must not hold up reads.
DIRECT_THREADS = 4
T = TypeVar("T")

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
# SQLite's primary result codes for "another connection holds the lock".
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# PostgreSQL states worth an immediate retry: serialization failure, deadlock, the server
# closing the session (admin shutdown, crash recovery), any connection exception (class 08).
_PG_RETRY_STATES = frozenset({"40001", "40P01", "57P01", "57P02", "57P03"})


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


def is_read_only_url(url: str) -> bool:
    return make_url(url).query.get("mode") == "ro"


def _on_read_only_mount(path: str) -> bool:
    """Only there may a reader skip the WAL (immutable): no writer can exist there."""
    try:
        return bool(os.statvfs(os.path.dirname(path) or ".").f_flag & os.ST_RDONLY)
    except OSError:
        return False


def create_engine(url: str, busy_timeout_ms: int = 5000) -> AsyncEngine:
    from sqlalchemy.ext.asyncio import create_async_engine

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
        if not conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def _opened_read_only(engine: Engine) -> bool:
    return engine.url.query.get("mode") == "ro"


def translate(exc: SQLAlchemyError | OSError, doing: str) -> StoreError:
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


def retryable(exc: BaseException) -> bool:
    """Worth an immediate retry by the store itself: contention or a dropped connection,
    likely gone within a second. A full disk or a server that refuses connections is
    transient too, but lasts longer: the callers' own, longer policies wait those out."""
    if isinstance(exc, ConnectionRefusedError):
        return False
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe
        return True
    if isinstance(exc, DisconnectionError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
        return "locked" in str(orig)
    state = getattr(orig, "sqlstate", None)
    return isinstance(state, str) and (state in _PG_RETRY_STATES or state.startswith("08"))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The store's own retry: a few attempts with exponential backoff and jitter within a
    short deadline, so that every caller (API, notifier, discovery, tracker) rides out a
    moment of contention without a retry loop of its own."""

    attempts: int = 5
    deadline_seconds: float = 2.0
    first_delay: float = 0.05
    max_delay: float = 0.5

    def pause(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed attempt `attempt` (1-based): half to all of the backoff."""
        backoff = min(self.max_delay, self.first_delay * 2.0 ** (attempt - 1))
        return backoff * (0.5 + rng.random() / 2)


class Database:
    """The engines of one database and the one path every query of the store takes.

    `engine` may be given as a function that creates it: the async engine is then created
    when first used (on SQLite, only by a migration or a test), not with the store."""

    def __init__(
        self,
        engine: AsyncEngine | Callable[[], AsyncEngine],
        direct: Engine | None = None,
        retry: RetryPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if callable(engine):
            self._engine: AsyncEngine | None = None
            self._create_engine: Callable[[], AsyncEngine] | None = engine
        else:
            self._engine, self._create_engine = engine, None
        self.direct = direct
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._threads = (
            ThreadPoolExecutor(DIRECT_THREADS, thread_name_prefix="backupjobd-db")
            if direct is not None
            else None
        )

    @property
    def engine(self) -> AsyncEngine:
        """The async engine (created on first use): PostgreSQL's only engine; on SQLite, the
        one migrations run on."""
        if self._engine is None:
            assert self._create_engine is not None
            self._engine = self._create_engine()
        return self._engine

    @property
    def dialect(self) -> Dialect:
        """The dialect of the engine the work runs on (on SQLite, the direct one)."""
        return (self.direct or self.engine.sync_engine).dialect

    @property
    def engines(self) -> list[Engine]:
        """Every engine that opens connections (for connection events); the async one is
        created here, so that events listened for now also reach the connections it opens."""
        return [self.engine.sync_engine, *([self.direct] if self.direct else [])]

    async def run(self, work: Callable[[Connection], T], doing: str, *, write: bool) -> T:
        """`work` in one transaction (a write) or as a read, retried under the policy when
        the failure is `retryable`; any other failure (or the last) is a StoreError. A failed
        transaction wrote nothing, so running `work` again cannot record anything twice."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry.deadline_seconds
        attempt = 1
        while True:
            try:
                return await self._once(work, write)
            except (SQLAlchemyError, OSError) as exc:
                error = translate(exc, doing)
                pause = self.retry.pause(attempt, self._rng)
                if (
                    attempt >= self.retry.attempts
                    or not retryable(exc)
                    or loop.time() + pause > give_up_at
                ):
                    raise error from exc
                logger.debug("%s; attempt %d, retrying in %.2f s", error, attempt, pause)
            await asyncio.sleep(pause)
            attempt += 1

    async def read_once(self, work: Callable[[Connection], T], doing: str) -> T:
        """`work` as a read in one attempt (no retry), any failure a StoreError: the schema
        version is read so, on whichever engine the store works on."""
        try:
            return await self._once(work, write=False)
        except (SQLAlchemyError, OSError) as exc:
            raise translate(exc, doing) from exc

    async def read(self, query: Any, doing: str) -> Sequence[Row[Any]]:
        def fetch(conn: Connection) -> Sequence[Row[Any]]:
            return conn.execute(query).fetchall()

        return await self.run(fetch, doing, write=False)

    async def _once(self, work: Callable[[Connection], T], write: bool) -> T:
        """On SQLite on one of the store's threads, on PostgreSQL through the async engine."""
        if self.direct is not None:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._threads, self._run_direct, work, write)
        if write:
            async with self.engine.begin() as conn:
                return await conn.run_sync(work)
        async with self.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            result = await conn.run_sync(work)
            await conn.rollback()
            return result

    def _run_direct(self, work: Callable[[Connection], T], write: bool) -> T:
        assert self.direct is not None
        if write:
            with self.direct.begin() as conn:
                return work(conn)
        with self.direct.connect() as conn:
            conn.execution_options(**{READ_ONLY: True})
            result = work(conn)
            conn.rollback()
            return result

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        if self._threads is not None:
            self._threads.shutdown(wait=True)
        if self.direct is not None:
            self.direct.dispose()
