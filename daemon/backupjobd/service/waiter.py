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

from backupjobd.core.azure import VaultRef
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import JobRegistration
from backupjobd.errors import InvalidInput
from backupjobd.service.tracker import Tracker
from backupjobd.store import Store

logger = logging.getLogger(__name__)

EXIT_TIMEOUT = 124
EXIT_LOST = 6
EXIT_BY_STATUS = {"Completed": 0, "CompletedWithWarnings": 3, "Failed": 4, "Cancelled": 5}
# With several jobs, the exit code is the worst outcome, in this order.
_SEVERITY = [0, 3, 5, 4, EXIT_LOST, EXIT_TIMEOUT]


@dataclass(frozen=True, slots=True)
class Target:
    vault: VaultRef | None
    job_id: str


def outcome_code(job: JobRecord) -> int | None:
    """The exit code a finished job stands for; None while it is still tracked."""
    if job.tracking is Tracking.LOST:
        return EXIT_LOST
    if job.tracking is Tracking.FINISHED and job.status is not None:
        return EXIT_BY_STATUS.get(job.status, 1)
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
            missing.append(JobRegistration(target.vault, target.job_id, "wait"))
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
) -> tuple[int, list[JobRecord]]:
    """Returns (exit code, the jobs as last read). `own_tracker` is entered only when no
    daemon is alive (no heartbeat within `liveness_window`)."""
    # A wall-clock-free deadline: works for any length, including over a day.
    deadline = None if give_up_after is None else clock() + give_up_after
    jobs = await resolve(store, targets, now())
    async with AsyncExitStack() as stack:
        tracker: Tracker | None = None
        while True:
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
