"""The rows and tables of `MemoryStore`, and the writes that span several tables.

Rows are frozen dataclasses and the tables plain dicts keyed as the SQL schema's unique
constraints, so a transaction's snapshot is one shallow copy of each dict.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from backupjobd.core.decisions import Tracking
from backupjobd.core.leases import Lease
from backupjobd.core.model import (
    DiscoveryState,
    JobRecord,
    JobWrite,
    OperationRecord,
    OutboxEntry,
    OutboxRecord,
    RegisterResult,
)
from backupjobd.core.registration import JobRegistration, Registration

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
# `jobs list --status` takes these tracking states besides Azure statuses, as SqlStore does
# ("failed" is an operation's tracking state; for jobs "Failed" is an Azure status).
TRACKING_FILTERS = frozenset(
    {Tracking.ACTIVE.value, Tracking.FINISHED.value, Tracking.LOST.value, Tracking.STOPPED.value}
)
# What a decision may not change of a job: its identity (SqlStore's JOB_COLUMNS are the rest).
JOB_IDENTITY = frozenset({"pk", "vault_id", "job_id", "source", "registered_at"})
NEVER = datetime.max.replace(tzinfo=UTC)


class Constraint(Exception):
    """What a database would refuse (a NULL, a duplicate key, a naive datetime)."""


def utc(value: datetime | None) -> datetime | None:
    """As the UTCDateTime column type: aware values only, read back in UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        raise Constraint("naive datetime given to the store")
    return value.astimezone(UTC)


def at_utc(value: datetime) -> datetime:
    aware = utc(value)
    assert aware is not None
    return aware


def utc_fields(record: JobRecord) -> JobRecord:
    changes: dict[str, Any] = {
        f.name: utc(value)
        for f in dataclasses.fields(record)
        if isinstance(value := getattr(record, f.name), datetime)
    }
    return dataclasses.replace(record, **changes)


def not_null(table: str, **values: Any) -> None:
    for name, value in values.items():
        if value is None:
            raise Constraint(f"NOT NULL constraint failed: {table}.{name}")


@dataclass(frozen=True, slots=True)
class JobRow:
    record: JobRecord
    vault_key: str
    operation_pk: int | None


@dataclass(frozen=True, slots=True)
class OperationRow:
    record: OperationRecord
    vault_key: str


@dataclass(frozen=True, slots=True)
class TransitionRow:
    pk: int
    job_pk: int
    seq: int
    from_status: str | None
    to_status: str
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    pk: int
    job_pk: int
    content_hash: str
    observed_at: datetime
    status: str
    properties: str


@dataclass(frozen=True, slots=True)
class OutboxRow:
    record: OutboxRecord
    job_pk: int | None


@dataclass(frozen=True, slots=True)
class InstanceRow:
    instance_id: str
    hostname: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    budgets: tuple[Mapping[str, object], ...] = ()


@dataclass
class Tables:
    """Rows are immutable, so a shallow copy of every dict is a snapshot to roll back to."""

    jobs: dict[int, JobRow] = dataclasses.field(default_factory=dict)
    job_keys: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    operations: dict[int, OperationRow] = dataclasses.field(default_factory=dict)
    operation_keys: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)
    transitions: dict[tuple[int, int], TransitionRow] = dataclasses.field(default_factory=dict)
    snapshots: dict[tuple[int, str], SnapshotRow] = dataclasses.field(default_factory=dict)
    outbox: dict[int, OutboxRow] = dataclasses.field(default_factory=dict)
    outbox_keys: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    instances: dict[str, InstanceRow] = dataclasses.field(default_factory=dict)
    discovery: dict[str, DiscoveryState] = dataclasses.field(default_factory=dict)
    leases: dict[str, Lease] = dataclasses.field(default_factory=dict)
    last_pk: dict[str, int] = dataclasses.field(default_factory=dict)

    def copy(self) -> Tables:
        return Tables(**{f.name: getattr(self, f.name).copy() for f in dataclasses.fields(self)})

    def next_pk(self, table: str) -> int:
        self.last_pk[table] = self.last_pk.get(table, 0) + 1
        return self.last_pk[table]


def by_pk(table: dict[int, Any]) -> list[Any]:
    return [table[pk] for pk in sorted(table)]


def columns(row: Any, **extra: Any) -> dict[str, Any]:
    out = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    out = {k: v.value if isinstance(v, Tracking) else v for k, v in out.items()}
    out.update(extra)
    return out


def active_due(record: JobRecord | OperationRecord, at: datetime) -> bool:
    return (
        record.tracking is Tracking.ACTIVE
        and record.next_poll_at is not None
        and record.next_poll_at <= at
    )


_D = TypeVar("_D", JobRecord, OperationRecord)


def due(records: Iterable[_D], limit: int, exclude: Collection[int]) -> list[_D]:
    """Soonest due first (ties in registration order), leaving out `exclude`."""
    kept = [r for r in records if r.pk not in exclude]
    kept.sort(key=lambda r: (r.next_poll_at or NEVER, r.pk))
    return kept[:limit]


def register_one(
    t: Tables, reg: Registration, now: datetime, operation_pk: int | None
) -> RegisterResult:
    """Insert the job (or operation) unless it is already known; a known one is left as is."""
    at = at_utc(now)
    if isinstance(reg, JobRegistration):
        key = (reg.vault.key, reg.job_id)
        if key in t.job_keys:
            return RegisterResult("job", reg.vault.id, reg.job_id, False)
        not_null("jobs", job_id=reg.job_id, source=reg.source)
        pk = t.next_pk("jobs")
        record = JobRecord(
            pk=pk,
            vault_id=reg.vault.id,
            job_id=reg.job_id,
            source=reg.source,
            status=None,
            tracking=Tracking.ACTIVE,
            job_type=None,
            operation=None,
            entity_friendly_name=None,
            backup_management_type=None,
            start_time=None,
            end_time=None,
            registered_at=at,
            last_polled_at=None,
            next_poll_at=at,
            finished_at=None,
            poll_count=0,
            error_count=0,
            consecutive_failures=0,
            not_found_since=None,
            last_error=None,
            last_error_at=None,
            last_snapshot_hash=None,
            version=0,
            operation_id=(
                t.operations[operation_pk].record.operation_id
                if operation_pk is not None and operation_pk in t.operations
                else None
            ),
            region=reg.region,
        )
        t.jobs[pk] = JobRow(record, reg.vault.key, operation_pk)
        t.job_keys[key] = pk
        return RegisterResult("job", reg.vault.id, reg.job_id, True)
    key = (reg.vault.key, reg.operation_id)
    if key in t.operation_keys:
        return RegisterResult("operation", reg.vault.id, reg.operation_id, False)
    not_null("operations", operation_id=reg.operation_id, url=reg.url, source=reg.source)
    pk = t.next_pk("operations")
    op = OperationRecord(
        pk=pk,
        vault_id=reg.vault.id,
        operation_id=reg.operation_id,
        url=reg.url,
        source=reg.source,
        status=None,
        tracking=Tracking.ACTIVE,
        registered_at=at,
        last_polled_at=None,
        next_poll_at=at,
        poll_count=0,
        consecutive_failures=0,
        not_found_since=None,
        last_error=None,
        job_ids=(),
        version=0,
        region=reg.region,
    )
    t.operations[pk] = OperationRow(op, reg.vault.key)
    t.operation_keys[key] = pk
    return RegisterResult("operation", reg.vault.id, reg.operation_id, True)


def apply_write(t: Tables, write: JobWrite) -> bool:
    """Compare-and-set on the job's version, then its transition, snapshot (once per content
    hash) and outbox rows; False (nothing written) when the job moved on meanwhile."""
    job = t.jobs.get(write.record.pk)
    if job is None or job.record.version != write.record.version:
        return False
    at = at_utc(write.now)
    after = utc_fields(write.committed)
    changed = {
        f.name: getattr(after, f.name)
        for f in dataclasses.fields(after)
        if f.name not in JOB_IDENTITY
    }
    t.jobs[job.record.pk] = dataclasses.replace(
        job, record=dataclasses.replace(job.record, **changed)
    )
    pk = job.record.pk
    decision = write.decision
    if decision.transition is not None:
        seq = write.record.version + 1
        from_status, to_status = decision.transition
        not_null("transitions", to_status=to_status)
        if (pk, seq) in t.transitions:
            raise Constraint("UNIQUE constraint failed: transitions.job_pk, transitions.seq")
        t.transitions[(pk, seq)] = TransitionRow(
            t.next_pk("transitions"), pk, seq, from_status, to_status, at
        )
    snapshot = decision.snapshot
    if snapshot is not None and (pk, snapshot.content_hash) not in t.snapshots:
        not_null("snapshots", status=decision.status)
        assert decision.status is not None
        t.snapshots[(pk, snapshot.content_hash)] = SnapshotRow(
            t.next_pk("snapshots"),
            pk,
            snapshot.content_hash,
            at,
            decision.status,
            json.dumps(snapshot.properties, sort_keys=True, separators=(",", ":")),
        )
    add_outbox(t, write.outbox, at, pk)
    return True


def add_outbox(t: Tables, entries: Iterable[OutboxEntry], at: datetime, job_pk: int | None) -> None:
    """Outbox rows, due at once; `job_pk` None for an operation's event."""
    for entry in entries:
        key = (entry.event_id, entry.webhook)
        if key in t.outbox_keys:
            raise Constraint("UNIQUE constraint failed: outbox.event_id, outbox.webhook")
        not_null("outbox", event_type=entry.event_type, payload=entry.payload)
        outbox_pk = t.next_pk("outbox")
        record = OutboxRecord(
            pk=outbox_pk,
            event_id=entry.event_id,
            webhook=entry.webhook,
            event_type=entry.event_type,
            payload=entry.payload,
            created_at=at,
            attempts=0,
            next_attempt_at=at,
            state=PENDING,
            delivered_at=None,
            last_error=None,
        )
        t.outbox[outbox_pk] = OutboxRow(record, job_pk)
        t.outbox_keys.add(key)
