"""Who polls which subscription when several `serve` replicas share one database (pure).

The unit of ownership is the subscription, because that is the read budget's domain: each
budget is then paced by exactly one process. A lease row per subscription names its owner,
an epoch (raised whenever the owner changes) and an expiry that the owner's heartbeats push
forward. `plan_leases` decides, for one replica's heartbeat, which leases it renews, which
free ones it claims (unowned, expired, or never seen) and which it gives up so that a
replica that joined gets its fair share. Every write a replica makes carries the epochs it
holds (`Fence`); the store refuses a write whose epoch is no longer current, so a replica
that was paused past its lease cannot record anything.

On PostgreSQL a replica also holds a session-level advisory lock for as long as its process
lives (`liveness_key`). The database drops it the moment the process dies, kill -9
included, so the others take its leases at their next heartbeat rather than at expiry.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

#: How long a lease lasts without a heartbeat renewing it; a replica not heard from for
#: this long is not live (and not listed by `backupjobd replicas`).
LEASE_SPAN = timedelta(seconds=15)


@dataclass(frozen=True, slots=True)
class Lease:
    """One subscription's lease row."""

    subscription: str
    owner: str | None
    epoch: int
    expires_at: datetime | None

    def held_by(self, replica: str, now: datetime) -> bool:
        return self.owner == replica and self.expires_at is not None and self.expires_at > now

    def free(self, now: datetime) -> bool:
        return self.owner is None or self.expires_at is None or self.expires_at <= now


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """What one heartbeat does to the lease rows, each a compare-and-set on the epoch."""

    #: Held by this replica and still wanted: pushed forward.
    renew: tuple[Lease, ...] = ()
    #: Free rows taken over (epoch + 1).
    claim: tuple[Lease, ...] = ()
    #: Subscriptions with work and no row yet: created, owned by this replica, epoch 1.
    create: tuple[str, ...] = ()
    #: Held by this replica and given up (no work left, or more than its fair share).
    release: tuple[Lease, ...] = ()


@dataclass(frozen=True, slots=True)
class Fence:
    """The leases a replica holds: its writes carry them, the store checks them."""

    owner: str
    epochs: Mapping[str, int]

    def holds(self, subscription: str) -> bool:
        return subscription.lower() in self.epochs

    def epochs_for(self, subscriptions: Iterable[str]) -> dict[str, int]:
        """The epochs of the given subscriptions; a subscription not held maps to -1, which no
        lease row has, so a write touching it is refused."""
        return {s.lower(): self.epochs.get(s.lower(), -1) for s in subscriptions}


def fair_share(subscriptions: int, replicas: int) -> int:
    """The most subscriptions one replica should own."""
    return math.ceil(subscriptions / max(1, replicas))


def plan_leases(
    replica: str,
    now: datetime,
    leases: Iterable[Lease],
    wanted: Collection[str],
    live: Collection[str],
) -> LeasePlan:
    """One heartbeat of `replica`: `leases` are the rows as read in this transaction,
    `wanted` the subscriptions with work (active jobs or pending operations), `live` the
    replicas whose heartbeat is recent (this one included)."""
    rows = {lease.subscription: lease for lease in leases}
    wanted_set = {s.lower() for s in wanted}
    wanted = sorted(wanted_set)
    replicas = set(live) | {replica}
    quota = fair_share(len(wanted), len(replicas))
    mine = [rows[s] for s in wanted if s in rows and rows[s].held_by(replica, now)]
    idle = tuple(
        lease
        for lease in rows.values()
        if lease.held_by(replica, now) and lease.subscription not in wanted_set
    )
    held = Counter(
        rows[s].owner for s in wanted if s in rows and not rows[s].free(now) and rows[s].owner
    )
    # While a live replica holds less than the floor, every replica above it gives up down
    # to the floor (the starved one then claims up to the quota); otherwise nothing is
    # given up, so ownership does not churn.
    floor = len(wanted) // len(replicas)
    starved = any(held.get(other, 0) < floor for other in replicas if other != replica)
    release: tuple[Lease, ...] = ()
    if starved and len(mine) > floor:
        release = tuple(mine[floor:])
        mine = mine[:floor]
    room = max(0, quota - len(mine))
    free = [s for s in wanted if s not in rows or rows[s].free(now)]
    # Replicas claim in different orders so that two joining at once rarely race for the
    # same rows (a lost race is harmless: the compare-and-set refuses it).
    free.sort(key=lambda s: zlib.crc32(f"{replica}/{s}".encode()))
    taken = free[:room]
    return LeasePlan(
        renew=tuple(mine),
        claim=tuple(rows[s] for s in taken if s in rows),
        create=tuple(s for s in taken if s not in rows),
        release=idle + release,
    )


@dataclass(frozen=True, slots=True)
class ReplicaBeat:
    """One `serve` replica's heartbeat: it is alive, what it learned of the read budgets, and
    how long the leases it holds last."""

    instance_id: str
    hostname: str
    pid: int
    started_at: datetime
    lease_for: timedelta
    #: A replica whose last heartbeat is older than this is not counted as live.
    live_within: timedelta
    #: JSON-ready learned budgets, one object per subscription (`backupjobd replicas`).
    budgets: tuple[Mapping[str, object], ...] = ()
    #: Subscriptions to own even without jobs in them (the ones discovery lists).
    wanted: tuple[str, ...] = ()
    #: The replica is stopping: its leases are given up for the others to take at once.
    stopped: bool = False
    #: No other replica can be running (SQLite: `serve` holds the file's lock), so leases
    #: still held by others are those of a process that died: taken at once.
    sole: bool = False
    #: The liveness lock this replica holds (`liveness_key`), None when it holds none.
    liveness_key: int | None = None


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """A replica as `backupjobd replicas` shows it."""

    instance_id: str
    hostname: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    owns: tuple[str, ...]
    budgets: tuple[Mapping[str, object], ...]


def as_sole(leases: Iterable[Lease], replica: str) -> list[Lease]:
    """The rows as a sole replica sees them: every other owner's lease is free (its process
    is gone). The owner and epoch stay, so claiming them is still a compare-and-set."""
    return [
        lease if lease.owner in (None, replica) else replace(lease, expires_at=None)
        for lease in leases
    ]


def without_dead(leases: Iterable[Lease], dead: Collection[str]) -> list[Lease]:
    """The rows with the leases of replicas known dead free at once, not when they expire.
    Safe however wrong the knowledge: a claim is a compare-and-set that raises the epoch,
    and the fence refuses every later write of the previous owner."""
    return [replace(lease, expires_at=None) if lease.owner in dead else lease for lease in leases]


#: The advisory-lock namespace (PostgreSQL's first key) of replicas' liveness locks.
LIVENESS_LOCK_SPACE = 1818584422


def liveness_key(replica: str) -> int:
    """The second key of a replica's liveness lock: a signed 32-bit hash of its id. Two
    replicas with the same key cannot both hold it; the second then holds none, and its
    death is found the slow way (its leases expire)."""
    return zlib.crc32(replica.encode()) - 2**31


def subscription_of(vault_key: str) -> str:
    """The subscription id of a vault id or key (`/subscriptions/{s}/...`), lower-cased."""
    parts = vault_key.split("/")
    return parts[2].lower() if len(parts) > 2 and parts[1].lower() == "subscriptions" else ""
