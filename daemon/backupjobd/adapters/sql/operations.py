"""Operations (`Azure-AsyncOperation` / `Location` URLs): due reads, and the compare-and-set
write of a decision that registers the jobs the operation named, in one transaction."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, insert, select, true, update

from backupjobd.adapters.sql import schema
from backupjobd.adapters.sql.jobs import register_one
from backupjobd.adapters.sql.leases import in_subscriptions
from backupjobd.adapters.sql.outbox import operation_outbox_rows
from backupjobd.core.azure import vault_from_id
from backupjobd.core.decisions import OperationDecision, Tracking
from backupjobd.core.model import OperationRecord, OutboxEntry, RegisterResult
from backupjobd.core.registration import JobRegistration


def operation_from_row(row: Row[Any]) -> OperationRecord:
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
        region=row.region,
    )


def due(
    conn: Connection,
    now: datetime,
    limit: int,
    exclude: Collection[int],
    subscriptions: Collection[str] | None = None,
) -> list[OperationRecord]:
    o = schema.operations
    mine = true() if subscriptions is None else in_subscriptions(o.c.vault_key, subscriptions)
    query = (
        select(o)
        .where(o.c.tracking == Tracking.ACTIVE.value, o.c.next_poll_at <= now, mine)
        .order_by(o.c.next_poll_at)
        .limit(limit + len(exclude))
    )
    return [operation_from_row(r) for r in conn.execute(query) if r.pk not in exclude][:limit]


def apply(
    conn: Connection,
    record: OperationRecord,
    decision: OperationDecision,
    now: datetime,
    outbox: Sequence[OutboxEntry] = (),
) -> list[RegisterResult] | None:
    """None when the operation is no longer at `record.version` (nothing written)."""
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
    result = conn.execute(
        update(o).where(and_(o.c.pk == record.pk, o.c.version == record.version)).values(**values)
    )
    if result.rowcount != 1:
        return None
    if outbox:
        conn.execute(insert(schema.outbox), operation_outbox_rows(outbox, now))
    return [
        register_one(
            conn,
            JobRegistration(vault, job_id, "operation", record.region if record.crr else None),
            now,
            record.pk,
            record.operation_id,
        )
        for job_id in decision.job_ids
    ]


def list_query(operation_id: str | None = None) -> Any:
    o = schema.operations
    query = select(o).order_by(o.c.registered_at, o.c.pk)
    return query if operation_id is None else query.where(o.c.operation_id == operation_id)
