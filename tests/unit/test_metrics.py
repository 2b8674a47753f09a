"""Metrics that tell the truth: transitions a sweep records are counted, detection lag is
counted from the later of Azure's end time and the registration, failed operations counted."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from backupjobd.adapters.budget import ReadBudget
from backupjobd.adapters.metrics import Metrics
from backupjobd.core import events
from backupjobd.core.azure import parse_job_resource
from backupjobd.core.decisions import PollPolicy, Seen, decide_job
from backupjobd.service.journal import Journal
from tests.integration.test_store_contract import VAULT, job_body
from tests.unit.test_events import record

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def families(metrics: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


def commit_of(status: str, *, registered: datetime, now: datetime) -> events.Commit:
    job = dataclasses.replace(record(), status="InProgress", registered_at=registered)
    body = job_body(VAULT, job.job_id, status, end_time="2026-03-01T12:00:00Z")
    decision = decide_job(job.state(), Seen(parse_job_resource(body)), now, PollPolicy(), 0.5)
    return events.commit(job, decision, now, (), lambda: "e")


def test_a_swept_transition_is_counted_like_a_polled_one() -> None:
    metrics = Metrics()
    journal = Journal(metrics)
    now = T0 + timedelta(seconds=30)
    journal.swept_job(commit_of("Completed", registered=T0 - timedelta(hours=1), now=now))
    assert sample(metrics, "backupjobd_transitions_total", to_status="Completed") == 1.0
    assert sample(metrics, "backupjobd_detection_lag_seconds_sum") == 30.0


def test_lag_counts_from_the_registration_when_it_came_after_the_end() -> None:
    metrics = Metrics()
    now = T0 + timedelta(minutes=10)
    Journal(metrics).swept_job(commit_of("Failed", registered=now - timedelta(seconds=4), now=now))
    assert sample(metrics, "backupjobd_detection_lag_seconds_sum") == 4.0


def test_last_tick_build_and_failed_operations() -> None:
    metrics = Metrics()
    assert sample(metrics, "backupjobd_last_tick_timestamp_seconds") == 0.0
    metrics.set_last_tick(2.0, 1000.0)
    assert sample(metrics, "backupjobd_last_tick_timestamp_seconds") == 998.0
    metrics.operation_failed("Failed")
    assert sample(metrics, "backupjobd_operations_failed_total", status="Failed") == 1.0
    assert sample(metrics, "backupjobd_build_info") == 1.0


def test_transitions_and_polls_carry_the_vault_and_job_kind() -> None:
    """Backup vault and cross-region-restore jobs are counted apart (issue 13)."""
    metrics = Metrics()
    journal = Journal(metrics)
    now = T0 + timedelta(seconds=30)
    plain = commit_of("Completed", registered=T0, now=now)
    crr = dataclasses.replace(plain, record=dataclasses.replace(plain.record, region="eastus2"))
    journal.job(plain, Seen(parse_job_resource(job_body(VAULT, plain.record.job_id, "Completed"))))
    journal.swept_job(crr)
    assert (
        sample(
            metrics,
            "backupjobd_transitions_total",
            to_status="Completed",
            vault_kind="RecoveryServices",
            job_kind="CrossRegionRestore",
        )
        == 1.0
    )
    assert (
        sample(
            metrics,
            "backupjobd_transitions_total",
            to_status="Completed",
            job_kind="RecoveryServices",
        )
        == 1.0
    )
    assert sample(metrics, "backupjobd_polls_total", kind="job", vault_kind="RecoveryServices") == 1


def test_the_write_bucket_of_cross_region_reads_is_exported() -> None:
    metrics = Metrics()
    writes = ReadBudget(200, 10, clock=lambda: 0.0)
    assert writes.try_take("sub-1")
    writes.observe_remaining("sub-1", 1190)
    metrics.set_write_budget(writes)
    metrics.set_write_budget(None)
    assert sample(metrics, "backupjobd_write_budget_remaining", subscription="sub-1") == 1190
    assert sample(metrics, "backupjobd_write_budget_tokens", subscription="sub-1") > 0
