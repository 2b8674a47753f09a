"""The work queue between the dispatcher and the pollers, and the one registry of work in
flight. An entry is made when work is queued and removed when the task that ran it is done
(a done-callback), or when a drain drops it unstarted: what is in flight can never drift
from what is running, whichever way a task ends."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from backupjobd.adapters.budget import ReadBudget
from backupjobd.core import azure, sweeps
from backupjobd.core.model import JobRecord, OperationRecord
from backupjobd.core.sweeps import Sweep, subscription

WorkItem = JobRecord | OperationRecord | Sweep
# Queue priorities: sweeps first (one sweep detects the ends of a whole vault; queued
# behind another vault's burst of GETs it would delay them all), then status reads, then
# the final reads of jobs whose end is recorded already (a list showed it: the GET keeps
# their final snapshot and detects nothing), then detail snapshots of running jobs when
# nothing else waits.
SWEEP, URGENT, FINAL, BACKGROUND = 0, 1, 2, 3


def read_priority(job: JobRecord) -> int:
    """A single GET's place in the queue: a job whose end is recorded waits for its final
    read behind the reads that may detect an end."""
    return FINAL if azure.is_terminal_status(job.status) else URGENT


@dataclass(frozen=True, slots=True)
class _Entry:
    item: WorkItem
    priority: int


class WorkQueue:
    def __init__(self) -> None:
        self._queue: asyncio.PriorityQueue[tuple[int, int, WorkItem]] = asyncio.PriorityQueue()
        self._serial = itertools.count()
        self._entries: dict[int, _Entry] = {}

    def put(self, item: WorkItem, priority: int = URGENT) -> None:
        serial = next(self._serial)
        self._entries[serial] = _Entry(item, priority)
        self._queue.put_nowait((priority, serial, item))

    def qsize(self) -> int:
        return self._queue.qsize()

    async def get(self) -> tuple[int, WorkItem]:
        _, serial, item = await self._queue.get()
        return serial, item

    def run(self, serial: int, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run a taken item as its own task; its entry lives exactly as long as the task."""
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(lambda _: self._release(serial))
        return task

    def _release(self, serial: int) -> None:
        del self._entries[serial]
        self._queue.task_done()

    def drop_queued(self) -> int:
        """Forget the work not yet started (a drain); returns how much there was."""
        dropped = 0
        while not self._queue.empty():
            _, serial, _ = self._queue.get_nowait()
            self._release(serial)
            dropped += 1
        return dropped

    async def join(self) -> None:
        await self._queue.join()

    def jobs(self) -> set[int]:
        """Jobs queued or being polled, alone or in a sweep."""
        out: set[int] = set()
        for entry in self._entries.values():
            if isinstance(entry.item, JobRecord):
                out.add(entry.item.pk)
            elif isinstance(entry.item, Sweep):
                out.update(r.pk for r in entry.item.records)
        return out

    def operations(self) -> set[int]:
        return {e.item.pk for e in self._entries.values() if isinstance(e.item, OperationRecord)}

    def details(self, subscription_id: str) -> int:
        """Detail reads queued or running for the subscription (they spend spare reads)."""
        return sum(
            1
            for e in self._entries.values()
            if e.priority == BACKGROUND
            and isinstance(e.item, JobRecord)
            and subscription(e.item.vault_id) == subscription_id
        )


def log_fields(item: WorkItem) -> dict[str, object]:
    """The structured log fields naming a piece of work."""
    if isinstance(item, JobRecord):
        return {"job_id": item.job_id, "vault_id": item.vault_id, "action": "poll_job"}
    if isinstance(item, Sweep):
        return {"job_id": None, "vault_id": item.vault_id, "action": "sweep"}
    return {"job_id": None, "vault_id": item.vault_id, "action": "poll_operation"}


def detail_room(budget: ReadBudget | None, work: WorkQueue, vault_id: str) -> int | None:
    """How many detail reads may be handed on now for the vault's subscription (None: no
    read budget, no limit); see `core.sweeps.detail_room`."""
    if budget is None:
        return None
    sub = subscription(vault_id)
    return sweeps.detail_room(budget.spare_reads(sub), work.details(sub))
