"""The webhook outbox: rows written with a job's decision, then due, delivered, retried or
dead-lettered one attempt at a time."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from backupjobd.adapters.sql import schema
from backupjobd.core.model import JobWrite, OutboxEntry, OutboxRecord

OUTBOX_PENDING, OUTBOX_DELIVERED, OUTBOX_DEAD = "pending", "delivered", "dead"


def outbox_from_row(row: Row[Any]) -> OutboxRecord:
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


def outbox_rows(writes: Sequence[JobWrite]) -> list[dict[str, Any]]:
    """The rows a batch of decisions adds, due at once (committed with the decisions)."""
    return [
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


def operation_outbox_rows(entries: Sequence[OutboxEntry], now: datetime) -> list[dict[str, Any]]:
    """An operation's event rows: no job (job_pk NULL), due at once."""
    return [
        {
            "event_id": entry.event_id,
            "webhook": entry.webhook,
            "event_type": entry.event_type,
            "job_pk": None,
            "payload": entry.payload,
            "state": OUTBOX_PENDING,
            "created_at": now,
            "next_attempt_at": now,
            "attempts": 0,
        }
        for entry in entries
    ]


def due(
    conn: Connection,
    now: datetime,
    limit: int,
    exclude: Collection[int],
    skip_webhooks: Collection[str],
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
    return [outbox_from_row(r) for r in conn.execute(query) if r.pk not in exclude][:limit]


def result(
    conn: Connection,
    pk: int,
    now: datetime,
    delivered: bool,
    error: str | None,
    next_attempt_at: datetime | None,
) -> None:
    o = schema.outbox
    values: dict[str, Any] = {"attempts": o.c.attempts + 1, "last_error": error}
    if delivered:
        values.update(state=OUTBOX_DELIVERED, delivered_at=now, next_attempt_at=None)
    elif next_attempt_at is None:
        values.update(state=OUTBOX_DEAD, next_attempt_at=None)
    else:
        values.update(next_attempt_at=next_attempt_at)
    conn.execute(update(o).where(o.c.pk == pk, o.c.state == OUTBOX_PENDING).values(**values))


def list_query(state: str, limit: int) -> Any:
    o = schema.outbox
    return select(o).where(o.c.state == state).order_by(o.c.pk).limit(limit)


def counts(conn: Connection) -> dict[str, int]:
    o = schema.outbox
    rows = conn.execute(select(o.c.state, func.count().label("n")).group_by(o.c.state))
    out = {OUTBOX_PENDING: 0, OUTBOX_DELIVERED: 0, OUTBOX_DEAD: 0}
    out.update({r.state: int(r.n) for r in rows})
    return out


def requeue_dead(conn: Connection, now: datetime) -> int:
    o = schema.outbox
    done = conn.execute(
        update(o)
        .where(o.c.state == OUTBOX_DEAD)
        .values(state=OUTBOX_PENDING, attempts=0, next_attempt_at=now)
    )
    return int(done.rowcount)
