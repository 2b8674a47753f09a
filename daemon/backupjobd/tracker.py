"""The polling loop: a dispatcher moves due jobs and operations from the store onto a queue,
a pool of async pollers observes each one through the ARM client, the pure core decides,
and the store commits the decision.

A failed tick or poll is logged and retried later; it never stops the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from backupjobd import azure, events
from backupjobd.arm import ArmClient
from backupjobd.azure import JobObservation, OperationObservation
from backupjobd.config import WebhookConfig
from backupjobd.decisions import (
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
)
from backupjobd.errors import (
    BackupJobdError,
    CredentialError,
    NotFound,
    PermanentError,
    StoreError,
    TransientError,
)
from backupjobd.metrics import Metrics
from backupjobd.store import JobRecord, JobWrite, OperationRecord, OutboxEntry, Store

logger = logging.getLogger(__name__)

WorkItem = JobRecord | OperationRecord
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
    ) -> None:
        self._metrics = metrics
        self._webhooks = tuple(webhooks)
        self._committer: _Committer | None = None
        self._committer_task: asyncio.Task[None] | None = None
        self._store_retry_seconds = store_retry_seconds
        self._store = store
        self._arm = arm
        self._policy = policy
        self._clock = clock
        self._concurrency = concurrency
        self._batch_size = batch_size
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self._jobs_in_flight: set[int] = set()
        self._ops_in_flight: set[int] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._tick_lock = asyncio.Lock()
        self.last_tick_monotonic: float | None = None
        self.polls = 0

    def last_tick_age(self) -> float | None:
        """Seconds since the dispatcher last ticked (liveness), None before the first tick."""
        if self.last_tick_monotonic is None:
            return None
        return time.monotonic() - self.last_tick_monotonic

    @property
    def busy(self) -> bool:
        return bool(self._jobs_in_flight or self._ops_in_flight)

    def start(self) -> None:
        self._committer = _Committer(self._store, self._persist, self._batch_size)
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

    async def _dispatch(self) -> int:
        now = self._clock()
        room = max(0, self._batch_size - self._queue.qsize())
        if room == 0:
            return 0
        ops = await self._store.due_operations(now, room, self._ops_in_flight)
        for op in ops:
            self._ops_in_flight.add(op.pk)
            self._queue.put_nowait(op)
        jobs = await self._store.due_jobs(now, room - len(ops), self._jobs_in_flight)
        for job in jobs:
            self._jobs_in_flight.add(job.pk)
            self._queue.put_nowait(job)
        return len(ops) + len(jobs)

    async def run_until_idle(self, deadline_seconds: float) -> None:
        """Tick and process until nothing is due or in flight (tests and one-shot runs)."""
        async with asyncio.timeout(deadline_seconds):
            while True:
                queued = await self.tick()
                if queued == 0 and not self.busy:
                    return
                await self._queue.join()

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                if isinstance(item, JobRecord):
                    await self.poll_job(item)
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
                    self._jobs_in_flight.discard(item.pk)
                else:
                    self._ops_in_flight.discard(item.pk)
                self._queue.task_done()

    async def poll_job(self, record: JobRecord) -> JobDecision:
        vault = azure.vault_from_id(record.vault_id)
        observed = await _observe(self._arm.get_job(vault, record.job_id))
        outcome: Outcome = Seen(observed) if isinstance(observed, JobObservation) else observed
        self.polls += 1
        now = self._clock()
        decision = decide_job(record.state(), outcome, now, self._policy, self._rng.random())
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
        return decision

    def _log_job(self, record: JobRecord, outcome: Outcome, decision: JobDecision) -> None:
        fields = _fields(record)
        logger.debug(
            "polled job %s: %s", record.job_id, type(outcome).__name__.lower(), extra=fields
        )
        if decision.transition is not None:
            old, new = decision.transition
            logger.info(
                "job %s %s: %s -> %s",
                record.job_id,
                decision.observation.operation if decision.observation else "",
                old or "(new)",
                new,
                extra={**fields, "action": "transition", "from_status": old, "to_status": new},
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
        if decision.tracking is Tracking.FINISHED:
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

    async def drain(self, grace_seconds: float) -> bool:
        """Stop taking work; let in-flight polls finish (and commit) within the grace time."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, JobRecord):
                self._jobs_in_flight.discard(item.pk)
            else:
                self._ops_in_flight.discard(item.pk)
            self._queue.task_done()
        drained = True
        try:
            async with asyncio.timeout(grace_seconds):
                await self._queue.join()
        except TimeoutError:
            drained = False
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
    the next one; an idle daemon commits each decision at once, adding no latency.
    """

    def __init__(
        self,
        store: Store,
        persist: Callable[[Callable[[], Awaitable[list[bool]]], dict[str, object]], Any],
        max_batch: int,
    ) -> None:
        self._store = store
        self._persist = persist
        self._max_batch = max(1, max_batch)
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

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
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
    return {"job_id": None, "vault": item.vault_id, "action": "poll_operation"}
