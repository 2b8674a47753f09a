"""What the web page shows, decided from job views (`JOB_VIEW` dicts) and a clock: the jobs
in flight (elapsed, expected end, stuck, overdue), the recent failures, per-vault counts and
success rates, and the 24-hour timeline. Pure: the HTTP side renders the result.

It reads the JSON views rather than records so that fields added to the view later
(`expected_end_at`, `vault_kind`, `region`) are read where present and fall back where not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from backupjobd.core.azure import parse_progress

__all__ = [
    "KINDS",
    "Filters",
    "Flight",
    "TimelineBar",
    "VaultStats",
    "in_flight",
    "job_kind",
    "outcome",
    "parse_time",
    "recent_failures",
    "recently_finished",
    "timeline",
    "vault_name",
    "vault_stats",
]

KINDS = ("RecoveryServices", "DataProtection")
SUCCESS = frozenset({"completed", "completedwithwarnings", "succeeded"})
FAILURE = frozenset({"failed"})
CANCELLED = frozenset({"cancelled"})
TIMELINE_SPAN = timedelta(hours=24)
RATE_WINDOWS = (("1d", timedelta(days=1)), ("7d", timedelta(days=7)))


def parse_time(value: Any) -> datetime | None:
    """An ISO time of a view (`…Z`), or None for null or anything unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def job_kind(job: Mapping[str, Any]) -> str:
    """`vault_kind` when the view carries it, else the vault id's provider says."""
    kind = job.get("vault_kind")
    if isinstance(kind, str) and kind:
        return kind
    vault_id = str(job.get("vault_id") or "").lower()
    return "DataProtection" if "/microsoft.dataprotection/" in vault_id else "RecoveryServices"


def vault_name(vault_id: str) -> str:
    """The last segment of a vault ARM id (what an operator calls the vault)."""
    return vault_id.rstrip("/").rsplit("/", 1)[-1] or vault_id


def outcome(job: Mapping[str, Any]) -> str:
    """One word for colouring: running, succeeded, warning, failed, cancelled, unseen, other."""
    status = str(job.get("status") or "").lower()
    if not status:
        return "unseen"
    if not job.get("finished"):
        return "running"
    if status == "completedwithwarnings":
        return "warning"
    if status in SUCCESS:
        return "succeeded"
    if status in FAILURE:
        return "failed"
    if status in CANCELLED:
        return "cancelled"
    return "other"


@dataclass(frozen=True, slots=True)
class Filters:
    """The page's filters; None lets everything through."""

    vault: str | None = None
    status: str | None = None
    kind: str | None = None

    def admits(self, job: Mapping[str, Any]) -> bool:
        if self.vault and str(job.get("vault_id") or "").lower() != self.vault.lower():
            return False
        if self.status and str(job.get("status") or "unseen").lower() != self.status.lower():
            return False
        return not self.kind or job_kind(job) == self.kind

    def apply(self, jobs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [job for job in jobs if self.admits(job)]


def _started(job: Mapping[str, Any]) -> datetime | None:
    return parse_time(job.get("start_time")) or parse_time(job.get("registered_at"))


def _ended(job: Mapping[str, Any]) -> datetime | None:
    return parse_time(job.get("end_time")) or parse_time(job.get("finished_at"))


@dataclass(frozen=True, slots=True)
class Flight:
    """A job still in flight, as the page lists it."""

    job: Mapping[str, Any]
    elapsed_seconds: float | None
    expected_end: datetime | None
    stuck: bool
    overdue: bool

    @property
    def progress(self) -> float | None:
        value = self.job.get("progress_percent")
        return float(value) if isinstance(value, int | float) else None


def in_flight(jobs: Iterable[Mapping[str, Any]], now: datetime) -> list[Flight]:
    """Unfinished jobs, the ones needing attention (stuck, overdue) first, then oldest first.
    Overdue: past `expected_end_at` and not finished. Stuck: the daemon flagged it
    (`[stuck]` thresholds: InProgress for longer than a job of its kind should take)."""
    flights = []
    for job in jobs:
        if job.get("finished"):
            continue
        started = _started(job)
        expected = parse_time(job.get("expected_end_at"))
        flights.append(
            Flight(
                job=job,
                elapsed_seconds=(now - started).total_seconds() if started else None,
                expected_end=expected,
                stuck=bool(job.get("stuck")),
                overdue=expected is not None and now > expected,
            )
        )
    flights.sort(key=lambda f: (not (f.stuck or f.overdue), -(f.elapsed_seconds or 0.0)))
    return flights


def recent_failures(jobs: Iterable[Mapping[str, Any]], limit: int = 20) -> list[Mapping[str, Any]]:
    """Failed jobs, the most recent end first."""
    return recently_finished((job for job in jobs if outcome(job) == "failed"), limit)


def recently_finished(
    jobs: Iterable[Mapping[str, Any]], limit: int = 50
) -> list[Mapping[str, Any]]:
    """Finished jobs (whatever the outcome), the most recent end first."""
    done = [job for job in jobs if job.get("finished")]
    done.sort(key=_end_key, reverse=True)
    return done[:limit]


def _end_key(job: Mapping[str, Any]) -> datetime:
    return _ended(job) or _started(job) or datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class VaultStats:
    vault_id: str
    kind: str
    counts: Mapping[str, int]
    # Share of jobs that ended in the window that succeeded (None: none ended there).
    success_rates: Mapping[str, float | None]


def vault_stats(jobs: Iterable[Mapping[str, Any]], now: datetime) -> list[VaultStats]:
    """Per vault: jobs by status, and the success rate of the jobs that ended in the last 1
    and 7 days. Cancelled jobs count in neither side of a rate: an operator stopped them."""
    by_vault: dict[str, list[Mapping[str, Any]]] = {}
    for job in jobs:
        by_vault.setdefault(str(job.get("vault_id") or ""), []).append(job)
    stats = []
    for vault_id, members in sorted(by_vault.items(), key=lambda kv: vault_name(kv[0]).lower()):
        counts = Counter(str(job.get("status") or "unseen") for job in members)
        rates: dict[str, float | None] = {}
        for label, span in RATE_WINDOWS:
            ended = [
                job
                for job in members
                if job.get("finished")
                and (end := _ended(job)) is not None
                and now - span <= end <= now
                and outcome(job) != "cancelled"
            ]
            good = sum(1 for job in ended if outcome(job) in ("succeeded", "warning"))
            rates[label] = good / len(ended) if ended else None
        stats.append(VaultStats(vault_id, job_kind(members[0]), dict(counts), rates))
    return stats


@dataclass(frozen=True, slots=True)
class TimelineBar:
    """One job on the timeline: where it starts and ends as shares (0..1) of the span."""

    job: Mapping[str, Any]
    start: float
    end: float
    outcome: str


def timeline(
    jobs: Iterable[Mapping[str, Any]], now: datetime, span: timedelta = TIMELINE_SPAN
) -> list[TimelineBar]:
    """Jobs that ran during the last `span`, oldest start first; a job still running
    reaches `now`."""
    origin = now - span
    total = span.total_seconds()
    bars = []
    for job in jobs:
        started = _started(job)
        if started is None:
            continue
        ended = _ended(job) if job.get("finished") else now
        ended = max(ended or started, started)
        if ended < origin or started > now:
            continue
        start = max(0.0, (started - origin).total_seconds() / total)
        end = min(1.0, (ended - origin).total_seconds() / total)
        bars.append(TimelineBar(job, start, max(end, start), outcome(job)))
    bars.sort(key=lambda bar: bar.start)
    return bars


def progress_series(
    snapshots: Sequence[Mapping[str, Any]],
) -> list[tuple[datetime, float]]:
    """(time, percent) from each snapshot that says how far the job was."""
    series = []
    for snapshot in snapshots:
        at = parse_time(snapshot.get("observed_at"))
        percent = snapshot_progress(snapshot.get("properties"))
        if at is not None and percent is not None:
            series.append((at, percent))
    return series


def snapshot_progress(props: Any) -> float | None:
    """Azure's progressPercentage, else the share of the task list done."""
    return parse_progress(props) if isinstance(props, dict) else None


def snapshot_tasks(props: Any) -> list[Mapping[str, Any]]:
    """The task list of a snapshot's `extendedInfo` ([] when it has none)."""
    if not isinstance(props, dict):
        return []
    ext = props.get("extendedInfo")
    if not isinstance(ext, dict):
        return []
    return [task for task in ext.get("tasksList") or [] if isinstance(task, dict)]
