"""The pollers: a pool of workers that take work off the queue and do its I/O — one GET of
a job or an operation, or one paged list of a vault (a sweep). What to make of a read is
decided by the pure core (`decide_job`, the `VaultRoster`); the committer writes it and the
journal reports it."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

from backupjobd.adapters.arm import ArmClient
from backupjobd.config import WebhookConfig
from backupjobd.core import azure, events
from backupjobd.core.azure import JobObservation, OperationObservation
from backupjobd.core.decisions import (
    Failure,
    JobDecision,
    Missing,
    OperationOutcome,
    OperationSeen,
    Outcome,
    PollPolicy,
    Seen,
    decide_job,
    decide_operation,
)
from backupjobd.core.model import Commit, JobRecord, OperationRecord
from backupjobd.core.sweeps import (
    Settlement,
    Sweep,
    VaultRoster,
    spare_sweep_interval,
    sweep_filter,
)
from backupjobd.core.sweeps import subscription as azure_subscription
from backupjobd.errors import (
    BackupJobdError,
    CredentialError,
    NotFound,
    PermanentError,
    TooManyPages,
    TransientError,
)
from backupjobd.service.committer import Committer
from backupjobd.service.journal import Journal
from backupjobd.service.work import (
    BACKGROUND,
    URGENT,
    WorkItem,
    WorkQueue,
    detail_room,
    log_fields,
)
from backupjobd.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")


def new_event_id() -> str:
    return str(uuid.uuid4())


async def observe(request: Awaitable[T]) -> T | Missing | Failure:
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


class Pollers:
    def __init__(
        self,
        *,
        store: Store,
        arm: ArmClient,
        policy: PollPolicy,
        clock: Callable[[], datetime],
        rng: random.Random,
        work: WorkQueue,
        roster: VaultRoster,
        committer: Committer,
        journal: Journal,
        expected: Callable[[JobRecord], timedelta | None],
        webhooks: Sequence[WebhookConfig],
        concurrency: int,
    ) -> None:
        self._store = store
        self._arm = arm
        self._policy = policy
        self._clock = clock
        self._rng = rng
        self._work = work
        self._roster = roster
        self._committer = committer
        self._journal = journal
        self._expected = expected
        self._webhooks = tuple(webhooks)
        self._concurrency = concurrency
        self._workers: list[asyncio.Task[None]] = []
        # Single GETs under way: their results are coming, so a commit may wait for them.
        self.reads_running = 0
        self.polls = 0

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._worker(), name=f"poller-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        """Cancel the workers and whatever they run (its work stays due in the store)."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    async def _worker(self) -> None:
        while True:
            serial, item = await self._work.get()
            await self._work.run(serial, self._run(item), name=f"work-{serial}")

    async def _run(self, item: WorkItem) -> None:
        try:
            if isinstance(item, JobRecord):
                await self.poll_job(item)
            elif isinstance(item, Sweep):
                await self.sweep(item)
            else:
                await self.poll_operation(item)
        except asyncio.CancelledError:
            raise
        except BackupJobdError as exc:
            logger.warning("poll not saved, will retry: %s", exc, extra=log_fields(item))
        except Exception:
            logger.exception("poll failed, will retry", extra=log_fields(item))

    # ------------------------------------------------------------------ single GETs

    async def poll_job(self, record: JobRecord) -> JobDecision:
        vault = azure.vault_from_id(record.vault_id)
        self.reads_running += 1
        try:
            observed = await observe(
                self._arm.read_job(record.kind, vault, record.job_id, record.region)
            )
        finally:
            self.reads_running -= 1
        outcome: Outcome = Seen(observed) if isinstance(observed, JobObservation) else observed
        self.polls += 1
        now = self._clock()
        expected = self._expected(record)
        decision = decide_job(
            record.state(), outcome, now, self._policy, self._rng.random(), expected
        )
        commit = events.commit(record, decision, now, self._webhooks, new_event_id, expected)
        if not await self._committer.commit(commit):
            self._journal.discarded(record)
            return decision
        self._journal.job(commit, outcome)
        self._roster.rejoin(commit)
        return decision

    async def poll_operation(self, record: OperationRecord) -> None:
        vault = azure.vault_from_id(record.vault_id)
        observed = await observe(
            self._arm.read_operation(vault, record.operation_id, record.region)
        )
        outcome: OperationOutcome = (
            OperationSeen(observed) if isinstance(observed, OperationObservation) else observed
        )
        self.polls += 1
        now = self._clock()
        decision = decide_operation(record.state(), outcome, now, self._policy, self._rng.random())
        outbox = events.operation_outbox_entries(
            record, decision, now, self._webhooks, new_event_id
        )
        registered = await self._committer.persist(
            lambda: self._store.apply_operation(
                record, decision, now, self._committer.fence(), outbox
            ),
            log_fields(record),
        )
        self._journal.operation(record, outcome, decision, registered)

    # ------------------------------------------------------------------ sweeps

    async def sweep(self, item: Sweep) -> None:
        """One paged `backupJobs?$filter=status eq 'InProgress'` (or a start-time window,
        while jobs are ending) refreshes every swept job still in progress and records the
        ends it shows; the others (left the list, changed, detail due) get a single GET.
        The jobs it settles become the vault's members, swept again on their schedule."""
        try:
            await self._sweep(item)
        except BaseException:
            # What the store holds for them is unknown now: back to the store's schedule.
            self._roster.leave_all(item.vault_id)
            raise
        finally:
            self._roster.finished(item.vault_id)

    async def _list(self, item: Sweep) -> tuple[dict[str, JobObservation], int]:
        """The sweep's list (job id -> item) and the pages it took."""
        listed: dict[str, JobObservation] = {}
        pages = 0
        vault = azure.vault_from_id(item.vault_id)
        async for page in self._arm.list_jobs(
            vault, sweep_filter(vault.kind, item.window), max_pages=item.max_pages or 1000
        ):
            pages += 1
            listed.update((obs.job_id, obs) for obs in page)
        return listed, pages

    async def _sweep(self, item: Sweep) -> None:
        listed_at = self._clock()
        try:
            try:
                listed, pages = await self._list(item)
            except TooManyPages:
                if item.window is None:
                    raise
                # The window holds more jobs than it is worth reading: the in-progress list.
                item = self._roster.window_too_long(item)
                listed_at = self._clock()
                listed, pages = await self._list(item)
        except (TransientError, PermanentError, CredentialError) as exc:
            if isinstance(exc, TransientError) and exc.retry_after is not None:
                # Throttled: the subscription is paused; its jobs stay due, no single GETs.
                logger.info("sweep of vault %s throttled; retrying later", item.vault_id)
                until = self._clock() + timedelta(seconds=max(1.0, exc.retry_after))
                self._roster.throttled(item.vault_id, until)
                return
            logger.info(
                "sweep of vault %s failed (%s); polling its jobs one by one",
                item.vault_id,
                exc,
                extra={"vault_id": item.vault_id, "action": "sweep_failed"},
            )
            self._hand_on(self._roster.leave(item.vault_id, item.records))
            return
        self.polls += 1
        now = self._clock()
        settled = self._roster.settle(
            item,
            listed,
            listed_at,
            now,
            detail_room=detail_room(self._arm.budget, self._work, item.vault_id),
            jitter=self._rng.random,
            expected=self._expected,
            sooner=self._sooner(item.vault_id),
            pages_read=pages,
        )
        self._hand_on(settled.urgent)
        self._hand_on(settled.background, BACKGROUND)
        if settled.disband:
            await self._commit_disbanded(item.vault_id, settled, now)
            return
        fields: dict[str, object] = {"vault_id": item.vault_id, "action": "sweep", "job_id": None}
        if settled.next_sweep is None:
            if settled.finished:
                await self._commit_swept(item.vault_id, settled, now, fields)
            return
        if settled.changed or settled.finished:
            await self._commit_swept(item.vault_id, settled, now, fields)
        if settled.unchanged and settled.renew:
            await self._renew_lease(item.vault_id, settled, now, fields)
        self._roster.renewed(item.vault_id, settled)
        self._journal.sweep(
            item.vault_id,
            listed_at,
            now,
            settled.listed,
            len(settled.unchanged),
            len(settled.changed) + len(settled.finished),
            len(settled.urgent) + len(settled.background),
        )

    async def _commit_swept(
        self, vault_id: str, settled: Settlement, now: datetime, fields: dict[str, object]
    ) -> None:
        """One batch: the members that changed (they join the vault as committed) and the
        jobs the list showed ended (they left it; their final GET is due)."""
        commits = [
            events.commit(
                record, decision, now, self._webhooks, new_event_id, self._expected(record)
            )
            for record, decision in (*settled.changed, *settled.finished)
        ]
        applied = await self._committer.commit_many(commits, fields)
        results: list[tuple[Commit, bool]] = list(zip(commits, applied, strict=True))
        self._roster.joined(vault_id, results[: len(settled.changed)])
        for commit, ok in results:
            if ok:
                self._journal.swept_job(commit)
            else:
                self._journal.discarded(commit.before, swept=True)

    async def _commit_disbanded(self, vault_id: str, settled: Settlement, now: datetime) -> None:
        """A vault that stops sweeping: its jobs are committed with their own next polls."""
        fields: dict[str, object] = {"vault_id": vault_id, "action": "sweep", "job_id": None}
        commits = [
            events.commit(record, decision, now, self._webhooks, new_event_id)
            for record, decision in (*settled.changed, *settled.finished)
        ]
        applied = await self._committer.commit_many(commits, fields)
        for commit, ok in zip(commits, applied, strict=True):
            if ok:
                self._journal.swept_job(commit)
            else:
                self._journal.discarded(commit.before, swept=True)
        logger.info(
            "vault %s: its list costs more reads than its %d running jobs; reading them one by one",
            vault_id,
            len(commits),
            extra=fields,
        )

    def _sooner(self, vault_id: str) -> timedelta | None:
        """The next sweep comes sooner while the subscription's budget has room to spare."""
        budget = self._arm.budget
        fullness = None if budget is None else budget.fullness(azure_subscription(vault_id))
        return spare_sweep_interval(self._policy, fullness)

    async def _renew_lease(
        self, vault_id: str, settled: Settlement, now: datetime, fields: dict[str, object]
    ) -> None:
        """Store the unchanged members' lease and the polls counted since the last renewal
        in one bulk write."""
        assert settled.lease is not None
        pks = [r.pk for r in settled.unchanged]
        lease, polls = settled.lease, list(settled.polls)
        moved = await self._committer.persist(
            lambda: self._store.reschedule_jobs(pks, lease, now, polls, self._committer.fence()),
            fields,
        )
        if moved < len(pks):
            # Someone else changed some of them (stopped them, or another replica recorded
            # their end): make them due now, so they are read again from the store.
            logger.info(
                "%d jobs of vault %s changed elsewhere; reloading them",
                len(pks) - moved,
                vault_id,
                extra=fields,
            )
            self._roster.leave(vault_id, settled.unchanged)
            await self._committer.persist(
                lambda: self._store.reschedule_jobs(pks, now, fence=self._committer.fence()),
                fields,
            )

    def _hand_on(self, records: Sequence[JobRecord], priority: int = URGENT) -> None:
        for record in records:
            self._work.put(record, priority)

    async def release_members(self) -> None:
        """Hand the members back to the store's schedule, due now, so that the next process
        polls them at once instead of waiting for their lease."""
        now = self._clock()
        for back in self._roster.hand_back():
            try:
                await self._store.reschedule_jobs(
                    list(back.pks),
                    now,
                    back.last_sweep,
                    list(back.polls),
                    self._committer.fence(),
                )
            except BackupJobdError as exc:
                logger.warning("could not hand %d swept jobs back: %s", len(back.pks), exc)
