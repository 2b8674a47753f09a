"""What the daemon knows about a job, an operation, a webhook delivery: the records the store
keeps and the JSON views the CLI and the API print. Pure data, no I/O."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from backupjobd.core import azure
from backupjobd.core.azure import ErrorDetail, JobKind, VaultKind
from backupjobd.core.decisions import (
    JobDecision,
    JobState,
    OperationState,
    Snapshot,
    Tracking,
)
from backupjobd.core.views import (
    JOB_VIEW,
    OPERATION_VIEW,
    SNAPSHOT_VIEW,
    TRANSITION_VIEW,
    render,
)
from backupjobd.core.views import iso as iso


@dataclass(frozen=True, slots=True)
class JobRecord:
    pk: int
    vault_id: str
    job_id: str
    source: str
    status: str | None
    tracking: Tracking
    job_type: str | None
    operation: str | None
    entity_friendly_name: str | None
    backup_management_type: str | None
    start_time: datetime | None
    end_time: datetime | None
    registered_at: datetime
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    finished_at: datetime | None
    poll_count: int
    error_count: int
    consecutive_failures: int
    not_found_since: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    last_snapshot_hash: str | None
    version: int
    stuck_since: datetime | None = None
    last_detail_at: datetime | None = None
    #: Azure's `errorDetails` as last read (a full read, or a list item that has them).
    error_details: tuple[ErrorDetail, ...] = ()
    #: The operation whose status named this job (registered from a trigger's 202), if any.
    operation_id: str | None = None
    #: How far the job is (0 to 100) as last read, from Azure's progress or its task list.
    progress_percent: float | None = None
    #: When the job should end, from how long similar jobs took (`expecting`); computed for
    #: what is printed and announced, never stored.
    expected_end_at: datetime | None = None
    #: The secondary region of a cross-region-restore job (`vault_id` is its source vault).
    region: str | None = None

    @property
    def finished(self) -> bool:
        return self.tracking is Tracking.FINISHED

    def expecting(self, expected: timedelta | None) -> JobRecord:
        """This job with `expected_end_at`: its start (Azure's, else its registration) plus
        `expected`, the typical duration of similar finished jobs. None once the job is no
        longer tracked (it has its end time, or it will not get one) or when nothing
        similar has finished yet."""
        end = None
        if expected is not None and self.tracking is Tracking.ACTIVE:
            end = (self.start_time or self.registered_at) + expected
        return (
            self if end == self.expected_end_at else dataclasses.replace(self, expected_end_at=end)
        )

    def overdue(self, now: datetime) -> bool:
        """Still running after the time similar jobs took."""
        return self.expected_end_at is not None and now > self.expected_end_at

    @property
    def vault_kind(self) -> VaultKind:
        return azure.vault_kind_of(self.vault_id)

    @property
    def kind(self) -> JobKind:
        """Which Azure API reads this job (the ARM client has one read per kind)."""
        return azure.job_kind(self.vault_kind, self.region)

    @property
    def arm_id(self) -> str:
        """The job's ARM id: under its vault, or location-scoped for a cross-region restore's."""
        return azure.job_arm_id(self.vault_id, self.job_id, self.region)

    def after(self, decision: JobDecision, now: datetime) -> JobRecord:
        """The job as it reads once `decision` (observed at `now`) is committed: what the
        store writes and what webhook events report, computed in one place."""
        obs = decision.observation
        changes: dict[str, Any] = {
            "status": decision.status,
            "tracking": decision.tracking,
            "next_poll_at": decision.next_poll_at,
            "last_polled_at": now,
            "poll_count": self.poll_count + (1 if decision.counts_as_poll else 0),
            "consecutive_failures": decision.consecutive_failures,
            "not_found_since": decision.not_found_since,
            "stuck_since": decision.stuck_since,
            "version": self.version + 1,
        }
        if decision.tracking is not Tracking.ACTIVE:
            changes["finished_at"] = now
        if obs is not None:
            changes.update(
                job_type=obs.job_type or self.job_type,
                operation=obs.operation or self.operation,
                entity_friendly_name=obs.entity_friendly_name or self.entity_friendly_name,
                backup_management_type=obs.backup_management_type or self.backup_management_type,
                start_time=obs.start_time or self.start_time,
                end_time=obs.end_time,
            )
            if decision.full_read:
                changes["last_detail_at"] = now
            if decision.full_read or obs.error_details:
                changes["error_details"] = obs.error_details
            if obs.progress is not None:
                changes["progress_percent"] = obs.progress
        if decision.error is not None:
            changes.update(
                last_error=decision.error, last_error_at=now, error_count=self.error_count + 1
            )
        elif obs is not None:
            changes["last_error"] = None
        if decision.snapshot is not None:
            changes["last_snapshot_hash"] = decision.snapshot.content_hash
        return dataclasses.replace(self, **changes)

    def schedule_only(self, decision: JobDecision, now: datetime) -> bool:
        """True when committing `decision` would change nothing but the poll bookkeeping
        (next poll, last poll, poll count, version): a vault sweep that saw the job just as
        we know it. Such polls go to the store as one bulk reschedule, not one write each."""
        if (
            decision.transition is not None
            or decision.snapshot is not None
            or decision.error is not None
            or decision.full_read
            or decision.tracking is not self.tracking
            or decision.tracking is not Tracking.ACTIVE
            or decision.status != self.status
            or decision.consecutive_failures != self.consecutive_failures
            or decision.not_found_since != self.not_found_since
            or decision.stuck_since != self.stuck_since
            or (
                decision.observation is not None
                and decision.observation.error_details
                and decision.observation.error_details != self.error_details
            )
            or (
                decision.observation is not None
                and decision.observation.progress is not None
                and decision.observation.progress != self.progress_percent
            )
        ):
            return False
        obs = decision.observation
        if obs is None:
            return True
        # What `after` takes from an observation (a unit test keeps the two in step).
        return (
            self.last_error is None
            and (obs.job_type or self.job_type) == self.job_type
            and (obs.operation or self.operation) == self.operation
            and (obs.entity_friendly_name or self.entity_friendly_name) == self.entity_friendly_name
            and (obs.backup_management_type or self.backup_management_type)
            == self.backup_management_type
            and (obs.start_time or self.start_time) == self.start_time
            and obs.end_time == self.end_time
        )

    def state(self, uncounted_polls: int = 0) -> JobState:
        """The core's view; `uncounted_polls` are sweeps not yet written to the row."""
        return JobState(
            status=self.status,
            poll_count=self.poll_count + uncounted_polls,
            consecutive_failures=self.consecutive_failures,
            not_found_since=self.not_found_since,
            last_snapshot_hash=self.last_snapshot_hash,
            last_error=self.last_error,
            started_at=self.start_time or self.registered_at,
            stuck_since=self.stuck_since,
        )

    def to_json(self) -> dict[str, Any]:
        """The job as `jobs show --json` and the API print it (`views.JOB_VIEW`)."""
        return render(JOB_VIEW, self)


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    seq: int
    from_status: str | None
    to_status: str
    observed_at: datetime

    def to_json(self) -> dict[str, Any]:
        return render(TRANSITION_VIEW, self)


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    observed_at: datetime
    status: str
    properties: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return render(SNAPSHOT_VIEW, self)


@dataclass(frozen=True, slots=True)
class OperationRecord:
    pk: int
    vault_id: str
    operation_id: str
    url: str
    source: str
    status: str | None
    tracking: Tracking
    registered_at: datetime
    last_polled_at: datetime | None
    next_poll_at: datetime | None
    poll_count: int
    consecutive_failures: int
    not_found_since: datetime | None
    last_error: str | None
    job_ids: tuple[str, ...]
    version: int
    #: A cross-region restore's secondary region, or a Backup vault operation's location.
    region: str | None = None

    @property
    def vault_kind(self) -> VaultKind:
        return azure.vault_kind_of(self.vault_id)

    @property
    def crr(self) -> bool:
        """A cross-region restore's operation: the jobs it names carry its region."""
        return self.region is not None and self.vault_kind is VaultKind.RECOVERY_SERVICES

    def state(self) -> OperationState:
        return OperationState(
            status=self.status,
            poll_count=self.poll_count,
            consecutive_failures=self.consecutive_failures,
            not_found_since=self.not_found_since,
            last_error=self.last_error,
        )

    def to_json(self) -> dict[str, Any]:
        """As `operations list --json` and the API print it (`views.OPERATION_VIEW`)."""
        return render(OPERATION_VIEW, self)


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One event for one webhook; `event_id` is shared by every webhook that gets the event
    and stays the same across delivery attempts (receivers deduplicate on it)."""

    event_id: str
    webhook: str
    event_type: str
    payload: str


@dataclass(frozen=True, slots=True)
class JobWrite:
    """One poll's decision to commit: `now` is when the poll observed it."""

    record: JobRecord
    decision: JobDecision
    now: datetime
    outbox: Sequence[OutboxEntry] = ()

    @property
    def committed(self) -> JobRecord:
        """The job as this write leaves it (what the row is set to)."""
        return self.record.after(self.decision, self.now)


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit(JobWrite):
    """One poll's committed state, computed once and passed on as is: the store writes it
    (compare-and-set on `before.version`), its outbox rows announce `after`, the journal
    logs and counts it, and a swept vault keeps `after` as its member."""

    after: JobRecord

    @classmethod
    def of(
        cls,
        record: JobRecord,
        decision: JobDecision,
        now: datetime,
        outbox: Sequence[OutboxEntry] = (),
    ) -> Commit:
        return cls(record, decision, now, tuple(outbox), after=record.after(decision, now))

    @property
    def before(self) -> JobRecord:
        return self.record

    @property
    def committed(self) -> JobRecord:
        """Already computed: a store writing a `Commit` reads it here."""
        return self.after

    @property
    def transition(self) -> tuple[str | None, str] | None:
        return self.decision.transition

    @property
    def snapshot(self) -> Snapshot | None:
        return self.decision.snapshot


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    pk: int
    event_id: str
    webhook: str
    event_type: str
    payload: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    state: str
    delivered_at: datetime | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "webhook": self.webhook,
            "type": self.event_type,
            "state": self.state,
            "created_at": iso(self.created_at),
            "attempts": self.attempts,
            "next_attempt_at": iso(self.next_attempt_at),
            "delivered_at": iso(self.delivered_at),
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class RegisterResult:
    """`kind` is "job" or "operation"; `created` is False when it was already tracked."""

    kind: str
    vault_id: str
    ident: str
    created: bool

    def to_json(self) -> dict[str, Any]:
        """As `register --json` and the API print it: `new` (the contract's name) and
        `created` (the API's first name) say the same."""
        return {
            "kind": self.kind,
            "id": self.ident,
            "vault_id": self.vault_id,
            "new": self.created,
            "created": self.created,
        }


@dataclass(frozen=True, slots=True)
class DiscoveryState:
    vault_id: str
    last_listed_until: datetime
    last_run_at: datetime
    jobs_found: int

    def to_json(self) -> dict[str, Any]:
        return {
            "vault_id": self.vault_id,
            "last_listed_until": iso(self.last_listed_until),
            "last_run_at": iso(self.last_run_at),
            "jobs_found": self.jobs_found,
        }
