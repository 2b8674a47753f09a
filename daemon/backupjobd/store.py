"""The store interface: what the daemon and the CLI need from the database.

`adapters.sql.store.SqlStore` serves SQLite and PostgreSQL, `testing.MemoryStore` keeps the
same contract in memory for tests; one contract test suite runs against all three. The
records it takes and returns are in `core.model`.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from datetime import datetime

from backupjobd.core.azure import VaultRef
from backupjobd.core.decisions import JobDecision, OperationDecision
from backupjobd.core.leases import Fence, Lease, ReplicaBeat, ReplicaRecord
from backupjobd.core.model import (
    DiscoveryState,
    JobRecord,
    JobWrite,
    OperationRecord,
    OutboxEntry,
    OutboxRecord,
    RegisterResult,
    SnapshotRecord,
    TransitionRecord,
)
from backupjobd.core.registration import Registration

__all__ = ["Store"]


class Store(abc.ABC):
    """Durable job state. Every write is one transaction; nothing is reported before commit.

    Several `serve` replicas may share one store: the polling reads take the `subscriptions`
    a replica owns, and its writes a `Fence`; a write under a fence whose lease has moved on
    (another replica claimed the subscription) is refused like a lost compare-and-set.
    """

    @abc.abstractmethod
    async def migrate(self) -> None:
        """Bring the schema to the Alembic head."""

    @abc.abstractmethod
    async def check_schema(self) -> None:
        """Raise StoreError unless the schema is at the Alembic head."""

    @abc.abstractmethod
    async def register(
        self, registrations: Sequence[Registration], now: datetime
    ) -> list[RegisterResult]:
        """Insert what is not yet tracked; already tracked ones are reported, not changed."""

    @abc.abstractmethod
    async def due_jobs(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        subscriptions: Collection[str] | None = None,
    ) -> list[JobRecord]:
        """Active jobs whose next poll time has come, soonest first (only those of
        `subscriptions`, when given)."""

    @abc.abstractmethod
    async def finished_durations(
        self, limit: int = 5000
    ) -> list[tuple[str | None, str | None, str | None, float]]:
        """(operation, job type, entity, seconds) of recently finished jobs, for learning
        typical durations."""

    @abc.abstractmethod
    async def sweep_candidates(
        self, vault_id: str, due_before: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[JobRecord]:
        """Active InProgress jobs of one vault due before `due_before` (a sweep refreshes
        them together, which also aligns their schedules)."""

    @abc.abstractmethod
    async def reschedule_jobs(
        self,
        pks: Sequence[int],
        next_poll_at: datetime,
        polled_at: datetime | None = None,
        polls: Sequence[int] | None = None,
        fence: Fence | None = None,
    ) -> int:
        """Move the next poll of these jobs, when still active, without a new version: nothing
        observed changed. With `polled_at`, also record polls: the last poll time, and the
        poll count raised by `polls[i]` for `pks[i]` (1 each by default). One transaction.
        Returns how many jobs were still active; fewer means someone else changed some."""

    @abc.abstractmethod
    async def due_operations(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        subscriptions: Collection[str] | None = None,
    ) -> list[OperationRecord]:
        """Active operations whose next poll time has come (of `subscriptions`, when given)."""

    @abc.abstractmethod
    async def apply_job(
        self,
        record: JobRecord,
        decision: JobDecision,
        now: datetime,
        outbox: Sequence[OutboxEntry] = (),
        fence: Fence | None = None,
    ) -> bool:
        """Persist a decision atomically (state, transition, snapshot, outbox events) if the job
        is still at `record.version`; False means someone else changed it first and nothing
        was written."""

    @abc.abstractmethod
    async def apply_jobs(
        self, writes: Sequence[JobWrite], fence: Fence | None = None
    ) -> list[bool]:
        """Many decisions in one transaction (batched persistence); each is compare-and-set
        on its own, so a stale one is skipped (False) without failing the others. Nothing is
        committed when the transaction fails."""

    @abc.abstractmethod
    async def apply_operation(
        self,
        record: OperationRecord,
        decision: OperationDecision,
        now: datetime,
        fence: Fence | None = None,
        outbox: Sequence[OutboxEntry] = (),
    ) -> list[RegisterResult] | None:
        """Persist an operation decision, register the jobs it yielded and add its webhook
        `outbox` rows (a rejected trigger), in one transaction. None means a concurrent
        change won and nothing was written."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        status: str | None = None,
        limit: int | None = None,
        stuck: bool = False,
        *,
        vault_id: str | None = None,
        finished: bool | None = None,
        since: datetime | None = None,
        after_pk: int | None = None,
        until: datetime | None = None,
        operation: str | None = None,
        newest_first: bool = False,
        kind: str | None = None,
    ) -> list[JobRecord]:
        """Jobs in registration order (or newest first); `after_pk` pages (pass the last
        record's pk). `since`/`until` bound the registration time; `operation` matches
        Azure's operation name case-insensitively."""

    @abc.abstractmethod
    async def stop_tracking(self, record: JobRecord, now: datetime) -> bool:
        """Stop polling an active job (history kept); False when it was not active."""

    @abc.abstractmethod
    async def find_jobs(self, job_id: str) -> list[JobRecord]:
        """Every tracked job with this id (one per vault; almost always one)."""

    @abc.abstractmethod
    async def history(self, job_pk: int) -> tuple[list[TransitionRecord], list[SnapshotRecord]]: ...

    @abc.abstractmethod
    async def list_operations(self, operation_id: str | None = None) -> list[OperationRecord]:
        """Registered operations, oldest first (only those with this id, when given: one per
        vault it was registered in)."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Jobs by tracking state and operations still active, for logs and status lines."""

    @abc.abstractmethod
    async def due_outbox(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        skip_webhooks: Collection[str] = (),
    ) -> list[OutboxRecord]:
        """Pending webhook deliveries whose next attempt has come, oldest first; none for
        `skip_webhooks` (receivers still busy), so their backlog cannot fill the batch."""

    @abc.abstractmethod
    async def outbox_result(
        self,
        record: OutboxRecord,
        now: datetime,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Record a delivery attempt: delivered, retried at `next_attempt_at`, or (failed with
        no next attempt) a dead letter."""

    @abc.abstractmethod
    async def outbox_list(self, state: str, limit: int = 1000) -> list[OutboxRecord]:
        """Deliveries in a state ("pending", "delivered", "dead"), oldest first."""

    @abc.abstractmethod
    async def outbox_counts(self) -> dict[str, int]:
        """Deliveries by state."""

    @abc.abstractmethod
    async def outbox_requeue_dead(self, now: datetime) -> int:
        """Give every dead letter a fresh set of attempts; returns how many."""

    @abc.abstractmethod
    async def job_status_counts(self) -> tuple[dict[tuple[str, str], int], int]:
        """Jobs by (Azure status or "unseen", tracking state), and how many are stuck."""

    @abc.abstractmethod
    async def live_instances(self, seen_since: datetime) -> int:
        """How many daemons sent a heartbeat since `seen_since` and have not stopped."""

    @abc.abstractmethod
    async def replica_heartbeat(self, beat: ReplicaBeat, now: datetime) -> list[Lease]:
        """One replica's heartbeat, in one transaction: record it, then renew, claim and give
        up subscription leases (core/leases.py); returns the leases it holds after. A claim
        pulls the subscription's jobs forward (the last owner's sweep leases no longer hold
        them back)."""

    @abc.abstractmethod
    async def replicas(self, seen_since: datetime, now: datetime) -> list[ReplicaRecord]:
        """Replicas heard from since `seen_since` and not stopped, with their leases."""

    async def hold_liveness(self, replica_id: str) -> int | None:
        """Hold, for as long as this process lives, a lock that tells the other replicas it
        does (taken again if its connection was lost); returns its key, or None when there
        is none (SQLite and memory: one process; or the key is another replica's)."""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def discovery_states(self) -> list[DiscoveryState]:
        """How far job discovery has listed each vault, so a restart continues from there."""

    @abc.abstractmethod
    async def save_discovery_state(
        self, vault: VaultRef, listed_until: datetime, now: datetime, jobs_found: int
    ) -> None:
        """Record that the vault's jobs were listed up to `listed_until`; `jobs_found` (jobs
        this run newly registered) adds to the vault's total."""
