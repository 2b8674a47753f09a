"""The vault roster, pure: every branch the sweep integration tests drive through the
tracker (first sightings, unchanged and changed members, jobs missing from the list,
changes made elsewhere, lease renewals, detail reads and their budget, rejoining), as
tables over plain records and times."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd.core import events
from backupjobd.core.azure import JobObservation, VaultKind
from backupjobd.core.decisions import JobDecision, PollPolicy, StuckRules, Tracking
from backupjobd.core.model import Commit, JobRecord, JobWrite
from backupjobd.core.sweeps import (
    SWEEP_PAGE_SIZE,
    WINDOW_RETRY_SWEEPS,
    PlanKind,
    Settlement,
    Sweep,
    VaultRoster,
    detail_room,
    lease_span,
    spare_sweep_interval,
    sweep_filter,
    sweep_window,
    window_worthwhile,
)

VAULT = (
    "/subscriptions/aaaaaaaa-1111-2222-3333-444444444444/resourceGroups/rg"
    "/providers/Microsoft.RecoveryServices/vaults/vault-a"
)
OTHER = (
    "/subscriptions/bbbbbbbb-1111-2222-3333-444444444444/resourceGroups/rg"
    "/providers/Microsoft.RecoveryServices/vaults/vault-b"
)
# A multiple of the interval: the first vault (phase 0) sweeps exactly on it.
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
POLICY = PollPolicy(interval=timedelta(seconds=5), min_interval=timedelta(seconds=2), early_polls=3)
INTERVAL = POLICY.interval
DETAIL = timedelta(seconds=60)
FRESH = NOW - timedelta(seconds=10)
STARTED = NOW - timedelta(minutes=3)


def job(pk: int, vault_id: str = VAULT, **changes: Any) -> JobRecord:
    """A running job we know well: seen, past its early polls, detail read recently."""
    record = JobRecord(
        pk=pk,
        vault_id=vault_id,
        job_id=f"job-{pk}",
        source="job-id",
        status="InProgress",
        tracking=Tracking.ACTIVE,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity_friendly_name=f"vm-{pk}",
        backup_management_type="AzureIaasVM",
        start_time=STARTED,
        end_time=None,
        registered_at=NOW - timedelta(minutes=5),
        last_polled_at=NOW - INTERVAL,
        next_poll_at=NOW,
        finished_at=None,
        poll_count=5,
        error_count=0,
        consecutive_failures=0,
        not_found_since=None,
        last_error=None,
        last_error_at=None,
        last_snapshot_hash="h",
        version=2,
        last_detail_at=FRESH,
    )
    return dataclasses.replace(record, **changes)


def item(record: JobRecord, status: str = "InProgress") -> JobObservation:
    """The list item Azure returns for the job (no extendedInfo), as we know it."""
    return JobObservation(
        job_id=record.job_id,
        vault=None,
        status=status,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity_friendly_name=record.entity_friendly_name,
        backup_management_type="AzureIaasVM",
        start_time=record.start_time or STARTED,
        end_time=None,
        duration=timedelta(minutes=3),
        properties={"status": status},
    )


def listing(*records: JobRecord) -> dict[str, JobObservation]:
    return {r.job_id: item(r) for r in records}


def roster(min_jobs: int = 3, policy: PollPolicy = POLICY) -> VaultRoster:
    return VaultRoster(policy, DETAIL, min_jobs)


def admit(vault: VaultRoster, *records: JobRecord) -> None:
    """Make the records members, as a committed sweep would (the store took them as is)."""
    decision = JobDecision("InProgress", Tracking.ACTIVE, NOW)
    vault.begin(records[0].vault_id, records)
    vault.joined(records[0].vault_id, [(Commit(r, decision, NOW, after=r), True) for r in records])
    vault.finished(records[0].vault_id)


def commit_all(vault: VaultRoster, settled: Settlement, now: datetime) -> list[Commit]:
    """What the pollers do after a settle when the store takes every write."""
    commits = [Commit.of(r, d, now) for r, d in settled.changed]
    vault.joined(settled.vault_id, [(c, True) for c in commits])
    vault.renewed(settled.vault_id, settled)
    vault.finished(settled.vault_id)
    return commits


def sweep_at(
    vault: VaultRoster, records: tuple[JobRecord, ...], at: datetime, **kw: Any
) -> Settlement:
    listed = kw.pop("listed", None)
    settled = vault.settle(
        Sweep(VAULT, records),
        listing(*records) if listed is None else listed,
        at,
        at,
        **kw,
    )
    commit_all(vault, settled, at)
    return settled


# --------------------------------------------------------------------------- settle: sorting


def _bucket(settled: Settlement, pk: int) -> str:
    for name in ("unchanged", "urgent", "background"):
        if any(r.pk == pk for r in getattr(settled, name)):
            return name
    if any(r.pk == pk for r, _ in settled.changed):
        return "changed"
    if any(r.pk == pk for r, _ in settled.finished):
        return "finished"
    raise AssertionError(f"job {pk} settled nowhere")


LEFT = object()  # the job is not on the in-progress list


@pytest.mark.parametrize(
    ("changes", "listed_status", "member", "room", "bucket"),
    [
        # First sightings: the list's "it runs" is all a first look needs; one write each.
        pytest.param(
            {"status": None, "last_detail_at": None},
            "InProgress",
            False,
            None,
            "changed",
            id="first-sighting",
        ),
        pytest.param({"status": None}, LEFT, False, None, "urgent", id="first-not-listed"),
        # A list that shows the end records it (the final GET follows).
        pytest.param(
            {"status": None}, "Completed", False, None, "finished", id="first-listed-terminal"
        ),
        # Members seen just as we know them cost nothing; a non-member is written once.
        pytest.param({}, "InProgress", True, None, "unchanged", id="member-unchanged"),
        pytest.param({}, "InProgress", False, None, "changed", id="joiner-written"),
        # Changed members: something to write besides the schedule.
        pytest.param(
            {"last_error": "HTTP 500"},
            "InProgress",
            True,
            None,
            "changed",
            id="member-error-cleared",
        ),
        pytest.param(
            {"consecutive_failures": 2},
            "InProgress",
            True,
            None,
            "changed",
            id="member-failures-reset",
        ),
        pytest.param(
            {"operation": None}, "InProgress", True, None, "changed", id="member-list-fills-in"
        ),
        # A status change or a job that left the list needs its GET now.
        pytest.param({}, "Cancelling", True, None, "urgent", id="member-status-changed"),
        pytest.param(
            {"status": "Cancelling"}, "InProgress", True, None, "urgent", id="ours-differs"
        ),
        pytest.param({}, LEFT, True, None, "urgent", id="member-left-the-list"),
        pytest.param({}, "Completed", True, None, "finished", id="member-listed-terminal"),
        pytest.param({}, "Failed", True, 0, "finished", id="member-listed-failed"),
        # Detail due: a GET when reads are spare, the list when they are not.
        pytest.param(
            {"last_detail_at": NOW - DETAIL},
            "InProgress",
            True,
            None,
            "background",
            id="detail-due-no-budget",
        ),
        pytest.param(
            {"last_detail_at": NOW - DETAIL},
            "InProgress",
            True,
            1,
            "background",
            id="detail-due-room",
        ),
        pytest.param(
            {"last_detail_at": NOW - DETAIL},
            "InProgress",
            True,
            0,
            "unchanged",
            id="detail-deferred",
        ),
        pytest.param(
            {"last_detail_at": None},
            "InProgress",
            True,
            0,
            "unchanged",
            id="detail-never-read-deferred",
        ),
        pytest.param(
            {"last_detail_at": NOW - DETAIL},
            LEFT,
            True,
            0,
            "urgent",
            id="scarce-reads-never-hide-an-end",
        ),
    ],
)
def test_what_a_sweep_makes_of_each_job(
    changes: dict[str, Any], listed_status: object, member: bool, room: int | None, bucket: str
) -> None:
    record = job(1, **changes)
    vault = roster()
    if member:
        admit(vault, record)
    if listed_status is LEFT:
        listed = {}
    else:
        assert isinstance(listed_status, str)
        listed = {record.job_id: item(record, listed_status)}
    settled = vault.settle(Sweep(VAULT, (record,)), listed, NOW, NOW, detail_room=room)
    assert _bucket(settled, 1) == bucket
    assert settled.listed == len(listed)
    handed_on = bucket in ("urgent", "background", "finished")
    assert (1 in vault.held()) is (not handed_on and member)


def test_a_job_found_stuck_by_a_sweep_is_written() -> None:
    policy = dataclasses.replace(POLICY, stuck=StuckRules(default=timedelta(minutes=1)))
    record = job(1)
    vault = roster(policy=policy)
    admit(vault, record)
    settled = vault.settle(Sweep(VAULT, (record,)), listing(record), NOW, NOW)
    [(_, decision)] = settled.changed
    assert decision.newly_stuck and decision.stuck_since == NOW


def test_changed_jobs_are_written_with_the_lease_and_become_members_as_committed() -> None:
    records = tuple(job(pk, status=None, last_detail_at=None) for pk in (1, 2, 3))
    vault = roster()
    settled = vault.settle(Sweep(VAULT, records), listing(*records), NOW, NOW)
    assert settled.next_sweep == NOW + INTERVAL
    assert settled.lease == NOW + INTERVAL + lease_span(POLICY)
    assert settled.renew and settled.polls == ()
    assert {d.next_poll_at for _, d in settled.changed} == {settled.lease}
    assert [d.transition for _, d in settled.changed] == [(None, "InProgress")] * 3
    commits = commit_all(vault, settled, NOW)
    members = vault.members(VAULT)
    assert members == {c.before.pk: c.after for c in commits}
    assert all(
        m.next_poll_at == settled.lease and m.status == "InProgress" for m in members.values()
    )
    assert vault.held() == {1, 2, 3} and len(vault.members(VAULT)) == 3
    assert vault.next_sweep_at(VAULT.upper()) == NOW + INTERVAL


def test_nothing_settled_plans_no_next_sweep() -> None:
    records = (job(1), job(2))
    vault = roster()
    settled = vault.settle(Sweep(VAULT, records), {}, NOW, NOW)
    assert [r.pk for r in settled.urgent] == [1, 2]
    assert (settled.next_sweep, settled.lease, settled.renew) == (None, None, False)
    assert vault.next_sweep_at(VAULT) is None


def test_the_next_sweep_is_an_interval_after_the_list_not_after_its_processing() -> None:
    vault = roster()
    record = job(1)
    admit(vault, record)
    settled = vault.settle(
        Sweep(VAULT, (record,)), listing(record), NOW, NOW + timedelta(seconds=2)
    )
    assert settled.next_sweep == NOW + INTERVAL


# --------------------------------------------------------------------------- leases


def test_steady_sweeps_store_nothing_but_renew_the_lease_every_third_sweep() -> None:
    vault = roster()
    records = tuple(job(pk) for pk in (1, 2, 3))
    first = sweep_at(vault, records, NOW)  # they join: one write each, the first lease
    assert len(first.changed) == 3 and first.renew
    renewals: list[tuple[bool, tuple[int, ...]]] = []
    at = NOW
    for _ in range(7):
        at += INTERVAL
        [due] = vault.due_sweeps(at)
        settled = sweep_at(vault, due.records, at)
        assert settled.changed == () and len(settled.unchanged) == 3
        assert settled.next_sweep == at + INTERVAL
        renewals.append((settled.renew, settled.polls))
        if settled.renew:
            # The lease stored covers the next sweep and one interval, within the lag.
            assert settled.lease is not None
            assert settled.lease >= settled.next_sweep + INTERVAL
            assert settled.lease - at <= POLICY.max_detection_lag
    assert renewals == [
        (False, ()),
        (False, ()),
        (True, (3, 3, 3)),  # the three sweeps since the first write
        (False, ()),
        (False, ()),
        (True, (3, 3, 3)),
        (False, ()),
    ]


def test_a_member_written_again_carries_the_sweeps_not_yet_stored() -> None:
    vault = roster()
    record = job(1)
    sweep_at(vault, (record,), NOW)
    [due] = vault.due_sweeps(NOW + INTERVAL)
    sweep_at(vault, due.records, NOW + INTERVAL)  # unchanged: counted, not stored
    [due] = vault.due_sweeps(NOW + 2 * INTERVAL)
    [member] = due.records
    changed = dataclasses.replace(member, last_error="HTTP 500")
    settled = vault.settle(
        Sweep(VAULT, (changed,)), listing(changed), NOW + 2 * INTERVAL, NOW + 2 * INTERVAL
    )
    [(written, _)] = settled.changed
    assert written.poll_count == member.poll_count + 1
    assert written.last_polled_at == NOW + INTERVAL


def test_members_handed_back_at_drain_carry_their_unstored_polls() -> None:
    vault = roster()
    records = (job(1), job(2))
    sweep_at(vault, records, NOW)
    for k in (1, 2):
        [due] = vault.due_sweeps(NOW + k * INTERVAL)
        sweep_at(vault, due.records, NOW + k * INTERVAL)
    [back] = vault.hand_back()
    assert (back.vault_id, back.pks, back.polls) == (VAULT, (1, 2), (2, 2))
    assert back.last_sweep == NOW + 2 * INTERVAL
    assert vault.held() == set() and vault.next_sweep_at(VAULT) is None
    assert vault.hand_back() == []


# --------------------------------------------------------------------------- elsewhere


def test_a_job_changed_elsewhere_leaves_and_the_others_stay_swept() -> None:
    vault = roster()
    records = tuple(job(pk, status=None) for pk in (1, 2, 3))
    settled = vault.settle(Sweep(VAULT, records), listing(*records), NOW, NOW)
    commits = [Commit.of(r, d, NOW) for r, d in settled.changed]
    # The first write is refused (stopped, or another replica recorded it first).
    vault.joined(VAULT, zip(commits, [False, True, True], strict=True))
    assert set(vault.members(VAULT)) == {2, 3}
    assert vault.next_sweep_at(VAULT) == settled.next_sweep


def test_every_write_refused_empties_the_vault() -> None:
    vault = roster()
    records = (job(1, status=None), job(2, status=None))
    settled = vault.settle(Sweep(VAULT, records), listing(*records), NOW, NOW)
    commits = [Commit.of(r, d, NOW) for r, d in settled.changed]
    vault.joined(VAULT, [(c, False) for c in commits])
    assert vault.held() == set() and vault.next_sweep_at(VAULT) is None


def test_members_a_renewal_did_not_move_are_reloaded_from_the_store() -> None:
    """The bulk reschedule moved fewer rows than asked: the pollers make them leave."""
    vault = roster()
    records = (job(1), job(2))
    sweep_at(vault, records, NOW)
    left = vault.leave(VAULT, list(vault.members(VAULT).values()))
    assert [r.pk for r in left] == [1, 2]
    assert vault.held() == set() and vault.next_sweep_at(VAULT) is None
    assert vault.due_sweeps(NOW + 10 * INTERVAL) == []


# --------------------------------------------------------------------------- list failures


def test_a_throttled_sweep_comes_again_when_the_pause_ends() -> None:
    vault = roster()
    sweep_at(vault, (job(1),), NOW)
    [due] = vault.due_sweeps(NOW + INTERVAL)
    vault.throttled(VAULT, NOW + timedelta(seconds=30))
    vault.finished(VAULT)
    assert vault.due_sweeps(NOW + timedelta(seconds=29)) == []
    assert [s.records for s in vault.due_sweeps(NOW + timedelta(seconds=30))] == [due.records]


def test_a_failed_list_hands_every_job_on_with_its_polls_counted() -> None:
    vault = roster()
    sweep_at(vault, (job(1), job(2)), NOW)
    [due] = vault.due_sweeps(NOW + INTERVAL)
    sweep_at(vault, due.records, NOW + INTERVAL)
    [due] = vault.due_sweeps(NOW + 2 * INTERVAL)
    handed_on = vault.leave(VAULT, due.records)
    vault.finished(VAULT)
    assert [r.poll_count - m.poll_count for r, m in zip(handed_on, due.records, strict=True)] == [
        1,
        1,
    ]
    assert vault.held() == set()


def test_a_sweep_that_raised_lets_every_member_go() -> None:
    vault = roster()
    sweep_at(vault, (job(1), job(2)), NOW)
    vault.leave_all(VAULT)
    assert vault.held() == set() and vault.next_sweep_at(VAULT) is None


# --------------------------------------------------------------------------- detail reads


def test_detail_reads_wait_for_spare_reads_and_take_them_one_each() -> None:
    vault = roster()
    due = tuple(job(pk, last_detail_at=NOW - DETAIL) for pk in (1, 2, 3))
    admit(vault, *due)
    settled = vault.settle(Sweep(VAULT, due), listing(*due), NOW, NOW, detail_room=1)
    assert [r.pk for r in settled.background] == [1]
    assert [r.pk for r in settled.unchanged] == [2, 3]
    assert set(vault.members(VAULT)) == {2, 3}


@pytest.mark.parametrize(
    ("spare", "queued", "room"), [(None, 5, None), (10, 3, 7), (3, 3, 0), (2, 5, 0)]
)
def test_detail_room(spare: int | None, queued: int, room: int | None) -> None:
    assert detail_room(spare, queued) == room


def test_a_detail_read_still_running_rejoins_the_next_sweep() -> None:
    vault = roster()
    members = (job(1), job(2, last_detail_at=NOW - DETAIL + INTERVAL))
    sweep_at(vault, members, NOW)
    [due] = vault.due_sweeps(NOW + INTERVAL)
    settled = sweep_at(vault, due.records, NOW + INTERVAL)
    [read] = settled.background
    assert vault.held() == {1}
    # Its GET (a full read) is committed and it still runs: it joins at once.
    decision = JobDecision("InProgress", Tracking.ACTIVE, NOW + 3 * INTERVAL, full_read=True)
    commit = Commit.of(read, decision, NOW + INTERVAL)
    assert vault.rejoin(commit)
    assert vault.held() == {1, 2} and len(vault.members(VAULT)) == 1
    assert vault.due_sweeps(NOW + INTERVAL) == []
    [next_sweep] = vault.due_sweeps(NOW + 2 * INTERVAL)
    assert {r.pk for r in next_sweep.records} == {1, 2}
    assert commit.after in next_sweep.records


@pytest.mark.parametrize(
    ("status", "tracking", "has_members", "joins"),
    [
        ("InProgress", Tracking.ACTIVE, True, True),
        ("Completed", Tracking.FINISHED, True, False),
        ("Cancelling", Tracking.ACTIVE, True, False),
        ("InProgress", Tracking.ACTIVE, False, False),
    ],
)
def test_who_rejoins(status: str, tracking: Tracking, has_members: bool, joins: bool) -> None:
    vault = roster()
    if has_members:
        admit(vault, job(1))
    decision = JobDecision(status, tracking, None if tracking is Tracking.FINISHED else NOW)
    assert vault.rejoin(Commit.of(job(2), decision, NOW)) is joins
    assert (2 in vault.held()) is joins


def test_the_last_member_leaving_sends_the_joiners_back_to_the_store() -> None:
    vault = roster()
    sweep_at(vault, (job(1),), NOW)
    assert vault.rejoin(Commit.of(job(2), JobDecision("InProgress", Tracking.ACTIVE, NOW), NOW))
    vault.leave(VAULT, [job(1)])
    assert vault.held() == set()


# --------------------------------------------------------------------------- plan


def test_with_sweeps_off_every_due_job_gets_its_get() -> None:
    due = [job(pk) for pk in range(1, 6)]
    plan = roster(min_jobs=0).plan(due, NOW)
    assert plan.kind is PlanKind.SINGLES and plan.singles == tuple(due)


@pytest.mark.parametrize(
    ("due", "listed_before", "kind"),
    [
        (2, 0, PlanKind.SINGLES),  # fewer than min_jobs
        (3, 0, PlanKind.SWEEP),
        (3, 2 * SWEEP_PAGE_SIZE + 1, PlanKind.SINGLES),  # three pages cost three GETs
        (4, 2 * SWEEP_PAGE_SIZE + 1, PlanKind.SWEEP),
    ],
)
def test_a_sweep_when_it_costs_fewer_reads(due: int, listed_before: int, kind: PlanKind) -> None:
    vault = roster()
    if listed_before:
        vault.settle(
            Sweep(VAULT, ()), {f"x{i}": item(job(999)) for i in range(listed_before)}, NOW, NOW
        )
    plan = vault.plan([job(pk) for pk in range(1, due + 1)], NOW)
    assert plan.kind is kind


def test_a_planned_sweep_takes_the_jobs_due_soon_and_only_those_a_list_settles() -> None:
    vault = roster()
    due = [job(1), job(2), job(3), job(4, last_detail_at=None), job(5, status="Cancelling")]
    plan = vault.plan(due, NOW)
    assert plan.kind is PlanKind.SWEEP
    assert [r.pk for r in plan.sweepable] == [1, 2, 3]
    assert plan.horizon == NOW + INTERVAL / 2
    assert plan.singles == ()
    sweep = vault.begin(VAULT, plan.sweepable, [job(3), job(6)])
    assert [r.pk for r in sweep.records] == [1, 2, 3, 6]
    assert vault.plan(due, NOW).kind is PlanKind.WAIT
    vault.finished(VAULT)
    assert vault.plan(due, NOW).kind is PlanKind.SWEEP


def test_scarce_reads_let_a_detail_due_job_go_with_the_sweep() -> None:
    due = [job(1), job(2), job(3, last_detail_at=None)]
    assert [r.pk for r in roster().plan(due, NOW, detail_room=0).sweepable] == [1, 2, 3]
    assert roster().plan(due, NOW, detail_room=2).kind is PlanKind.SINGLES


def test_newcomers_wait_for_the_members_next_sweep() -> None:
    vault = roster()
    sweep_at(vault, (job(1), job(2), job(3)), NOW)
    due = [job(4), job(5, last_detail_at=None), job(6, status="Cancelling")]
    plan = vault.plan(due, NOW + timedelta(seconds=1))
    assert plan.kind is PlanKind.JOIN
    assert [r.pk for r in plan.joined] == [4]
    assert [r.pk for r in plan.singles] == [5, 6]
    assert vault.held() == {1, 2, 3, 4} and len(vault.members(VAULT)) == 3
    [sweep] = vault.due_sweeps(NOW + INTERVAL)
    assert [r.pk for r in sweep.records] == [1, 2, 3, 4]
    assert vault.due_sweeps(NOW + INTERVAL) == []  # already sweeping


def test_vaults_sweep_on_their_own_schedules() -> None:
    vault = roster()
    sweep_at(vault, (job(1),), NOW)
    other = (job(2, vault_id=OTHER),)
    settled = vault.settle(Sweep(OTHER, other), listing(*other), NOW, NOW)
    commit_all(vault, settled, NOW)
    # The second vault has its own slot within the interval.
    assert settled.next_sweep is not None and settled.next_sweep < NOW + INTERVAL
    assert [s.vault_id for s in vault.due_sweeps(settled.next_sweep)] == [OTHER]
    assert [s.vault_id for s in vault.due_sweeps(NOW + INTERVAL)] == [VAULT]


# --------------------------------------------------------------------------- one commit


@dataclasses.dataclass(frozen=True)
class Hook:
    name: str
    events: tuple[str, ...]


def test_a_commit_is_computed_once_and_its_events_report_it() -> None:
    record = job(1, status=None)
    vault = roster()
    settled = vault.settle(Sweep(VAULT, (record,)), listing(record), NOW, NOW)
    [(before, decision)] = settled.changed
    commit = events.commit(before, decision, NOW, [Hook("ops", ("all",))], lambda: "e-1")
    assert commit.before is before and commit.transition == (None, "InProgress")
    assert commit.committed is commit.after
    assert JobWrite(before, decision, NOW).committed == commit.after
    [entry] = commit.outbox
    body = json.loads(entry.payload)
    # The event reports the job exactly as the row is written: next poll is the lease.
    assert body["data"]["job"] == json.loads(json.dumps(commit.after.to_json()))
    assert commit.after.next_poll_at == settled.lease
    assert events.commit(before, decision, NOW, [], lambda: "e-2").outbox == ()


def test_vault_ids_name_the_vaults_with_members_and_leave_all_forgets_one() -> None:
    """A replica whose lease moved on forgets the vault (service/dispatcher.py)."""
    records = (job(1), job(2), job(3))
    vault = roster()
    assert vault.vault_ids() == []
    commit_all(vault, vault.settle(Sweep(VAULT, records), listing(*records), NOW, NOW), NOW)
    assert vault.vault_ids() == [VAULT]
    vault.leave_all(VAULT)
    assert vault.vault_ids() == []
    assert vault.held() == set() and vault.next_sweep_at(VAULT) is None


@pytest.mark.parametrize(
    ("fullness", "expected"),
    [
        (None, None),
        (0.0, None),
        (0.5, None),
        (0.7, POLICY.interval - (POLICY.interval - POLICY.min_interval) / 2),
        (0.9, POLICY.min_interval),
        (1.0, POLICY.min_interval),
    ],
)
def test_a_budget_with_room_to_spare_sweeps_sooner(
    fullness: float | None, expected: timedelta | None
) -> None:
    assert spare_sweep_interval(POLICY, fullness) == expected


def test_settle_takes_the_sooner_sweep_but_never_a_later_one() -> None:
    records = (job(1), job(2), job(3))
    settled = roster().settle(
        Sweep(VAULT, records), listing(*records), NOW, NOW, sooner=POLICY.min_interval
    )
    assert settled.next_sweep == NOW + POLICY.min_interval
    assert settled.lease == NOW + POLICY.min_interval + lease_span(POLICY)
    later = roster().settle(
        Sweep(VAULT, records), listing(*records), NOW, NOW, sooner=10 * INTERVAL
    )
    assert later.next_sweep == NOW + INTERVAL


# --------------------------------------------------------------------------- window lists


def test_a_sweep_window_spans_the_jobs_starts_in_whole_seconds() -> None:
    early = NOW - timedelta(minutes=10, microseconds=250)
    late = NOW + timedelta(seconds=3, microseconds=1)
    since, until = sweep_window([late, early, NOW]) or (None, None)
    assert since == NOW - timedelta(minutes=10, seconds=2)
    assert until == NOW + timedelta(seconds=5)
    assert sweep_window([NOW, None]) is None
    assert sweep_window([]) is None


def test_the_filter_of_each_kind_of_sweep() -> None:
    since, until = NOW, NOW + timedelta(hours=1)
    assert sweep_filter(VaultKind.RECOVERY_SERVICES) == "status eq 'InProgress'"
    assert sweep_filter(VaultKind.RECOVERY_SERVICES, (since, until)) == (
        "startTime eq '2026-03-01 12:00:00 PM' and endTime eq '2026-03-01 01:00:00 PM'"
    )
    assert sweep_filter(VaultKind.DATA_PROTECTION, (since, until)) is None


@pytest.mark.parametrize(
    ("ends", "window_pages", "running_pages", "worthwhile"),
    [
        (0, 1, 1, False),  # nothing ends: the in-progress list is the cheaper one
        (1, 1, 1, False),
        (2, 1, 1, True),  # ends, and the window costs what the in-progress list does
        (2, 2, 1, False),
        (8, 3, 1, True),  # two more pages for eight ends recorded at once
        (8, 4, 1, False),
    ],
)
def test_when_a_window_list_is_worth_it(
    ends: int, window_pages: int, running_pages: int, worthwhile: bool
) -> None:
    assert window_worthwhile(ends, window_pages, running_pages) is worthwhile


def _swept(vault: VaultRoster, records: tuple[JobRecord, ...]) -> None:
    """The records become members through a first sweep that lists them all running."""
    sweep = vault.begin(records[0].vault_id, records)
    assert sweep.window is None
    settled = vault.settle(sweep, listing(*records), NOW, NOW, pages_read=1)
    commit_all(vault, settled, NOW)


def _ending(vault: VaultRoster, records: tuple[JobRecord, ...], ended: int) -> Settlement:
    """A sweep of the in-progress list from which the first `ended` jobs are gone."""
    _swept(vault, records)
    [sweep] = vault.due_sweeps(NOW + INTERVAL)
    assert sweep.window is None
    settled = vault.settle(sweep, listing(*records[ended:]), NOW + INTERVAL, NOW + INTERVAL)
    commit_all(vault, settled, NOW + INTERVAL)
    return settled


def test_once_jobs_end_the_next_sweep_lists_their_window_and_records_the_ends() -> None:
    records = tuple(job(pk, start_time=STARTED + timedelta(seconds=pk)) for pk in range(1, 7))
    vault = roster()
    settled = _ending(vault, records, 2)
    assert [r.pk for r in settled.urgent] == [1, 2]
    [sweep] = vault.due_sweeps(NOW + 2 * INTERVAL)
    assert sweep.window == (STARTED + timedelta(seconds=2), STARTED + timedelta(seconds=7))
    at = NOW + 2 * INTERVAL
    listed = {r.job_id: item(r) for r in records[2:]}
    listed["job-3"] = item(records[2], "Completed")
    listed["job-4"] = item(records[3], "Failed")
    settled = vault.settle(sweep, listed, at, at, pages_read=1)
    ended = {r.pk: d for r, d in settled.finished}
    assert set(ended) == {3, 4}
    assert ended[3].transition == ("InProgress", "Completed")
    assert ended[4].transition == ("InProgress", "Failed")
    # Recorded from the list, still tracked: the GET that keeps the final snapshot is due.
    assert all(d.tracking is Tracking.ACTIVE and d.next_poll_at == at for d in ended.values())
    assert not settled.urgent
    assert vault.members(VAULT).keys() == {5, 6}
    assert settled.next_sweep is not None


def test_a_window_list_that_costs_too_much_is_left_alone_for_a_while() -> None:
    records = tuple(job(pk) for pk in range(1, 101))
    vault = roster()
    _ending(vault, records, 2)
    at = NOW + 2 * INTERVAL
    [sweep] = vault.due_sweeps(at)
    assert sweep.window is not None
    # The window holds 400 other jobs of the vault that ended: 5 pages where the running
    # ones take 1.
    others = [job(pk) for pk in range(1000, 1400)]
    listed = listing(*records[2:]) | {r.job_id: item(r, "Completed") for r in others}
    settled = vault.settle(sweep, listed, at, at, pages_read=5)
    commit_all(vault, settled, at)
    windows = []
    for n in range(1, WINDOW_RETRY_SWEEPS + 2):
        moment = at + n * INTERVAL
        [sweep] = vault.due_sweeps(moment)
        windows.append(sweep.window is not None)
        # Jobs keep ending: two leave the list at every sweep.
        running = sorted(vault.members(VAULT).values(), key=lambda r: r.pk)[2:]
        settled = vault.settle(
            sweep, listing(*running), moment, moment, pages_read=1, detail_room=0
        )
        commit_all(vault, settled, moment)
    assert windows == [False] * WINDOW_RETRY_SWEEPS + [True]


def test_no_window_for_a_backup_vault_or_a_job_whose_start_is_unknown() -> None:
    backup_vault = (
        "/subscriptions/aaaaaaaa-1111-2222-3333-444444444444/resourceGroups/rg"
        "/providers/Microsoft.DataProtection/backupVaults/bv"
    )
    for vault_id, unknown in ((backup_vault, False), (VAULT, True)):
        records = tuple(job(pk, vault_id=vault_id) for pk in range(1, 7))
        vault = roster()
        _swept(vault, records)
        [sweep] = vault.due_sweeps(NOW + INTERVAL)
        settled = vault.settle(
            sweep, listing(*records[2:]), NOW + INTERVAL, NOW + INTERVAL, pages_read=1
        )
        commit_all(vault, settled, NOW + INTERVAL)
        if unknown:
            # A newcomer never read joins the next sweep: a window could miss it.
            newcomer = job(7, status=None, start_time=None, last_detail_at=None)
            assert vault.plan([newcomer], NOW + INTERVAL).kind is PlanKind.JOIN
        [sweep] = vault.due_sweeps(NOW + 2 * INTERVAL)
        assert sweep.window is None, vault_id


def test_a_window_list_may_take_the_pages_it_is_worth_and_no_more() -> None:
    records = tuple(job(pk) for pk in range(1, 101))
    vault = roster()
    _ending(vault, records, 8)
    [sweep] = vault.due_sweeps(NOW + 2 * INTERVAL)
    # One page of running jobs, plus one per four of the 8 ends of the last sweep.
    assert sweep.window is not None and sweep.max_pages == 1 + 8 // 4
    # It ran past them: this sweep lists the in-progress jobs, and so do the next ones.
    fallback = vault.window_too_long(sweep)
    assert (fallback.window, fallback.max_pages, fallback.records) == (None, None, sweep.records)
    at = NOW + 2 * INTERVAL
    settled = vault.settle(fallback, listing(*records[10:]), at, at, pages_read=1, detail_room=0)
    commit_all(vault, settled, at)
    [sweep] = vault.due_sweeps(at + INTERVAL)
    assert sweep.window is None
