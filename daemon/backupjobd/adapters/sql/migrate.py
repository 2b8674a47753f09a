"""Bringing the schema to the Alembic head, and checking that it is there.

Alembic is imported only to migrate: whether the schema is at head is one read of
`alembic_version` compared with `SCHEMA_HEAD`, so a CLI command (or a health check) on an
up-to-date database never loads Alembic or its scripts. A test keeps `SCHEMA_HEAD` equal to
the head of the migration scripts.
"""

from __future__ import annotations

from importlib.resources import files
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from backupjobd.adapters.sql.engine import READ_ONLY, Database, translate
from backupjobd.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

# The newest revision in migrations/versions (test_migrations checks it); bump it with each
# new migration.
SCHEMA_HEAD = "0012_liveness"
_MIGRATION_LOCK_KEY = 0x6A6F6273  # "jobs": any constant shared by every replica


class SchemaBehind(StoreError):
    """A database opened read-only is behind the schema head (it cannot migrate itself)."""


def alembic_config(url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(files("backupjobd.migrations")))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def script_head(url: str) -> str | None:
    """The head of the migration scripts, as Alembic reads them (slow: for tests)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _current(conn: Connection) -> str | None:
    """What Alembic's MigrationContext reads, without importing Alembic."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    versions = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    if len(versions) > 1:
        raise StoreError(f"database schema has several heads: {', '.join(sorted(versions))}")
    return versions[0] if versions else None


async def current_revision(db: Database) -> str | None:
    try:
        async with db.engine.connect() as conn:
            await conn.execution_options(**{READ_ONLY: True})
            return await conn.run_sync(_current)
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc, "reading the schema version") from exc


async def migrate(db: Database, url: str, *, read_only: bool) -> None:
    """Every CLI command migrates first: when the schema is already at head, a read says so
    without taking the write lock (which a starting daemon may be waiting for). PostgreSQL
    serialises concurrent migrations with an advisory lock."""
    revision = await current_revision(db)
    if revision == SCHEMA_HEAD:
        return
    if read_only:
        raise SchemaBehind(
            f"database schema is at {revision}, expected {SCHEMA_HEAD}: run `backupjobd migrate`"
        )
    from alembic import command

    cfg = alembic_config(url)

    def upgrade(conn: Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_KEY})")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")

    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(upgrade)
    except (SQLAlchemyError, OSError) as exc:
        raise translate(exc, "migrating the database") from exc


async def check_schema(db: Database) -> None:
    revision = await current_revision(db)
    if revision != SCHEMA_HEAD:
        raise StoreError(f"database schema is at {revision}, expected {SCHEMA_HEAD}: run migrate")
