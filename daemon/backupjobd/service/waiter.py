"""`backupjobd wait`: block until jobs are terminal — the replacement for `az backup job wait`.

It reads the daemon's database. When no daemon has sent a heartbeat recently it polls
the jobs itself, through a tracker built by the composition root exactly as `serve` builds
its own (`bootstrap.tracker_for`), so what it sees is recorded, and announced to webhooks,
as if the daemon had seen it (compare-and-set keeps a concurrent daemon from duplicating it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta

from backupjobd.core import azure
from backupjobd.core.azure import VaultRef, validate_operation_id, vault_from_id
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import JobRecord, OperationRecord
from backupjobd.core.registration import JobRegistration
from backupjobd.errors import InvalidInput
from backupjobd.service.tracker import Tracker
from backupjobd.store import Store

logger = logging.getLogger(__name__)

EXIT_TIMEOUT = 124
EXIT_LOST = 6
EXIT_BY_STATUS = {"Completed": 0, "CompletedWithWarnings": 3, "Failed": 4, "Cancelled": 5}
# Every kind's terminal statuses (Backup vaults say Succeeded…), through the core's one map.
EXIT_BY_PHASE = {
    azure.Phase.SUCCEEDED: 0,
    azure.Phase.WARNINGS: 3,
    azure.Phase.FAILED: 4,
    azure.Phase.CANCELLED: 5,
}
# With several jobs, the exit code is the worst outcome, in this order.
_SEVERITY = [0, 3, 5, 4, EXIT_LOST, EXIT_TIMEOUT]


@dataclass(frozen=True, slots=True)
class Target:
    vault: VaultRef | None
    job_id: str
    region: str | None = None  # a cross-region-restore job's secondary region


class OperationFailed(Exception):
    """Azure rejected the trigger: the operation ended without starting a job."""

    def __init__(self, operation: OperationRecord) -> None:
        super().__init__(operation.last_error or operation.status or "failed")
        self.operation = operation


async def operation_of(store: Store, ref: str) -> OperationRecord | None:
    """The tracked operation a bare id names when no tracked job has that id (`wait OP_ID`
    with what `register` printed)."""
    if await store.find_jobs(ref.lower()):
        return None
    try:
        operation_id = validate_operation_id(ref)  # as registration stored it
    except InvalidInput:
        return None  # not an operation id either: the job id check says why
    found = await store.list_operations(operation_id)
    if len(found) > 1:
        raise InvalidInput(f"operation {ref} is tracked in {len(found)} vaults")
    return found[0] if found else None


async def jobs_of_operation(
    store: Store,
    operation: OperationRecord,
    give_up_after: float | None,
    *,
    own_tracker: Callable[[], AbstractAsyncContextManager[Tracker]],
    now: Callable[[], datetime],
    liveness_window: timedelta,
    check_every: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[Target], float | None]:
    """Wait until the operation names its jobs; returns them as targets and what is left of
    the timeout. Raises OperationFailed when Azure rejected the trigger, TimeoutError when
    the time ran out first. With no daemon alive, the operation is polled here."""
    deadline = None if give_up_after is None else clock() + give_up_after
    vault = vault_from_id(operation.vault_id)
    async with AsyncExitStack() as stack:
        tracker: Tracker | None = None
        while True:
            if operation.job_ids:
                left = None if deadline is None else max(0.0, deadline - clock())
                return [Target(vault, job_id) for job_id in operation.job_ids], left
            if operation.tracking is not Tracking.ACTIVE:
                raise OperationFailed(operation)
            if deadline is not None and clock() >= deadline:
                raise TimeoutError
            if not await store.live_instances(now() - liveness_window):
                if tracker is None:
                    logger.info("no daemon is running: polling the operation myself")
                    tracker = await stack.enter_async_context(own_tracker())
                moment = now()
                if operation.next_poll_at is None or operation.next_poll_at <= moment:
                    try:
                        await tracker.poll_operation(operation)
                    except Exception as exc:
                        logger.warning(
                            "polling operation %s failed: %s", operation.operation_id, exc
                        )
            pause = (
                check_every if deadline is None else max(0.0, min(check_every, deadline - clock()))
            )
            await asyncio.sleep(pause)
            current = [
                op
                for op in await store.list_operations(operation.operation_id)
                if op.pk == operation.pk
            ]
            operation = current[0] if current else operation


def outcome_code(job: JobRecord) -> int | None:
    """The exit code a finished job stands for; None while it is still tracked."""
    if job.tracking is Tracking.LOST:
        return EXIT_LOST
    if job.tracking is Tracking.FINISHED and job.status is not None:
        return EXIT_BY_PHASE.get(azure.job_phase(job.status), 1)
    return None


def worst(codes: Sequence[int]) -> int:
    return max(codes, key=lambda c: _SEVERITY.index(c) if c in _SEVERITY else 0, default=0)


async def resolve(store: Store, targets: Sequence[Target], now: datetime) -> list[JobRecord]:
    """Each target's tracked job; untracked ones are registered when their vault is known."""
    missing: list[JobRegistration] = []
    for target in targets:
        found = [
            j
            for j in await store.find_jobs(target.job_id)
            if target.vault is None or j.vault_id.lower() == target.vault.key
        ]
        if len(found) > 1:
            raise InvalidInput(
                f"job {target.job_id} is tracked in {len(found)} vaults: give --vault"
            )
        if not found:
            if target.vault is None:
                raise InvalidInput(
                    f"job {target.job_id} is not tracked: give --vault or its ARM id to track it"
                )
            missing.append(JobRegistration(target.vault, target.job_id, "wait", target.region))
    if missing:
        await store.register(missing, now)
    return await _current(store, targets)


async def _current(store: Store, targets: Sequence[Target]) -> list[JobRecord]:
    out = []
    for target in targets:
        found = [
            j
            for j in await store.find_jobs(target.job_id)
            if target.vault is None or j.vault_id.lower() == target.vault.key
        ]
        out.append(found[0])
    return out


async def wait(
    store: Store,
    targets: Sequence[Target],
    give_up_after: float | None,
    *,
    own_tracker: Callable[[], AbstractAsyncContextManager[Tracker]],
    now: Callable[[], datetime],
    liveness_window: timedelta,
    check_every: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    watch: Callable[[Sequence[JobRecord]], None] | None = None,
) -> tuple[int, list[JobRecord]]:
    """Returns (exit code, the jobs as last read). `own_tracker` is entered only when no
    daemon is alive (no heartbeat within `liveness_window`). `watch` sees the jobs after
    every read (the live lines)."""
    # A wall-clock-free deadline: works for any length, including over a day.
    deadline = None if give_up_after is None else clock() + give_up_after
    jobs = await resolve(store, targets, now())
    async with AsyncExitStack() as stack:
        tracker: Tracker | None = None
        while True:
            if watch is not None:
                watch(jobs)
            codes = [outcome_code(j) for j in jobs]
            if all(c is not None for c in codes):
                return worst([c for c in codes if c is not None]), jobs
            if deadline is not None and clock() >= deadline:
                return EXIT_TIMEOUT, jobs
            alive = await store.live_instances(now() - liveness_window)
            if not alive:
                if tracker is None:
                    logger.info("no daemon is running: polling the jobs myself")
                    tracker = await stack.enter_async_context(own_tracker())
                moment = now()
                due = [
                    j
                    for j in jobs
                    if j.tracking is Tracking.ACTIVE
                    and (j.next_poll_at is None or j.next_poll_at <= moment)
                ]
                results = await asyncio.gather(
                    *(tracker.poll_job(j) for j in due), return_exceptions=True
                )
                for job, result in zip(due, results, strict=True):
                    if isinstance(result, Exception):
                        logger.warning("polling job %s failed: %s", job.job_id, result)
            pause = check_every
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - clock()))
            await asyncio.sleep(pause)
            jobs = await _current(store, targets)
