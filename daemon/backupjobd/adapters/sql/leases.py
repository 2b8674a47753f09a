"""Replicas on one database: each heartbeat's lease plan applied in one transaction, the
replicas listed, and the fence check every write of a replica makes (core/leases.py has the
rules)."""

from __future__ import annotations

import fcntl
import json
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import IO, Any, TypeVar

from sqlalchemy import Connection, false, func, insert, or_, select, union, update

from backupjobd.adapters.sql import schema
from backupjobd.core.decisions import Tracking
from backupjobd.core.leases import (
    LIVENESS_LOCK_SPACE,
    Fence,
    Lease,
    ReplicaBeat,
    ReplicaRecord,
    as_sole,
    plan_leases,
    subscription_of,
    without_dead,
)
from backupjobd.errors import StoreError

_ACTIVE = Tracking.ACTIVE.value
_KEYS_PER_QUERY = 5000
T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]


class StaleLease(Exception):
    """A fenced write found a lease that has moved on: the transaction is rolled back and
    the store reports the write as not made (the adapter's own signal, never raised out)."""

    def __init__(self, subscriptions: set[str]) -> None:
        super().__init__(", ".join(sorted(subscriptions)))
        self.subscriptions = subscriptions


def work_subscriptions(conn: Connection) -> set[str]:
    """Subscriptions with something to poll: active jobs or operations."""
    j, o = schema.jobs, schema.operations
    vaults = union(
        select(j.c.vault_key).where(j.c.tracking == _ACTIVE).distinct(),
        select(o.c.vault_key).where(o.c.tracking == _ACTIVE).distinct(),
    )
    return {s for (key,) in conn.execute(vaults) if (s := subscription_of(key))}


def _leases(conn: Connection) -> list[Lease]:
    sl = schema.subscription_leases
    return [
        Lease(r.subscription_key, r.owner, int(r.epoch), r.expires_at)
        for r in conn.execute(select(sl).order_by(sl.c.subscription_key))
    ]


def _upsert_instance(conn: Connection, beat: ReplicaBeat, now: datetime) -> None:
    i = schema.instances
    values: dict[str, Any] = {
        "last_seen_at": now,
        "stopped_at": now if beat.stopped else None,
        "budgets": json.dumps(list(map(dict, beat.budgets)), sort_keys=True),
        "liveness_key": beat.liveness_key,
    }
    result = conn.execute(update(i).where(i.c.instance_id == beat.instance_id).values(**values))
    if result.rowcount == 0:
        conn.execute(
            insert(i).values(
                instance_id=beat.instance_id,
                hostname=beat.hostname[:255],
                pid=beat.pid,
                started_at=beat.started_at,
                **values,
            )
        )


def _live(conn: Connection, since: datetime) -> list[str]:
    i = schema.instances
    rows = conn.execute(
        select(i.c.instance_id).where(i.c.last_seen_at >= since, i.c.stopped_at.is_(None))
    )
    return [r.instance_id for r in rows]


def replica_heartbeat(conn: Connection, beat: ReplicaBeat, now: datetime) -> list[Lease]:
    """Record the beat, then renew, claim, create and give up leases as `plan_leases` says,
    each a compare-and-set on the epoch read; returns the leases this replica holds after."""
    me = beat.instance_id
    _upsert_instance(conn, beat, now)
    sl = schema.subscription_leases
    if conn.dialect.name == "postgresql":
        # One heartbeat at a time decides: two replicas planning on the same rows would both
        # see the other's share as free. Held to the end of this transaction.
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(1818584421)")
    rows = _leases(conn)
    if beat.stopped:
        wanted: set[str] = set()
    else:
        wanted = work_subscriptions(conn) | {s.lower() for s in beat.wanted}
    live = _live(conn, now - beat.live_within)
    if beat.sole:
        rows, live = as_sole(rows, me), [me]
    elif conn.dialect.name == "postgresql":
        dead = _dead_others(conn, rows, live, me, now)
        rows, live = without_dead(rows, dead), [r for r in live if r not in dead]
    plan = plan_leases(me, now, rows, wanted, live)
    until = now + beat.lease_for
    held: list[Lease] = []
    for lease in plan.renew:
        if _set(conn, lease, me, lease.epoch, until):
            held.append(Lease(lease.subscription, me, lease.epoch, until))
    for lease in plan.claim:
        if _set(conn, lease, me, lease.epoch + 1, until):
            held.append(Lease(lease.subscription, me, lease.epoch + 1, until))
            _pull_forward(conn, lease.subscription, now)
    for subscription in plan.create:
        exists = conn.scalar(
            select(sl.c.subscription_key).where(sl.c.subscription_key == subscription)
        )
        if exists is None:
            conn.execute(
                insert(sl).values(
                    subscription_key=subscription, owner=me, epoch=1, expires_at=until
                )
            )
            held.append(Lease(subscription, me, 1, until))
    for lease in plan.release:
        _set(conn, lease, None, lease.epoch, None)
    return sorted(held, key=lambda lease: lease.subscription)


def _dead_others(
    conn: Connection, rows: Iterable[Lease], live: Iterable[str], me: str, now: datetime
) -> set[str]:
    """The other replicas (owners of unexpired leases, and those whose heartbeat is recent)
    whose liveness lock nobody holds any more: their process is gone (PostgreSQL drops a
    session's locks when its connection closes). Taking the lock for this transaction is how
    one asks; it goes with the commit. A dead replica that owns nothing any more must not
    count in the fair share either: the survivors would give leases up for it."""
    owners = {r.owner for r in rows if r.owner and r.owner != me and not r.free(now)}
    owners |= {instance for instance in live if instance != me}
    if not owners:
        return set()
    i = schema.instances
    keys = conn.execute(
        select(i.c.instance_id, i.c.liveness_key).where(
            i.c.instance_id.in_(sorted(owners)), i.c.liveness_key.is_not(None)
        )
    )
    dead = set()
    for owner, key in keys:
        free = conn.scalar(select(func.pg_try_advisory_xact_lock(LIVENESS_LOCK_SPACE, int(key))))
        if free:
            dead.add(owner)
    return dead


def _pull_forward(conn: Connection, subscription: str, now: datetime) -> None:
    """A claimed subscription's active jobs are due now: the last owner may have pushed them
    out to its next vault sweep (a sweep lease), which nobody will run any more."""
    j = schema.jobs
    conn.execute(
        update(j)
        .where(
            j.c.tracking == _ACTIVE,
            j.c.next_poll_at > now,
            in_subscriptions(j.c.vault_key, [subscription]),
        )
        .values(next_poll_at=now)
    )


def _set(
    conn: Connection, lease: Lease, owner: str | None, epoch: int, until: datetime | None
) -> bool:
    """Compare-and-set one lease row: only if it still has the epoch and owner read."""
    sl = schema.subscription_leases
    owner_was = sl.c.owner.is_(None) if lease.owner is None else sl.c.owner == lease.owner
    result = conn.execute(
        update(sl)
        .where(sl.c.subscription_key == lease.subscription, sl.c.epoch == lease.epoch, owner_was)
        .values(owner=owner, epoch=epoch, expires_at=until)
    )
    return bool(result.rowcount == 1)


def replicas(conn: Connection, seen_since: datetime, now: datetime) -> list[ReplicaRecord]:
    """Replicas heard from since `seen_since` and not stopped, with what each owns."""
    i, sl = schema.instances, schema.subscription_leases
    owned: dict[str, list[str]] = {}
    for lease in conn.execute(select(sl).where(sl.c.owner.is_not(None), sl.c.expires_at > now)):
        owned.setdefault(lease.owner, []).append(lease.subscription_key)
    rows = conn.execute(
        select(i)
        .where(i.c.last_seen_at >= seen_since, i.c.stopped_at.is_(None))
        .order_by(i.c.started_at, i.c.instance_id)
    )
    return [
        ReplicaRecord(
            r.instance_id,
            r.hostname,
            int(r.pid),
            r.started_at,
            r.last_seen_at,
            tuple(sorted(owned.get(r.instance_id, ()))),
            tuple(json.loads(r.budgets)) if r.budgets else (),
        )
        for r in rows
    ]


def stale_subscriptions(conn: Connection, fence: Fence, subscriptions: Iterable[str]) -> set[str]:
    """The subscriptions among `subscriptions` whose lease is no longer (owner, epoch) of the
    fence. On PostgreSQL the rows are share-locked to the end of the transaction, so a claim
    cannot slip in between this check and the write."""
    wanted = fence.epochs_for(subscriptions)
    if not wanted:
        return set()
    sl = schema.subscription_leases
    query = select(sl.c.subscription_key, sl.c.owner, sl.c.epoch).where(
        sl.c.subscription_key.in_(sorted(wanted))
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    found = {r.subscription_key: (r.owner, int(r.epoch)) for r in conn.execute(query)}
    return {s for s, epoch in wanted.items() if found.get(s) != (fence.owner, epoch)}


def fenced(
    work: Callable[[Connection], T], fence: Fence, subscriptions: Iterable[str]
) -> Callable[[Connection], T]:
    """`work` preceded, in its transaction, by the fence check of `subscriptions`."""
    wanted = set(subscriptions)

    def checked(conn: Connection) -> T:
        stale = stale_subscriptions(conn, fence, wanted)
        if stale:
            raise StaleLease(stale)
        return work(conn)

    return checked


def fenced_by_jobs(
    work: Callable[[Connection], T], fence: Fence, pks: Collection[int]
) -> Callable[[Connection], T]:
    """The same for writes that name jobs by key: their subscriptions are read first."""

    def checked(conn: Connection) -> T:
        j, keys = schema.jobs, list(pks)
        vaults: set[str] = set()
        for start in range(0, len(keys), _KEYS_PER_QUERY):  # PostgreSQL: <= 32,767 arguments
            chunk = keys[start : start + _KEYS_PER_QUERY]
            found = conn.execute(select(j.c.vault_key).where(j.c.pk.in_(chunk)).distinct())
            vaults.update(found.scalars())
        return fenced(work, fence, {subscription_of(k) for k in vaults})(conn)

    return checked


def fenced_run(run: Run, fence: Fence, writes: Sequence[Any]) -> Run:
    """`Database.run` with every transaction fence-checked for the writes' subscriptions."""
    subscriptions = {subscription_of(w.record.vault_id) for w in writes}

    async def checked(work: Callable[[Connection], Any], doing: str, *, write: bool) -> Any:
        return await run(fenced(work, fence, subscriptions), doing, write=write)

    return checked


def in_subscriptions(column: Any, subscriptions: Collection[str]) -> Any:
    """A filter on a vault key column: the vault is in one of these subscriptions."""
    if not subscriptions:
        return false()
    return or_(*(column.like(f"/subscriptions/{s.lower()}/%") for s in sorted(subscriptions)))


def hold_sqlite_serve_lock(url: str) -> IO[bytes] | None:
    """One `serve` per SQLite file: an exclusive `flock` on the database file, held as long
    as the returned file stays open (the kernel drops it when the process dies, kill -9
    included). None for PostgreSQL, where replicas share the work through leases.

    SQLite's own locks are POSIX (fcntl) locks, which `flock` does not touch on Linux, so
    this lock and the database's never interfere."""
    from backupjobd.adapters.sql.engine import sqlite_path

    if not url.startswith("sqlite"):
        return None
    path = sqlite_path(url)
    if path is None:
        return None
    handle = open(path, "rb")  # noqa: SIM115 - held open for the life of `serve`
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(
            f"another `backupjobd serve` is already running on {path}: SQLite takes one"
            " (use PostgreSQL for several replicas)"
        ) from None
    return handle
