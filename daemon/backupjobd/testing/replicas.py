"""The replica heartbeat and the fence check of `MemoryStore`, the same rules as
adapters/sql/leases.py over the in-memory tables."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

from backupjobd.core.decisions import Tracking
from backupjobd.core.leases import (
    Fence,
    Lease,
    ReplicaBeat,
    ReplicaRecord,
    as_sole,
    plan_leases,
    subscription_of,
)
from backupjobd.testing.tables import InstanceRow, Tables, at_utc


def work_subscriptions(t: Tables) -> set[str]:
    keys = [j.vault_key for j in t.jobs.values() if j.record.tracking is Tracking.ACTIVE]
    keys += [o.vault_key for o in t.operations.values() if o.record.tracking is Tracking.ACTIVE]
    return {s for key in keys if (s := subscription_of(key))}


def heartbeat(t: Tables, beat: ReplicaBeat, now: datetime) -> list[Lease]:
    at = at_utc(now)
    me = beat.instance_id
    found = t.instances.get(me)
    stopped_at = at if beat.stopped else None
    budgets = tuple(dict(b) for b in beat.budgets)
    if found is None:
        t.instances[me] = InstanceRow(
            me, beat.hostname[:255], beat.pid, at_utc(beat.started_at), at, stopped_at, budgets
        )
    else:
        t.instances[me] = dataclasses.replace(
            found, last_seen_at=at, stopped_at=stopped_at, budgets=budgets
        )
    since = at - beat.live_within
    live = [
        i.instance_id
        for i in t.instances.values()
        if i.last_seen_at >= since and i.stopped_at is None
    ]
    wanted = set() if beat.stopped else work_subscriptions(t) | {s.lower() for s in beat.wanted}
    rows = list(t.leases.values())
    if beat.sole:
        rows, live = as_sole(rows, me), [me]
    plan = plan_leases(me, at, rows, wanted, live)
    until = at + beat.lease_for
    held: list[Lease] = []
    for lease in plan.renew:
        t.leases[lease.subscription] = held_lease = Lease(
            lease.subscription, me, lease.epoch, until
        )
        held.append(held_lease)
    for lease in plan.claim:
        t.leases[lease.subscription] = held_lease = Lease(
            lease.subscription, me, lease.epoch + 1, until
        )
        held.append(held_lease)
        _pull_forward(t, lease.subscription, at)
    for subscription in plan.create:
        t.leases[subscription] = held_lease = Lease(subscription, me, 1, until)
        held.append(held_lease)
    for lease in plan.release:
        t.leases[lease.subscription] = Lease(lease.subscription, None, lease.epoch, None)
    return sorted(held, key=lambda lease: lease.subscription)


def _pull_forward(t: Tables, subscription: str, now: datetime) -> None:
    for pk, job in list(t.jobs.items()):
        r = job.record
        if (
            r.tracking is Tracking.ACTIVE
            and subscription_of(job.vault_key) == subscription
            and r.next_poll_at is not None
            and r.next_poll_at > now
        ):
            t.jobs[pk] = dataclasses.replace(job, record=dataclasses.replace(r, next_poll_at=now))


def replicas(t: Tables, seen_since: datetime, now: datetime) -> list[ReplicaRecord]:
    since, at = at_utc(seen_since), at_utc(now)
    owned: dict[str, list[str]] = {}
    for lease in t.leases.values():
        if lease.owner and lease.expires_at and lease.expires_at > at:
            owned.setdefault(lease.owner, []).append(lease.subscription)
    rows = sorted(
        (i for i in t.instances.values() if i.last_seen_at >= since and i.stopped_at is None),
        key=lambda i: (i.started_at, i.instance_id),
    )
    return [
        ReplicaRecord(
            i.instance_id,
            i.hostname,
            i.pid,
            i.started_at,
            i.last_seen_at,
            tuple(sorted(owned.get(i.instance_id, ()))),
            i.budgets,
        )
        for i in rows
    ]


def stale_subscriptions(t: Tables, fence: Fence, subscriptions: Iterable[str]) -> set[str]:
    wanted = fence.epochs_for(subscriptions)
    found = {s: (lease.owner, lease.epoch) for s, lease in t.leases.items()}
    return {s for s, epoch in wanted.items() if found.get(s) != (fence.owner, epoch)}
