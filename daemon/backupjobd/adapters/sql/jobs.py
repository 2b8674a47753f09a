"""Jobs: registration, due and sweep reads, the batched compare-and-set write of decisions
with their transitions and snapshots, listing and history.

Each function here is the work of one transaction (or one read) on a Connection; the store
hands it to `Database.run`, which owns transactions, error translation and retries.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Row, bindparam, func, insert, select, update

from backupjobd.adapters.sql import schema
from backupjobd.adapters.sql.outbox import outbox_rows
from backupjobd.core.azure import JobKind
from backupjobd.core.decisions import DURATION_SAMPLE_STATUSES, Tracking
from backupjobd.core.model import (
    JobRecord,
    JobWrite,
    RegisterResult,
    SnapshotRecord,
    TransitionRecord,
)
from backupjobd.core.registration import JobRegistration, Registration
from backupjobd.core.sweeps import SWEEPABLE_STATUSES

# `jobs list --status` accepts these tracking states besides Azure statuses ("Failed" is a status).
JOB_TRACKING_FILTERS = frozenset(
    {Tracking.ACTIVE.value, Tracking.FINISHED.value, Tracking.LOST.value, Tracking.STOPPED.value}
)
# Bound parameters per `IN (...)`: well under SQLite's and asyncpg's limits.
IN_CHUNK = 5000

# What a decision may change of a job row (the rest is its identity).
JOB_COLUMNS = (
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
    "error_details",
    "progress_percent",
)
_JOB_UPDATE = (
    update(schema.jobs)
    .where(
        schema.jobs.c.pk == bindparam("b_pk"),
        schema.jobs.c.version == bindparam("b_version"),
    )
    .values({c: bindparam(f"v_{c}", type_=schema.jobs.c[c].type) for c in JOB_COLUMNS})
)


class StaleInBatch(Exception):
    """A batch met a concurrent change: roll it back and apply write by write."""


def job_from_row(row: Row[Any]) -> JobRecord:
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
        error_details=row.error_details or (),
        operation_id=row.operation_id,
        progress_percent=row.progress_percent,
        region=row.region,
    )


# --- registration ------------------------------------------------------------------------


def register_one(
    conn: Connection,
    reg: Registration,
    now: datetime,
    operation_pk: int | None,
    operation_id: str | None = None,
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
                    operation_id=operation_id,
                    vault_kind=reg.vault.kind.value,
                    region=reg.region,
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
                region=reg.region,
                version=0,
            )
        )
    return RegisterResult("operation", reg.vault.id, reg.operation_id, found is None)


def register(
    conn: Connection, registrations: Sequence[Registration], now: datetime
) -> list[RegisterResult]:
    return [register_one(conn, reg, now, None) for reg in registrations]


# --- due work ----------------------------------------------------------------------------


def due_where(now: datetime) -> tuple[Any, ...]:
    t = schema.jobs
    return (t.c.tracking == Tracking.ACTIVE.value, t.c.next_poll_at <= now)


def sweep_where(vault_id: str, due_before: datetime) -> tuple[Any, ...]:
    t = schema.jobs
    return (
        t.c.tracking == Tracking.ACTIVE.value,
        t.c.vault_key == vault_id.lower(),
        t.c.status.in_(SWEEPABLE_STATUSES),
        t.c.region.is_(None),  # a cross-region restore's jobs are not in the vault's list
        t.c.next_poll_at <= due_before,
    )


def jobs_excluding(
    conn: Connection, where: tuple[Any, ...], limit: int, exclude: Collection[int]
) -> list[JobRecord]:
    """Jobs matching `where`, soonest due first, leaving out `exclude` (the jobs in flight,
    possibly thousands): their keys come from the index alone, and only the rows kept are
    read in full."""
    t = schema.jobs
    if not exclude:
        query = select(t).where(*where).order_by(t.c.next_poll_at).limit(limit)
        return [job_from_row(r) for r in conn.execute(query)]
    keys = select(t.c.pk).where(*where).order_by(t.c.next_poll_at)
    found = conn.execute(keys.limit(limit + len(exclude))).scalars()
    pks = [pk for pk in found if pk not in exclude][:limit]
    if not pks:
        return []
    query = select(t).where(t.c.pk.in_(pks), *where).order_by(t.c.next_poll_at)
    return [job_from_row(r) for r in conn.execute(query)]


def finished_durations_query(limit: int) -> Any:
    t = schema.jobs
    return (
        select(t.c.operation, t.c.job_type, t.c.entity_friendly_name, t.c.start_time, t.c.end_time)
        .where(
            t.c.tracking == Tracking.FINISHED.value,
            t.c.status.in_(DURATION_SAMPLE_STATUSES),
            t.c.start_time.is_not(None),
            t.c.end_time.is_not(None),
        )
        .order_by(t.c.pk.desc())
        .limit(limit)
    )


def reschedule(
    conn: Connection,
    by_polls: dict[int, list[int]],
    next_poll_at: datetime,
    polled_at: datetime | None,
) -> int:
    """One UPDATE per distinct poll increment (sweeps give most jobs the same one)."""
    t = schema.jobs
    updated = 0
    for count, group in by_polls.items():
        values: dict[str, Any] = {"next_poll_at": next_poll_at}
        if polled_at is not None:
            values.update(last_polled_at=polled_at, poll_count=t.c.poll_count + count)
        for start in range(0, len(group), IN_CHUNK):
            result = conn.execute(
                update(t)
                .where(
                    t.c.pk.in_(group[start : start + IN_CHUNK]),
                    t.c.tracking == Tracking.ACTIVE.value,
                )
                .values(**values)
            )
            updated += result.rowcount
    return updated


# --- applying decisions --------------------------------------------------------------------


def apply_many(writes: Sequence[JobWrite], conn: Connection) -> None:
    """SQLite's fast path: every statement once, with many parameter sets (executemany).
    PostgreSQL's is `pg_writes.apply_set` (asyncpg reports no executemany row counts)."""
    if not _update_jobs(conn, writes):
        raise StaleInBatch
    _append_rows(conn, writes)


def apply_one_by_one(writes: Sequence[JobWrite], conn: Connection) -> list[bool]:
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
    transitions = transition_rows(writes)
    if transitions:
        conn.execute(insert(schema.transitions), transitions)
    snapshots = snapshot_rows(writes)
    if snapshots:
        # Imported here: a read command on SQLite need not load the PostgreSQL dialect.
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            statement: Any = pg_insert(schema.snapshots)
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            statement = sqlite_insert(schema.snapshots)
        conn.execute(
            statement.on_conflict_do_nothing(index_elements=["job_pk", "content_hash"]),
            snapshots,
        )
    outbox = outbox_rows(writes)
    if outbox:
        conn.execute(insert(schema.outbox), outbox)


def transition_rows(writes: Sequence[JobWrite]) -> list[dict[str, Any]]:
    return [
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


def snapshot_rows(writes: Sequence[JobWrite]) -> list[dict[str, Any]]:
    return [
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


def _job_row(write: JobWrite) -> dict[str, Any]:
    """Every column of the job after the decision, from the record we read: the
    compare-and-set on `version` guarantees the record is still what the row holds."""
    after = write.committed
    row: dict[str, Any] = {f"v_{c}": getattr(after, c) for c in JOB_COLUMNS}
    row["v_tracking"] = after.tracking.value
    row.update(b_pk=write.record.pk, b_version=write.record.version)
    return row


def stop(conn: Connection, record: JobRecord, now: datetime) -> bool:
    t = schema.jobs
    result = conn.execute(
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


# --- listing -------------------------------------------------------------------------------


def list_query(
    status: str | None,
    limit: int | None,
    stuck: bool,
    vault_id: str | None,
    finished: bool | None,
    since: datetime | None,
    after_pk: int | None,
    *,
    until: datetime | None = None,
    operation: str | None = None,
    newest_first: bool = False,
    kind: str | None = None,
) -> Any:
    t = schema.jobs
    query = select(t).order_by(t.c.pk.desc() if newest_first else t.c.pk)
    if kind is not None:
        query = query.where(kind_clause(kind))
    if until is not None:
        query = query.where(t.c.registered_at <= until)
    if operation is not None:
        query = query.where(func.lower(t.c.operation) == operation.lower())
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
    return query


def kind_clause(kind: str) -> Any:
    """`jobs list --kind`: a vault kind (RecoveryServices, DataProtection) or
    CrossRegionRestore (Recovery Services jobs read in their secondary region)."""
    t = schema.jobs
    if kind == JobKind.CROSS_REGION_RESTORE.value:
        return t.c.region.is_not(None)
    if kind == JobKind.RECOVERY_SERVICES.value:
        return (t.c.vault_kind == kind) & t.c.region.is_(None)
    return t.c.vault_kind == kind


def history(conn: Connection, job_pk: int) -> tuple[list[TransitionRecord], list[SnapshotRecord]]:
    tr, s = schema.transitions, schema.snapshots
    transitions = conn.execute(select(tr).where(tr.c.job_pk == job_pk).order_by(tr.c.seq))
    snapshots = conn.execute(
        select(s).where(s.c.job_pk == job_pk).order_by(s.c.observed_at, s.c.pk)
    )
    return (
        [TransitionRecord(r.seq, r.from_status, r.to_status, r.observed_at) for r in transitions],
        [SnapshotRecord(r.observed_at, r.status, json.loads(r.properties)) for r in snapshots],
    )


def counts(conn: Connection) -> dict[str, int]:
    t, o = schema.jobs, schema.operations
    rows = conn.execute(select(t.c.tracking, func.count().label("n")).group_by(t.c.tracking))
    out: dict[str, int] = {f"jobs_{r.tracking}": int(r.n) for r in rows}
    active = conn.scalar(select(func.count()).where(o.c.tracking == Tracking.ACTIVE.value))
    out["operations_active"] = int(active or 0)
    return out


def status_counts(conn: Connection) -> tuple[dict[tuple[str, str], int], int]:
    t = schema.jobs
    rows = conn.execute(
        select(t.c.status, t.c.tracking, func.count().label("n")).group_by(t.c.status, t.c.tracking)
    )
    stuck = conn.scalar(
        select(func.count()).where(
            t.c.stuck_since.is_not(None), t.c.tracking == Tracking.ACTIVE.value
        )
    )
    return {(r.status or "unseen", r.tracking): int(r.n) for r in rows}, int(stuck or 0)
