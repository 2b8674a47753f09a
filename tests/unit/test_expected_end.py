"""When a job should end: the durations learned from similar finished jobs (the model
adaptive polling uses) added to the job's start, on a fake clock, and null when nothing
similar has finished."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from backupjobd.adapters.durations import Durations
from backupjobd.core import events
from backupjobd.core.decisions import DurationModel, Seen, Tracking, decide_job
from backupjobd.core.model import JobRecord
from tests.unit.test_events import NOW, POLICY, REGISTERED, hook, observation, record

START = NOW - timedelta(minutes=5)
BACKUP = ("Backup", "AzureIaaSVMJob", "vm1")


def similar(seconds: float, entity: str = "vm1") -> tuple[str, str, str, float]:
    return ("Backup", "AzureIaaSVMJob", entity, seconds)


def running(**changes: object) -> JobRecord:
    values: dict[str, object] = {
        "status": "InProgress",
        "operation": "Backup",
        "job_type": "AzureIaaSVMJob",
        "entity_friendly_name": "vm1",
        "start_time": START,
    }
    values.update(changes)
    return record(**values)


def expected_of(job: JobRecord, samples: list[tuple[str, str, str, float]]) -> JobRecord:
    model = DurationModel(samples)
    return job.expecting(model.expected(job.operation, job.job_type, job.entity_friendly_name))


def test_nothing_similar_finished_yet_gives_null() -> None:
    job = expected_of(running(), [])
    assert job.expected_end_at is None
    assert job.to_json()["expected_end_at"] is None
    assert not job.overdue(NOW)


def test_too_few_similar_jobs_give_null() -> None:
    assert expected_of(running(), [similar(600), similar(600)]).expected_end_at is None


def test_the_median_of_similar_jobs_is_added_to_azure_start_time() -> None:
    job = expected_of(running(), [similar(600), similar(1200), similar(900)])
    assert job.expected_end_at == START + timedelta(seconds=900)
    assert job.to_json()["expected_end_at"] == "2026-03-01T12:10:00Z"


def test_the_same_entity_wins_over_its_kind() -> None:
    samples = [similar(60, "other")] * 5 + [similar(3600)] * 3
    assert expected_of(running(), samples).expected_end_at == START + timedelta(hours=1)
    kind_only = expected_of(running(entity_friendly_name="vm9"), samples)
    assert kind_only.expected_end_at == START + timedelta(seconds=60)


def test_a_job_azure_has_not_shown_yet_counts_from_its_registration() -> None:
    job = running(start_time=None)
    assert expected_of(job, [similar(300)] * 3).expected_end_at == REGISTERED + timedelta(minutes=5)


def test_an_unseen_job_has_no_kind_to_compare_with() -> None:
    unseen = record()
    assert expected_of(unseen, [similar(300)] * 3).expected_end_at is None


@pytest.mark.parametrize("tracking", [Tracking.FINISHED, Tracking.LOST, Tracking.STOPPED])
def test_a_job_no_longer_tracked_expects_nothing(tracking: Tracking) -> None:
    job = running(tracking=tracking).expecting(timedelta(minutes=1))
    assert job.expected_end_at is None


def test_overdue_only_after_the_expected_end() -> None:
    job = running().expecting(timedelta(minutes=10))
    assert not job.overdue(START + timedelta(minutes=10))
    assert job.overdue(START + timedelta(minutes=10, seconds=1))


def test_a_webhook_event_carries_the_expected_end() -> None:
    before = running(status=None)
    decision = decide_job(
        before.state(), Seen(observation("InProgress")), NOW, POLICY, 0.5, timedelta(minutes=20)
    )
    hooks = [hook("everything", "all")]
    commit = events.commit(before, decision, NOW, hooks, lambda: "e1", timedelta(minutes=20))
    (entry,) = commit.outbox
    job = json.loads(entry.payload)["data"]["job"]
    assert job["expected_end_at"] == "2026-03-01T12:15:00Z"  # Azure's start 11:55 + 20 min


class CountingStore:
    """Only what `Durations` reads, counting the reads."""

    def __init__(self, samples: list[tuple[str, str, str, float]]) -> None:
        self.samples = samples
        self.reads = 0

    async def finished_durations(self) -> list[tuple[str, str, str, float]]:
        self.reads += 1
        return list(self.samples)


async def test_durations_are_learned_again_only_after_the_refresh_interval() -> None:
    now = [1000.0]
    store = CountingStore([similar(600)] * 3)
    durations = Durations(refresh_seconds=300, clock=lambda: now[0])
    assert durations.annotate([running()])[0].expected_end_at is None  # nothing learned yet
    await durations.refresh(store)  # type: ignore[arg-type]
    assert durations.annotate([running()])[0].expected_end_at == START + timedelta(minutes=10)
    store.samples = [similar(60)] * 3
    now[0] += 299
    await durations.refresh(store)  # type: ignore[arg-type]
    assert store.reads == 1
    now[0] += 1
    await durations.refresh(store)  # type: ignore[arg-type]
    assert store.reads == 2
    assert durations.annotate([running()])[0].expected_end_at == START + timedelta(minutes=1)


async def test_records_that_expect_nothing_do_not_read_the_store() -> None:
    store = CountingStore([similar(600)] * 3)
    durations = Durations()
    finished = running(tracking=Tracking.FINISHED)
    assert await durations.annotated(store, [finished]) == [finished]  # type: ignore[arg-type]
    assert store.reads == 0
    [job] = await durations.annotated(store, [running()])  # type: ignore[arg-type]
    assert store.reads == 1 and job.expected_end_at == START + timedelta(minutes=10)
