"""The polling loop: a dispatcher moves due jobs and operations from the store onto a queue,
a pool of async pollers observes each one through the ARM client, the pure core decides,
and the store commits the decision.

A failed tick or poll is logged and retried later; it never stops the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.metrics import Metrics
from backupjobd.config import WebhookConfig
from backupjobd.core import azure, events
from backupjobd.core.azure import JobObservation, OperationObservation
from backupjobd.core.decisions import (
    SWEEP_FILTER,
    DurationModel,
    Failure,
    JobDecision,
    Missing,
    OperationOutcome,
    OperationSeen,
    Outcome,
    PollPolicy,
    Seen,
    Tracking,
    decide_job,
    decide_operation,
    lease_renewal_due,
    lease_span,
    sweep_observation,
    sweep_phase,
    sweep_settles,
    sweep_slot,
    sweep_status_changed,
    sweep_worthwhile,
)
from backupjobd.core.model import JobRecord, JobWrite, OperationRecord, OutboxEntry
from backupjobd.errors import (
    BackupJobdError,
    CredentialError,
    NotFound,
    PermanentError,
    StoreError,
    TransientError,
)
from backupjobd.store import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Sweep:
    """One paged in-progress list of a vault standing in for single GETs of its jobs."""

    vault_id: str
    records: tuple[JobRecord, ...]


@dataclass(slots=True)
class _Vault:
    """The jobs a vault's sweeps look after between sweeps. Members stay in memory (and in
    flight): a sweep that sees them unchanged costs no row read and no row write. Their
    stored next poll is a lease beyond the next sweep, so neither the dispatcher nor
    another replica polls them meanwhile; one bulk reschedule renews it every few sweeps
    (`lease_renewal_due`) and stores the polls counted since."""

    vault_id: str
    members: dict[int, JobRecord] = field(default_factory=dict)
    # Sweeps of a member since its record above was written (not in its poll count).
    uncounted: dict[int, int] = field(default_factory=dict)
    # Sweeps of a member not yet in its row's poll count (stored at the next renewal).
    unstored: dict[int, int] = field(default_factory=dict)
    # The earliest lease stored for the members (None: none stored yet).
    lease_until: datetime | None = None
    # Jobs that became due while the vault had members: they join its next sweep.
    pending: dict[int, JobRecord] = field(default_factory=dict)
    # Seconds into each interval at which this vault sweeps (see `sweep_slot`).
    phase: float = 0.0
    next_sweep: datetime | None = None
    last_sweep: datetime | None = None
    sweeping: bool = False

    def caught_up(self, record: JobRecord) -> JobRecord:
        """The member's record with its sweeps counted as polls: what its next write
        stores (so the polls not yet stored are stored by it)."""
        self.unstored.pop(record.pk, None)
        polls = self.uncounted.pop(record.pk, 0)
        if not polls:
            return record
        return dataclasses.replace(
            record, poll_count=record.poll_count + polls, last_polled_at=self.last_sweep
        )


WorkItem = JobRecord | OperationRecord | _Sweep
T = TypeVar("T")
# Queue priorities: sweeps first (one sweep detects the ends of a whole vault; queued
# behind another vault's burst of GETs it would delay them all), then status reads, then
# detail snapshots of running jobs when nothing else waits.
SWEEP, URGENT, BACKGROUND = 0, 1, 2


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
    ) -> None:
        self._metrics = metrics
        self._webhooks = tuple(webhooks)
        self._committer: _Committer | None = None
        self._sweep_min_jobs = sweep_min_jobs
        self._detail = timedelta(seconds=detail_interval_seconds)
        self._sweep_sizes: dict[str, int] = {}
        self._vaults: dict[str, _Vault] = {}
        # Detail reads handed on and not yet done, by subscription (and which jobs).
        self._details_queued: dict[str, int] = {}
        self._detail_pks: set[int] = set()
        self._handed_on: set[int] = set()
        self._durations = DurationModel(())
        self._durations_at = -DURATIONS_REFRESH_SECONDS
        self._committer_task: asyncio.Task[None] | None = None
        self._store_retry_seconds = store_retry_seconds
        self._store = store
        self._arm = arm
        self._policy = policy
        self._clock = clock
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._rng = rng or random.Random()
        self._queue: asyncio.PriorityQueue[tuple[int, int, WorkItem]] = asyncio.PriorityQueue()
        self._queued = itertools.count()
        self._jobs_in_flight: set[int] = set()
        self._ops_in_flight: set[int] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._tick_lock = asyncio.Lock()
        self.last_tick_monotonic: float | None = None
        # Single GETs under way: their results are coming, so a commit may wait for them.
        self._reads_running = 0
        self.polls = 0

    def last_tick_age(self) -> float | None:
        """Seconds since the dispatcher last ticked (liveness), None before the first tick."""
        if self.last_tick_monotonic is None:
            return None
        return time.monotonic() - self.last_tick_monotonic

    @property
    def busy(self) -> bool:
        """Polls or sweeps under way (members waiting for their vault's next sweep are not)."""
        members = sum(len(v.members) for v in self._vaults.values())
        return bool(self._ops_in_flight) or len(self._jobs_in_flight) > members

    def next_sweep_at(self, vault_id: str) -> datetime | None:
        """When the vault's members are swept next (None: no sweep planned)."""
        vault = self._vaults.get(vault_id.lower())
        return None if vault is None else vault.next_sweep

    def _put(self, item: WorkItem, priority: int = URGENT) -> None:
        self._queue.put_nowait((priority, next(self._queued), item))

    def start(self) -> None:
        self._committer = _Committer(
            self._store, self._persist, self._batch_size, lambda: self._reads_running > 0
        )
        self._committer_task = asyncio.create_task(self._committer.run(), name="committer")
        self._workers = [
            asyncio.create_task(self._worker(), name=f"poller-{i}")
            for i in range(self._concurrency)
        ]

    async def tick(self) -> int:
        """Queue whatever is due and not already queued. Never raises."""
        async with self._tick_lock:
            try:
                return await self._dispatch()
            except BackupJobdError as exc:
                logger.warning("dispatch failed: %s", exc, extra={"action": "dispatch"})
            except Exception:
                logger.exception("dispatch failed", extra={"action": "dispatch"})
            finally:
                self.last_tick_monotonic = time.monotonic()
            return 0

    def _expected(self, record: JobRecord) -> timedelta | None:
        return self._durations.expected(
            record.operation, record.job_type, record.entity_friendly_name
        )

    async def _learn_durations(self) -> None:
        """Refresh the typical durations from finished jobs every few minutes."""
        now = time.monotonic()
        if now - self._durations_at < DURATIONS_REFRESH_SECONDS:
            return
        self._durations_at = now
        self._durations = DurationModel(await self._store.finished_durations())

    async def _dispatch(self) -> int:
        await self._learn_durations()
        now = self._clock()
        room = max(0, self._batch_size - self._queue.qsize())
        if room == 0:
            return 0
        ops = await self._store.due_operations(now, room, self._ops_in_flight)
        for op in ops:
            self._ops_in_flight.add(op.pk)
            self._put(op)
        jobs = await self._store.due_jobs(now, room - len(ops), self._jobs_in_flight)
        queued = len(ops)
        singles: list[JobRecord] = []
        by_vault: dict[str, list[JobRecord]] = {}
        for job in jobs:
            by_vault.setdefault(job.vault_id.lower(), []).append(job)
        for vault_key, group in by_vault.items():
            vault = self._vaults.get(vault_key)
            if vault is not None and vault.sweeping:
                continue  # they go with the vault's next sweep
            sweep = await self._plan_sweep(vault_key, group, now)
            if sweep is None:
                singles.extend(group)
                continue
            swept = {r.pk for r in sweep.records} | set(vault.pending if vault else ())
            singles.extend(r for r in group if r.pk not in swept)
            if sweep.records:
                self._jobs_in_flight.update(swept)
                self._vault(sweep.vault_id).sweeping = True
                self._put(sweep, SWEEP)
            queued += len(sweep.records)
        queued += self._due_member_sweeps(now)
        singles = self._within_budgets(singles)
        for job in _round_robin(singles):
            self._jobs_in_flight.add(job.pk)
            self._put(job)
        return queued + len(singles)

    def _due_member_sweeps(self, now: datetime) -> int:
        """Queue the sweep of every vault whose members are due (their own schedule)."""
        queued = 0
        for vault in self._vaults.values():
            if vault.sweeping or not vault.members or vault.next_sweep is None:
                continue
            if vault.next_sweep > now:
                continue
            records = (*vault.members.values(), *vault.pending.values())
            vault.pending.clear()
            vault.sweeping = True
            self._put(_Sweep(vault.vault_id, records), SWEEP)
            queued += len(records)
        return queued

    def _within_budgets(self, singles: list[JobRecord]) -> list[JobRecord]:
        """Queue no more single GETs of a subscription than its read budget can serve within
        a few seconds, and none while a 429 pauses it: pollers waiting on one subscription's
        bucket must not hold up the others. The rest stay due in the store."""
        budget = self._arm.budget
        if budget is None:
            return singles
        room: dict[str, int] = {}
        kept: list[JobRecord] = []
        for job in singles:
            sub = _subscription(job.vault_id)
            if sub not in room:
                room[sub] = 0 if budget.delay(sub) > 1.0 else budget.affordable(sub, 5.0)
            if room[sub] > 0:
                room[sub] -= 1
                kept.append(job)
        return kept

    async def _plan_sweep(
        self, vault_key: str, due: list[JobRecord], now: datetime
    ) -> _Sweep | None:
        """Sweep the vault when that is cheaper than single GETs; the sweep also takes the
        vault's InProgress jobs due within half an interval, so their schedules line up."""
        if self._sweep_min_jobs <= 0:
            return None
        room = self._detail_room(due[0].vault_id)
        affordable = room is None or room > 0
        sweepable = [
            r
            for r in due
            if sweep_settles(
                r.status,
                r.last_detail_at or r.registered_at,
                now,
                self._detail,
                detail_affordable=affordable,
            )
        ]
        vault = self._vaults.get(vault_key)
        if vault is not None and vault.members:
            # Between the vault's sweeps: newcomers wait for its next one (at most an
            # interval away) rather than each triggering a sweep of their own.
            vault.pending.update((r.pk, r) for r in sweepable)
            self._jobs_in_flight.update(r.pk for r in sweepable)
            return _Sweep(vault.vault_id, ())
        pages = max(1, -(-self._sweep_sizes.get(vault_key, 0) // SWEEP_PAGE_SIZE))
        if not sweep_worthwhile(len(sweepable), pages, self._sweep_min_jobs):
            return None
        horizon = now + self._policy.interval / 2
        ahead = await self._store.sweep_candidates(
            due[0].vault_id, horizon, self._batch_size, self._jobs_in_flight
        )
        records = {r.pk: r for r in sweepable}
        records.update({r.pk: r for r in ahead})
        return _Sweep(due[0].vault_id, tuple(records.values()))

    async def run_until_idle(self, deadline_seconds: float) -> None:
        """Tick and process until nothing is due or in flight (tests and one-shot runs)."""
        async with asyncio.timeout(deadline_seconds):
            while True:
                queued = await self.tick()
                if queued == 0 and not self.busy:
                    return
                await self._queue.join()

    def _vault(self, vault_id: str) -> _Vault:
        key = vault_id.lower()
        vault = self._vaults.get(key)
        if vault is None:
            phase = sweep_phase(len(self._vaults), self._policy.interval)
            vault = self._vaults[key] = _Vault(vault_id, phase=phase)
        return vault

    async def _worker(self) -> None:
        while True:
            _, _, item = await self._queue.get()
            try:
                if isinstance(item, JobRecord):
                    await self.poll_job(item)
                elif isinstance(item, _Sweep):
                    await self.sweep(item)
                else:
                    await self.poll_operation(item)
            except asyncio.CancelledError:
                raise
            except BackupJobdError as exc:
                logger.warning("poll not saved, will retry: %s", exc, extra=_fields(item))
            except Exception:
                logger.exception("poll failed, will retry", extra=_fields(item))
            finally:
                if isinstance(item, JobRecord):
                    vault = self._vaults.get(item.vault_id.lower())
                    if vault is None or item.pk not in vault.pending:
                        self._jobs_in_flight.discard(item.pk)
                    if item.pk in self._detail_pks:
                        self._detail_pks.discard(item.pk)
                        sub = _subscription(item.vault_id)
                        self._details_queued[sub] = self._details_queued.get(sub, 1) - 1
                elif isinstance(item, _Sweep):
                    # Jobs handed on to single GETs stay in flight until those finish, and
                    # members until the vault's next sweep.
                    vault = self._vault(item.vault_id)
                    vault.sweeping = False
                    self._jobs_in_flight.difference_update(
                        r.pk
                        for r in item.records
                        if r.pk not in self._handed_on and r.pk not in vault.members
                    )
                    self._handed_on.difference_update(r.pk for r in item.records)
                else:
                    self._ops_in_flight.discard(item.pk)
                self._queue.task_done()

    async def sweep(self, item: _Sweep) -> None:
        """One paged `backupJobs?$filter=status eq 'InProgress'` refreshes every swept job
        still in progress; the others (left the list, changed, detail due) get a single GET.
        The jobs it settles become the vault's members, swept again on their schedule."""
        vault = self._vault(item.vault_id)
        try:
            await self._sweep(item, vault)
        except BaseException:
            # What the store holds for them is unknown now: back to the store's schedule.
            self._leave(vault, list(vault.members.values()))
            raise

    async def _sweep(self, item: _Sweep, vault: _Vault) -> None:
        listed: dict[str, JobObservation] = {}
        listed_at = self._clock()
        try:
            async for page in self._arm.list_jobs(azure.vault_from_id(item.vault_id), SWEEP_FILTER):
                listed.update((obs.job_id, obs) for obs in page)
        except (TransientError, PermanentError, CredentialError) as exc:
            if isinstance(exc, TransientError) and exc.retry_after is not None:
                # Throttled: the subscription is paused; its jobs stay due, no single GETs.
                logger.info("sweep of vault %s throttled; retrying later", item.vault_id)
                vault.next_sweep = self._clock() + timedelta(seconds=max(1.0, exc.retry_after))
                return
            logger.info(
                "sweep of vault %s failed (%s); polling its jobs one by one",
                item.vault_id,
                exc,
                extra={"vault": item.vault_id, "action": "sweep_failed"},
            )
            self._hand_on(self._leave(vault, item.records))
            return
        self.polls += 1
        self._sweep_sizes[item.vault_id.lower()] = len(listed)
        now = self._clock()
        room = self._detail_room(item.vault_id)
        changed: list[tuple[JobRecord, JobDecision]] = []
        unchanged: list[JobRecord] = []
        urgent: list[JobRecord] = []
        background: list[JobRecord] = []
        next_sweep: datetime | None = None
        for record in item.records:
            seen = listed.get(record.job_id)
            obs = sweep_observation(
                record.status,
                record.last_detail_at or record.registered_at,
                seen,
                now,
                self._detail,
                detail_affordable=room is None or room > 0,
            )
            if obs is None:
                if sweep_status_changed(record.status, seen):
                    urgent.append(record)
                else:
                    background.append(record)
                    room = None if room is None else room - 1
                continue
            decision = decide_job(
                record.state(vault.uncounted.get(record.pk, 0)),
                Seen(obs, full=False),
                now,
                self._policy,
                self._rng.random(),
                self._expected(record),
            )
            if decision.next_poll_at is not None and (
                next_sweep is None or decision.next_poll_at < next_sweep
            ):
                next_sweep = decision.next_poll_at
            if record.pk in vault.members and record.schedule_only(decision, now):
                unchanged.append(record)
            else:
                changed.append((vault.caught_up(record), decision))
        self._hand_on(self._leave(vault, urgent))
        self._hand_on(self._leave(vault, background), BACKGROUND)
        if background:
            sub = _subscription(item.vault_id)
            self._details_queued[sub] = self._details_queued.get(sub, 0) + len(background)
            self._detail_pks.update(r.pk for r in background)
        if next_sweep is None:
            vault.next_sweep = None
            return
        # The next sweep is an interval after this one's list, not after its processing,
        # and on the vault's own slot.
        next_sweep = sweep_slot(
            listed_at, next_sweep - (now - listed_at), vault.phase, self._policy.interval
        )
        vault.next_sweep, vault.last_sweep = next_sweep, now
        # The stored next poll is a lease beyond the next sweep: if this process dies, the
        # jobs come due again by themselves.
        lease = next_sweep + lease_span(self._policy)
        renew = lease_renewal_due(next_sweep, vault.lease_until, self._policy)
        fields: dict[str, object] = {"vault": item.vault_id, "action": "sweep", "job_id": None}
        if changed:
            await self._commit_swept(vault, changed, lease, now, fields)
        if unchanged:
            await self._reschedule_members(vault, unchanged, lease if renew else None, now, fields)
        if renew:
            vault.lease_until = lease
        if self._metrics is not None:
            self._metrics.poll("sweep", "ok")
        logger.debug(
            "swept vault %s (listed from %s in %.1f s): %d in progress listed, %d unchanged,"
            " %d recorded, %d need a GET",
            item.vault_id,
            listed_at.isoformat(),
            (now - listed_at).total_seconds(),
            len(listed),
            len(unchanged),
            len(changed),
            len(urgent) + len(background),
            extra=fields,
        )

    async def _commit_swept(
        self,
        vault: _Vault,
        changed: list[tuple[JobRecord, JobDecision]],
        lease: datetime,
        now: datetime,
        fields: dict[str, object],
    ) -> None:
        writes = [
            JobWrite(
                record,
                dataclasses.replace(decision, next_poll_at=lease),
                now,
                events.outbox_entries(
                    record, decision, now, self._webhooks, lambda: str(uuid.uuid4())
                ),
            )
            for record, decision in changed
        ]
        applied = await self._persist(functools.partial(self._store.apply_jobs, writes), fields)
        for write, ok in zip(writes, applied, strict=True):
            record, decision = write.record, write.decision
            if not ok:
                logger.info("job changed concurrently; sweep result discarded", extra=fields)
                self._leave(vault, [record])
                continue
            vault.members[record.pk] = record.after(decision, now)
            seen = decision.observation
            if seen and (decision.transition or decision.newly_stuck):
                self._log_job(record, Seen(seen, full=False), decision)

    async def _reschedule_members(
        self,
        vault: _Vault,
        unchanged: list[JobRecord],
        lease: datetime | None,
        now: datetime,
        fields: dict[str, object],
    ) -> None:
        """Count the sweep as a poll of each member; with a `lease` (a renewal), store the
        polls counted so far and the lease in one bulk write."""
        pks = [r.pk for r in unchanged]
        for pk in pks:
            vault.uncounted[pk] = vault.uncounted.get(pk, 0) + 1
            vault.unstored[pk] = vault.unstored.get(pk, 0) + 1
        if lease is None:
            return
        polls = [vault.unstored.pop(pk) for pk in pks]
        moved = await self._persist(
            functools.partial(self._store.reschedule_jobs, pks, lease, now, polls), fields
        )
        if moved < len(pks):
            # Someone else changed some of them (stopped them, or another replica recorded
            # their end): make them due now, so they are read again from the store.
            logger.info(
                "%d jobs of vault %s changed elsewhere; reloading them",
                len(pks) - moved,
                vault.vault_id,
                extra=fields,
            )
            self._leave(vault, unchanged)
            await self._persist(functools.partial(self._store.reschedule_jobs, pks, now), fields)

    def _leave(self, vault: _Vault, records: Sequence[JobRecord]) -> list[JobRecord]:
        """Take jobs out of the vault's members; returns them as stored (polls counted)."""
        out = []
        for record in records:
            vault.members.pop(record.pk, None)
            vault.pending.pop(record.pk, None)
            out.append(vault.caught_up(record))
        if not vault.members:
            # No sweep of this vault is coming: jobs waiting for one go back to the store.
            vault.next_sweep = vault.lease_until = None
            self._jobs_in_flight.difference_update(vault.pending)
            vault.pending.clear()
        return out

    def _detail_room(self, vault_id: str) -> int | None:
        """How many detail reads a sweep may hand on now (None: no budget, no limit): the
        upper half of the subscription's bucket, less the detail reads already queued, so
        that details never crowd out the reads that record ends."""
        budget = self._arm.budget
        if budget is None:
            return None
        sub = _subscription(vault_id)
        return max(0, budget.spare_reads(sub) - self._details_queued.get(sub, 0))

    def _hand_on(self, records: Sequence[JobRecord], priority: int = URGENT) -> None:
        for record in records:
            self._handed_on.add(record.pk)
            self._put(record, priority)

    async def poll_job(self, record: JobRecord) -> JobDecision:
        vault = azure.vault_from_id(record.vault_id)
        self._reads_running += 1
        try:
            observed = await _observe(self._arm.get_job(vault, record.job_id))
        finally:
            self._reads_running -= 1
        outcome: Outcome = Seen(observed) if isinstance(observed, JobObservation) else observed
        self.polls += 1
        now = self._clock()
        decision = decide_job(
            record.state(), outcome, now, self._policy, self._rng.random(), self._expected(record)
        )
        outbox = events.outbox_entries(
            record, decision, now, self._webhooks, lambda: str(uuid.uuid4())
        )
        if self._committer is not None:
            applied = await self._committer.submit(record, decision, outbox, now)
        else:
            applied = await self._persist(
                lambda: self._store.apply_job(record, decision, now, outbox), _fields(record)
            )
        if not applied:
            logger.info("job changed concurrently; poll discarded", extra=_fields(record))
            return decision
        if self._metrics is not None:
            self._metrics.poll("job", _outcome_label(outcome))
            if decision.transition is not None and decision.status is not None:
                end = decision.observation.end_time if decision.observation else None
                terminal = decision.tracking is Tracking.FINISHED
                self._metrics.transition(decision.status, end if terminal else None, now)
        self._log_job(record, outcome, decision)
        self._rejoin(record, decision, now)
        return decision

    def _rejoin(self, record: JobRecord, decision: JobDecision, now: datetime) -> None:
        """A job of a swept vault read on its own (a detail read) and still running joins
        the vault's next sweep at once; back in the store it would wait for its next poll
        and then for the sweep after it."""
        vault = self._vaults.get(record.vault_id.lower())
        if vault is None or not vault.members or decision.tracking is not Tracking.ACTIVE:
            return
        if decision.status != "InProgress":
            return
        vault.pending[record.pk] = record.after(decision, now)

    def _log_job(self, record: JobRecord, outcome: Outcome, decision: JobDecision) -> None:
        fields = _fields(record)
        logger.debug(
            "polled job %s: %s", record.job_id, type(outcome).__name__.lower(), extra=fields
        )
        finished = decision.tracking is Tracking.FINISHED
        if decision.transition is not None:
            # One line per state change: a change that ends tracking says so itself.
            old, new = decision.transition
            logger.info(
                "job %s %s: %s -> %s%s",
                record.job_id,
                decision.observation.operation if decision.observation else "",
                old or "(new)",
                new,
                " (finished)" if finished else "",
                extra={
                    **fields,
                    "action": "transition",
                    "from_status": old,
                    "to_status": new,
                    "finished": finished,
                },
            )
        if decision.newly_stuck:
            logger.warning(
                "job %s looks stuck: still %s since %s",
                record.job_id,
                decision.status,
                record.start_time.isoformat() if record.start_time else "registration",
                extra={**fields, "action": "stuck"},
            )
        if decision.unknown_status:
            logger.warning(
                "job %s reports an unknown status %r; still polling",
                record.job_id,
                decision.status,
                extra={**fields, "action": "unknown_status"},
            )
        if finished and decision.transition is None:
            logger.info(
                "job %s finished: %s",
                record.job_id,
                decision.status,
                extra={**fields, "action": "finish"},
            )
        elif decision.tracking is Tracking.LOST:
            logger.warning(
                "job %s lost: Azure does not know it",
                record.job_id,
                extra={**fields, "action": "lost"},
            )
        elif decision.error is not None and decision.new_error:
            logger.warning(
                "job %s: %s",
                record.job_id,
                decision.error,
                extra={**fields, "action": "poll_error"},
            )

    async def poll_operation(self, record: OperationRecord) -> None:
        vault = azure.vault_from_id(record.vault_id)
        observed = await _observe(self._arm.get_operation(vault, record.operation_id))
        outcome: OperationOutcome = (
            OperationSeen(observed) if isinstance(observed, OperationObservation) else observed
        )
        self.polls += 1
        now = self._clock()
        decision = decide_operation(record.state(), outcome, now, self._policy, self._rng.random())
        registered = await self._persist(
            lambda: self._store.apply_operation(record, decision, now), _fields(record)
        )
        fields = {"job_id": None, "vault": record.vault_id, "operation_id": record.operation_id}
        if self._metrics is not None:
            self._metrics.poll("operation", _outcome_label(outcome))
        if registered is None:
            logger.info("operation changed concurrently; poll discarded", extra=fields)
            return
        for result in registered:
            logger.info(
                "operation %s started job %s%s",
                record.operation_id,
                result.ident,
                "" if result.created else " (already tracked)",
                extra={**fields, "job_id": result.ident, "action": "operation_resolved"},
            )
        if decision.tracking is Tracking.FINISHED and not decision.job_ids:
            logger.info(
                "operation %s succeeded without starting a job",
                record.operation_id,
                extra={**fields, "action": "operation_resolved"},
            )
        elif decision.error is not None and decision.new_error:
            level = logging.WARNING
            logger.log(
                level,
                "operation %s: %s",
                record.operation_id,
                decision.error,
                extra={**fields, "action": "operation_error"},
            )

    async def _persist(self, write: Callable[[], Awaitable[T]], fields: dict[str, object]) -> T:
        """Commit an observation, retrying a locked database or a full disk with backoff.

        A failed transaction wrote nothing, so retrying cannot record anything twice; after
        the deadline the observation is dropped and the job, still due, is polled again.
        """
        deadline = time.monotonic() + self._store_retry_seconds
        delay = 0.1
        while True:
            try:
                return await write()
            except StoreError as exc:
                if not exc.transient or time.monotonic() + delay > deadline:
                    raise
                logger.warning(
                    "database write failed (%s); retrying in %.1f s",
                    exc,
                    delay,
                    extra={**fields, "action": "store_retry"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _release_members(self) -> None:
        """Hand the members back to the store's schedule, due now, so that the next process
        polls them at once instead of waiting for their lease."""
        now = self._clock()
        for vault in self._vaults.values():
            pks = list(vault.members)
            polls = [vault.unstored.get(pk, 0) for pk in pks]
            last_sweep = vault.last_sweep
            self._leave(vault, list(vault.members.values()))
            self._jobs_in_flight.difference_update(pks)
            if not pks:
                continue
            try:
                await self._store.reschedule_jobs(pks, now, last_sweep, polls)
            except BackupJobdError as exc:
                logger.warning("could not hand %d swept jobs back: %s", len(pks), exc)

    async def drain(self, grace_seconds: float) -> bool:
        """Stop taking work; let in-flight polls finish (and commit) within the grace time."""
        await self._release_members()
        while not self._queue.empty():
            _, _, item = self._queue.get_nowait()
            if isinstance(item, JobRecord):
                self._jobs_in_flight.discard(item.pk)
            elif isinstance(item, _Sweep):
                self._jobs_in_flight.difference_update(r.pk for r in item.records)
            else:
                self._ops_in_flight.discard(item.pk)
            self._queue.task_done()
        drained = True
        try:
            async with asyncio.timeout(grace_seconds):
                await self._queue.join()
        except TimeoutError:
            drained = False
        await self._release_members()
        self._details_queued.clear()
        self._detail_pks.clear()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._committer_task is not None:
            self._committer_task.cancel()
            await asyncio.gather(self._committer_task, return_exceptions=True)
            self._committer, self._committer_task = None, None
        return drained


_Pending = tuple[JobWrite, "asyncio.Future[bool]"]


class _Committer:
    """Batched persistence: decisions from every poller are committed together, one
    transaction per batch, so the store is never the bottleneck. A poller's submit returns
    only after its decision is durable (or has failed), so nothing is acknowledged early.

    Batches form on their own: while one commit runs, new decisions queue up and go into
    the next one. While reads are still under way (the GETs a sweep handed on finish within
    milliseconds of each other), a batch also waits up to `linger_seconds` for them: one
    commit (one fsync, a handful of round trips to the database thread) instead of one
    each. With nothing else in flight a decision is committed at once.
    """

    def __init__(
        self,
        store: Store,
        persist: Callable[[Callable[[], Awaitable[list[bool]]], dict[str, object]], Any],
        max_batch: int,
        more_coming: Callable[[], bool] = lambda: False,
        linger_seconds: float = 0.05,
    ) -> None:
        self._store = store
        self._persist = persist
        self._max_batch = max(1, max_batch)
        self._more_coming = more_coming
        self._linger = linger_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.batches = 0
        self.committed = 0

    async def submit(
        self,
        record: JobRecord,
        decision: JobDecision,
        outbox: Sequence[OutboxEntry],
        now: datetime,
    ) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((JobWrite(record, decision, now, outbox), future))
        return await future

    async def _gather(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + self._linger
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = until - loop.time()
            if left <= 0 or not self._more_coming():
                return
            try:
                async with asyncio.timeout(min(left, 0.005)):
                    batch.append(await self._queue.get())
            except TimeoutError:
                continue

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._gather(batch)
            writes = [write for write, _ in batch]
            try:
                results: list[bool] = await self._persist(
                    functools.partial(self._store.apply_jobs, writes),
                    {"action": "commit_batch", "job_id": None, "vault": None},
                )
            except asyncio.CancelledError:
                for _, future in batch:
                    if not future.done():
                        future.cancel()
                raise
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.committed += len(batch)
            for (_, future), ok in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(ok)


DURATIONS_REFRESH_SECONDS = 300.0
# Azure pages job lists 200 at a time.
SWEEP_PAGE_SIZE = 200


def _subscription(vault_id: str) -> str:
    return vault_id.split("/")[2].lower()


def _round_robin(jobs: Sequence[JobRecord]) -> list[JobRecord]:
    """Interleave subscriptions so one subscription's backlog does not queue ahead of all."""
    lanes: dict[str, list[JobRecord]] = {}
    for job in jobs:
        lanes.setdefault(_subscription(job.vault_id), []).append(job)
    out: list[JobRecord] = []
    for row in itertools.zip_longest(*lanes.values()):
        out.extend(job for job in row if job is not None)
    return out


def _outcome_label(outcome: object) -> str:
    if isinstance(outcome, Failure):
        return "transient_error" if outcome.transient else "permanent_error"
    return "not_found" if isinstance(outcome, Missing) else "ok"


async def _observe(request: Awaitable[T]) -> T | Missing | Failure:
    """One ARM read, with the client's errors turned into the core's outcomes."""
    try:
        return await request
    except NotFound:
        return Missing()
    except (TransientError, CredentialError) as exc:
        retry_after = exc.retry_after if isinstance(exc, TransientError) else None
        return Failure(str(exc), transient=True, retry_after=retry_after)
    except PermanentError as exc:
        return Failure(str(exc), transient=False, status=exc.status, code=exc.code)


def _fields(item: WorkItem) -> dict[str, object]:
    if isinstance(item, JobRecord):
        return {"job_id": item.job_id, "vault": item.vault_id, "action": "poll_job"}
    if isinstance(item, _Sweep):
        return {"job_id": None, "vault": item.vault_id, "action": "sweep"}
    return {"job_id": None, "vault": item.vault_id, "action": "poll_operation"}
