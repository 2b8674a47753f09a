"""The pure construction of webhook events: which events a decision raises, which webhooks
want them, the CloudEvents 1.0 body, the outbox entries and the delivery backoff."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backupjobd import config
from backupjobd.config import WebhookConfig
from backupjobd.core import azure, events
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
from backupjobd.core.model import JobRecord
from backupjobd.errors import ConfigError

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
REGISTERED = NOW - timedelta(minutes=10)
POLICY = PollPolicy()
VAULT_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg1"
    "/providers/Microsoft.RecoveryServices/vaults/vault1"
)
JOB_GUID = "0bda1a53-73fa-427e-9a1c-72a2016adee3"
JOB_ARM_ID = f"{VAULT_ID}/backupJobs/{JOB_GUID}"

# Written out here on purpose (not imported) so the tests check the module's sets.
TERMINAL = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]
RUNNING = ["InProgress", "Cancelling"]
STATUSES = [*RUNNING, *TERMINAL, "Invalid", "SomethingNew"]
KINDS = [s.lower() for s in STATUSES] + ["lost", "stuck"]
# The fields `jobs list/show --json` promise (design.md), which the event's data.job carries.
CONTRACT_FIELDS = {
    "job_id",
    "vault_id",
    "status",
    "job_type",
    "operation",
    "entity_friendly_name",
    "start_time",
    "end_time",
    "finished",
    "registered_at",
    "last_polled_at",
    "poll_count",
}


def record(**changes: Any) -> JobRecord:
    values: dict[str, Any] = {
        "pk": 7,
        "vault_id": VAULT_ID,
        "job_id": JOB_GUID,
        "source": "job-id",
        "status": None,
        "tracking": Tracking.ACTIVE,
        "job_type": None,
        "operation": None,
        "entity_friendly_name": None,
        "backup_management_type": None,
        "start_time": None,
        "end_time": None,
        "registered_at": REGISTERED,
        "last_polled_at": None,
        "next_poll_at": REGISTERED,
        "finished_at": None,
        "poll_count": 0,
        "error_count": 0,
        "consecutive_failures": 0,
        "not_found_since": None,
        "last_error": None,
        "last_error_at": None,
        "last_snapshot_hash": None,
        "version": 0,
    }
    values.update(changes)
    return JobRecord(**values)


def observation(status: str, **extra: Any) -> azure.JobObservation:
    props: dict[str, Any] = {
        "jobType": "AzureIaaSVMJob",
        "operation": "Backup",
        "status": status,
        "entityFriendlyName": "vm1",
        "backupManagementType": "AzureIaasVM",
        "startTime": "2026-03-01T11:55:00Z",
        "duration": "PT5M",
        "extendedInfo": {"tasksList": [{"taskId": "Take Snapshot", "status": "InProgress"}]},
    }
    if status in TERMINAL:
        props["endTime"] = "2026-03-01T11:59:30Z"
    props.update(extra)
    return azure.parse_job_resource(
        {
            "id": JOB_ARM_ID,
            "name": JOB_GUID,
            "type": "Microsoft.RecoveryServices/vaults/backupJobs",
            "properties": props,
        }
    )


def seen(previous: str | None, status: str, policy: PollPolicy = POLICY) -> JobDecision:
    state = record(status=previous).state()
    return decide_job(state, Seen(observation(status)), NOW, policy, jitter=0.5)


def hook(name: str, *filters: str) -> WebhookConfig:
    return WebhookConfig(url=f"http://127.0.0.1:9/{name}", name=name, events=filters)


def counter() -> Any:
    numbers = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(numbers):012d}"


# --------------------------------------------------------------------------- event_kinds


@pytest.mark.parametrize("previous", [None, "InProgress", "Cancelling"])
@pytest.mark.parametrize("status", STATUSES)
def test_a_transition_raises_the_new_status_in_lower_case(
    previous: str | None, status: str
) -> None:
    decision = seen(previous, status)
    if previous == status:
        assert decision.transition is None
        assert events.event_kinds(decision) == []
    else:
        assert decision.transition == (previous, status)
        assert events.event_kinds(decision) == [status.lower()]


@pytest.mark.parametrize("status", STATUSES)
def test_seeing_the_same_status_again_raises_nothing(status: str) -> None:
    assert events.event_kinds(seen(status, status)) == []


@pytest.mark.parametrize("previous", [None, "InProgress"])
def test_a_job_lost_after_the_grace_period_raises_lost_only(previous: str | None) -> None:
    state = JobState(status=previous, not_found_since=NOW - POLICY.not_found_grace)
    decision = decide_job(state, Missing(), NOW, POLICY, jitter=0.5)
    assert decision.tracking is Tracking.LOST
    assert events.event_kinds(decision) == ["lost"]


def test_404_within_the_grace_period_raises_nothing() -> None:
    state = JobState(status="InProgress", not_found_since=NOW - timedelta(seconds=1))
    decision = decide_job(state, Missing(), NOW, POLICY, jitter=0.5)
    assert decision.tracking is Tracking.ACTIVE
    assert events.event_kinds(decision) == []


@pytest.mark.parametrize("transient", [True, False])
def test_a_failed_poll_raises_nothing(transient: bool) -> None:
    state = JobState(status="InProgress")
    failure = Failure("HTTP 500", transient=transient, status=None if transient else 403)
    decision = decide_job(state, failure, NOW, POLICY, jitter=0.5)
    assert decision.error is not None
    assert events.event_kinds(decision) == []


def test_a_job_newly_stuck_raises_stuck_once() -> None:
    policy = PollPolicy(stuck=StuckRules(default=timedelta(minutes=1)))
    first = seen(None, "InProgress", policy)
    assert first.newly_stuck
    assert events.event_kinds(first) == ["inprogress", "stuck"]

    quiet = seen("InProgress", "InProgress", policy)
    assert quiet.newly_stuck
    assert events.event_kinds(quiet) == ["stuck"]

    state = JobState(status="InProgress", started_at=REGISTERED, stuck_since=NOW)
    again = decide_job(state, Seen(observation("InProgress")), NOW, policy, jitter=0.5)
    assert again.stuck_since == NOW and not again.newly_stuck
    assert events.event_kinds(again) == []


def test_a_decision_with_no_change_raises_nothing() -> None:
    decision = JobDecision(status="InProgress", tracking=Tracking.ACTIVE, next_poll_at=NOW)
    assert events.event_kinds(decision) == []


# --------------------------------------------------------------------------- wanted

# Every filter against every kind, written out: the contract of `[[notify.webhook]] events`.
WANTED: dict[str, set[str]] = {
    "all": set(KINDS),
    "terminal": {"completed", "completedwithwarnings", "failed", "cancelled", "lost"},
    "failures": {"failed", "completedwithwarnings", "lost"},
    "stuck": {"stuck"},
}


def test_the_filters_are_those_of_the_config() -> None:
    assert set(config.WEBHOOK_EVENTS) == set(WANTED)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("filter_", sorted(WANTED))
def test_wanted_every_filter_and_kind(filter_: str, kind: str) -> None:
    assert events.wanted([filter_], kind) is (kind in WANTED[filter_])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "filters", [c for n in range(0, 5) for c in itertools.combinations(sorted(WANTED), n)]
)
def test_wanted_is_the_union_of_the_filters(filters: tuple[str, ...], kind: str) -> None:
    expected = any(kind in WANTED[f] for f in filters)
    assert events.wanted(filters, kind) is expected


# --------------------------------------------------------------------------- cloud_event


def test_cloud_event_has_the_cloudevents_attributes_and_the_job() -> None:
    rec = record(status="InProgress", poll_count=3, version=3, last_polled_at=NOW)
    decision = seen("InProgress", "Failed")
    job = rec.after(decision, NOW)
    body = events.cloud_event("evt-1", "failed", job, decision, NOW)

    # CloudEvents 1.0 required attributes, non-empty strings.
    assert body["specversion"] == "1.0"
    assert body["id"] == "evt-1"
    assert body["source"] == "backupjobd"
    assert body["type"] == "com.backupjobd.job.failed"
    for attribute in ("id", "source", "type", "specversion"):
        assert isinstance(body[attribute], str) and body[attribute]
    assert body["subject"] == JOB_ARM_ID
    assert azure.parse_job_arm_id(body["subject"]) == (azure.vault_from_id(VAULT_ID), JOB_GUID)
    assert body["time"] == "2026-03-01T12:00:00Z"
    assert body["datacontenttype"] == "application/json"
    assert body["data"]["job"]["vault_kind"] == "RecoveryServices"
    assert body["data"]["job"]["region"] is None

    data = body["data"]
    assert set(data) == {"job", "transition", "snapshot"}
    assert set(data["job"]) >= CONTRACT_FIELDS
    assert data["job"]["job_id"] == JOB_GUID
    assert data["job"]["vault_id"] == VAULT_ID
    assert data["job"]["status"] == "Failed"
    assert data["job"]["finished"] is True
    assert data["job"]["tracking"] == "finished"
    assert data["job"]["job_type"] == "AzureIaaSVMJob"
    assert data["job"]["operation"] == "Backup"
    assert data["job"]["entity_friendly_name"] == "vm1"
    assert data["job"]["start_time"] == "2026-03-01T11:55:00Z"
    assert data["job"]["end_time"] == "2026-03-01T11:59:30Z"
    assert data["job"]["last_polled_at"] == "2026-03-01T12:00:00Z"
    assert data["job"]["finished_at"] == "2026-03-01T12:00:00Z"
    assert data["job"]["poll_count"] == 4
    assert data["transition"] == {
        "from_status": "InProgress",
        "to_status": "Failed",
        "observed_at": "2026-03-01T12:00:00Z",
    }
    assert decision.observation is not None
    assert data["snapshot"] == decision.observation.properties
    assert data["snapshot"]["status"] == "Failed"
    # It is plain JSON.
    assert json.loads(json.dumps(body)) == body


def test_cloud_event_of_a_first_sighting_has_a_null_from_status() -> None:
    decision = seen(None, "InProgress")
    job = record().after(decision, NOW)
    body = events.cloud_event("evt-2", "inprogress", job, decision, NOW)
    assert body["type"] == "com.backupjobd.job.inprogress"
    assert body["data"]["transition"]["from_status"] is None
    assert body["data"]["transition"]["to_status"] == "InProgress"
    assert body["data"]["job"]["finished"] is False
    assert body["data"]["job"]["next_poll_at"] is not None


def test_cloud_event_of_a_lost_job_has_no_transition_and_no_snapshot() -> None:
    rec = record(status="InProgress", not_found_since=NOW - POLICY.not_found_grace)
    decision = decide_job(rec.state(), Missing(), NOW, POLICY, jitter=0.5)
    job = rec.after(decision, NOW)
    body = events.cloud_event("evt-3", "lost", job, decision, NOW)
    assert body["type"] == "com.backupjobd.job.lost"
    assert body["subject"] == JOB_ARM_ID
    assert body["data"]["transition"] is None
    assert body["data"]["snapshot"] is None
    assert body["data"]["job"]["tracking"] == "lost"
    assert body["data"]["job"]["status"] == "InProgress"
    assert body["data"]["job"]["last_error"] == decision.error


def test_job_after_reads_like_the_committed_job() -> None:
    rec = record(status="InProgress", poll_count=2, version=2, job_type="AzureIaaSVMJob")
    decision = seen("InProgress", "Completed")
    after = rec.after(decision, NOW)
    assert after.status == "Completed"
    assert after.tracking is Tracking.FINISHED
    assert after.finished
    assert after.poll_count == 3
    assert after.next_poll_at is None
    assert after.finished_at == NOW
    assert after.last_polled_at == NOW
    assert after.end_time == datetime(2026, 3, 1, 11, 59, 30, tzinfo=UTC)
    # Nothing else about the job changes.
    assert (after.pk, after.job_id, after.vault_id, after.registered_at) == (
        rec.pk,
        rec.job_id,
        rec.vault_id,
        rec.registered_at,
    )


def test_job_after_clears_a_previous_error_like_the_store() -> None:
    # SqlStore.apply_job sets last_error = None when a poll observed the job without error.
    failing = record(status="InProgress", last_error="HTTP 500", last_error_at=REGISTERED)
    recovered = failing.after(seen("InProgress", "Completed"), NOW)
    assert recovered.last_error is None


def test_job_after_counts_the_error_like_the_store() -> None:
    # SqlStore.apply_job sets error_count + 1 for a decision with an error (a lost job).
    rec = record(status="InProgress", error_count=2, not_found_since=REGISTERED)
    lost = decide_job(rec.state(), Missing(), NOW, POLICY, jitter=0.5)
    assert lost.error is not None
    assert rec.after(lost, NOW).error_count == 3


# --------------------------------------------------------------------------- outbox_entries


HOOKS = [hook("everything", "all"), hook("pager", "failures"), hook("slow", "stuck")]


def test_one_entry_per_interested_webhook_sharing_one_event_id() -> None:
    decision = seen("InProgress", "Failed")
    entries = events.outbox_entries(record(status="InProgress"), decision, NOW, HOOKS, counter())
    assert [e.webhook for e in entries] == ["everything", "pager"]
    assert {e.event_id for e in entries} == {"00000000-0000-4000-8000-000000000001"}
    assert {e.event_type for e in entries} == {"com.backupjobd.job.failed"}
    # One body, byte for byte, for every webhook; its id is the entry's event id.
    assert len({e.payload for e in entries}) == 1
    body = json.loads(entries[0].payload)
    assert body["id"] == entries[0].event_id
    assert body["type"] == entries[0].event_type
    assert body["data"]["job"]["status"] == "Failed"
    assert entries[0].payload == json.dumps(body, sort_keys=True)


def test_a_status_only_all_wants_goes_to_all_only() -> None:
    entries = events.outbox_entries(record(), seen(None, "InProgress"), NOW, HOOKS, counter())
    assert [(e.webhook, e.event_type) for e in entries] == [
        ("everything", "com.backupjobd.job.inprogress")
    ]


def test_different_events_get_different_ids() -> None:
    policy = PollPolicy(stuck=StuckRules(default=timedelta(minutes=1)))
    decision = seen(None, "InProgress", policy)
    entries = events.outbox_entries(record(), decision, NOW, HOOKS, counter())
    by_type = {(e.webhook, e.event_type): e.event_id for e in entries}
    assert by_type == {
        ("everything", "com.backupjobd.job.inprogress"): "00000000-0000-4000-8000-000000000001",
        ("everything", "com.backupjobd.job.stuck"): "00000000-0000-4000-8000-000000000002",
        ("slow", "com.backupjobd.job.stuck"): "00000000-0000-4000-8000-000000000002",
    }
    stuck = [json.loads(e.payload) for e in entries if e.event_type.endswith(".stuck")]
    assert stuck[0] == stuck[1]
    assert stuck[0]["data"]["job"]["stuck"] is True


def test_ids_of_two_polls_differ() -> None:
    new_id = counter()
    first = events.outbox_entries(record(), seen(None, "InProgress"), NOW, HOOKS, new_id)
    second = events.outbox_entries(
        record(status="InProgress"), seen("InProgress", "Completed"), NOW, HOOKS, new_id
    )
    assert {e.event_id for e in first}.isdisjoint({e.event_id for e in second})


@pytest.mark.parametrize(
    "webhooks",
    [[], [hook("pager", "failures")], [hook("slow", "stuck"), hook("end", "terminal")]],
    ids=["no-webhooks", "failures-only", "stuck-and-terminal"],
)
def test_nothing_when_no_webhook_wants_it(webhooks: list[WebhookConfig]) -> None:
    def new_id() -> str:
        raise AssertionError("no event id is drawn for an event nobody wants")

    entries = events.outbox_entries(record(), seen(None, "InProgress"), NOW, webhooks, new_id)
    assert entries == []


@pytest.mark.parametrize("status", TERMINAL)
def test_terminal_hook_gets_every_final_status(status: str) -> None:
    entries = events.outbox_entries(
        record(status="InProgress"),
        seen("InProgress", status),
        NOW,
        [hook("end", "terminal"), hook("pager", "failures")],
        counter(),
    )
    expected = ["end", "pager"] if status in ("Failed", "CompletedWithWarnings") else ["end"]
    assert [e.webhook for e in entries] == expected


def test_no_change_no_entries() -> None:
    def new_id() -> str:
        raise AssertionError("unexpected event")

    decision = seen("InProgress", "InProgress")
    assert events.outbox_entries(record(status="InProgress"), decision, NOW, HOOKS, new_id) == []


# --------------------------------------------------------------------------- next_attempt

CAP = timedelta(seconds=60)


def delay(attempts: int, jitter: float, max_attempts: int = 12, cap: timedelta = CAP) -> float:
    at = events.next_attempt(attempts, NOW, max_attempts, cap, jitter)
    assert at is not None
    return (at - NOW).total_seconds()


def test_backoff_grows_then_is_capped() -> None:
    delays = [delay(n, 0.999) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[0] < delays[3] < delays[5]
    assert max(delays) <= CAP.total_seconds()
    assert delays[-1] == pytest.approx(CAP.total_seconds() * 0.999)


def test_backoff_never_overflows_with_many_attempts() -> None:
    assert delay(10_000, 0.999, max_attempts=10**6) <= CAP.total_seconds()


@pytest.mark.parametrize("max_attempts", [1, 3, 12])
def test_dead_letter_after_max_attempts(max_attempts: int) -> None:
    for attempts in range(1, max_attempts):
        assert events.next_attempt(attempts, NOW, max_attempts, CAP, 0.5) is not None
    for attempts in (max_attempts, max_attempts + 1):
        assert events.next_attempt(attempts, NOW, max_attempts, CAP, 0.5) is None


@given(
    attempts=st.integers(min_value=0, max_value=200),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    cap_seconds=st.floats(min_value=0.5, max_value=86_400.0),
)
def test_jitter_stays_within_half_a_second_and_the_cap(
    attempts: int, jitter: float, cap_seconds: float
) -> None:
    seconds = delay(attempts, jitter, max_attempts=1000, cap=timedelta(seconds=cap_seconds))
    ceiling = min(cap_seconds, 2.0**attempts)
    assert 0.5 <= seconds <= max(0.5, ceiling) + 1e-6
    assert seconds == pytest.approx(max(0.5, ceiling * jitter), abs=1e-5)


def test_full_jitter_spreads_over_the_whole_window() -> None:
    low, high = delay(6, 0.0), delay(6, 0.999)
    assert low == 0.5
    assert high == pytest.approx(min(64, CAP.total_seconds()) * 0.999)


# --------------------------------------------------------------------------- configuration


def test_webhooks_from_toml_tables() -> None:
    raw = {
        "notify": {
            "max_attempts": 5,
            "max_backoff_seconds": 30,
            "webhook": [
                {"url": "https://hooks.example/a", "events": ["all"], "secret_env": "HOOK_A"},
                {"url": "http://127.0.0.1:9/b", "name": "pager", "events": "failures"},
            ],
        }
    }
    cfg = config.build(raw, {})
    assert cfg.notify.max_attempts == 5
    assert cfg.notify.max_backoff_seconds == 30.0
    assert cfg.notify.webhook == (
        WebhookConfig("https://hooks.example/a", "webhook-1", ("all",), "HOOK_A", 10.0),
        WebhookConfig("http://127.0.0.1:9/b", "pager", ("failures",), "", 10.0),
    )


def test_webhooks_from_the_environment_as_a_json_array() -> None:
    env = {
        "BACKUPJOBD_NOTIFY__WEBHOOK": json.dumps(
            [{"url": "https://hooks.example/x", "name": "x", "events": ["stuck", "terminal"]}]
        ),
        "BACKUPJOBD_NOTIFY__MAX_ATTEMPTS": "3",
    }
    cfg = config.build({"notify": {"webhook": [{"url": "https://other.example"}]}}, env)
    assert cfg.notify.webhook == (
        WebhookConfig("https://hooks.example/x", "x", ("stuck", "terminal"), "", 10.0),
    )
    assert cfg.notify.max_attempts == 3


@pytest.mark.parametrize(
    ("webhooks", "names"),
    [
        ([{"url": "ftp://x"}], "url"),
        ([{"url": "https://x", "events": ["everything"]}], "events"),
        ([{"url": "https://x", "events": []}], "events"),
        ([{"url": "https://x", "colour": "red"}], "colour"),
        ([{"url": "https://x", "timeout_seconds": 0}], "timeout_seconds"),
        ([{"url": "https://x", "name": "a"}, {"url": "https://y", "name": "a"}], "unique"),
    ],
)
def test_bad_webhook_tables_name_the_key(webhooks: list[dict[str, Any]], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        config.build({"notify": {"webhook": webhooks}}, {})


def test_bad_webhook_json_in_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"notify\.webhook"):
        config.build({}, {"BACKUPJOBD_NOTIFY__WEBHOOK": "{not json"})


def test_a_cross_region_restore_event_names_its_location_scoped_job() -> None:
    """A cross-region restore's job lives at a location, not under its source vault."""
    rec = record(status="InProgress", region="eastus2")
    decision = seen("InProgress", "Completed")
    body = events.cloud_event("evt-2", "completed", rec.after(decision, NOW), decision, NOW)
    crr = azure.parse_crr_job_id(body["subject"])
    assert crr is not None and (crr.region, crr.job_id) == ("eastus2", JOB_GUID)
    assert body["data"]["job"]["region"] == "eastus2"
    assert body["data"]["job"]["vault_id"] == VAULT_ID
