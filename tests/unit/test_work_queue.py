"""The work queue's order: sweeps, then reads that may detect an end, then the final reads
of jobs whose end a list recorded already, then detail snapshots."""

from __future__ import annotations

import pytest

from backupjobd.core.sweeps import Sweep
from backupjobd.service.work import BACKGROUND, FINAL, SWEEP, URGENT, WorkQueue, read_priority
from tests.unit.test_roster import VAULT, job


@pytest.mark.parametrize(
    ("status", "priority"),
    [
        (None, URGENT),
        ("InProgress", URGENT),
        ("Cancelling", URGENT),
        ("Completed", FINAL),
        ("Failed", FINAL),
        ("Succeeded", FINAL),  # a Backup vault's word
    ],
)
def test_a_read_waits_behind_detection_once_its_end_is_recorded(
    status: str | None, priority: int
) -> None:
    assert read_priority(job(1, status=status)) == priority


async def test_the_queue_hands_out_work_by_priority_then_in_order() -> None:
    queue = WorkQueue()
    detail, final, status, later = job(1), job(2, status="Completed"), job(3), job(4)
    sweep = Sweep(VAULT, (job(5),))
    queue.put(detail, BACKGROUND)
    queue.put(final, read_priority(final))
    queue.put(status, read_priority(status))
    queue.put(later, read_priority(later))
    queue.put(sweep, SWEEP)
    taken = [(await queue.get())[1] for _ in range(5)]
    assert taken == [sweep, status, later, final, detail]
