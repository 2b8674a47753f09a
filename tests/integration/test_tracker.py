"""The Tracker wired as in production (SqlStore on SQLite, ArmClient over aiohttp) against
the in-process emulator; one fake clock drives both the tracker and the emulator."""

from __future__ import annotations

import asyncio
import copy
import logging
import uuid
from datetime import timedelta
from typing import Any

import pytest

from backupjobd.core import azure
from backupjobd.core.decisions import Tracking
from backupjobd.core.registration import OperationRegistration
from backupjobd.emulator import (
    DEFAULT_VAULT_ID,
    EmulatedJob,
    EmulatorState,
    JobSpec,
)
from backupjobd.testing import BASE, TEST_POLICY
from tests.integration.rig import API, RUN_DEADLINE_S, VAULT, MakeRig, Rig

TOKEN = "tracker-token-SECRET"
POLICY = TEST_POLICY
FINALS = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]


class ScriptedState(EmulatorState):
    """The emulator, with an optional scripted `extendedInfo` per job and a log of the
    top-level `duration` values it served."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scripted: dict[str, dict[str, Any]] = {}
        self.durations: dict[str, list[str]] = {}

    def render_job(self, job: EmulatedJob, *, extended: bool = True) -> dict[str, Any]:
        body = super().render_job(job, extended=extended)
        if extended and job.job_id in self.scripted:
            body["properties"]["extendedInfo"] = copy.deepcopy(self.scripted[job.job_id])
        self.durations.setdefault(job.job_id, []).append(body["properties"]["duration"])
        return body


class Env(Rig):
    state: ScriptedState


@pytest.fixture
async def env(make_rig: MakeRig) -> Env:
    rig = await make_rig(cls=Env, state_cls=ScriptedState, token=TOKEN, name="tracker")
    assert isinstance(rig, Env)
    return rig


# --------------------------------------------------------------------------- lifecycles


async def test_ten_jobs_reach_their_final_statuses(env: Env) -> None:
    jobs: list[tuple[str, str, float]] = []
    for i in range(10):
        final, duration = FINALS[i % len(FINALS)], 2.0 + i
        job = env.state.add_job(JobSpec(final_status=final, duration_seconds=duration))
        await env.register(job.job_id)
        jobs.append((job.job_id, final, duration))

    async def all_finished() -> bool:
        return all(r.finished for r in await env.store.list_jobs())

    await env.run_until(all_finished)

    for job_id, final, duration in jobs:
        record = await env.job(job_id)
        assert record.status == final
        assert record.tracking is Tracking.FINISHED
        assert record.next_poll_at is None
        assert record.finished_at is not None
        assert record.end_time is not None
        assert record.source == "job-id"
        transitions, snapshots = await env.store.history(record.pk)
        assert [(t.from_status, t.to_status) for t in transitions] == [
            (None, "InProgress"),
            ("InProgress", final),
        ]
        assert transitions[0].observed_at == BASE
        seen_after = (transitions[1].observed_at - BASE).total_seconds()
        assert duration <= seen_after <= duration + POLICY.interval.total_seconds()
        # The final full GET is kept: the last snapshot is the terminal body with its details.
        last = snapshots[-1]
        assert last.status == final
        assert last.properties["status"] == final
        assert "extendedInfo" in last.properties and "endTime" in last.properties
        if final in ("Failed", "CompletedWithWarnings"):
            assert last.properties["errorDetails"]

    # Finished jobs are not polled any more.
    gets = {job_id: env.gets(job_id) for job_id, _, _ in jobs}
    env.clock.advance(60)
    await env.run()
    assert {job_id: env.gets(job_id) for job_id, _, _ in jobs} == gets
    assert (await env.store.counts())["jobs_finished"] == 10


async def test_unknown_status_is_recorded_and_the_job_stays_active(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="backupjobd.service")
    job = env.state.add_job(JobSpec(final_status="Suspended", duration_seconds=2))
    await env.register(job.job_id)

    async def suspended() -> bool:
        return (await env.job(job.job_id)).status == "Suspended"

    await env.run_until(suspended)
    record = await env.job(job.job_id)
    assert record.tracking is Tracking.ACTIVE
    assert record.next_poll_at is not None and record.next_poll_at > env.clock.now()
    assert await env.transitions(job.job_id) == [(None, "InProgress"), ("InProgress", "Suspended")]

    # Still due later, and polled again without a duplicate transition.
    for _ in range(3):
        before = env.gets(job.job_id)
        env.clock.advance(POLICY.interval)
        due = await env.store.due_jobs(env.clock.now(), 10)
        assert [r.job_id for r in due] == [job.job_id]
        await env.run()
        assert env.gets(job.job_id) == before + 1
    assert await env.transitions(job.job_id) == [(None, "InProgress"), ("InProgress", "Suspended")]
    assert (await env.job(job.job_id)).tracking is Tracking.ACTIVE
    unknown = [r for r in caplog.records if "unknown status" in r.getMessage()]
    assert len(unknown) == 1


async def test_one_info_line_per_state_change_the_last_says_finished(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backupjobd.service")
    job = env.state.add_job(JobSpec(final_status="Failed", duration_seconds=3))
    await env.register(job.job_id)

    async def finished() -> bool:
        return (await env.job(job.job_id)).tracking is Tracking.FINISHED

    await env.run_until(finished)
    lines = [
        r
        for r in caplog.records
        if r.levelno == logging.INFO and getattr(r, "job_id", None) == job.job_id
    ]
    assert [(vars(r)["from_status"], vars(r)["to_status"]) for r in lines] == [
        (None, "InProgress"),
        ("InProgress", "Failed"),
    ]
    assert [vars(r)["finished"] for r in lines] == [False, True]
    assert lines[-1].getMessage().endswith("InProgress -> Failed (finished)")


async def test_job_that_stays_404_becomes_lost_after_the_grace_period(env: Env) -> None:
    job_id = str(uuid.uuid4())  # the emulator never heard of it
    await env.register(job_id)
    grace = POLICY.not_found_grace.total_seconds()

    async def check_active_within_grace() -> None:
        record = await env.job(job_id)
        if env.clock.t < grace:
            assert record.tracking is Tracking.ACTIVE
            assert record.not_found_since == BASE

    async def lost() -> bool:
        return (await env.job(job_id)).tracking is Tracking.LOST

    await env.run_until(lost, each=check_active_within_grace)
    assert grace <= env.clock.t <= grace + POLICY.min_interval.total_seconds()
    record = await env.job(job_id)
    assert record.status is None
    assert record.next_poll_at is None
    assert record.finished_at == env.clock.now()
    assert record.last_error is not None and "404" in record.last_error
    assert await env.transitions(job_id) == []

    gets = env.gets(job_id)
    env.clock.advance(60)
    await env.run()
    assert env.gets(job_id) == gets


async def test_job_404_then_visible_within_grace_is_tracked_normally(env: Env) -> None:
    job = env.state.add_job(JobSpec(not_found_seconds=4, duration_seconds=8))
    await env.register(job.job_id)

    async def seen() -> bool:
        return (await env.job(job.job_id)).status is not None

    await env.run_until(seen)
    record = await env.job(job.job_id)
    assert record.status == "InProgress"
    assert record.not_found_since is None

    async def finished() -> bool:
        return (await env.job(job.job_id)).finished

    await env.run_until(finished)
    assert await env.transitions(job.job_id) == [(None, "InProgress"), ("InProgress", "Completed")]


async def test_operation_resolves_into_its_jobs_which_then_finish(env: Env) -> None:
    op = env.state.add_operation(
        delay_seconds=3,
        job_count=2,
        job_spec=JobSpec(final_status="CompletedWithWarnings", duration_seconds=4),
    )
    url = f"{env.endpoint}{DEFAULT_VAULT_ID}/backupOperations/{op.operation_id}?api-version={API}"
    await env.store.register(
        [OperationRegistration(VAULT, op.operation_id, url, "operation-url")], env.clock.now()
    )

    async def jobs_finished() -> bool:
        jobs = await env.store.list_jobs()
        return len(jobs) == 2 and all(j.finished for j in jobs)

    await env.run_until(jobs_finished)
    [operation] = await env.store.list_operations()
    assert operation.tracking is Tracking.FINISHED
    assert operation.status == "Succeeded"
    assert sorted(operation.job_ids) == sorted(j.lower() for j in op.job_ids)
    for job_id in op.job_ids:
        record = await env.job(job_id)
        assert record.source == "operation"
        assert record.status == "CompletedWithWarnings"
        assert await env.transitions(job_id) == [
            (None, "InProgress"),
            ("InProgress", "CompletedWithWarnings"),
        ]
    # The operation is not polled after it named its jobs.
    requests = env.state.stats()["by_kind"].get("operation_get", 0)
    env.clock.advance(30)
    await env.run()
    assert env.state.stats()["by_kind"].get("operation_get", 0) == requests


async def test_failed_operation_starts_no_job(env: Env) -> None:
    op = env.state.add_operation(delay_seconds=2, result="Failed")
    url = f"{env.endpoint}{DEFAULT_VAULT_ID}/backupOperations/{op.operation_id}"
    await env.store.register(
        [OperationRegistration(VAULT, op.operation_id, url, "operation-url")], env.clock.now()
    )

    async def settled() -> bool:
        [operation] = await env.store.list_operations()
        return operation.tracking is not Tracking.ACTIVE

    await env.run_until(settled)
    [operation] = await env.store.list_operations()
    assert operation.tracking is Tracking.FAILED
    assert operation.last_error is not None
    assert "UserErrorBackupOperationInProgress" in operation.last_error
    assert await env.store.list_jobs() == []


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("kind", "retry_after"), [("500", 0), ("garbled", 0), ("429", 3)])
async def test_transient_fault_keeps_the_status_and_the_job_is_polled_again(
    env: Env, kind: str, retry_after: int
) -> None:
    job = env.state.add_job(JobSpec(duration_seconds=60))
    await env.register(job.job_id)
    await env.run()
    first = await env.job(job.job_id)
    assert first.status == "InProgress"

    env.state.add_fault(kind, count=1, retry_after=retry_after, path_contains=job.job_id)
    env.clock.advance(POLICY.interval)
    await env.run()
    failed = await env.job(job.job_id)
    assert env.state.stats()["faults_served"] == 1
    assert failed.status == "InProgress"
    assert failed.tracking is Tracking.ACTIVE
    assert failed.consecutive_failures == 1
    assert failed.error_count == 1
    assert failed.last_error is not None and TOKEN not in failed.last_error
    assert failed.version == first.version + 1
    assert failed.next_poll_at is not None
    wait = failed.next_poll_at - env.clock.now()
    assert (
        timedelta(seconds=retry_after)
        <= wait
        <= POLICY.max_backoff + timedelta(seconds=retry_after)
    )
    assert await env.transitions(job.job_id) == [(None, "InProgress")]

    before = env.gets(job.job_id)
    env.clock.advance(wait)
    await env.run()
    recovered = await env.job(job.job_id)
    assert env.gets(job.job_id) == before + 1
    assert recovered.status == "InProgress"
    assert recovered.consecutive_failures == 0
    assert recovered.last_error is None
    assert await env.transitions(job.job_id) == [(None, "InProgress")]


async def test_huge_retry_after_still_saves_the_poll(env: Env) -> None:
    job = env.state.add_job(JobSpec(duration_seconds=60))
    record = await env.register(job.job_id)
    env.state.add_fault("429", count=1, retry_after=10**12, path_contains=job.job_id)
    await env.tracker.poll_job(record)
    saved = await env.job(job.job_id)
    assert saved.consecutive_failures == 1
    assert saved.next_poll_at is not None and saved.next_poll_at > env.clock.now()


# --------------------------------------------------------------------------- compare-and-set


async def test_polling_the_same_stale_record_twice_writes_one_transition(env: Env) -> None:
    job = env.state.add_job(JobSpec(duration_seconds=5))
    stale = await env.register(job.job_id)

    first = await env.tracker.poll_job(stale)
    second = await env.tracker.poll_job(stale)
    assert first.transition == second.transition == (None, "InProgress")
    record = await env.job(job.job_id)
    assert record.version == stale.version + 1
    assert record.poll_count == 1
    assert await env.transitions(job.job_id) == [(None, "InProgress")]
    _, snapshots = await env.store.history(record.pk)
    assert len(snapshots) == 1

    # The job ends; a poll from the stale record decides (None -> Completed) but must not land.
    env.clock.advance(5)
    late = await env.tracker.poll_job(stale)
    assert late.transition == (None, "Completed")
    assert await env.transitions(job.job_id) == [(None, "InProgress")]
    assert (await env.job(job.job_id)).status == "InProgress"

    # A poll from the current record records the real transition once.
    current = await env.job(job.job_id)
    await env.tracker.poll_job(current)
    assert await env.transitions(job.job_id) == [(None, "InProgress"), ("InProgress", "Completed")]
    assert (await env.job(job.job_id)).finished


async def test_concurrent_polls_of_one_record_write_one_transition(env: Env) -> None:
    job = env.state.add_job(JobSpec(duration_seconds=5))
    stale = await env.register(job.job_id)
    async with asyncio.timeout(RUN_DEADLINE_S):
        await asyncio.gather(*(env.tracker.poll_job(stale) for _ in range(4)))
    record = await env.job(job.job_id)
    assert record.version == stale.version + 1
    assert await env.transitions(job.job_id) == [(None, "InProgress")]


# --------------------------------------------------------------------------- snapshots


def extended(progress: int) -> dict[str, Any]:
    return {
        "progressPercentage": progress,
        "propertyBag": {"VM Name": "vm1", "Backup Size": f"{progress * 10} MB"},
        "tasksList": [{"taskId": "Take Snapshot", "status": "InProgress"}],
    }


async def test_one_snapshot_per_distinct_body_and_duration_alone_adds_none(env: Env) -> None:
    job = env.state.add_job(JobSpec(duration_seconds=10_000))
    await env.register(job.job_id)
    a, b, c = extended(10), extended(20), extended(30)
    script = [a, a, a, b, b, b, a, c, c, c]
    counts: list[int] = []
    for body in script:
        env.state.scripted[job.job_id] = body
        before = env.gets(job.job_id)
        await env.run()
        assert env.gets(job.job_id) == before + 1
        _, snapshots = await env.store.history((await env.job(job.job_id)).pk)
        counts.append(len(snapshots))
        env.clock.advance(POLICY.interval)

    # Every poll served a different top-level duration...
    durations = env.state.durations[job.job_id]
    assert len(durations) == len(script)
    assert len(set(durations)) == len(script)
    # ...yet only a change of the body made a new snapshot, and a body seen before none.
    assert counts == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    record = await env.job(job.job_id)
    assert record.poll_count == len(script)
    _, snapshots = await env.store.history(record.pk)
    assert [s.properties["extendedInfo"] for s in snapshots] == [a, b, c]
    assert all(s.status == "InProgress" for s in snapshots)
    assert record.last_snapshot_hash == azure.snapshot_hash(snapshots[-1].properties)
    assert await env.transitions(job.job_id) == [(None, "InProgress")]
