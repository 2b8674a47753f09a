"""Alembic migrations against real SQLite and PostgreSQL databases.

The migrations are the only way the schema reaches a database, so these tests check that
they apply from nothing, are idempotent, reverse cleanly and agree with `schema.metadata`.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from backupjobd.adapters.sql import schema
from backupjobd.adapters.sql.migrate import SCHEMA_HEAD, alembic_config, script_head
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core.azure import vault_from_id
from backupjobd.core.registration import JobRegistration
from backupjobd.errors import StoreError
from tests.integration.stores import SQL_BACKENDS

APP_TABLES = {"jobs", "transitions", "snapshots", "operations"}
VAULT = vault_from_id(
    "/subscriptions/00000000-0000-0000-0000-00000000abcd/resourceGroups/rg-backup"
    "/providers/Microsoft.RecoveryServices/vaults/vault-1"
)
JOB_ID = "11111111-2222-3333-4444-555555555555"
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(params=SQL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """SQL only: Alembic and the schema are what these tests are about (MemoryStore has
    neither)."""
    return str(request.param)


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


async def _tables(store: SqlStore) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def _revision(store: SqlStore) -> str | None:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


def test_exactly_one_head_and_a_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite+aiosqlite:///unused.db"))
    heads = script.get_heads()
    assert len(heads) == 1, f"migrations have several heads: {heads}"
    revisions = list(script.walk_revisions("base", "heads"))
    assert revisions, "no migration scripts found in backupjobd.migrations"
    bases = [rev.revision for rev in revisions if rev.down_revision is None]
    assert len(bases) == 1, f"migrations have several bases: {bases}"
    assert all(not rev.is_merge_point for rev in revisions)


def test_the_store_expects_the_head_of_the_migration_scripts() -> None:
    """The store compares the database with SCHEMA_HEAD instead of loading Alembic: a new
    migration must bump it."""
    assert script_head("sqlite+aiosqlite:///unused.db") == SCHEMA_HEAD


async def test_upgrade_from_empty_to_head_and_migrate_twice_is_a_noop(
    empty_store: SqlStore, db_url: str
) -> None:
    assert not (await _tables(empty_store)) & APP_TABLES
    assert await _revision(empty_store) is None

    await empty_store.migrate()
    assert await _tables(empty_store) >= APP_TABLES
    assert await _revision(empty_store) == _head(db_url)

    [created] = await empty_store.register([JobRegistration(VAULT, JOB_ID, "cli")], T0)
    assert created.created
    before = await empty_store.list_jobs()

    await empty_store.migrate()
    assert await _revision(empty_store) == _head(db_url)
    assert await empty_store.list_jobs() == before, "a second migrate changed the data"


async def test_check_schema_raises_on_an_empty_database(empty_store: SqlStore) -> None:
    with pytest.raises(StoreError, match="run migrate"):
        await empty_store.check_schema()


async def test_check_schema_passes_after_migrate(empty_store: SqlStore) -> None:
    await empty_store.migrate()
    await empty_store.check_schema()


async def test_models_match_migrations(store: SqlStore) -> None:
    def diff(sync_conn: Connection) -> list[object]:
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return list(compare_metadata(context, schema.metadata))

    async with store.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == [], f"schema.metadata and the migrations disagree: {changes}"


async def test_downgrade_to_base_then_upgrade_again(store: SqlStore, db_url: str) -> None:
    await store.register([JobRegistration(VAULT, JOB_ID, "cli")], T0)
    cfg = alembic_config(db_url)

    def downgrade(sync_conn: Connection) -> None:
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "base")

    async with store.engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert not (await _tables(store)) & APP_TABLES
    assert await _revision(store) is None
    with pytest.raises(StoreError):
        await store.check_schema()

    await store.migrate()
    assert await _tables(store) >= APP_TABLES
    assert await _revision(store) == _head(db_url)
    await store.check_schema()
    assert await store.list_jobs() == []
    [again] = await store.register([JobRegistration(VAULT, JOB_ID, "cli")], T0)
    assert again.created


async def test_sqlite_database_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    store = SqlStore.from_url(f"sqlite+aiosqlite:///{path}")
    try:
        await store.migrate()
        async with store.engine.connect() as conn:
            mode = await conn.scalar(text("PRAGMA journal_mode"))
        assert str(mode).lower() == "wal"
    finally:
        await store.close()
    # WAL is persistent: it is recorded in the file itself, not just on our connections.
    with closing(sqlite3.connect(path)) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
