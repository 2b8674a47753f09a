"""The subscriptions this replica polls: the leases its last heartbeat holds.

Several `serve` replicas on one database split the work by subscription (core/leases.py):
the dispatcher queues only what this replica owns, and every write it makes carries the
`Fence` of its leases, which the store checks in the same transaction. A lease whose expiry
has passed (the heartbeat could not renew it) is not polled any more, at once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

from backupjobd.core.leases import Fence, Lease, ReplicaBeat
from backupjobd.store import Store

logger = logging.getLogger(__name__)


class Ownership:
    def __init__(self, replica_id: str, clock: Callable[[], datetime]) -> None:
        self.replica_id = replica_id
        self.clock = clock
        self._leases: dict[str, Lease] = {}

    def update(self, leases: Sequence[Lease]) -> None:
        """The leases a heartbeat left this replica with; one INFO line per change."""
        before = self.owned()
        self._leases = {lease.subscription: lease for lease in leases}
        after = self.owned()
        for subscription in sorted(after - before):
            logger.info(
                "now polling subscription %s (lease epoch %d)",
                subscription,
                self._leases[subscription].epoch,
                extra={"action": "lease_claimed", "subscription": subscription},
            )
        for subscription in sorted(before - after):
            logger.info(
                "no longer polling subscription %s",
                subscription,
                extra={"action": "lease_lost", "subscription": subscription},
            )

    def owned(self) -> frozenset[str]:
        """Subscriptions whose lease has not expired."""
        now = self.clock()
        return frozenset(
            s for s, lease in self._leases.items() if lease.expires_at and lease.expires_at > now
        )

    def owns(self, subscription: str) -> bool:
        return subscription.lower() in self.owned()

    @property
    def fence(self) -> Fence:
        """What this replica's writes carry: its leases' epochs (expired ones left out)."""
        owned = self.owned()
        return Fence(self.replica_id, {s: self._leases[s].epoch for s in owned})

    def leases(self) -> list[Lease]:
        return [self._leases[s] for s in sorted(self._leases)]


class Heartbeat:
    """The replica's heartbeat: says it is alive, reports the read budgets it learned, and
    renews, claims and hands over leases (one store transaction), updating `Ownership`."""

    def __init__(
        self,
        store: Store,
        ownership: Ownership,
        identity: tuple[str, int, datetime],
        *,
        lease_for: timedelta,
        budgets: Callable[[], tuple[Mapping[str, object], ...]] = tuple,
        wanted: Sequence[str] = (),
        sole: bool = False,
    ) -> None:
        """`sole`: no other replica can be running (SQLite), so a dead one's leases are
        taken at once rather than when they expire."""
        self._store = store
        self._ownership = ownership
        self._hostname, self._pid, self._started_at = identity
        self._lease_for = lease_for
        self._budgets = budgets
        self._wanted = tuple(wanted)
        self._sole = sole
        self.failures = 0

    async def beat(self, stopped: bool = False) -> None:
        """Never raises: a beat that fails leaves the leases to expire (polling them stops
        when they do), and the next one tries again."""
        clock = self._ownership.clock
        beat = ReplicaBeat(
            instance_id=self._ownership.replica_id,
            hostname=self._hostname,
            pid=self._pid,
            started_at=self._started_at,
            lease_for=self._lease_for,
            live_within=self._lease_for,
            budgets=self._budgets(),
            wanted=self._wanted,
            stopped=stopped,
            sole=self._sole,
        )
        try:
            if not stopped:
                key = await self._store.hold_liveness(self._ownership.replica_id)
                beat = dataclasses.replace(beat, liveness_key=key)
            leases = await self._store.replica_heartbeat(beat, clock())
        except Exception as exc:
            self.failures += 1
            logger.warning("could not record the heartbeat: %s", exc, extra={"action": "heartbeat"})
            return
        self._ownership.update(leases)
