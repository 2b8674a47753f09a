from __future__ import annotations

# The pure per-poll decision: transitions, tracking, snapshots, 404 grace, backoff.
import copy
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd.core import azure
from backupjobd.core.decisions import (
    Failure,
    JobState,
    Missing,
    OperationSeen,
    OperationState,
    PollPolicy,
    Seen,
    Tracking,
    backoff,
    decide_job,
    decide_operation,
    next_interval,
)

NOW = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = PollPolicy()
VAULT_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg1"
    "/providers/Microsoft.RecoveryServices/vaults/vault1"
)
JOB_GUID = "0bda1a53-73fa-427e-9a1c-72a2016adee3"

# Written out here on purpose (not imported) so the test checks the module's sets.
TERMINAL = {"Completed", "CompletedWithWarnings", "Failed", "Cancelled"}
KNOWN = TERMINAL | {"InProgress", "Cancelling", "Invalid"}
PREVIOUS = [
    None,
    "InProgress",
    "Cancelling",
    "Completed",
    "CompletedWithWarnings",
    "Failed",
    "Cancelled",
    "Invalid",
    "SomethingNew",
]
OBSERVED = [s for s in PREVIOUS if s is not None]


def job_props(status: str, **extra: Any) -> dict[str, Any]:
    props: dict[str, Any] = {
        "jobType": "AzureIaaSVMJob",
        "operation": "Backup",
        "status": status,
        "entityFriendlyName": "vm1",
        "backupManagementType": "AzureIaasVM",
        "startTime": "2024-03-01T11:00:00.1234567Z",
        "duration": "PT1M2.5S",
        "extendedInfo": {"tasksList": [{"taskId": "Take Snapshot", "status": "InProgress"}]},
    }
    props.update(extra)
    return props


def job(status: str, **extra: Any) -> azure.JobObservation:
    body = {
        "id": f"{VAULT_ID}/backupJobs/{JOB_GUID}",
        "name": JOB_GUID,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": job_props(status, **extra),
    }
    return azure.parse_job_resource(body)


def test_status_sets_match_the_brief() -> None:
    # Recovery Services' statuses, plus Backup vaults' own words for theirs (Succeeded,
    # and Canceled as some of their APIs spell it): see tests/unit/test_job_kinds.py.
    assert set(azure.TERMINAL_STATUSES) == TERMINAL | {"Succeeded", "Canceled"}
    assert set(azure.KNOWN_STATUSES) >= KNOWN
    assert "SomethingNew" not in azure.KNOWN_STATUSES


# --------------------------------------------------------------------------- seen: every pair


@pytest.mark.parametrize("full", [True, False], ids=["full", "list"])
@pytest.mark.parametrize(
    ("previous", "observed"),
    list(itertools.product(PREVIOUS, OBSERVED)),
    ids=[f"{p}->{o}" for p, o in itertools.product(PREVIOUS, OBSERVED)],
)
def test_seen_every_status_pair(previous: str | None, observed: str, full: bool) -> None:
    state = JobState(status=previous, poll_count=5)
    observation = job(observed)
    decision = decide_job(state, Seen(observation, full=full), NOW, POLICY, jitter=0.5)

    assert decision.status == observed
    assert decision.observation is observation
    if previous != observed:
        assert decision.transition == (previous, observed)
    else:
        assert decision.transition is None

    finished = observed in TERMINAL and full
    assert decision.tracking is (Tracking.FINISHED if finished else Tracking.ACTIVE)
    assert (decision.next_poll_at is None) == finished
    if not finished:
        assert decision.next_poll_at is not None
        assert decision.next_poll_at >= NOW
        if observed in TERMINAL:
            # A list item said terminal: one full GET right away.
            assert decision.next_poll_at == NOW
        else:
            assert decision.next_poll_at == NOW + POLICY.interval

    assert decision.unknown_status == (observed not in KNOWN and previous != observed)
    # A clean observation clears failures, 404 time and errors.
    assert decision.consecutive_failures == 0
    assert decision.not_found_since is None
    assert decision.error is None
    assert decision.new_error is False
    # No hash stored yet: a full GET always gives a snapshot, a list item never does.
    assert (decision.snapshot is not None) == full


def test_list_item_terminal_is_polled_again_right_away_without_snapshot() -> None:
    state = JobState(status="InProgress", poll_count=40, last_snapshot_hash="old")
    decision = decide_job(state, Seen(job("Completed"), full=False), NOW, POLICY, 0.0)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.next_poll_at == NOW
    assert decision.transition == ("InProgress", "Completed")
    assert decision.snapshot is None


def test_full_terminal_after_list_terminal_finishes_without_a_second_transition() -> None:
    observation = job("Failed")
    state = JobState(status="Failed", poll_count=41)
    decision = decide_job(state, Seen(observation, full=True), NOW, POLICY, 0.0)
    assert decision.tracking is Tracking.FINISHED
    assert decision.next_poll_at is None
    assert decision.transition is None
    assert decision.snapshot is not None


def test_unknown_status_flag_only_once() -> None:
    first = decide_job(JobState("InProgress"), Seen(job("Suspended")), NOW, POLICY, 0.0)
    assert first.unknown_status is True
    assert first.tracking is Tracking.ACTIVE
    again = decide_job(JobState("Suspended"), Seen(job("Suspended")), NOW, POLICY, 0.0)
    assert again.unknown_status is False
    assert again.tracking is Tracking.ACTIVE
    assert again.next_poll_at is not None


# --------------------------------------------------------------------------- snapshots


def test_snapshot_carries_hash_and_properties() -> None:
    observation = job("InProgress")
    decision = decide_job(JobState("InProgress"), Seen(observation), NOW, POLICY, 0.0)
    assert decision.snapshot is not None
    assert decision.snapshot.content_hash == azure.snapshot_hash(observation.properties)
    assert decision.snapshot.properties == observation.properties


def test_same_body_keeps_no_new_snapshot() -> None:
    observation = job("InProgress")
    digest = azure.snapshot_hash(observation.properties)
    state = JobState("InProgress", poll_count=7, last_snapshot_hash=digest)
    decision = decide_job(state, Seen(job("InProgress")), NOW, POLICY, 0.0)
    assert decision.snapshot is None
    assert decision.transition is None


def test_changed_extended_info_makes_a_new_snapshot() -> None:
    digest = azure.snapshot_hash(job("InProgress").properties)
    state = JobState("InProgress", poll_count=7, last_snapshot_hash=digest)
    changed = job(
        "InProgress",
        extendedInfo={"tasksList": [{"taskId": "Take Snapshot", "status": "Completed"}]},
    )
    decision = decide_job(state, Seen(changed), NOW, POLICY, 0.0)
    assert decision.snapshot is not None
    assert decision.snapshot.content_hash != digest


def test_changed_duration_alone_is_not_a_new_snapshot() -> None:
    digest = azure.snapshot_hash(job("InProgress").properties)
    state = JobState("InProgress", poll_count=7, last_snapshot_hash=digest)
    later = job("InProgress", duration="PT31M2.5S")
    assert later.duration != job("InProgress").duration
    decision = decide_job(state, Seen(later), NOW, POLICY, 0.0)
    assert decision.snapshot is None


def test_list_item_with_changed_body_makes_no_snapshot() -> None:
    state = JobState("InProgress", poll_count=7, last_snapshot_hash="0" * 64)
    decision = decide_job(state, Seen(job("InProgress"), full=False), NOW, POLICY, 0.0)
    assert decision.snapshot is None


def test_snapshot_hash_ignores_duration_and_key_order_only() -> None:
    props = job_props("InProgress")
    reordered = dict(reversed(list(copy.deepcopy(props).items())))
    assert azure.snapshot_hash(props) == azure.snapshot_hash(reordered)
    assert azure.snapshot_hash(props) == azure.snapshot_hash({**props, "duration": "PT9H"})
    without = {k: v for k, v in props.items() if k != "duration"}
    assert azure.snapshot_hash(props) == azure.snapshot_hash(without)
    nested = copy.deepcopy(props)
    nested["extendedInfo"]["propertyBag"] = {"Backup Size": "2332 MB"}
    assert azure.snapshot_hash(props) != azure.snapshot_hash(nested)
    assert azure.snapshot_hash(props) != azure.snapshot_hash({**props, "status": "Completed"})
    assert len(azure.snapshot_hash(props)) == 64


# --------------------------------------------------------------------------- next_interval


@pytest.mark.parametrize(
    ("polls_done", "expected"),
    [(0, 5), (1, 5), (2, 5), (3, 30), (4, 30), (1000, 30)],
)
def test_next_interval_early_then_base(polls_done: int, expected: int) -> None:
    assert next_interval(polls_done, POLICY) == timedelta(seconds=expected)


def test_next_interval_never_below_min_interval() -> None:
    odd = PollPolicy(interval=timedelta(seconds=2), min_interval=timedelta(seconds=5))
    assert next_interval(10, odd) == timedelta(seconds=5)


@pytest.mark.parametrize(("poll_count", "expected"), [(0, 5), (1, 5), (2, 30), (50, 30)])
def test_decide_job_counts_this_poll_for_the_interval(poll_count: int, expected: int) -> None:
    state = JobState("InProgress", poll_count=poll_count)
    decision = decide_job(state, Seen(job("InProgress")), NOW, POLICY, 0.0)
    assert decision.next_poll_at == NOW + timedelta(seconds=expected)


# --------------------------------------------------------------------------- 404


def test_first_404_starts_grace_period() -> None:
    state = JobState(status=None, poll_count=0, consecutive_failures=2)
    decision = decide_job(state, Missing(), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.not_found_since == NOW
    assert decision.next_poll_at == NOW + POLICY.min_interval
    assert decision.status is None
    assert decision.transition is None
    assert decision.consecutive_failures == 2


def test_404_within_grace_keeps_first_404_time() -> None:
    first = NOW - timedelta(minutes=4, seconds=59)
    state = JobState(status="InProgress", not_found_since=first)
    decision = decide_job(state, Missing(), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.not_found_since == first
    assert decision.status == "InProgress"
    assert decision.next_poll_at is not None


@pytest.mark.parametrize("elapsed", [timedelta(minutes=5), timedelta(hours=3)])
def test_404_after_grace_is_lost(elapsed: timedelta) -> None:
    first = NOW - elapsed
    state = JobState(status="InProgress", not_found_since=first)
    decision = decide_job(state, Missing(), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.LOST
    assert decision.next_poll_at is None
    assert decision.not_found_since == first
    assert decision.status == "InProgress"
    assert decision.error
    assert decision.new_error is True


def test_zero_grace_loses_on_first_404() -> None:
    policy = PollPolicy(not_found_grace=timedelta(0))
    decision = decide_job(JobState(None), Missing(), NOW, policy, 0.5)
    assert decision.tracking is Tracking.LOST


def test_seen_after_404_clears_not_found_since() -> None:
    state = JobState(status=None, not_found_since=NOW - timedelta(minutes=1))
    decision = decide_job(state, Seen(job("InProgress")), NOW, POLICY, 0.5)
    assert decision.not_found_since is None
    assert decision.transition == (None, "InProgress")


# --------------------------------------------------------------------------- backoff


def test_backoff_grows_with_failures_and_is_capped() -> None:
    delays = [backoff(n, POLICY, 0.999, None) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[0] < delays[1] < delays[2] < delays[3]
    assert delays[0] == timedelta(seconds=5 * 2 * 0.999)
    assert all(d <= POLICY.max_backoff for d in delays)
    assert delays[-1] == timedelta(seconds=300 * 0.999)


def test_backoff_with_zero_jitter_is_short_but_not_zero() -> None:
    for failures in (1, 5, 30):
        assert backoff(failures, POLICY, 0.0, None) == timedelta(seconds=1)


def test_backoff_huge_failure_count_does_not_overflow() -> None:
    assert backoff(10**9, POLICY, 0.999, None) <= POLICY.max_backoff


@pytest.mark.parametrize("jitter", [0.0, 0.5, 0.999])
@pytest.mark.parametrize("retry_after", [2.0, 120.0, 3600.0])
def test_backoff_never_before_retry_after(jitter: float, retry_after: float) -> None:
    delay = backoff(3, POLICY, jitter, retry_after)
    assert delay >= timedelta(seconds=retry_after)
    assert delay == max(backoff(3, POLICY, jitter, None), timedelta(seconds=retry_after))


@pytest.mark.parametrize("jitter", [0.0, 0.999])
def test_transient_failure_schedules_backoff(jitter: float) -> None:
    first_404 = NOW - timedelta(minutes=1)
    state = JobState("InProgress", poll_count=9, consecutive_failures=2, not_found_since=first_404)
    failure = Failure("HTTP 500 InternalServerError", transient=True, status=500)
    decision = decide_job(state, failure, NOW, POLICY, jitter)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.status == "InProgress"
    assert decision.transition is None
    assert decision.consecutive_failures == 3
    assert decision.next_poll_at == NOW + backoff(3, POLICY, jitter, None)
    assert decision.not_found_since == first_404
    assert decision.error == "HTTP 500 InternalServerError"
    assert decision.new_error is True


def test_transient_failure_backoff_grows_across_consecutive_failures() -> None:
    state = JobState("InProgress")
    waits = []
    for _ in range(8):
        decision = decide_job(state, Failure("boom", transient=True), NOW, POLICY, 0.999)
        assert decision.next_poll_at is not None
        waits.append(decision.next_poll_at - NOW)
        state = JobState(
            "InProgress",
            consecutive_failures=decision.consecutive_failures,
            last_error=decision.error,
        )
    assert waits == sorted(waits)
    assert waits[0] < waits[-1] <= POLICY.max_backoff
    assert state.consecutive_failures == 8


def test_transient_429_respects_retry_after() -> None:
    failure = Failure("throttled", transient=True, retry_after=324.0, status=429)
    decision = decide_job(JobState("InProgress"), failure, NOW, POLICY, 0.0)
    assert decision.next_poll_at == NOW + timedelta(seconds=324)


def test_same_error_again_is_not_new() -> None:
    state = JobState("InProgress", consecutive_failures=1, last_error="boom")
    same = decide_job(state, Failure("boom", transient=True), NOW, POLICY, 0.3)
    assert same.new_error is False
    assert same.error == "boom"
    other = decide_job(state, Failure("bang", transient=True), NOW, POLICY, 0.3)
    assert other.new_error is True


def test_permanent_failure_polls_again_after_max_backoff() -> None:
    state = JobState("InProgress", consecutive_failures=0)
    failure = Failure("AuthorizationFailed", transient=False, status=403)
    decision = decide_job(state, failure, NOW, POLICY, 0.999)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.next_poll_at == NOW + POLICY.max_backoff
    assert decision.error == "AuthorizationFailed"
    assert decision.new_error is True
    assert decision.consecutive_failures == 1
    assert decision.status == "InProgress"

    again = decide_job(
        JobState("InProgress", consecutive_failures=1, last_error="AuthorizationFailed"),
        failure,
        NOW,
        POLICY,
        0.0,
    )
    assert again.new_error is False
    assert again.consecutive_failures == 2
    assert again.next_poll_at == NOW + POLICY.max_backoff


def test_permanent_failure_with_long_retry_after() -> None:
    failure = Failure("nope", transient=False, retry_after=900.0)
    decision = decide_job(JobState("InProgress"), failure, NOW, POLICY, 0.0)
    assert decision.next_poll_at == NOW + timedelta(seconds=900)


# --------------------------------------------------------------------------- operations


def op(status: str, **props: Any) -> OperationSeen:
    body: dict[str, Any] = {"id": f"{VAULT_ID}/backupOperations/x", "name": "x", "status": status}
    if props:
        body["properties"] = props
    return OperationSeen(azure.parse_operation_status(body))


def test_operation_in_progress_polls_at_operation_interval() -> None:
    decision = decide_operation(OperationState(None), op("InProgress"), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.status == "InProgress"
    assert decision.next_poll_at == NOW + POLICY.operation_interval
    assert decision.job_ids == ()


def test_operation_succeeded_with_job_id() -> None:
    seen = op("Succeeded", objectType="OperationStatusJobExtendedInfo", jobId=JOB_GUID.upper())
    decision = decide_operation(OperationState("InProgress"), seen, NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.FINISHED
    assert decision.next_poll_at is None
    assert decision.job_ids == (JOB_GUID,)
    assert decision.error is None


def test_operation_succeeded_with_job_ids() -> None:
    other = "11111111-2222-3333-4444-555555555555"
    seen = op("Succeeded", objectType="OperationStatusJobsExtendedInfo", jobIds=[JOB_GUID, other])
    decision = decide_operation(OperationState("InProgress"), seen, NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.FINISHED
    assert decision.job_ids == (JOB_GUID, other)


def test_operation_succeeded_without_jobs_finishes() -> None:
    decision = decide_operation(OperationState("InProgress"), op("Succeeded"), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.FINISHED
    assert decision.next_poll_at is None
    assert decision.job_ids == ()


@pytest.mark.parametrize("status", ["Failed", "Canceled"])
def test_operation_failed_or_canceled_records_error(status: str) -> None:
    body = {
        "id": f"{VAULT_ID}/backupOperations/x",
        "status": status,
        "error": {"code": "UserErrorVmNotFound", "message": "The VM was deleted"},
    }
    seen = OperationSeen(azure.parse_operation_status(body))
    decision = decide_operation(OperationState("InProgress"), seen, NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.FAILED
    assert decision.next_poll_at is None
    assert decision.status == status
    assert decision.error is not None
    assert status in decision.error
    assert "UserErrorVmNotFound" in decision.error
    assert "The VM was deleted" in decision.error
    assert decision.new_error is True


def test_operation_canceled_without_error_body() -> None:
    decision = decide_operation(OperationState("InProgress"), op("Canceled"), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.FAILED
    assert decision.error == "operation Canceled"


def test_operation_404_grace_then_lost() -> None:
    first = decide_operation(OperationState(None), Missing(), NOW, POLICY, 0.5)
    assert first.tracking is Tracking.ACTIVE
    assert first.not_found_since == NOW
    assert first.next_poll_at == NOW + POLICY.operation_interval

    since = NOW - timedelta(minutes=2)
    state = OperationState(None, not_found_since=since)
    within = decide_operation(state, Missing(), NOW, POLICY, 0.0)
    assert within.tracking is Tracking.ACTIVE
    assert within.not_found_since == since

    since = NOW - POLICY.not_found_grace
    state = OperationState(None, not_found_since=since)
    lost = decide_operation(state, Missing(), NOW, POLICY, 0.0)
    assert lost.tracking is Tracking.LOST
    assert lost.next_poll_at is None
    assert lost.not_found_since == since
    assert lost.error
    assert lost.new_error is True


def test_operation_transient_failure_backs_off() -> None:
    state = OperationState("InProgress", consecutive_failures=1, last_error="old")
    failure = Failure("HTTP 503", transient=True, retry_after=60.0)
    decision = decide_operation(state, failure, NOW, POLICY, 0.999)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.consecutive_failures == 2
    assert decision.next_poll_at == NOW + backoff(2, POLICY, 0.999, 60.0)
    assert decision.next_poll_at >= NOW + timedelta(seconds=60)
    assert decision.error == "HTTP 503"
    assert decision.new_error is True
    same = decide_operation(
        OperationState("InProgress", last_error="HTTP 503"), failure, NOW, POLICY, 0.0
    )
    assert same.new_error is False


def test_operation_permanent_failure_polls_after_max_backoff() -> None:
    failure = Failure("Forbidden", transient=False, status=403)
    decision = decide_operation(OperationState("InProgress"), failure, NOW, POLICY, 0.0)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.next_poll_at == NOW + POLICY.max_backoff
    assert decision.consecutive_failures == 1
    assert decision.error == "Forbidden"


def test_operation_failure_during_404_grace_keeps_first_404_time() -> None:
    since = NOW - timedelta(minutes=4)
    state = OperationState(None, not_found_since=since)
    failure = Failure("HTTP 503", transient=True)
    decision = decide_operation(state, failure, NOW, POLICY, 0.0)
    assert decision.not_found_since == since
