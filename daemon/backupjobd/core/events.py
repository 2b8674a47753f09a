"""Pure construction of webhook events: which events a decision raises, which webhooks want
them, the CloudEvents 1.0 body, and when to try a failed delivery again. No I/O.

The events are written to the outbox in the same transaction as the transition they
describe, so an event exists if and only if its transition was committed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from backupjobd.core import azure
from backupjobd.core.decisions import JobDecision, OperationDecision, Tracking
from backupjobd.core.model import Commit, JobRecord, OperationRecord, OutboxEntry, iso


class Subscription(Protocol):
    """What event construction needs of a configured webhook (`config.WebhookConfig`)."""

    @property
    def name(self) -> str: ...

    @property
    def events(self) -> tuple[str, ...]: ...


EVENT_TYPE_PREFIX = "com.backupjobd.job."
EVENT_SOURCE = "backupjobd"
_TERMINAL = {s.lower() for s in azure.TERMINAL_STATUSES} | {"lost"}
_FAILURES = {"failed", "completedwithwarnings", "lost", "operation_failed"}
OPERATION_FAILED_TYPE = "com.backupjobd.operation.failed"


def event_kinds(decision: JobDecision) -> list[str]:
    """Short names of what happened: the new status (lower-case), `lost`, `stuck`."""
    kinds = []
    if decision.transition is not None and decision.status is not None:
        kinds.append(decision.status.lower())
    if decision.tracking is Tracking.LOST:
        kinds.append("lost")
    if decision.newly_stuck:
        kinds.append("stuck")
    return kinds


def wanted(filters: Sequence[str], kind: str) -> bool:
    """Whether a webhook subscribed to `filters` (see config.WEBHOOK_EVENTS) gets `kind`."""
    return any(
        f == "all"
        or (f == "terminal" and kind in _TERMINAL)
        or (f == "failures" and kind in _FAILURES)
        or (f == "stuck" and kind == "stuck")
        for f in filters
    )


def cloud_event(
    event_id: str, kind: str, job: JobRecord, decision: JobDecision, now: datetime
) -> dict[str, Any]:
    transition = None
    if decision.transition is not None:
        transition = {
            "from_status": decision.transition[0],
            "to_status": decision.transition[1],
            "observed_at": iso(now),
        }
    snapshot = decision.observation.properties if decision.observation is not None else None
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "type": EVENT_TYPE_PREFIX + kind,
        "subject": job.arm_id,
        "time": iso(now),
        "datacontenttype": "application/json",
        "data": {"job": job.to_json(), "transition": transition, "snapshot": snapshot},
    }


def outbox_entries(
    record: JobRecord,
    decision: JobDecision,
    now: datetime,
    webhooks: Sequence[Subscription],
    new_id: Callable[[], str],
    *,
    after: JobRecord | None = None,
) -> list[OutboxEntry]:
    """Every (event, webhook) delivery this decision calls for; `after` is the job as
    committed (computed here only when some webhook wants an event and none is given)."""
    if not webhooks:
        return []
    entries: list[OutboxEntry] = []
    job = after
    for kind in event_kinds(decision):
        targets = [hook for hook in webhooks if wanted(hook.events, kind)]
        if not targets:
            continue
        job = job or record.after(decision, now)
        event_id = new_id()
        body = json.dumps(cloud_event(event_id, kind, job, decision, now), sort_keys=True)
        entries.extend(
            OutboxEntry(event_id, hook.name, EVENT_TYPE_PREFIX + kind, body) for hook in targets
        )
    return entries


def operation_outbox_entries(
    record: OperationRecord,
    decision: OperationDecision,
    now: datetime,
    webhooks: Sequence[Subscription],
    new_id: Callable[[], str],
) -> list[OutboxEntry]:
    """A trigger Azure rejected (the operation ended without a job) is an event, delivered to
    the webhooks that take `all` or `failures`."""
    failed = decision.tracking is not Tracking.ACTIVE and not decision.job_ids and decision.error
    targets = [hook for hook in webhooks if wanted(hook.events, "operation_failed")]
    if not failed or not targets:
        return []
    after = dataclasses.replace(
        record,
        status=decision.status,
        tracking=decision.tracking,
        last_error=decision.error,
        last_polled_at=now,
    )
    event_id = new_id()
    body = {
        "specversion": "1.0",
        "id": event_id,
        "source": EVENT_SOURCE,
        "type": OPERATION_FAILED_TYPE,
        "subject": f"{record.vault_id}/backupOperations/{record.operation_id}",
        "time": iso(now),
        "datacontenttype": "application/json",
        "data": {"operation": after.to_json()},
    }
    payload = json.dumps(body, sort_keys=True)
    return [OutboxEntry(event_id, hook.name, OPERATION_FAILED_TYPE, payload) for hook in targets]


def commit(
    record: JobRecord,
    decision: JobDecision,
    now: datetime,
    webhooks: Sequence[Subscription],
    new_id: Callable[[], str],
    expected: timedelta | None = None,
) -> Commit:
    """The poll's committed state with the events it raises: `after` is computed once and
    both the row and the events report it (with when the job should end, from `expected`,
    the typical duration of similar jobs)."""
    after = record.after(decision, now).expecting(expected)
    outbox = outbox_entries(record, decision, now, webhooks, new_id, after=after)
    return Commit(record, decision, now, tuple(outbox), after=after)


def next_attempt(
    attempts: int, now: datetime, max_attempts: int, max_backoff: timedelta, jitter: float
) -> datetime | None:
    """After `attempts` failed deliveries: when to try again (full-jitter exponential
    backoff, 2**attempts seconds capped by `max_backoff`, at least half a second), or None
    when the event becomes a dead letter."""
    if attempts >= max_attempts:
        return None
    cap = min(max_backoff.total_seconds(), 2.0 ** min(attempts, 30))
    return now + timedelta(seconds=max(0.5, cap * jitter))
