"""Vault sweeps in the pure core: which tracked jobs a paged in-progress list settles, when a
sweep is worth its pages, and what a decision from a list item (no extendedInfo) may do."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd.core.azure import JobObservation
from backupjobd.core.decisions import (
    Failure,
    JobDecision,
    JobState,
    Missing,
    Outcome,
    PollPolicy,
    Seen,
    StuckRules,
    Tracking,
    decide_job,
)
from backupjobd.core.model import JobRecord
from backupjobd.core.sweeps import (
    SWEEP_FILTER,
    lease_renewal_due,
    lease_span,
    sweep_observation,
    sweep_phase,
    sweep_slot,
    sweep_status_changed,
    sweep_worthwhile,
)

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
DETAIL = timedelta(seconds=60)
POLICY = PollPolicy(
    interval=timedelta(seconds=30), min_interval=timedelta(seconds=5), early_polls=3
)
JOB_GUID = "5b0f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
TERMINAL = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]


def listed(status: str = "InProgress", **props: Any) -> JobObservation:
    """A list item: what `backupJobs?$filter=…` returns (no extendedInfo)."""
    properties = {"status": status, "operation": "Backup", "jobType": "AzureIaaSVMJob", **props}
    return JobObservation(
        job_id=JOB_GUID,
        vault=None,
        status=status,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity_friendly_name="vm-1",
        backup_management_type="AzureIaasVM",
        start_time=NOW - timedelta(minutes=3),
        end_time=None,
        duration=timedelta(minutes=3),
        properties=properties,
    )


def test_the_sweep_filter_is_the_in_progress_list() -> None:
    assert SWEEP_FILTER == "status eq 'InProgress'"


# --------------------------------------------------------------------------- sweep_observation

FRESH = NOW - timedelta(seconds=10)


@pytest.mark.parametrize(
    ("status", "last_detail_at", "item", "settled"),
    [
        pytest.param("InProgress", FRESH, listed(), True, id="listed-same-status-fresh-detail"),
        pytest.param(
            "InProgress", NOW - DETAIL + timedelta(microseconds=1), listed(), True, id="detail-1us"
        ),
        pytest.param("InProgress", FRESH, None, None, id="left-the-list"),
        pytest.param("Cancelling", FRESH, None, None, id="cancelling-not-listed"),
        pytest.param("InProgress", FRESH, listed("Cancelling"), None, id="listed-other-status"),
        pytest.param("Cancelling", FRESH, listed("InProgress"), None, id="ours-differs"),
        # Never seen: the list's "it runs" is all a first look needs (detail comes later)...
        pytest.param(None, None, listed(), True, id="never-seen-listed"),
        # ...but a job not on the in-progress list needs its GET (finished, or not visible).
        pytest.param(None, None, None, None, id="never-seen-not-listed"),
        pytest.param(None, None, listed("Completed"), None, id="never-seen-listed-terminal"),
        pytest.param("InProgress", None, listed(), None, id="detail-never-taken"),
        pytest.param("InProgress", NOW - DETAIL, listed(), None, id="detail-exactly-due"),
        pytest.param("InProgress", NOW - 5 * DETAIL, listed(), None, id="detail-long-due"),
    ],
)
def test_sweep_observation(
    status: str | None,
    last_detail_at: datetime | None,
    item: JobObservation | None,
    settled: bool | None,
) -> None:
    got = sweep_observation(status, last_detail_at, item, NOW, DETAIL)
    if settled:
        assert got is item
    else:
        assert got is None


def test_a_due_detail_waits_while_the_read_budget_is_scarce() -> None:
    for last in (None, NOW - DETAIL, NOW - 5 * DETAIL):
        item = listed()
        assert sweep_observation("InProgress", last, item, NOW, DETAIL) is None
        scarce = sweep_observation("InProgress", last, item, NOW, DETAIL, detail_affordable=False)
        assert scarce is item
    # Scarcity never hides a change: a job that left the list or changed still gets its GET.
    assert sweep_observation("InProgress", None, None, NOW, DETAIL, detail_affordable=False) is None
    other = listed("Cancelling")
    assert (
        sweep_observation("InProgress", FRESH, other, NOW, DETAIL, detail_affordable=False) is None
    )


@pytest.mark.parametrize("status", TERMINAL)
def test_a_job_we_think_finished_is_never_settled_by_a_list(status: str) -> None:
    assert sweep_observation(status, FRESH, listed(), NOW, DETAIL) is None


def test_a_detail_taken_in_the_future_still_counts_as_fresh() -> None:
    # Clock skew between writers must not make every sweep hand the job to a GET.
    future = NOW + timedelta(seconds=5)
    assert sweep_observation("InProgress", future, listed(), NOW, DETAIL) is not None


# --------------------------------------------------------------------------- sweep_worthwhile


@pytest.mark.parametrize(
    ("due", "pages", "min_jobs", "worthwhile"),
    [
        (0, 1, 3, False),
        (2, 1, 3, False),  # below min_jobs
        (3, 1, 3, True),  # exactly min_jobs, more than the one page
        (4, 1, 3, True),
        (3, 2, 3, True),  # 2 pages cost less than 3 GETs
        (3, 3, 3, False),  # 3 pages cost as much as 3 GETs
        (4, 3, 3, True),
        (10, 9, 3, True),
        (10, 10, 3, False),
        (200, 200, 3, False),
        (201, 200, 3, True),
        (1, 0, 0, True),  # with no minimum: one job, zero known pages
        (0, 0, 0, False),
        (5, 1, 6, False),
        (6, 1, 6, True),
    ],
)
def test_sweep_worthwhile_boundaries(due: int, pages: int, min_jobs: int, worthwhile: bool) -> None:
    assert sweep_worthwhile(due, pages, min_jobs) is worthwhile


# --------------------------------------------------------------------------- list decisions


def state(status: str | None = "InProgress", **kw: Any) -> JobState:
    kw.setdefault("poll_count", 5)
    kw.setdefault("last_snapshot_hash", "previous-hash")
    kw.setdefault("started_at", NOW - timedelta(minutes=3))
    return JobState(status=status, **kw)


def test_a_list_decision_keeps_in_progress_and_records_no_snapshot() -> None:
    decision = decide_job(state(), Seen(listed(), full=False), NOW, POLICY, 0.5)
    assert decision.status == "InProgress"
    assert decision.tracking is Tracking.ACTIVE
    assert decision.transition is None
    assert decision.snapshot is None
    assert decision.full_read is False
    assert decision.error is None
    assert decision.next_poll_at is not None and decision.next_poll_at > NOW
    assert decision.next_poll_at - NOW == POLICY.interval


def test_a_list_decision_records_no_snapshot_even_with_a_new_body() -> None:
    item = listed(progressPercentage=42)
    decision = decide_job(state(last_snapshot_hash=None), Seen(item, full=False), NOW, POLICY, 0.5)
    assert decision.snapshot is None
    assert decision.full_read is False
    # The same body read in full would have been kept: only `full` makes the difference.
    full = decide_job(state(last_snapshot_hash=None), Seen(item), NOW, POLICY, 0.5)
    assert full.snapshot is not None
    assert full.full_read is True


@pytest.mark.parametrize("final", TERMINAL)
def test_a_terminal_list_item_never_finishes_a_job(final: str) -> None:
    decision = decide_job(state(), Seen(listed(final), full=False), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.next_poll_at == NOW  # a full GET right away
    assert decision.snapshot is None
    assert decision.full_read is False


@pytest.mark.parametrize("final", TERMINAL)
def test_the_full_read_after_a_terminal_list_item_finishes_the_job(final: str) -> None:
    decision = decide_job(state(), Seen(listed(final)), NOW, POLICY, 0.5)
    assert decision.tracking is Tracking.FINISHED
    assert decision.next_poll_at is None
    assert decision.snapshot is not None


def test_a_list_decision_on_an_early_poll_keeps_the_short_interval() -> None:
    decision = decide_job(state(poll_count=1), Seen(listed(), full=False), NOW, POLICY, 0.5)
    assert decision.next_poll_at == NOW + POLICY.min_interval


# --------------------------------------------------------------------------- after a sweep


@pytest.mark.parametrize(
    ("ours", "theirs", "changed"),
    [
        ("InProgress", "InProgress", False),
        (None, "InProgress", False),  # never seen: the list item is its first look
        ("InProgress", None, True),  # left the in-progress list
        ("InProgress", "Cancelling", True),
        ("Cancelling", "Cancelling", False),
        *[("InProgress", final, True) for final in TERMINAL],
    ],
)
def test_sweep_status_changed(ours: str | None, theirs: str | None, changed: bool) -> None:
    """A changed status needs its read at once; a merely due detail read can wait."""
    item = None if theirs is None else listed(theirs)
    assert sweep_status_changed(ours, item) is changed


def _record(**changes: Any) -> JobRecord:
    base = JobRecord(
        pk=1,
        vault_id="/subscriptions/s/resourceGroups/g/providers/Microsoft.RecoveryServices/vaults/v",
        job_id=JOB_GUID,
        source="cli",
        status="InProgress",
        tracking=Tracking.ACTIVE,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity_friendly_name="vm-1",
        backup_management_type="AzureIaasVM",
        start_time=NOW - timedelta(minutes=3),
        end_time=None,
        registered_at=NOW - timedelta(minutes=5),
        last_polled_at=NOW - timedelta(seconds=30),
        next_poll_at=NOW,
        finished_at=None,
        poll_count=7,
        error_count=0,
        consecutive_failures=0,
        not_found_since=None,
        last_error=None,
        last_error_at=None,
        last_snapshot_hash=None,
        version=3,
    )
    return replace(base, **changes)


def _swept(record: JobRecord, item: JobObservation) -> JobDecision:
    return decide_job(record.state(), Seen(item, full=False), NOW, POLICY, 0.5)


def test_a_sweep_that_saw_the_job_as_we_know_it_changes_only_the_schedule() -> None:
    record = _record()
    decision = _swept(record, listed())
    assert record.schedule_only(decision, NOW)
    after = record.after(decision, NOW)
    assert (after.next_poll_at, after.poll_count, after.version) != (
        record.next_poll_at,
        record.poll_count,
        record.version,
    )


@pytest.mark.parametrize(
    ("record_changes", "item"),
    [
        ({"status": None}, listed()),  # first sighting: a transition
        ({"last_error": "HTTP 500"}, listed()),  # a good read clears the error
        ({"consecutive_failures": 2}, listed()),
        ({"operation": None}, listed()),  # the list fills in what we did not know
        ({}, listed("Cancelling")),
    ],
)
def test_a_sweep_that_learned_something_is_written(
    record_changes: dict[str, Any], item: JobObservation
) -> None:
    record = _record(**record_changes)
    assert not record.schedule_only(_swept(record, item), NOW)


def test_a_job_found_stuck_by_a_sweep_is_written() -> None:
    record = _record()
    rules = StuckRules(default=timedelta(minutes=1))
    policy = replace(POLICY, stuck=rules)
    decision = decide_job(record.state(), Seen(listed(), full=False), NOW, policy, 0.5)
    assert decision.newly_stuck
    assert not record.schedule_only(decision, NOW)


def test_uncounted_sweeps_count_as_polls_for_the_schedule() -> None:
    """Early polls come quickly; sweeps not yet written still count towards them."""
    fresh = _record(poll_count=0)
    early = decide_job(fresh.state(), Seen(listed(), full=False), NOW, POLICY, 0.5)
    later = decide_job(fresh.state(5), Seen(listed(), full=False), NOW, POLICY, 0.5)
    assert early.next_poll_at is not None and later.next_poll_at is not None
    assert early.next_poll_at - NOW < later.next_poll_at - NOW


# What `schedule_only` must agree with: the record after the decision differs from the
# record before only in when it was polled (next poll, last poll, poll count, version).
_BOOKKEEPING = {"next_poll_at", "last_polled_at", "poll_count", "version"}


def _only_schedule_differs(before: JobRecord, after: JobRecord) -> bool:
    return all(
        getattr(before, f.name) == getattr(after, f.name)
        for f in fields(JobRecord)
        if f.name not in _BOOKKEEPING
    )


_RECORD_DEVIATIONS: list[dict[str, Any]] = [
    {"status": None},
    {"status": "Cancelling"},
    {"last_error": "HTTP 500"},
    {"consecutive_failures": 2},
    {"stuck_since": NOW - timedelta(hours=1)},
    {"not_found_since": NOW - timedelta(minutes=1)},
    {"start_time": None},
    {"start_time": NOW - timedelta(hours=2)},
    {"end_time": NOW},
    {"job_type": None},
    {"job_type": "AzureWorkloadJob"},
    {"operation": None},
    {"operation": "Restore"},
    {"entity_friendly_name": None},
    {"entity_friendly_name": "vm-2"},
    {"backup_management_type": None},
    {"backup_management_type": "AzureWorkload"},
    {"last_snapshot_hash": "abc"},
    {"last_detail_at": NOW - timedelta(minutes=1)},
]
_ITEM_DEVIATIONS: list[dict[str, Any]] = [
    {"status": "Cancelling"},
    {"status": "Completed"},
    {"start_time": None},
    {"start_time": NOW - timedelta(hours=2)},
    {"end_time": NOW},
    {"job_type": None},
    {"job_type": "AzureWorkloadJob"},
    {"operation": None},
    {"operation": "Restore"},
    {"entity_friendly_name": None},
    {"entity_friendly_name": "vm-2"},
    {"backup_management_type": None},
    {"backup_management_type": "AzureWorkload"},
]
_OUTCOMES = ["list", "full", "missing", "failure", "stuck"]


def _cases() -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """The matching pair (a sweep that saw the job as we know it), and every single and
    double deviation from it: a check missing from `schedule_only` shows up as one case."""
    cases = [({}, {}, outcome) for outcome in _OUTCOMES]
    cases += [(r, {}, "list") for r in _RECORD_DEVIATIONS]
    cases += [({}, i, "list") for i in _ITEM_DEVIATIONS]
    cases += [(r, i, "list") for r in _RECORD_DEVIATIONS for i in _ITEM_DEVIATIONS]
    cases += [(r, {}, o) for r in _RECORD_DEVIATIONS for o in _OUTCOMES]
    return cases


@pytest.mark.parametrize(("record_changes", "item_changes", "outcome_kind"), _cases())
def test_schedule_only_agrees_with_the_record_after_the_decision(
    record_changes: dict[str, Any], item_changes: dict[str, Any], outcome_kind: str
) -> None:
    record = _record(**record_changes)
    outcome: Outcome
    if outcome_kind in ("list", "full", "stuck"):
        status = item_changes.get("status", "InProgress")
        item = replace(listed(status), **item_changes)
        outcome = Seen(item, full=outcome_kind == "full")
    elif outcome_kind == "missing":
        outcome = Missing()
    else:
        outcome = Failure("HTTP 503", transient=True)
    stuck = timedelta(minutes=1) if outcome_kind == "stuck" else None
    policy = replace(POLICY, stuck=StuckRules(default=stuck))
    decision = decide_job(record.state(), outcome, NOW, policy, 0.5)
    expected = _only_schedule_differs(record, record.after(decision, NOW))
    assert record.schedule_only(decision, NOW) is expected


# ---------------------------------------------------------------- sweep slots


INTERVAL = timedelta(seconds=30)
LISTED = datetime(2026, 3, 1, 12, 0, 7, 250_000, tzinfo=UTC)


def _into_slot(at: datetime, phase: float) -> float:
    return (at.timestamp() - phase) % INTERVAL.total_seconds()


@pytest.mark.parametrize("phase", [0.0, 3.7, 7.25, 12.0, 29.9])
@pytest.mark.parametrize("after", [30.0, 30.4, 45.0, 59.99, 120.0])
def test_the_next_sweep_is_the_latest_slot_not_after_the_wanted_time(
    phase: float, after: float
) -> None:
    wanted = LISTED + timedelta(seconds=after)
    slot = sweep_slot(LISTED, wanted, phase, INTERVAL)
    assert wanted - INTERVAL < slot <= wanted
    assert slot > LISTED
    assert min(_into_slot(slot, phase), 30.0 - _into_slot(slot, phase)) < 1e-5


def test_a_vault_on_its_slot_sweeps_exactly_every_interval() -> None:
    phase = sweep_phase(3, INTERVAL)
    slot = sweep_slot(LISTED, LISTED + INTERVAL + timedelta(seconds=4), phase, INTERVAL)
    for _ in range(5):
        following = sweep_slot(slot, slot + INTERVAL, phase, INTERVAL)
        assert abs((following - slot).total_seconds() - 30.0) < 1e-5
        slot = following


def test_vaults_listed_together_sweep_next_at_their_own_slots() -> None:
    wanted = LISTED + INTERVAL
    slots = sorted(
        sweep_slot(LISTED, wanted, sweep_phase(k, INTERVAL), INTERVAL) for k in range(10)
    )
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(slots)]
    assert min(gaps) >= 30.0 / 30


@pytest.mark.parametrize("after", [0.0, 5.0, 29.99])
def test_a_gap_under_one_interval_stays_as_asked(after: float) -> None:
    wanted = LISTED + timedelta(seconds=after)
    assert sweep_slot(LISTED, wanted, 11.0, INTERVAL) == wanted


@pytest.mark.parametrize("vaults", range(1, 101))
def test_phases_spread_any_number_of_vaults_over_the_interval(vaults: int) -> None:
    phases = sorted(sweep_phase(k, INTERVAL) for k in range(vaults))
    assert all(0.0 <= p < 30.0 for p in phases)
    gaps = [b - a for a, b in itertools.pairwise(phases)] + [30.0 - phases[-1] + phases[0]]
    assert min(gaps) >= 30.0 / (3 * vaults)


# ---------------------------------------------------------------- leases

LEASE_POLICY = PollPolicy(interval=INTERVAL, max_detection_lag=timedelta(seconds=120))


def test_a_first_lease_reaches_three_intervals_past_the_next_sweep() -> None:
    next_sweep = LISTED + INTERVAL
    assert lease_span(LEASE_POLICY) == timedelta(seconds=90)
    assert lease_renewal_due(next_sweep, None, LEASE_POLICY)


@pytest.mark.parametrize(
    ("interval_s", "lag_s", "span_s"),
    [
        (30, 120, 90),  # the defaults: three intervals, and the lag allows them
        (1, 120, 3),  # a short interval: three intervals, not the whole lag
        (5, 120, 15),
        (30, 90, 60),  # a short lag: the lag less the interval
        (30, 45, 30),  # never under one interval
        (30, 10, 30),
    ],
)
def test_the_lease_span_is_three_intervals_within_the_longest_detection_lag(
    interval_s: float, lag_s: float, span_s: float
) -> None:
    policy = PollPolicy(
        interval=timedelta(seconds=interval_s),
        min_interval=timedelta(seconds=1),
        max_detection_lag=timedelta(seconds=lag_s),
    )
    assert lease_span(policy) == timedelta(seconds=span_s)


@pytest.mark.parametrize(
    ("stored_after_next_sweep", "renewed"),
    [(None, True), (-5.0, True), (0.0, True), (29.9, True), (30.0, False), (90.0, False)],
)
def test_a_lease_is_renewed_only_when_it_no_longer_covers_the_next_sweep_and_an_interval(
    stored_after_next_sweep: float | None, renewed: bool
) -> None:
    next_sweep = LISTED + INTERVAL
    stored = (
        None
        if stored_after_next_sweep is None
        else next_sweep + timedelta(seconds=stored_after_next_sweep)
    )
    assert lease_renewal_due(next_sweep, stored, LEASE_POLICY) is renewed


def test_steady_sweeps_renew_the_lease_every_third_sweep_and_it_always_covers_them() -> None:
    stored, writes, sweep = None, [], LISTED
    for n in range(12):
        next_sweep = sweep + INTERVAL
        if lease_renewal_due(next_sweep, stored, LEASE_POLICY):
            stored = next_sweep + lease_span(LEASE_POLICY)
            writes.append(n)
        assert stored is not None
        assert stored >= next_sweep + INTERVAL
        # A dead process's jobs come due within the longest detection lag of its last sweep.
        assert stored - sweep <= LEASE_POLICY.max_detection_lag
        sweep = next_sweep
    assert writes == [0, 3, 6, 9]


@pytest.mark.parametrize("lag_s", [10.0, 30.0, 45.0, 60.0])
def test_a_short_detection_lag_still_leases_one_interval_past_the_next_sweep(
    lag_s: float,
) -> None:
    policy = PollPolicy(interval=INTERVAL, max_detection_lag=timedelta(seconds=lag_s))
    next_sweep = LISTED + INTERVAL
    assert next_sweep + lease_span(policy) >= next_sweep + INTERVAL
    # ...and a lease of exactly that still counts as covering the next sweep.
    assert not lease_renewal_due(next_sweep, next_sweep + lease_span(policy), policy)


def test_a_list_item_bringing_error_details_is_written_not_only_rescheduled() -> None:
    """A sweep that sees new errorDetails on a member records them (review finding)."""
    from backupjobd.core.azure import ErrorDetail

    record = _record()
    item = dataclasses.replace(
        listed("InProgress"), error_details=(ErrorDetail("123", "disk slow"),)
    )
    decision = decide_job(record.state(), Seen(item, full=False), NOW, POLICY, 0.5)
    assert record.after(decision, NOW).error_details == item.error_details
    assert record.schedule_only(decision, NOW) is False
    same = dataclasses.replace(record, error_details=item.error_details)
    decision = decide_job(same.state(), Seen(item, full=False), NOW, POLICY, 0.5)
    assert same.schedule_only(decision, NOW) is True
