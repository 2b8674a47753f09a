"""The dispatcher: each tick moves what is due (operations, jobs, vault sweeps) from the
store onto the work queue, within the room the queue and the read budgets have. Which jobs
go together in a sweep is the `VaultRoster`'s call."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from backupjobd.adapters.budget import ReadBudget
from backupjobd.adapters.durations import Durations
from backupjobd.core.azure import JobKind
from backupjobd.core.model import JobRecord
from backupjobd.core.sweeps import PlanKind, VaultRoster, subscription
from backupjobd.errors import BackupJobdError
from backupjobd.service.work import SWEEP, WorkQueue, detail_room, read_priority
from backupjobd.store import Store

logger = logging.getLogger(__name__)


def round_robin(jobs: Sequence[JobRecord]) -> list[JobRecord]:
    """Interleave subscriptions so one subscription's backlog does not queue ahead of all."""
    lanes: dict[str, list[JobRecord]] = {}
    for job in jobs:
        lanes.setdefault(subscription(job.vault_id), []).append(job)
    out: list[JobRecord] = []
    for row in itertools.zip_longest(*lanes.values()):
        out.extend(job for job in row if job is not None)
    return out


class Dispatcher:
    def __init__(
        self,
        store: Store,
        budget: Callable[[], ReadBudget | None],
        roster: VaultRoster,
        work: WorkQueue,
        durations: Durations,
        clock: Callable[[], datetime],
        batch_size: int,
        sweeps: bool,
        owned: Callable[[], frozenset[str] | None] = lambda: None,
        write_budget: Callable[[], ReadBudget | None] = lambda: None,
    ) -> None:
        self._store = store
        self._owned = owned
        self._budget = budget
        self._write_budget = write_budget
        self._roster = roster
        self._work = work
        self._durations = durations
        self._clock = clock
        self._batch_size = batch_size
        self._sweeps = sweeps
        self._lock = asyncio.Lock()
        self.last_tick_monotonic: float | None = None

    def in_flight(self) -> set[int]:
        """Jobs not to be dispatched again: queued, being polled, or held by their vault."""
        return self._work.jobs() | self._roster.held()

    async def tick(self) -> int:
        """Queue whatever is due and not already queued. Never raises."""
        async with self._lock:
            try:
                return await self._dispatch()
            except BackupJobdError as exc:
                logger.warning("dispatch failed: %s", exc, extra={"action": "dispatch"})
            except Exception:
                logger.exception("dispatch failed", extra={"action": "dispatch"})
            finally:
                self.last_tick_monotonic = time.monotonic()
            return 0

    async def _dispatch(self) -> int:
        await self._durations.refresh(self._store)
        now = self._clock()
        room = max(0, self._batch_size - self._work.qsize())
        if room == 0:
            return 0
        owned = self._owned()  # with replicas: only the subscriptions this one holds
        if owned is not None:
            self._forget_lost(owned)
            if not owned:
                return 0
        ops = await self._store.due_operations(now, room, self._work.operations(), owned)
        for op in ops:
            self._work.put(op)
        jobs = await self._store.due_jobs(now, room - len(ops), self.in_flight(), owned)
        queued = len(ops)
        singles: list[JobRecord] = []
        by_vault: dict[str, list[JobRecord]] = {}
        for job in jobs:
            by_vault.setdefault(job.vault_id.lower(), []).append(job)
        for group in by_vault.values():
            vault_id = group[0].vault_id
            details = detail_room(self._budget(), self._work, vault_id) if self._sweeps else None
            plan = self._roster.plan(group, now, details)
            singles.extend(plan.singles)
            if plan.kind is not PlanKind.SWEEP or plan.horizon is None:
                continue
            ahead = await self._store.sweep_candidates(
                vault_id, plan.horizon, self._batch_size, self.in_flight()
            )
            sweep = self._roster.begin(vault_id, plan.sweepable, ahead)
            swept = {r.pk for r in sweep.records}
            singles.extend(r for r in group if r.pk not in swept)
            if sweep.records:
                self._work.put(sweep, SWEEP)
            queued += len(sweep.records)
        for sweep in self._roster.due_sweeps(now):
            self._work.put(sweep, SWEEP)
            queued += len(sweep.records)
        singles = self._within_budgets(singles)
        for job in round_robin(singles):
            self._work.put(job, read_priority(job))
        return queued + len(singles)

    def _forget_lost(self, owned: frozenset[str]) -> None:
        """A vault whose subscription's lease moved on leaves the roster: its new owner
        polls its jobs (the claim made them due), and this replica could not record them."""
        for vault_id in self._roster.vault_ids():
            if subscription(vault_id) not in owned:
                self._roster.leave_all(vault_id)

    def _within_budgets(self, singles: list[JobRecord]) -> list[JobRecord]:
        """Queue no more single GETs of a subscription than its read budget can serve within
        a few seconds, and none while a 429 pauses it: pollers waiting on one subscription's
        bucket must not hold up the others. The rest stay due in the store."""
        budgets = {False: self._budget(), True: self._write_budget()}
        room: dict[tuple[bool, str], int] = {}
        kept: list[JobRecord] = []
        for job in singles:
            # A cross-region restore's job is read by a POST: the write bucket pays for it.
            writes = job.kind is JobKind.CROSS_REGION_RESTORE
            budget = budgets[writes]
            if budget is None:
                kept.append(job)
                continue
            sub = subscription(job.vault_id)
            if (writes, sub) not in room:
                room[writes, sub] = 0 if budget.delay(sub) > 1.0 else budget.affordable(sub, 5.0)
            if room[writes, sub] > 0:
                room[writes, sub] -= 1
                kept.append(job)
        return kept
