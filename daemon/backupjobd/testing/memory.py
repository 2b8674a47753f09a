"""`MemoryStore`: the store in dictionaries, with the semantics of `SqlStore`.

The same contract suite (tests/integration/test_store_contract.py) runs on it, on SQLite and
on PostgreSQL: compare-and-set on versions, snapshots deduplicated by content hash, outbox
rows committed with their decision, every write all or nothing, naive datetimes refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from backupjobd.core.azure import VaultRef, vault_from_id
from backupjobd.core.decisions import (
    DURATION_SAMPLE_STATUSES,
    JobDecision,
    OperationDecision,
    Tracking,
)
from backupjobd.core.leases import Fence, Lease, ReplicaBeat, ReplicaRecord, subscription_of
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
from backupjobd.core.registration import JobRegistration, Registration
from backupjobd.core.sweeps import SWEEPABLE_STATUSES
from backupjobd.errors import StoreError
from backupjobd.store import Store
from backupjobd.testing import replicas
from backupjobd.testing.tables import (
    DEAD,
    DELIVERED,
    NEVER,
    PENDING,
    TRACKING_FILTERS,
    Constraint,
    JobRow,
    Tables,
    active_due,
    add_outbox,
    apply_write,
    at_utc,
    by_pk,
    columns,
    due,
    register_one,
    utc,
)

T = TypeVar("T")


class MemoryStore(Store):
    """The store in memory, for tests. One event loop; every call is one transaction."""

    def __init__(self) -> None:
        self._t = Tables()
        self._faults: list[StoreError] = []

    def fail_next(self, error: StoreError | None = None, count: int = 1) -> None:
        """Make the next `count` calls fail with `error` (default: a locked database),
        writing nothing, as a database failure would."""
        error = error or StoreError("database error: database is locked", transient=True)
        self._faults.extend([error] * count)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows of a table as SqlStore would hold them (column names as in the schema),
        in primary-key order: for tests that look under the interface."""
        t = self._t
        if table == "jobs":
            return [
                columns(j.record, vault_key=j.vault_key, operation_pk=j.operation_pk)
                for j in by_pk(t.jobs)
            ]
        if table == "operations":
            return [
                columns(
                    o.record,
                    vault_key=o.vault_key,
                    job_ids=json.dumps(list(o.record.job_ids)) if o.record.job_ids else None,
                )
                for o in by_pk(t.operations)
            ]
        if table == "outbox":
            return [columns(o.record, job_pk=o.job_pk) for o in by_pk(t.outbox)]
        found: dict[str, Iterable[Any]] = {
            "transitions": sorted(t.transitions.values(), key=lambda r: r.pk),
            "snapshots": sorted(t.snapshots.values(), key=lambda r: r.pk),
            "instances": sorted(t.instances.values(), key=lambda r: r.instance_id),
        }
        if table == "discovery_state":
            return [columns(t.discovery[k], vault_key=k) for k in sorted(t.discovery)]
        return [columns(r) for r in found[table]]

    async def _run(self, work: Callable[[Tables], T], doing: str, *, write: bool) -> T:
        """The one transaction path: all of `work` or (on any error) none of it."""
        await asyncio.sleep(0)  # a database round trip lets other tasks run
        if self._faults:
            raise self._faults.pop(0)
        before = self._t.copy() if write else None
        try:
            return work(self._t)
        except BaseException as exc:
            if before is not None:
                self._t = before
            if isinstance(exc, Constraint):
                raise StoreError(f"database error while {doing}: {exc}") from exc
            raise

    async def migrate(self) -> None:
        """Nothing to migrate: the tables are the current schema."""

    async def check_schema(self) -> None:
        """Always at head."""

    async def register(
        self, registrations: Sequence[Registration], now: datetime
    ) -> list[RegisterResult]:
        def work(t: Tables) -> list[RegisterResult]:
            return [register_one(t, reg, now, None) for reg in registrations]

        return await self._run(work, "registering", write=True)

    async def due_jobs(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        subscriptions: Collection[str] | None = None,
    ) -> list[JobRecord]:
        def work(t: Tables) -> list[JobRecord]:
            at = at_utc(now)
            return due(
                (
                    j.record
                    for j in t.jobs.values()
                    if active_due(j.record, at) and _within(j.vault_key, subscriptions)
                ),
                limit,
                exclude,
            )

        return await self._run(work, "reading due jobs", write=False)

    async def finished_durations(
        self, limit: int = 5000
    ) -> list[tuple[str | None, str | None, str | None, float]]:
        def work(t: Tables) -> list[tuple[str | None, str | None, str | None, float]]:
            done = [
                j.record
                for j in sorted(t.jobs.values(), key=lambda j: -j.record.pk)
                if j.record.tracking is Tracking.FINISHED
                and j.record.status in DURATION_SAMPLE_STATUSES
                and j.record.start_time is not None
                and j.record.end_time is not None
            ][:limit]
            return [
                (r.operation, r.job_type, r.entity_friendly_name, (end - start).total_seconds())
                for r in done
                if (start := r.start_time) is not None
                and (end := r.end_time) is not None
                and end >= start
            ]

        return await self._run(work, "reading finished job durations", write=False)

    async def sweep_candidates(
        self, vault_id: str, due_before: datetime, limit: int, exclude: Collection[int] = ()
    ) -> list[JobRecord]:
        def work(t: Tables) -> list[JobRecord]:
            at, key = at_utc(due_before), vault_id.lower()
            candidates = (
                j.record
                for j in t.jobs.values()
                if j.vault_key == key and j.record.status in SWEEPABLE_STATUSES
                if j.record.region is None and active_due(j.record, at)
            )
            return due(candidates, limit, exclude)

        return await self._run(work, "reading sweep candidates", write=False)

    async def reschedule_jobs(
        self,
        pks: Sequence[int],
        next_poll_at: datetime,
        polled_at: datetime | None = None,
        polls: Sequence[int] | None = None,
        fence: Fence | None = None,
    ) -> int:
        by_polls: dict[int, list[int]] = {}
        counts = polls if polls is not None else [1] * len(pks)
        for pk, count in zip(pks, counts, strict=True):
            by_polls.setdefault(count if polled_at is not None else 0, []).append(pk)
        if not pks:
            return 0

        def work(t: Tables) -> int:
            if fence is not None:
                keys = {t.jobs[pk].vault_key for pk in pks if pk in t.jobs}
                if replicas.stale_subscriptions(t, fence, map(subscription_of, keys)):
                    return 0
            changes: dict[str, Any] = {"next_poll_at": utc(next_poll_at)}
            if polled_at is not None:
                changes["last_polled_at"] = utc(polled_at)
            updated = 0
            for count, group in by_polls.items():
                for pk in dict.fromkeys(group):
                    job = t.jobs.get(pk)
                    if job is None or job.record.tracking is not Tracking.ACTIVE:
                        continue
                    record = dataclasses.replace(job.record, **changes)
                    if polled_at is not None:
                        record = dataclasses.replace(record, poll_count=record.poll_count + count)
                    t.jobs[pk] = dataclasses.replace(job, record=record)
                    updated += 1
            return updated

        return await self._run(work, f"rescheduling {len(pks)} jobs", write=True)

    async def due_operations(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        subscriptions: Collection[str] | None = None,
    ) -> list[OperationRecord]:
        def work(t: Tables) -> list[OperationRecord]:
            at = at_utc(now)
            ops = (
                o.record
                for o in t.operations.values()
                if active_due(o.record, at) and _within(o.vault_key, subscriptions)
            )
            return due(ops, limit, exclude)

        return await self._run(work, "reading due operations", write=False)

    async def apply_job(
        self,
        record: JobRecord,
        decision: JobDecision,
        now: datetime,
        outbox: Sequence[OutboxEntry] = (),
        fence: Fence | None = None,
    ) -> bool:
        return (await self.apply_jobs([JobWrite(record, decision, now, outbox)], fence))[0]

    async def apply_jobs(
        self, writes: Sequence[JobWrite], fence: Fence | None = None
    ) -> list[bool]:
        if not writes:
            return []
        what = f"job {writes[0].record.job_id}" if len(writes) == 1 else f"{len(writes)} jobs"

        def work(t: Tables) -> list[bool]:
            stale: set[str] = set()
            if fence is not None:
                subs = {subscription_of(w.record.vault_id) for w in writes}
                stale = replicas.stale_subscriptions(t, fence, subs)
            return [
                subscription_of(w.record.vault_id) not in stale and apply_write(t, w)
                for w in writes
            ]

        return await self._run(work, f"saving {what}", write=True)

    async def apply_operation(
        self,
        record: OperationRecord,
        decision: OperationDecision,
        now: datetime,
        fence: Fence | None = None,
        outbox: Sequence[OutboxEntry] = (),
    ) -> list[RegisterResult] | None:
        def work(t: Tables) -> list[RegisterResult] | None:
            at = at_utc(now)
            sub = subscription_of(record.vault_id)
            if fence is not None and replicas.stale_subscriptions(t, fence, [sub]):
                return None
            current = t.operations.get(record.pk)
            if current is None or current.record.version != record.version:
                return None
            old = current.record
            updated = dataclasses.replace(
                old,
                status=decision.status,
                tracking=decision.tracking,
                next_poll_at=utc(decision.next_poll_at),
                last_polled_at=at,
                poll_count=old.poll_count + 1,
                consecutive_failures=decision.consecutive_failures,
                not_found_since=utc(decision.not_found_since),
                version=old.version + 1,
                last_error=decision.error if decision.error is not None else old.last_error,
                job_ids=tuple(decision.job_ids) if decision.job_ids else old.job_ids,
            )
            t.operations[record.pk] = dataclasses.replace(current, record=updated)
            add_outbox(t, outbox, at, None)
            vault = vault_from_id(record.vault_id)
            return [
                register_one(
                    t,
                    JobRegistration(
                        vault, job_id, "operation", record.region if record.crr else None
                    ),
                    now,
                    record.pk,
                )
                for job_id in decision.job_ids
            ]

        return await self._run(work, f"saving operation {record.operation_id}", write=True)

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
        def keep(job: JobRow, since_at: datetime | None) -> bool:
            r = job.record
            if stuck and r.stuck_since is None:
                return False
            if kind is not None and r.kind.value != kind:
                return False
            if vault_id is not None and job.vault_key != vault_id.lower().rstrip("/"):
                return False
            if finished is not None and (r.tracking is Tracking.FINISHED) != finished:
                return False
            if since_at is not None and r.registered_at < since_at:
                return False
            if until is not None and r.registered_at > at_utc(until):
                return False
            if operation is not None and (r.operation or "").lower() != operation.lower():
                return False
            if after_pk is not None and r.pk <= after_pk:
                return False
            if status is None:
                return True
            if status.lower() in TRACKING_FILTERS:
                return r.tracking.value == status.lower()
            return r.status is not None and r.status.lower() == status.lower()

        def work(t: Tables) -> list[JobRecord]:
            since_at = utc(since)
            found = [j.record for j in by_pk(t.jobs) if keep(j, since_at)]
            if newest_first:
                found.reverse()
            return found if limit is None else found[:limit]

        return await self._run(work, "listing jobs", write=False)

    async def stop_tracking(self, record: JobRecord, now: datetime) -> bool:
        def work(t: Tables) -> bool:
            at = at_utc(now)
            job = t.jobs.get(record.pk)
            if job is None or job.record.tracking is not Tracking.ACTIVE:
                return False
            stopped = dataclasses.replace(
                job.record,
                tracking=Tracking.STOPPED,
                next_poll_at=None,
                finished_at=at,
                version=job.record.version + 1,
            )
            t.jobs[record.pk] = dataclasses.replace(job, record=stopped)
            return True

        return await self._run(work, f"stopping job {record.job_id}", write=True)

    async def find_jobs(self, job_id: str) -> list[JobRecord]:
        def work(t: Tables) -> list[JobRecord]:
            return [j.record for j in by_pk(t.jobs) if j.record.job_id == job_id.lower()]

        return await self._run(work, "reading a job", write=False)

    async def history(self, job_pk: int) -> tuple[list[TransitionRecord], list[SnapshotRecord]]:
        def work(t: Tables) -> tuple[list[TransitionRecord], list[SnapshotRecord]]:
            steps = sorted(
                (r for r in t.transitions.values() if r.job_pk == job_pk), key=lambda r: r.seq
            )
            snaps = sorted(
                (s for s in t.snapshots.values() if s.job_pk == job_pk),
                key=lambda s: (s.observed_at, s.pk),
            )
            return (
                [TransitionRecord(r.seq, r.from_status, r.to_status, r.observed_at) for r in steps],
                [SnapshotRecord(s.observed_at, s.status, json.loads(s.properties)) for s in snaps],
            )

        return await self._run(work, "reading job history", write=False)

    async def list_operations(self, operation_id: str | None = None) -> list[OperationRecord]:
        def work(t: Tables) -> list[OperationRecord]:
            records = [
                o.record
                for o in t.operations.values()
                if operation_id is None or o.record.operation_id == operation_id
            ]
            return sorted(records, key=lambda o: (o.registered_at, o.pk))

        return await self._run(work, "listing operations", write=False)

    async def counts(self) -> dict[str, int]:
        def work(t: Tables) -> dict[str, int]:
            out: dict[str, int] = {}
            for job in t.jobs.values():
                key = f"jobs_{job.record.tracking.value}"
                out[key] = out.get(key, 0) + 1
            out["operations_active"] = sum(
                1 for o in t.operations.values() if o.record.tracking is Tracking.ACTIVE
            )
            return out

        return await self._run(work, "counting jobs", write=False)

    async def due_outbox(
        self,
        now: datetime,
        limit: int,
        exclude: Collection[int] = (),
        skip_webhooks: Collection[str] = (),
    ) -> list[OutboxRecord]:
        def work(t: Tables) -> list[OutboxRecord]:
            at = at_utc(now)
            ready = [
                o.record
                for o in t.outbox.values()
                if o.record.state == PENDING
                and o.record.next_attempt_at is not None
                and o.record.next_attempt_at <= at
                and o.record.webhook not in skip_webhooks
                and o.record.pk not in exclude
            ]
            ready.sort(key=lambda r: (r.next_attempt_at or NEVER, r.pk))
            return ready[:limit]

        return await self._run(work, "reading due webhook deliveries", write=False)

    async def outbox_result(
        self,
        record: OutboxRecord,
        now: datetime,
        *,
        delivered: bool,
        error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        def work(t: Tables) -> None:
            at, next_at = at_utc(now), utc(next_attempt_at)
            row = t.outbox.get(record.pk)
            if row is None or row.record.state != PENDING:
                return
            changes: dict[str, Any] = {"attempts": row.record.attempts + 1, "last_error": error}
            if delivered:
                changes.update(state=DELIVERED, delivered_at=at, next_attempt_at=None)
            elif next_at is None:
                changes.update(state=DEAD, next_attempt_at=None)
            else:
                changes.update(next_attempt_at=next_at)
            updated = dataclasses.replace(row.record, **changes)
            t.outbox[record.pk] = dataclasses.replace(row, record=updated)

        await self._run(work, "recording a webhook delivery", write=True)

    async def outbox_list(self, state: str, limit: int = 1000) -> list[OutboxRecord]:
        def work(t: Tables) -> list[OutboxRecord]:
            return [o.record for o in by_pk(t.outbox) if o.record.state == state][:limit]

        return await self._run(work, "listing webhook deliveries", write=False)

    async def outbox_counts(self) -> dict[str, int]:
        def work(t: Tables) -> dict[str, int]:
            out = {PENDING: 0, DELIVERED: 0, DEAD: 0}
            for o in t.outbox.values():
                out[o.record.state] = out.get(o.record.state, 0) + 1
            return out

        return await self._run(work, "counting webhook deliveries", write=False)

    async def outbox_requeue_dead(self, now: datetime) -> int:
        def work(t: Tables) -> int:
            at = at_utc(now)
            dead = [o for o in t.outbox.values() if o.record.state == DEAD]
            for o in dead:
                fresh = dataclasses.replace(o.record, state=PENDING, attempts=0, next_attempt_at=at)
                t.outbox[o.record.pk] = dataclasses.replace(o, record=fresh)
            return len(dead)

        return await self._run(work, "requeueing dead letters", write=True)

    async def job_status_counts(self) -> tuple[dict[tuple[str, str], int], int]:
        def work(t: Tables) -> tuple[dict[tuple[str, str], int], int]:
            out: dict[tuple[str, str], int] = {}
            stuck = 0
            for job in t.jobs.values():
                r = job.record
                key = (r.status or "unseen", r.tracking.value)
                out[key] = out.get(key, 0) + 1
                if r.stuck_since is not None and r.tracking is Tracking.ACTIVE:
                    stuck += 1
            return out, stuck

        return await self._run(work, "counting jobs by status", write=False)

    async def live_instances(self, seen_since: datetime) -> int:
        def work(t: Tables) -> int:
            at = at_utc(seen_since)
            return sum(
                1 for i in t.instances.values() if i.last_seen_at >= at and i.stopped_at is None
            )

        return await self._run(work, "reading heartbeats", write=False)

    async def replica_heartbeat(self, beat: ReplicaBeat, now: datetime) -> list[Lease]:
        return await self._run(
            lambda t: replicas.heartbeat(t, beat, now), "recording a heartbeat", write=True
        )

    async def replicas(self, seen_since: datetime, now: datetime) -> list[ReplicaRecord]:
        return await self._run(
            lambda t: replicas.replicas(t, seen_since, now), "reading replicas", write=False
        )

    async def close(self) -> None:
        """Nothing to release; the data stays for the test to look at."""

    async def discovery_states(self) -> list[DiscoveryState]:
        def work(t: Tables) -> list[DiscoveryState]:
            return [t.discovery[key] for key in sorted(t.discovery)]

        return await self._run(work, "reading discovery state", write=False)

    async def save_discovery_state(
        self, vault: VaultRef, listed_until: datetime, now: datetime, jobs_found: int
    ) -> None:
        def work(t: Tables) -> None:
            found = t.discovery.get(vault.key)
            total = jobs_found + (found.jobs_found if found is not None else 0)
            t.discovery[vault.key] = DiscoveryState(
                vault.id, at_utc(listed_until), at_utc(now), total
            )

        await self._run(work, "saving discovery state", write=True)


def _within(vault_key: str, subscriptions: Collection[str] | None) -> bool:
    return subscriptions is None or subscription_of(vault_key) in {s.lower() for s in subscriptions}
