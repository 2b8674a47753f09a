"""Stuck jobs: the threshold rules, the flag in the per-poll decision, and their config."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd import bootstrap as app
from backupjobd import config
from backupjobd.core import azure
from backupjobd.core.decisions import (
    Failure,
    JobDecision,
    JobState,
    Missing,
    PollPolicy,
    Seen,
    StuckRules,
    Tracking,
    decide_job,
)
from backupjobd.errors import ConfigError

VAULT_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg1"
    "/providers/Microsoft.RecoveryServices/vaults/vault1"
)
JOB_GUID = "5f0e3a8c-2d1b-4c7e-9f6a-1b2c3d4e5f60"
START = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
RULES = StuckRules(
    default=timedelta(hours=6),
    by_key=(
        ("Backup", timedelta(hours=2)),
        ("Restore", timedelta(hours=12)),
        ("Restore/AzureWorkloadJob", timedelta(hours=24)),
        ("backup/azureiaasvmjob", timedelta(hours=3)),
    ),
)
POLICY = PollPolicy(stuck=StuckRules(default=HOUR))
TERMINAL = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]


def job(
    status: str = "InProgress",
    *,
    operation: str = "Backup",
    job_type: str = "AzureIaaSVMJob",
    start: datetime | None = START,
) -> azure.JobObservation:
    props: dict[str, Any] = {
        "jobType": job_type,
        "operation": operation,
        "status": status,
        "entityFriendlyName": "vm1",
        "backupManagementType": "AzureIaasVM",
        "duration": "PT1M",
    }
    if start is not None:
        props["startTime"] = start.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    body = {
        "id": f"{VAULT_ID}/backupJobs/{JOB_GUID}",
        "name": JOB_GUID,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": props,
    }
    return azure.parse_job_resource(body)


def decide(state: JobState, outcome: Any, now: datetime) -> JobDecision:
    return decide_job(state, outcome, now, POLICY, 0.5)


def carry(state: JobState, decision: JobDecision) -> JobState:
    """The state the store would hand to the next poll after committing `decision`."""
    return JobState(
        status=decision.status,
        poll_count=state.poll_count + 1,
        consecutive_failures=decision.consecutive_failures,
        not_found_since=decision.not_found_since,
        last_snapshot_hash=decision.snapshot.content_hash
        if decision.snapshot
        else state.last_snapshot_hash,
        last_error=decision.error,
        started_at=state.started_at,
        stuck_since=decision.stuck_since,
    )


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(
    ("operation", "job_type", "expected"),
    [
        ("Backup", "AzureIaaSVMJob", timedelta(hours=3)),  # Operation/JobType wins
        ("Backup", "AzureStorageJob", timedelta(hours=2)),  # then Operation
        ("Backup (Full)", "AzureIaaSVMJob", timedelta(hours=3)),  # SQL's relabel still matches
        ("Backup (Full)", "AzureWorkloadJob", timedelta(hours=2)),
        ("Backup (Log)", None, timedelta(hours=2)),
        ("Restore", "AzureWorkloadJob", timedelta(hours=24)),
        ("Restore", "AzureIaaSVMJob", timedelta(hours=12)),
        ("RESTORE", "azureworkloadjob", timedelta(hours=24)),  # case-insensitive
        ("backup", "AZUREIAASVMJOB", timedelta(hours=3)),
        ("ConfigureBackup", "AzureIaaSVMJob", timedelta(hours=6)),  # default
        (None, None, timedelta(hours=6)),
        ("", "AzureIaaSVMJob", timedelta(hours=6)),
    ],
)
def test_threshold_lookup(operation: str | None, job_type: str | None, expected: timedelta) -> None:
    assert RULES.threshold(operation, job_type) == expected


def test_a_job_type_rule_does_not_apply_to_other_operations() -> None:
    rules = StuckRules(default=HOUR, by_key=(("Restore/AzureIaaSVMJob", 5 * HOUR),))
    assert rules.threshold("Backup", "AzureIaaSVMJob") == HOUR
    assert rules.threshold("Restore", "AzureIaaSVMJob") == 5 * HOUR


def test_a_rule_keyed_with_the_suffix_matches_too() -> None:
    by_operation = StuckRules(default=HOUR, by_key=(("Backup (Full)", 5 * HOUR),))
    assert by_operation.threshold("Backup (Full)", "AzureWorkloadJob") == 5 * HOUR
    by_type = StuckRules(default=HOUR, by_key=(("Backup (Log)/AzureWorkloadJob", 7 * HOUR),))
    assert by_type.threshold("Backup (Log)", "AzureWorkloadJob") == 7 * HOUR


def test_no_default_disables_the_flag_except_where_a_rule_says() -> None:
    rules = StuckRules(default=None, by_key=(("Restore", HOUR),))
    assert rules.threshold("Backup", "AzureIaaSVMJob") is None
    assert rules.threshold(None, None) is None
    assert rules.threshold("Restore", "AzureIaaSVMJob") == HOUR


def test_the_built_in_default_is_six_hours() -> None:
    assert StuckRules().threshold("Backup", "AzureIaaSVMJob") == timedelta(hours=6)
    assert PollPolicy().stuck.threshold("Restore", None) == timedelta(hours=6)


# --------------------------------------------------------------------------- decide_job


def test_not_stuck_before_the_threshold() -> None:
    state = JobState(status="InProgress", poll_count=3)
    for now in (START, START + HOUR - timedelta(seconds=1), START + HOUR):
        decision = decide(state, Seen(job()), now)
        assert decision.stuck_since is None
        assert decision.newly_stuck is False


def test_marked_stuck_once_and_the_time_is_kept() -> None:
    state = JobState(status="InProgress", poll_count=3)
    first_at = START + HOUR + timedelta(seconds=1)
    first = decide(state, Seen(job()), first_at)
    assert first.stuck_since == first_at
    assert first.newly_stuck is True
    assert first.tracking is Tracking.ACTIVE
    state = carry(state, first)
    for later in (first_at + timedelta(minutes=5), first_at + 10 * HOUR):
        decision = decide(state, Seen(job()), later)
        assert decision.stuck_since == first_at
        assert decision.newly_stuck is False
        state = carry(state, decision)


def test_still_stuck_when_the_status_changes_but_stays_running() -> None:
    state = JobState(status="InProgress", stuck_since=START + 2 * HOUR)
    decision = decide(state, Seen(job("Cancelling")), START + 3 * HOUR)
    assert decision.transition == ("InProgress", "Cancelling")
    assert decision.stuck_since == START + 2 * HOUR
    assert decision.newly_stuck is False


@pytest.mark.parametrize("final", TERMINAL)
def test_a_terminal_job_is_never_stuck(final: str) -> None:
    late = START + 100 * HOUR
    fresh = decide(JobState(status="InProgress"), Seen(job(final)), late)
    assert fresh.stuck_since is None and fresh.newly_stuck is False
    # A job flagged stuck earlier that finishes is no longer flagged.
    flagged = JobState(status="InProgress", stuck_since=START + 2 * HOUR)
    finished = decide(flagged, Seen(job(final)), late)
    assert finished.tracking is Tracking.FINISHED
    assert finished.stuck_since is None and finished.newly_stuck is False


@pytest.mark.parametrize("final", TERMINAL)
def test_a_terminal_list_item_is_not_stuck_either(final: str) -> None:
    decision = decide(JobState(status="InProgress"), Seen(job(final), full=False), START + 9 * HOUR)
    assert decision.tracking is Tracking.ACTIVE  # one full GET follows
    assert decision.stuck_since is None


def test_an_unknown_running_status_can_be_stuck() -> None:
    decision = decide(JobState(status="InProgress"), Seen(job("Paused")), START + 2 * HOUR)
    assert decision.newly_stuck is True


def test_without_a_start_time_the_registration_time_counts() -> None:
    observed = job(start=None)
    assert observed.start_time is None
    registered = START + 30 * timedelta(minutes=1)
    state = JobState(status="InProgress", started_at=registered)
    assert decide(state, Seen(observed), registered + HOUR).stuck_since is None
    late = registered + HOUR + timedelta(seconds=1)
    assert decide(state, Seen(observed), late).stuck_since == late


def test_the_job_start_time_wins_over_the_registration_time() -> None:
    state = JobState(status="InProgress", started_at=START + 5 * HOUR)
    now = START + 2 * HOUR  # past the threshold from Azure's start, not from registration
    assert decide(state, Seen(job()), now).newly_stuck is True


def test_no_start_time_at_all_is_never_stuck() -> None:
    decision = decide(JobState(status="InProgress"), Seen(job(start=None)), START + 99 * HOUR)
    assert decision.stuck_since is None


def test_the_operation_threshold_applies() -> None:
    policy = PollPolicy(stuck=StuckRules(default=HOUR, by_key=(("Restore", 10 * HOUR),)))
    restore = job(operation="Restore")
    state = JobState(status="InProgress")
    assert decide_job(state, Seen(restore), START + 5 * HOUR, policy, 0.5).stuck_since is None
    assert decide_job(state, Seen(job()), START + 5 * HOUR, policy, 0.5).newly_stuck is True
    assert decide_job(state, Seen(restore), START + 11 * HOUR, policy, 0.5).newly_stuck is True


def test_disabled_rules_never_flag() -> None:
    policy = PollPolicy(stuck=StuckRules(default=None))
    state = JobState(status="InProgress")
    decision = decide_job(state, Seen(job()), START + 1000 * HOUR, policy, 0.0)
    assert decision.stuck_since is None


def test_the_flag_is_carried_across_a_404() -> None:
    since = START + 2 * HOUR
    state = JobState(status="InProgress", stuck_since=since)
    decision = decide(state, Missing(), START + 3 * HOUR)
    assert decision.tracking is Tracking.ACTIVE
    assert decision.stuck_since == since
    assert decision.newly_stuck is False


@pytest.mark.parametrize("transient", [True, False])
def test_the_flag_is_carried_across_a_failed_poll(transient: bool) -> None:
    since = START + 2 * HOUR
    state = JobState(status="InProgress", stuck_since=since)
    decision = decide(state, Failure("HTTP 503", transient=transient), START + 3 * HOUR)
    assert decision.stuck_since == since
    assert decision.newly_stuck is False


def test_stuck_then_failure_then_seen_is_flagged_only_once() -> None:
    state = JobState(status="InProgress", poll_count=5)
    times = [START + HOUR + timedelta(minutes=m) for m in (1, 2, 3, 4)]
    outcomes: list[Any] = [Seen(job()), Failure("HTTP 500", transient=True), Missing(), Seen(job())]
    flags = []
    for now, outcome in zip(times, outcomes, strict=True):
        decision = decide(state, outcome, now)
        flags.append(decision.newly_stuck)
        assert decision.stuck_since == times[0]
        state = carry(state, decision)
    assert flags == [True, False, False, False]


# --------------------------------------------------------------------------- config


def test_the_stuck_section_from_toml() -> None:
    raw = tomllib.loads(
        """
[stuck]
after_seconds = 3600

[stuck.thresholds]
Restore = 43200
"Backup/AzureWorkloadJob" = 600.5
"""
    )
    cfg = config.build(raw, {})
    assert cfg.stuck.after_seconds == 3600.0
    assert cfg.stuck.thresholds == {"Restore": 43200.0, "Backup/AzureWorkloadJob": 600.5}
    rules = app.poll_policy(cfg).stuck
    assert rules.default == HOUR
    assert rules.threshold("restore", "AzureIaaSVMJob") == timedelta(hours=12)
    assert rules.threshold("Backup (Full)", "AzureWorkloadJob") == timedelta(seconds=600.5)
    assert rules.threshold("Backup", "AzureIaaSVMJob") == HOUR


def test_the_stuck_defaults() -> None:
    cfg = config.build({}, {})
    assert cfg.stuck.after_seconds == 21600.0
    assert cfg.stuck.thresholds == {}
    assert app.poll_policy(cfg).stuck.threshold("Backup", None) == timedelta(hours=6)


def test_the_stuck_section_from_the_environment() -> None:
    raw = tomllib.loads("[stuck]\nthresholds = { Backup = 100 }\n")
    env = {
        "BACKUPJOBD_STUCK__AFTER_SECONDS": "90",
        "BACKUPJOBD_STUCK__THRESHOLDS": '{"Restore": 7200, "Backup/AzureIaaSVMJob": 1.5}',
    }
    cfg = config.build(raw, env)
    assert cfg.stuck.after_seconds == 90.0
    # The environment replaces the file's table.
    assert cfg.stuck.thresholds == {"Restore": 7200.0, "Backup/AzureIaaSVMJob": 1.5}
    rules = app.poll_policy(cfg).stuck
    assert rules.threshold("Backup", "AzureIaaSVMJob") == timedelta(seconds=1.5)
    assert rules.threshold("Backup", "AzureStorageJob") == timedelta(seconds=90)


def test_an_empty_table_is_accepted() -> None:
    cfg = config.build({}, {"BACKUPJOBD_STUCK__THRESHOLDS": "{}"})
    assert cfg.stuck.thresholds == {}


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "[1, 2]",
        '"Restore"',
        "3600",
        '{"Restore": 0}',
        '{"Restore": -5}',
        '{"Restore": "1h"}',
        '{"Restore": true}',
        '{"Restore": null}',
        '{"Restore": {"AzureWorkloadJob": 5}}',
        '{"Restore": NaN}',
        '{"Restore": Infinity}',
    ],
)
def test_bad_thresholds_in_the_environment_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"stuck\.thresholds"):
        config.build({}, {"BACKUPJOBD_STUCK__THRESHOLDS": value})


@pytest.mark.parametrize(
    "toml",
    [
        "thresholds = 5",
        'thresholds = "Restore=5"',
        "thresholds = [1, 2]",
        "thresholds = { Restore = 0 }",
        "thresholds = { Restore = -1.5 }",
        'thresholds = { Restore = "5" }',
        "thresholds = { Restore = true }",
        "thresholds = { Restore = nan }",
        "thresholds = { Restore = inf }",
        "thresholds = { Restore = { AzureWorkloadJob = 5 } }",
    ],
)
def test_bad_thresholds_in_the_file_are_refused(toml: str) -> None:
    raw = tomllib.loads(f"[stuck]\n{toml}\n")
    with pytest.raises(ConfigError, match=r"stuck\.thresholds"):
        config.build(raw, {})


@pytest.mark.parametrize(
    ("raw", "env"),
    [
        ({"stuck": {"after_seconds": 0}}, {}),
        ({"stuck": {"after_seconds": -1}}, {}),
        ({}, {"BACKUPJOBD_STUCK__AFTER_SECONDS": "soon"}),
        ({}, {"BACKUPJOBD_STUCK__AFTER_SECONDS": "nan"}),
    ],
)
def test_bad_after_seconds_is_refused(raw: dict[str, Any], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"stuck\.after_seconds"):
        config.build(raw, env)


def test_an_unknown_stuck_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"stuck\.after_minutes"):
        config.build({"stuck": {"after_minutes": 5}}, {})
