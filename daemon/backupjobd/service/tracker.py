"""The polling loop, as one object with one lifecycle (`start`, `tick`, `drain`/`stop`): a
façade over the parts that do the work.

- the dispatcher moves due jobs, operations and vault sweeps from the store onto the work
  queue, which is also the one registry of work in flight;
- the pollers observe each through the ARM client, and the pure core decides (the
  `VaultRoster` for sweeps, members and leases);
- the committer writes each poll's `Commit`, batched, with the store retry policy;
- the journal logs and counts what was committed.

A failed tick or poll is logged and retried later; it never stops the loop.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.durations import Durations
from backupjobd.adapters.metrics import Metrics
from backupjobd.config import WebhookConfig
from backupjobd.core.decisions import JobDecision, PollPolicy
from backupjobd.core.model import JobRecord, OperationRecord
from backupjobd.core.sweeps import Sweep, VaultRoster
from backupjobd.service.committer import Committer
from backupjobd.service.dispatcher import Dispatcher
from backupjobd.service.journal import Journal
from backupjobd.service.ownership import Ownership
from backupjobd.service.pollers import Pollers
from backupjobd.service.work import WorkQueue
from backupjobd.store import Store

T = TypeVar("T")


class Tracker:
    def __init__(
        self,
        store: Store,
        arm: ArmClient,
        policy: PollPolicy,
        clock: Callable[[], datetime],
        *,
        concurrency: int = 16,
        batch_size: int = 500,
        rng: random.Random | None = None,
        store_retry_seconds: float = 60.0,
        metrics: Metrics | None = None,
        webhooks: Sequence[WebhookConfig] = (),
        sweep_min_jobs: int = 0,
        detail_interval_seconds: float = 300.0,
        ownership: Ownership | None = None,
        durations: Durations | None = None,
    ) -> None:
        """`ownership`: with several replicas on one database, the leases this one holds;
        it polls only those subscriptions and its writes carry their fence. `durations`:
        the typical durations it polls by (shared with the API, which prints expected ends)."""
        self._work = WorkQueue()
        self._roster = VaultRoster(
            policy, timedelta(seconds=detail_interval_seconds), sweep_min_jobs
        )
        self._committer = Committer(
            store,
            store_retry_seconds,
            batch_size,
            lambda: self._pollers.reads_running > 0,
            fence=(lambda: ownership.fence) if ownership is not None else (lambda: None),
        )
        durations = durations if durations is not None else Durations()
        self.durations = durations
        self._pollers = Pollers(
            store=store,
            arm=arm,
            policy=policy,
            clock=clock,
            rng=rng or random.Random(),
            work=self._work,
            roster=self._roster,
            committer=self._committer,
            journal=Journal(metrics),
            expected=durations.expected,
            webhooks=webhooks,
            concurrency=concurrency,
        )
        self._dispatcher = Dispatcher(
            store,
            lambda: arm.budget,
            self._roster,
            self._work,
            durations,
            clock,
            batch_size,
            sweeps=sweep_min_jobs > 0,
            owned=ownership.owned if ownership is not None else (lambda: None),
            write_budget=lambda: arm.write_budget,
        )

    # ------------------------------------------------------------------ state

    @property
    def polls(self) -> int:
        """Reads made so far (a sweep's list counts once)."""
        return self._pollers.polls

    @property
    def last_tick_monotonic(self) -> float | None:
        return self._dispatcher.last_tick_monotonic

    def last_tick_age(self) -> float | None:
        """Seconds since the dispatcher last ticked (liveness), None before the first tick."""
        last = self._dispatcher.last_tick_monotonic
        return None if last is None else time.monotonic() - last

    @property
    def busy(self) -> bool:
        """Polls or sweeps under way (members and joiners waiting for their vault's next
        sweep are not)."""
        return bool(self._work.operations() or self._work.jobs())

    def next_sweep_at(self, vault_id: str) -> datetime | None:
        """When the vault's members are swept next (None: no sweep planned)."""
        return self._roster.next_sweep_at(vault_id)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the committer and the pollers; `tick` then feeds them."""
        self._committer.start()
        self._pollers.start()

    async def tick(self) -> int:
        """Queue whatever is due and not already queued; returns how much. Never raises."""
        return await self._dispatcher.tick()

    async def run_until_idle(self, deadline_seconds: float) -> None:
        """Tick and process until nothing is due or in flight (tests and one-shot runs)."""
        async with asyncio.timeout(deadline_seconds):
            while True:
                queued = await self.tick()
                if queued == 0 and not self.busy:
                    return
                await self._work.join()

    async def drain(self, grace_seconds: float) -> bool:
        """Stop taking work; let in-flight polls finish (and commit) within the grace time.
        False when some were cut short (they stay due and are polled again)."""
        await self._pollers.release_members()
        self._work.drop_queued()
        drained = True
        try:
            async with asyncio.timeout(grace_seconds):
                await self._work.join()
        except TimeoutError:
            drained = False
        await self.stop()
        return drained

    async def stop(self) -> None:
        """Stop at once: swept jobs back to the store's schedule, running polls cancelled
        (their jobs stay due), the committer stopped."""
        await self._pollers.release_members()
        await self._pollers.stop()
        await self._committer.stop()

    # ------------------------------------------------------------------ one piece of work

    async def poll_job(self, record: JobRecord) -> JobDecision:
        """One GET of one job, committed (directly when the tracker is not started)."""
        return await self._pollers.poll_job(record)

    async def poll_operation(self, record: OperationRecord) -> None:
        await self._pollers.poll_operation(record)

    async def sweep(self, item: Sweep) -> None:
        await self._pollers.sweep(item)

    async def _persist(self, write: Callable[[], Awaitable[T]], fields: dict[str, object]) -> T:
        """The store retry policy every commit goes through."""
        return await self._committer.persist(write, fields)
