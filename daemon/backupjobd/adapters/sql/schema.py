"""The database schema as SQLAlchemy Core tables.

Alembic migrations (`migrations/`) are the only way it reaches a database; a test
checks that these tables and the migrated schema agree.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from backupjobd.core.azure import ErrorDetail

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite keeps no zone; PostgreSQL uses timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class ErrorDetailsJSON(TypeDecorator[tuple[ErrorDetail, ...]]):
    """A job's Azure `errorDetails` as a JSON array (NULL when there are none)."""

    impl = Text()
    cache_ok = True

    def process_bind_param(
        self, value: tuple[ErrorDetail, ...] | None, dialect: Dialect
    ) -> str | None:
        if not value:
            return None
        return json.dumps([d.to_json() for d in value], ensure_ascii=False)

    def process_result_value(self, value: Any, dialect: Dialect) -> tuple[ErrorDetail, ...]:
        if not value:
            return ()
        return tuple(
            ErrorDetail(d.get("code"), d.get("message", ""), tuple(d.get("recommendations", ())))
            for d in json.loads(value)
        )


PK = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "jobs",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("vault_key", String(300), nullable=False),
    Column("vault_id", String(300), nullable=False),
    Column("job_id", String(36), nullable=False),
    Column("source", String(32), nullable=False),
    Column("status", String(64), nullable=True),
    Column("tracking", String(16), nullable=False),
    Column("job_type", String(64), nullable=True),
    Column("operation", String(128), nullable=True),
    Column("entity_friendly_name", String(512), nullable=True),
    Column("backup_management_type", String(64), nullable=True),
    Column("start_time", UTCDateTime(), nullable=True),
    Column("end_time", UTCDateTime(), nullable=True),
    Column("registered_at", UTCDateTime(), nullable=False),
    Column("last_polled_at", UTCDateTime(), nullable=True),
    Column("next_poll_at", UTCDateTime(), nullable=True),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("poll_count", Integer(), nullable=False, default=0),
    Column("error_count", Integer(), nullable=False, default=0),
    Column("consecutive_failures", Integer(), nullable=False, default=0),
    Column("not_found_since", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("last_error_at", UTCDateTime(), nullable=True),
    Column("last_snapshot_hash", String(64), nullable=True),
    Column("operation_pk", PK, ForeignKey("operations.pk"), nullable=True),
    Column("stuck_since", UTCDateTime(), nullable=True),
    Column("last_detail_at", UTCDateTime(), nullable=True),
    Column("error_details", ErrorDetailsJSON(), nullable=True),
    Column("operation_id", String(200), nullable=True),
    Column("progress_percent", Float(), nullable=True),
    Column("vault_kind", String(32), nullable=False, server_default="RecoveryServices"),
    Column("region", String(64), nullable=True),
    Column("version", Integer(), nullable=False, default=0),
    UniqueConstraint("vault_key", "job_id"),
    Index("ix_jobs_due", "tracking", "next_poll_at"),
    Index("ix_jobs_job_id", "job_id"),
)

transitions = Table(
    "transitions",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("job_pk", PK, ForeignKey("jobs.pk"), nullable=False),
    Column("seq", Integer(), nullable=False),
    Column("from_status", String(64), nullable=True),
    Column("to_status", String(64), nullable=False),
    Column("observed_at", UTCDateTime(), nullable=False),
    UniqueConstraint("job_pk", "seq"),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("job_pk", PK, ForeignKey("jobs.pk"), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("observed_at", UTCDateTime(), nullable=False),
    Column("status", String(64), nullable=False),
    Column("properties", Text(), nullable=False),
    UniqueConstraint("job_pk", "content_hash"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("webhook", String(100), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("job_pk", PK, ForeignKey("jobs.pk"), nullable=True),
    Column("payload", Text(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=True),
    Column("attempts", Integer(), nullable=False),
    Column("delivered_at", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    UniqueConstraint("event_id", "webhook"),
    Index("ix_outbox_due", "state", "next_attempt_at"),
)

instances = Table(
    "instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer(), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("last_seen_at", UTCDateTime(), nullable=False),
    Column("stopped_at", UTCDateTime(), nullable=True),
    # JSON: the read budget it learned per subscription (`backupjobd replicas`).
    Column("budgets", Text(), nullable=True),
    # PostgreSQL: the advisory lock it holds while its process lives (core/leases.py).
    Column("liveness_key", Integer(), nullable=True),
)

# Who polls which subscription when several replicas share the database (core/leases.py).
subscription_leases = Table(
    "subscription_leases",
    metadata,
    Column("subscription_key", String(64), primary_key=True),
    Column("owner", String(64), nullable=True),
    Column("epoch", BigInteger(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=True),
)

operations = Table(
    "operations",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("vault_key", String(300), nullable=False),
    Column("vault_id", String(300), nullable=False),
    Column("operation_id", String(200), nullable=False),
    Column("url", Text(), nullable=False),
    Column("source", String(32), nullable=False),
    Column("status", String(32), nullable=True),
    Column("tracking", String(16), nullable=False),
    Column("registered_at", UTCDateTime(), nullable=False),
    Column("last_polled_at", UTCDateTime(), nullable=True),
    Column("next_poll_at", UTCDateTime(), nullable=True),
    Column("poll_count", Integer(), nullable=False, default=0),
    Column("consecutive_failures", Integer(), nullable=False, default=0),
    Column("not_found_since", UTCDateTime(), nullable=True),
    Column("last_error", Text(), nullable=True),
    Column("job_ids", Text(), nullable=True),
    Column("region", String(64), nullable=True),
    Column("version", Integer(), nullable=False, default=0),
    UniqueConstraint("vault_key", "operation_id"),
    Index("ix_operations_due", "tracking", "next_poll_at"),
)

discovery_state = Table(
    "discovery_state",
    metadata,
    Column("vault_key", String(300), primary_key=True),
    Column("vault_id", String(300), nullable=False),
    Column("last_listed_until", UTCDateTime(), nullable=False),
    Column("last_run_at", UTCDateTime(), nullable=False),
    Column("jobs_found", Integer(), nullable=False),
)
