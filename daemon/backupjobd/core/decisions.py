"""The pure core: given what we know of a job (or operation) and what a poll observed,
decide what changed, what to persist, and when to poll next.

No I/O and no clock: `now` and the jitter draw are arguments, so every case is a
table-driven unit test.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from backupjobd.core import azure
from backupjobd.core.azure import JobObservation, OperationObservation

# Azure's Retry-After is honoured up to a day; beyond that it is a bogus header, not a plan.
MAX_RETRY_AFTER_SECONDS = 86_400.0


class Tracking(StrEnum):
    """Whether the daemon still polls a job (or operation)."""

    ACTIVE = "active"
    FINISHED = "finished"
    LOST = "lost"
    FAILED = "failed"  # operations only: Azure reported the operation Failed/Canceled
    STOPPED = "stopped"  # a user stopped tracking it (history kept)


@dataclass(frozen=True, slots=True)
class StuckRules:
    """How long a job may stay running before it is flagged stuck, by operation and job type.

    Keys are `Operation` or `Operation/JobType` (e.g. `Restore/AzureWorkloadJob`); the most
    specific wins, then `default`. Azure relabels finished SQL jobs `Backup (Full)`, so the
    parenthesised suffix is ignored when matching.
    """

    default: timedelta | None = timedelta(hours=6)
    by_key: tuple[tuple[str, timedelta], ...] = ()

    def threshold(self, operation: str | None, job_type: str | None) -> timedelta | None:
        return _threshold(self, operation, job_type)


@functools.lru_cache(maxsize=4096)
def _threshold(rules: StuckRules, operation: str | None, job_type: str | None) -> timedelta | None:
    """Cached: a sweep asks this for every running job, with a handful of distinct keys."""
    by_key = {_rule_key(k): v for k, v in rules.by_key}
    op = _rule_key(operation or "")
    for key in (f"{op}/{(job_type or '').strip().lower()}", op):
        if key in by_key:
            return by_key[key]
    return rules.default


def _rule_key(key: str) -> str:
    """`Backup (Full)/AzureWorkloadJob` → `backup/azureworkloadjob`: how rules are compared."""
    op, sep, job_type = key.partition("/")
    op = op.split("(")[0].strip().lower()
    return f"{op}/{job_type.strip().lower()}" if sep else op


@dataclass(frozen=True, slots=True)
class PollPolicy:
    interval: timedelta = timedelta(seconds=30)
    min_interval: timedelta = timedelta(seconds=5)
    early_polls: int = 3
    not_found_grace: timedelta = timedelta(minutes=5)
    max_backoff: timedelta = timedelta(minutes=5)
    operation_interval: timedelta = timedelta(seconds=5)
    stuck: StuckRules = StuckRules()
    # Adaptive intervals stretch up to this in the middle of a long job (the longest a
    # finish can go unnoticed); near the expected end polls return to `interval`.
    max_detection_lag: timedelta = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class JobState:
    """What the store knows about a job when a poll result comes in."""

    status: str | None
    poll_count: int = 0
    consecutive_failures: int = 0
    not_found_since: datetime | None = None
    last_snapshot_hash: str | None = None
    last_error: str | None = None
    started_at: datetime | None = None
    stuck_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Seen:
    """Azure answered with the job; `full` is False for list items (no extendedInfo)."""

    job: JobObservation
    full: bool = True


@dataclass(frozen=True, slots=True)
class Missing:
    """Azure answered 404."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The poll failed; `transient` failures are retried with backoff."""

    message: str
    transient: bool
    retry_after: float | None = None
    status: int | None = None
    code: str | None = None


Outcome = Seen | Missing | Failure


@dataclass(frozen=True, slots=True)
class Snapshot:
    content_hash: str
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JobDecision:
    status: str | None
    tracking: Tracking
    next_poll_at: datetime | None
    transition: tuple[str | None, str] | None = None
    snapshot: Snapshot | None = None
    observation: JobObservation | None = None
    consecutive_failures: int = 0
    not_found_since: datetime | None = None
    error: str | None = None
    new_error: bool = False
    unknown_status: bool = False
    stuck_since: datetime | None = None
    newly_stuck: bool = False
    full_read: bool = False
    counts_as_poll: bool = True
    log_fields: dict[str, Any] = field(default_factory=dict)


def decide_job(
    state: JobState,
    outcome: Outcome,
    now: datetime,
    policy: PollPolicy,
    jitter: float,
    expected: timedelta | None = None,
) -> JobDecision:
    """The whole per-poll decision for a job. `jitter` is a uniform draw in [0, 1);
    `expected` is the typical duration of jobs like this one, when history knows it."""
    if isinstance(outcome, Seen):
        return _decide_seen(state, outcome, now, policy, expected)
    if isinstance(outcome, Missing):
        since = state.not_found_since or now
        if now - since >= policy.not_found_grace:
            return JobDecision(
                status=state.status,
                tracking=Tracking.LOST,
                next_poll_at=None,
                not_found_since=since,
                error="Azure answered 404 for longer than the grace period",
                new_error=True,
            )
        return JobDecision(
            status=state.status,
            tracking=Tracking.ACTIVE,
            next_poll_at=now + policy.min_interval,
            not_found_since=since,
            consecutive_failures=state.consecutive_failures,
            stuck_since=state.stuck_since,
        )
    return _decide_failure(state, outcome, now, policy, jitter)


def _decide_seen(
    state: JobState, seen: Seen, now: datetime, policy: PollPolicy, expected: timedelta | None
) -> JobDecision:
    job = seen.job
    transition = (state.status, job.status) if job.status != state.status else None
    snapshot = None
    if seen.full:
        digest = azure.snapshot_hash(job.properties)
        if digest != state.last_snapshot_hash:
            snapshot = Snapshot(digest, job.properties)
    if job.is_terminal and seen.full:
        tracking, next_poll = Tracking.FINISHED, None
    elif job.is_terminal:
        # A list item said terminal: one full GET right away keeps extendedInfo and errors.
        tracking, next_poll = Tracking.ACTIVE, now
    else:
        started = job.start_time or state.started_at
        elapsed = now - started if started is not None else None
        interval = next_interval(state.poll_count + 1, policy, elapsed, expected)
        tracking, next_poll = Tracking.ACTIVE, now + interval
    stuck_since = None
    limit = policy.stuck.threshold(job.operation, job.job_type)
    started = job.start_time or state.started_at
    if not job.is_terminal and limit is not None and started is not None and now - started > limit:
        stuck_since = state.stuck_since or now
    return JobDecision(
        status=job.status,
        tracking=tracking,
        next_poll_at=next_poll,
        transition=transition,
        snapshot=snapshot,
        observation=job,
        unknown_status=transition is not None and job.status not in azure.KNOWN_STATUSES,
        stuck_since=stuck_since,
        newly_stuck=stuck_since is not None and state.stuck_since is None,
        full_read=seen.full,
    )


def next_interval(
    polls_done: int,
    policy: PollPolicy,
    elapsed: timedelta | None = None,
    expected: timedelta | None = None,
) -> timedelta:
    """Soon after registration (short jobs finish in seconds), then the base interval; in
    the middle of a job expected to run long, sparser (half the expected time left, at most
    `max_detection_lag`), and back to the base interval near the expected end."""
    if polls_done < policy.early_polls:
        return policy.min_interval
    base = max(policy.interval, policy.min_interval)
    if expected is None or elapsed is None:
        return base
    remaining = expected - elapsed
    if remaining <= 2 * base:
        return base
    return max(base, min(remaining / 2, policy.max_detection_lag))


#: The jobs whose durations say how long similar jobs take: a failed or cancelled job ends
#: early, and would make every later one look overdue.
DURATION_SAMPLE_STATUSES = tuple(
    sorted(
        status
        for status, phase in azure.JOB_STATUS_PHASES.items()
        if phase in (azure.Phase.SUCCEEDED, azure.Phase.WARNINGS)
    )
)


class DurationModel:
    """Typical job durations learned from finished jobs: the median per (operation, job
    type, entity), falling back to (operation, job type), each needing a few samples."""

    MIN_SAMPLES = 3

    def __init__(self, samples: Sequence[tuple[str | None, str | None, str | None, float]]):
        by_entity: dict[tuple[str, str, str], list[float]] = {}
        by_kind: dict[tuple[str, str], list[float]] = {}
        for operation, job_type, entity, seconds in samples:
            op, jt = _base_operation(operation), (job_type or "").lower()
            by_entity.setdefault((op, jt, (entity or "").lower()), []).append(seconds)
            by_kind.setdefault((op, jt), []).append(seconds)
        self._entity = {k: _median(v) for k, v in by_entity.items() if len(v) >= self.MIN_SAMPLES}
        self._kind = {k: _median(v) for k, v in by_kind.items() if len(v) >= self.MIN_SAMPLES}

    def expected(
        self, operation: str | None, job_type: str | None, entity: str | None
    ) -> timedelta | None:
        op, jt = _base_operation(operation), (job_type or "").lower()
        seconds = self._entity.get((op, jt, (entity or "").lower()), self._kind.get((op, jt)))
        return None if seconds is None else timedelta(seconds=seconds)

    def __len__(self) -> int:
        return len(self._kind)


def _base_operation(operation: str | None) -> str:
    return (operation or "").split("(")[0].strip().lower()


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def backoff(
    failures: int, policy: PollPolicy, jitter: float, retry_after: float | None
) -> timedelta:
    """Exponential backoff with full jitter, capped, never sooner than Retry-After."""
    cap = min(
        policy.max_backoff.total_seconds(),
        policy.min_interval.total_seconds() * (2 ** min(failures, 30)),
    )
    delay = max(cap * jitter, min(1.0, cap))
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
    return timedelta(seconds=delay)


def _decide_failure(
    state: JobState, failure: Failure, now: datetime, policy: PollPolicy, jitter: float
) -> JobDecision:
    failures = state.consecutive_failures + 1
    if failure.transient:
        delay = backoff(failures, policy, jitter, failure.retry_after)
    else:
        # Permanent for now (403 until someone grants access, 400…): keep it visible, poll rarely.
        delay = max(policy.max_backoff, backoff(failures, policy, 0.0, failure.retry_after))
    return JobDecision(
        status=state.status,
        tracking=Tracking.ACTIVE,
        next_poll_at=now + delay,
        consecutive_failures=failures,
        not_found_since=state.not_found_since,
        stuck_since=state.stuck_since,
        error=failure.message,
        new_error=failure.message != state.last_error,
    )


@dataclass(frozen=True, slots=True)
class OperationState:
    status: str | None
    poll_count: int = 0
    consecutive_failures: int = 0
    not_found_since: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class OperationSeen:
    operation: OperationObservation


OperationOutcome = OperationSeen | Missing | Failure


@dataclass(frozen=True, slots=True)
class OperationDecision:
    status: str | None
    tracking: Tracking
    next_poll_at: datetime | None
    job_ids: tuple[str, ...] = ()
    consecutive_failures: int = 0
    not_found_since: datetime | None = None
    error: str | None = None
    new_error: bool = False


def decide_operation(
    state: OperationState,
    outcome: OperationOutcome,
    now: datetime,
    policy: PollPolicy,
    jitter: float,
) -> OperationDecision:
    """Poll an operation until it names its jobs (or fails); those jobs are then tracked."""
    if isinstance(outcome, OperationSeen):
        op = outcome.operation
        if op.job_ids:
            return OperationDecision(op.status, Tracking.FINISHED, None, job_ids=op.job_ids)
        if op.status in azure.OPERATION_FAILED_STATUSES:
            detail = ": ".join(p for p in (op.error_code, op.error_message) if p)
            return OperationDecision(
                op.status,
                Tracking.FAILED,
                None,
                error=f"operation {azure._clip(op.status, 40)}"
                + (f": {azure._clip(detail, 300)}" if detail else ""),
                new_error=True,
            )
        if op.status == azure.OPERATION_SUCCEEDED:
            # Succeeded without a job (some operations start none): nothing more to learn.
            return OperationDecision(op.status, Tracking.FINISHED, None)
        return OperationDecision(op.status, Tracking.ACTIVE, now + policy.operation_interval)
    if isinstance(outcome, Missing):
        since = state.not_found_since or now
        if now - since >= policy.not_found_grace:
            return OperationDecision(
                state.status,
                Tracking.LOST,
                None,
                not_found_since=since,
                error="Azure answered 404 for longer than the grace period",
                new_error=True,
            )
        return OperationDecision(
            state.status, Tracking.ACTIVE, now + policy.operation_interval, not_found_since=since
        )
    failures = state.consecutive_failures + 1
    if outcome.transient:
        delay = backoff(failures, policy, jitter, outcome.retry_after)
        return OperationDecision(
            state.status,
            Tracking.ACTIVE,
            now + delay,
            consecutive_failures=failures,
            not_found_since=state.not_found_since,
            error=outcome.message,
            new_error=outcome.message != state.last_error,
        )
    return OperationDecision(
        state.status,
        Tracking.ACTIVE,
        now + policy.max_backoff,
        consecutive_failures=failures,
        error=outcome.message,
        new_error=outcome.message != state.last_error,
    )
