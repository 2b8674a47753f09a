"""What the web page shows, decided from job views: in flight (stuck and overdue first),
failures, per-vault counts and success rates, the 24-hour timeline, and the fallbacks for
view fields that may not be there yet (expected_end_at, vault_kind)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd.core import overview
from backupjobd.core.overview import Filters

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
RS_VAULT = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v1"
DP_VAULT = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.DataProtection/backupVaults/b1"


def iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def job(
    job_id: str,
    status: str | None = "InProgress",
    *,
    vault: str = RS_VAULT,
    started: timedelta = timedelta(hours=1),
    ended: timedelta | None = None,
    **extra: Any,
) -> dict[str, Any]:
    finished = status in ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
    return {
        "job_id": job_id,
        "vault_id": vault,
        "status": status,
        "finished": finished,
        "start_time": iso(NOW - started),
        "end_time": iso(NOW - ended) if ended is not None else None,
        "registered_at": iso(NOW - started),
        "finished_at": None,
        "stuck": False,
        "progress_percent": None,
        **extra,
    }


def test_in_flight_lists_unfinished_jobs_attention_first() -> None:
    jobs = [
        job("old", started=timedelta(hours=5)),
        job("young", started=timedelta(minutes=5)),
        job("stuck", started=timedelta(minutes=1), stuck=True),
        job("overdue", started=timedelta(minutes=2), expected_end_at=iso(NOW - timedelta(1))),
        job("done", "Completed", ended=timedelta(minutes=1)),
    ]
    flights = overview.in_flight(jobs, NOW)
    assert [f.job["job_id"] for f in flights] == ["overdue", "stuck", "old", "young"]
    by_id = {f.job["job_id"]: f for f in flights}
    assert by_id["overdue"].overdue and not by_id["overdue"].stuck
    assert by_id["stuck"].stuck and not by_id["stuck"].overdue
    assert by_id["old"].elapsed_seconds == 5 * 3600
    assert by_id["old"].expected_end is None and not by_id["old"].overdue  # field missing


def test_a_job_before_its_expected_end_is_not_overdue() -> None:
    [flight] = overview.in_flight([job("a", expected_end_at=iso(NOW + timedelta(minutes=1)))], NOW)
    assert not flight.overdue and flight.expected_end == NOW + timedelta(minutes=1)


def test_recent_failures_newest_first() -> None:
    jobs = [
        job("f-old", "Failed", ended=timedelta(hours=3)),
        job("ok", "Completed", ended=timedelta(hours=1)),
        job("f-new", "Failed", ended=timedelta(minutes=3)),
    ]
    assert [j["job_id"] for j in overview.recent_failures(jobs)] == ["f-new", "f-old"]


def test_vault_stats_count_statuses_and_rate_the_windows() -> None:
    jobs = [
        job("a", "Completed", ended=timedelta(hours=1)),
        job("b", "Failed", ended=timedelta(hours=2)),
        job("c", "Completed", started=timedelta(days=3), ended=timedelta(days=3)),
        job("d", "Cancelled", ended=timedelta(hours=1)),  # in neither side of a rate
        job("e", "InProgress"),
        job("f", None, vault=DP_VAULT),
    ]
    dp, rs = overview.vault_stats(jobs, NOW)  # by vault name: b1, v1
    assert rs.vault_id == RS_VAULT and rs.kind == "RecoveryServices"
    assert rs.counts == {"Completed": 2, "Failed": 1, "Cancelled": 1, "InProgress": 1}
    assert rs.success_rates["1d"] == pytest.approx(0.5)
    assert rs.success_rates["7d"] == pytest.approx(2 / 3)
    assert dp.kind == "DataProtection" and dp.counts == {"unseen": 1}
    assert dp.success_rates == {"1d": None, "7d": None}


def test_kind_reads_vault_kind_then_the_vault_provider() -> None:
    assert overview.job_kind(job("a")) == "RecoveryServices"
    assert overview.job_kind(job("a", vault=DP_VAULT)) == "DataProtection"
    assert overview.job_kind(job("a", vault_kind="DataProtection")) == "DataProtection"


def test_filters_by_vault_status_and_kind() -> None:
    jobs = [job("a"), job("b", "Failed", ended=timedelta(0)), job("c", vault=DP_VAULT)]
    assert [j["job_id"] for j in Filters(vault=RS_VAULT.upper()).apply(jobs)] == ["a", "b"]
    assert [j["job_id"] for j in Filters(status="failed").apply(jobs)] == ["b"]
    assert [j["job_id"] for j in Filters(kind="DataProtection").apply(jobs)] == ["c"]
    assert len(Filters().apply(jobs)) == 3


def test_timeline_places_jobs_on_the_last_24_hours() -> None:
    jobs = [
        job("running", started=timedelta(hours=6)),
        job("done", "Completed", started=timedelta(hours=12), ended=timedelta(hours=6)),
        job("older", "Failed", started=timedelta(hours=30), ended=timedelta(hours=20)),
        job("gone", "Completed", started=timedelta(hours=40), ended=timedelta(hours=30)),
    ]
    bars = {b.job["job_id"]: b for b in overview.timeline(jobs, NOW)}
    assert set(bars) == {"running", "done", "older"}
    assert (bars["running"].start, bars["running"].end) == (0.75, 1.0)
    assert (bars["done"].start, bars["done"].end) == (0.5, 0.75)
    assert bars["older"].start == 0.0 and bars["older"].end == pytest.approx(4 / 24)
    assert [bars[k].outcome for k in ("running", "done", "older")] == [
        "running",
        "succeeded",
        "failed",
    ]


def test_progress_series_and_tasks_from_snapshots() -> None:
    tasks = [{"taskId": "Take Snapshot", "status": "Completed"}, {"taskId": "T", "status": "X"}]
    snapshots = [
        {"observed_at": iso(NOW), "properties": {"extendedInfo": {"tasksList": tasks}}},
        {"observed_at": iso(NOW), "properties": {"extendedInfo": {"progressPercentage": 80}}},
        {"observed_at": iso(NOW), "properties": {}},
    ]
    assert overview.progress_series(snapshots) == [(NOW, 50.0), (NOW, 80.0)]
    assert overview.snapshot_tasks(snapshots[0]["properties"]) == tasks
    assert overview.snapshot_tasks(None) == []
