"""Committing what the pollers decided: one retry policy for a locked database or a full
disk, and batched commits of many polls in one transaction."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from backupjobd.core.leases import Fence
from backupjobd.core.model import Commit
from backupjobd.errors import StoreError
from backupjobd.service.work import log_fields
from backupjobd.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")
_Pending = tuple[Commit, "asyncio.Future[bool]"]


async def persist(
    write: Callable[[], Awaitable[T]], fields: dict[str, object], retry_seconds: float
) -> T:
    """Commit an observation, retrying a locked database or a full disk with backoff.

    A failed transaction wrote nothing, so retrying cannot record anything twice; after
    the deadline the observation is dropped and the job, still due, is polled again.
    """
    deadline = time.monotonic() + retry_seconds
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


class Committer:
    """Batched persistence: commits from every poller are written together, one
    transaction per batch, so the store is never the bottleneck. A poller's submit returns
    only after its commit is durable (or has failed), so nothing is acknowledged early.

    Batches form on their own: while one commit runs, new ones queue up and go into the
    next. While reads are still under way (the GETs a sweep handed on finish within
    milliseconds of each other), a batch also waits up to `linger_seconds` for them: one
    transaction (one fsync, a handful of round trips to the database thread) instead of one
    each. With nothing else in flight a commit is written at once. Before `run` (and after
    `stop`) each commit is written on its own.
    """

    def __init__(
        self,
        store: Store,
        retry_seconds: float,
        max_batch: int,
        more_coming: Callable[[], bool] = lambda: False,
        linger_seconds: float = 0.05,
        fence: Callable[[], Fence | None] = lambda: None,
    ) -> None:
        self._store = store
        self._fence = fence
        self._retry_seconds = retry_seconds
        self._max_batch = max(1, max_batch)
        self._more_coming = more_coming
        self._linger = linger_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0
        self.committed = 0

    def fence(self) -> Fence | None:
        """The leases this replica's writes carry (None: no replicas, nothing to check)."""
        return self._fence()

    async def persist(self, write: Callable[[], Awaitable[T]], fields: dict[str, object]) -> T:
        return await persist(write, fields, self._retry_seconds)

    async def commit(self, commit: Commit) -> bool:
        """Write one poll's commit (compare-and-set); False: changed concurrently."""
        if self._task is None:
            return await self.persist(
                lambda: self._store.apply_job(
                    commit.record, commit.decision, commit.now, commit.outbox, self._fence()
                ),
                log_fields(commit.record),
            )
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((commit, future))
        return await future

    async def commit_many(self, commits: Sequence[Commit], fields: dict[str, object]) -> list[bool]:
        """Write many commits in one transaction now (a sweep's changed jobs)."""
        return await self.persist(lambda: self._store.apply_jobs(commits, self._fence()), fields)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="committer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

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

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._gather(batch)
            commits = [commit for commit, _ in batch]
            try:
                results = await self.commit_many(
                    commits, {"action": "commit_batch", "job_id": None, "vault_id": None}
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
