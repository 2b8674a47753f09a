"""Fixtures for the store integration tests: one store per test, in memory, on SQLite and on
PostgreSQL (`backend`). Tests about SQL itself (Alembic, the schema) ask for `db_url` or
override `backend` with `SQL_BACKENDS`.

The memory backend is `backupjobd.testing.MemoryStore`. SQLite gets a fresh file under
`tmp_path`. PostgreSQL gets a fresh database with a random name, created through the
`postgres` maintenance database and dropped (WITH FORCE) after the test. When PostgreSQL
cannot be reached its cases are skipped with the reason, unless `BACKUPJOBD_REQUIRE_PG=1`
(CI), where they fail instead.

`make_rig(...)` wires the daemon against the emulator (see `tests/integration/rig.py`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from backupjobd.adapters.sql.store import SqlStore
from backupjobd.store import Store
from backupjobd.testing import MemoryStore
from tests.integration.rig import MakeRig, Rig, open_rig
from tests.integration.stores import BACKENDS

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("BACKUPJOBD_TEST_PG_URL") or DEFAULT_PG_URL
REQUIRE_PG = os.environ.get("BACKUPJOBD_REQUIRE_PG") == "1"
PG_CONNECT_TIMEOUT_S = 5

# Set on the first failed attempt so that later PostgreSQL cases skip without waiting again.
_pg_unreachable: str | None = None


def _pg_unavailable(reason: str) -> None:
    message = f"PostgreSQL at {make_url(PG_URL).render_as_string()} is unavailable: {reason}"
    if REQUIRE_PG:
        pytest.fail(f"{message} (BACKUPJOBD_REQUIRE_PG=1)", pytrace=False)
    pytest.skip(f"{message}; set BACKUPJOBD_TEST_PG_URL or start PostgreSQL")


def _url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    """URL of a new, empty PostgreSQL database that is dropped after the test."""
    global _pg_unreachable
    if _pg_unreachable is not None:
        _pg_unavailable(_pg_unreachable)
    base = make_url(PG_URL)
    admin = create_async_engine(
        _url_string(base.set(database="postgres")),
        isolation_level="AUTOCOMMIT",
        poolclass=NullPool,
        connect_args={"timeout": PG_CONNECT_TIMEOUT_S},
    )
    name = f"backupjobd_test_{uuid.uuid4().hex[:16]}"
    try:
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        await admin.dispose()
        _pg_unreachable = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _pg_unavailable(_pg_unreachable)
    try:
        yield _url_string(base.set(database=name))
    finally:
        try:
            async with admin.connect() as conn:
                await conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str | None:
    """An empty database on the parametrized backend (nothing migrated); None in memory."""
    if backend == "memory":
        return None
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/t.db"
    # Requested lazily so that SQLite and memory cases never touch PostgreSQL.
    return str(request.getfixturevalue("pg_database_url"))


@pytest.fixture
def db_url(backend_url: str | None) -> str:
    """The URL of an empty SQL database, for tests about SQL itself."""
    if backend_url is None:
        pytest.skip("SQL only: the memory backend has no database URL")
    return backend_url


@pytest.fixture
async def empty_store(backend_url: str | None) -> AsyncIterator[Store]:
    """A store on an empty database (or a new MemoryStore); closed after the test."""
    store: Store = MemoryStore() if backend_url is None else SqlStore.from_url(backend_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(empty_store: Store) -> Store:
    """A store migrated to the Alembic head: in memory, on SQLite and on PostgreSQL."""
    await empty_store.migrate()
    return empty_store


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    """`await make_rig(**options)`: a started rig (see `open_rig`), taken down after the test;
    a second rig in the same test needs its own `name` (its database file)."""
    async with AsyncExitStack() as stack:

        async def make(**options: Any) -> Rig:
            return await stack.enter_async_context(open_rig(tmp_path, **options))

        yield make
