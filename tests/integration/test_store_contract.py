"""The `Store` contract, run in memory, on SQLite and on PostgreSQL through the `store` fixture.

Decisions are built with the real pure core (`decide_job`, `decide_operation`) from job
and operation bodies parsed by `backupjobd.core.azure`, so the store sees what the daemon
would hand it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest

from backupjobd.core.azure import (
    VaultRef,
    parse_job_resource,
    parse_operation_status,
    vault_from_id,
)
from backupjobd.core.decisions import (
    Failure,
    JobDecision,
    JobState,
    Missing,
    OperationDecision,
    OperationSeen,
    PollPolicy,
    Seen,
    Tracking,
    decide_job,
    decide_operation,
)
from backupjobd.core.model import (
    JobRecord,
    JobWrite,
    OperationRecord,
    OutboxEntry,
    RegisterResult,
    TransitionRecord,
)
from backupjobd.core.registration import (
    Endpoint,
    JobRegistration,
    OperationRegistration,
    operation_from_url,
)
from backupjobd.errors import StoreError
from backupjobd.store import Store
from tests.integration.stores import table_rows

SUB = "5f0c6a2e-1b7d-4c8e-9a3f-2d4e6b8c0a1e"
VAULT_ID = (
    f"/subscriptions/{SUB}/resourceGroups/rg-Backup"
    "/providers/Microsoft.RecoveryServices/vaults/Vault-01"
)
VAULT = vault_from_id(VAULT_ID)
OTHER_VAULT = vault_from_id(VAULT_ID.replace("Vault-01", "Vault-02"))
ENDPOINT = Endpoint.from_url("https://management.azure.com")
POLICY = PollPolicy()
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SEC = timedelta(seconds=1)


def jid(n: int) -> str:
    """A distinct, valid (lower-case) job GUID."""
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def job_body(
    vault: VaultRef,
    job_id: str,
    status: str,
    *,
    task_status: str | None = None,
    duration: str = "00:00:10.5",
    end_time: str | None = None,
) -> dict[str, Any]:
    """A JobResource as the Azure Backup API returns it for a VM backup."""
    return {
        "id": f"{vault.id}/backupJobs/{job_id}",
        "name": job_id,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": {
            "jobType": "AzureIaaSVMJob",
            "operation": "Backup",
            "status": status,
            "entityFriendlyName": "vm-01",
            "backupManagementType": "AzureIaasVM",
            "startTime": "2026-03-01T11:59:58.1234567Z",
            "endTime": end_time,
            "duration": duration,
            "activityId": "7d9c1f2e-0000-4000-8000-000000000001",
            "actionsInfo": [1],
            "extendedInfo": {
                "tasksList": [{"taskId": "Take Snapshot", "status": task_status or status}],
                "propertyBag": {"VM Name": "vm-01"},
            },
        },
    }


def seen(vault: VaultRef, job_id: str, status: str, *, full: bool = True, **kwargs: Any) -> Seen:
    return Seen(parse_job_resource(job_body(vault, job_id, status, **kwargs)), full=full)


def op_registration(vault: VaultRef, op_id: str) -> OperationRegistration:
    url = f"https://management.azure.com{vault.id}/backupOperations/{op_id}?api-version=2025-02-01"
    return operation_from_url(url, ENDPOINT, "operation-url")


def op_seen(status: str, job_ids: Sequence[str] = ()) -> OperationSeen:
    body = {
        "id": "op",
        "name": "op",
        "status": status,
        "startTime": "2026-03-01T12:00:00Z",
        "endTime": "0001-01-01T00:00:00Z",
        "properties": {"objectType": "OperationStatusJobsExtendedInfo", "jobIds": list(job_ids)},
    }
    return OperationSeen(parse_operation_status(body))


async def register_job(
    store: Store, job_id: str, now: datetime, vault: VaultRef = VAULT
) -> JobRecord:
    [result] = await store.register([JobRegistration(vault, job_id, "cli")], now)
    assert result.created
    return await reload(store, job_id, vault)


async def reload(store: Store, job_id: str, vault: VaultRef = VAULT) -> JobRecord:
    [record] = [r for r in await store.find_jobs(job_id) if r.vault_id.lower() == vault.key]
    return record


async def reload_op(store: Store, op_id: str) -> OperationRecord:
    [record] = [o for o in await store.list_operations() if o.operation_id == op_id]
    return record


async def poll(store: Store, record: JobRecord, outcome: Any, now: datetime) -> JobRecord:
    """One daemon poll: decide from the stored state, persist, and read back."""
    decision = decide_job(record.state(), outcome, now, POLICY, 0.5)
    assert await store.apply_job(record, decision, now)
    return await reload(store, record.job_id, vault_from_id(record.vault_id))


async def rows(store: Store, table: str, job_pk: int) -> list[Any]:
    """The job's rows of a table the interface does not return whole."""
    return [r for r in await table_rows(store, table) if r.job_pk == job_pk]


async def row_count(store: Store, table: str) -> int:
    return len(await table_rows(store, table))


def assert_aware_utc(*values: datetime | None) -> None:
    for value in values:
        if value is not None:
            assert value.tzinfo is not None, f"naive datetime {value!r}"
            assert value.utcoffset() == timedelta(0), f"not UTC: {value!r}"


# --- registration ---------------------------------------------------------------------------


async def test_register_job_is_created_once_and_a_second_registration_changes_nothing(
    store: Store,
) -> None:
    job = jid(1)
    results = await store.register([JobRegistration(VAULT, job, "cli")], T0)
    assert results == [RegisterResult("job", VAULT.id, job, True)]

    [record] = await store.list_jobs()
    assert (record.vault_id, record.job_id, record.source) == (VAULT.id, job, "cli")
    assert record.tracking is Tracking.ACTIVE
    assert record.status is None
    assert (record.registered_at, record.next_poll_at) == (T0, T0)
    assert (record.poll_count, record.error_count, record.version) == (0, 0, 0)

    polled = await poll(store, record, seen(VAULT, job, "InProgress"), T0 + SEC)

    again = await store.register([JobRegistration(VAULT, job, "job-resource")], T0 + 5 * SEC)
    assert again == [RegisterResult("job", VAULT.id, job, False)]
    assert await store.list_jobs() == [polled], "re-registering must not touch the job"
    assert await row_count(store, "jobs") == 1


async def test_register_operation_is_created_once_and_a_second_registration_changes_nothing(
    store: Store,
) -> None:
    reg = op_registration(VAULT, "op-0001")
    assert await store.register([reg], T0) == [
        RegisterResult("operation", VAULT.id, "op-0001", True)
    ]
    [op] = await store.list_operations()
    assert (op.vault_id, op.operation_id, op.url, op.source) == (
        VAULT.id,
        "op-0001",
        reg.url,
        "operation-url",
    )
    assert op.tracking is Tracking.ACTIVE
    assert (op.registered_at, op.next_poll_at, op.version, op.job_ids) == (T0, T0, 0, ())

    assert await store.register([reg], T0 + 5 * SEC) == [
        RegisterResult("operation", VAULT.id, "op-0001", False)
    ]
    assert await store.list_operations() == [op]
    assert await store.list_jobs() == []


async def test_vault_ids_are_compared_case_insensitively(store: Store) -> None:
    job = jid(2)
    shouty = vault_from_id(
        f"/Subscriptions/{SUB.upper()}/resourcegroups/RG-BACKUP"
        "/providers/microsoft.recoveryservices/vaults/vault-01/"
    )
    assert shouty.key == VAULT.key and shouty.id != VAULT.id

    assert [r.created for r in await store.register([JobRegistration(VAULT, job, "cli")], T0)] == [
        True
    ]
    results = await store.register([JobRegistration(shouty, job, "cli")], T0 + SEC)
    assert results == [RegisterResult("job", shouty.id, job, False)]
    [record] = await store.list_jobs()
    assert record.vault_id == VAULT.id, "the first spelling of the vault id is kept"

    # Within one batch too, and for operations.
    batch = await store.register(
        [op_registration(shouty, "op-7"), op_registration(VAULT, "op-7")], T0 + 2 * SEC
    )
    assert [r.created for r in batch] == [True, False]
    assert [o.vault_id for o in await store.list_operations()] == [shouty.id]

    # A different vault is a different job.
    [other] = await store.register([JobRegistration(OTHER_VAULT, job, "cli")], T0 + 3 * SEC)
    assert other.created
    assert len(await store.find_jobs(job)) == 2


# --- due work ----------------------------------------------------------------------------


async def test_due_jobs_returns_only_active_due_jobs_soonest_first(store: Store) -> None:
    late = await register_job(store, jid(1), T0 + 3 * SEC)
    first = await register_job(store, jid(2), T0)
    middle = await register_job(store, jid(3), T0 + 1 * SEC)
    future = await register_job(store, jid(4), T0 + 60 * SEC)
    done = await register_job(store, jid(5), T0 - 60 * SEC)
    await poll(store, done, seen(VAULT, done.job_id, "Completed"), T0 - 30 * SEC)

    now = T0 + 3 * SEC  # `late` is due exactly now: the bound is inclusive
    assert [r.pk for r in await store.due_jobs(now, 10)] == [first.pk, middle.pk, late.pk]
    assert [r.pk for r in await store.due_jobs(T0 - SEC, 10)] == []
    assert future.pk not in {r.pk for r in await store.due_jobs(now, 10)}

    # A polled job becomes due again at the next poll time the decision chose.
    polled = await poll(store, first, seen(VAULT, first.job_id, "InProgress"), now)
    assert polled.next_poll_at == now + POLICY.min_interval
    assert [r.pk for r in await store.due_jobs(now, 10)] == [middle.pk, late.pk]
    due_later = await store.due_jobs(now + POLICY.min_interval, 10)
    assert [r.pk for r in due_later] == [middle.pk, late.pk, polled.pk]


async def test_reschedule_jobs_moves_only_active_jobs_and_keeps_their_version(
    store: Store,
) -> None:
    running = [await register_job(store, jid(n), T0) for n in (1, 2, 3)]
    running = [await poll(store, r, seen(VAULT, r.job_id, "InProgress"), T0) for r in running]
    done = await register_job(store, jid(4), T0)
    done = await poll(store, done, seen(VAULT, done.job_id, "Completed"), T0)
    lease = T0 + 90 * SEC

    pks = [r.pk for r in running] + [done.pk]
    assert await store.reschedule_jobs(pks, lease, T0 + 5 * SEC) == 3
    for before in running:
        after = await reload(store, before.job_id)
        assert after.next_poll_at == lease
        assert after.last_polled_at == T0 + 5 * SEC
        assert after.poll_count == before.poll_count + 1
        # Nothing observed changed: same version, so a decision made on `before` still
        # commits (compare-and-set), and no transition was written.
        assert after.version == before.version
        assert dataclasses.replace(after, next_poll_at=None, last_polled_at=None, poll_count=0) == (
            dataclasses.replace(before, next_poll_at=None, last_polled_at=None, poll_count=0)
        )
    finished = await reload(store, done.job_id)
    assert finished.next_poll_at == done.next_poll_at and finished.version == done.version
    assert [r.pk for r in await store.due_jobs(T0 + 60 * SEC, 10)] == []

    # Without a poll time only the schedule moves (handing jobs back, due now).
    assert await store.reschedule_jobs([running[0].pk], T0) == 1
    back = await reload(store, running[0].job_id)
    assert back.next_poll_at == T0 and back.poll_count == running[0].poll_count + 1
    assert [r.pk for r in await store.due_jobs(T0, 10)] == [running[0].pk]

    # A stopped job is not active: it is not moved, and the count says so.
    assert await store.stop_tracking(await reload(store, running[1].job_id), T0)
    assert await store.reschedule_jobs([running[1].pk, running[2].pk], lease) == 1
    assert await store.reschedule_jobs([], lease) == 0


async def test_reschedule_jobs_stores_each_jobs_own_count_of_polls_in_one_call(
    store: Store,
) -> None:
    jobs = [await register_job(store, jid(n), T0) for n in range(1, 6)]
    jobs = [await poll(store, r, seen(VAULT, r.job_id, "InProgress"), T0) for r in jobs]
    lease, polled = T0 + 120 * SEC, T0 + 30 * SEC
    counts = [3, 1, 3, 0, 7]
    assert await store.reschedule_jobs([r.pk for r in jobs], lease, polled, counts) == 5
    for before, count in zip(jobs, counts, strict=True):
        after = await reload(store, before.job_id)
        assert after.poll_count == before.poll_count + count
        assert after.last_polled_at == polled and after.next_poll_at == lease
        assert after.version == before.version
    with pytest.raises(ValueError):
        await store.reschedule_jobs([jobs[0].pk, jobs[1].pk], lease, polled, [1])


async def test_due_jobs_honours_limit_and_exclude(store: Store) -> None:
    records = [await register_job(store, jid(n), T0 + n * SEC) for n in range(1, 6)]
    pks = [r.pk for r in records]
    now = T0 + 10 * SEC

    assert [r.pk for r in await store.due_jobs(now, 2)] == pks[:2]
    assert [r.pk for r in await store.due_jobs(now, 10, exclude={pks[0], pks[2]})] == [
        pks[1],
        pks[3],
        pks[4],
    ]
    assert [r.pk for r in await store.due_jobs(now, 2, exclude=[pks[0], pks[1]])] == pks[2:4]
    assert [r.pk for r in await store.due_jobs(now, 3, exclude={10_000})] == pks[:3]
    assert await store.due_jobs(now, 5, exclude=set(pks)) == []


async def test_due_operations_returns_only_active_due_operations_soonest_first(
    store: Store,
) -> None:
    await store.register([op_registration(VAULT, "op-b")], T0 + 2 * SEC)
    await store.register([op_registration(VAULT, "op-a")], T0)
    await store.register([op_registration(VAULT, "op-c")], T0 + 30 * SEC)
    await store.register([op_registration(VAULT, "op-done")], T0 - SEC)
    done = await reload_op(store, "op-done")
    decision = decide_operation(done.state(), op_seen("Succeeded"), T0, POLICY, 0.5)
    assert await store.apply_operation(done, decision, T0) == []

    due = await store.due_operations(T0 + 5 * SEC, 10)
    assert [o.operation_id for o in due] == ["op-a", "op-b"]
    assert [o.operation_id for o in await store.due_operations(T0 + 5 * SEC, 1)] == ["op-a"]
    excluded = await store.due_operations(T0 + 5 * SEC, 10, exclude={due[0].pk})
    assert [o.operation_id for o in excluded] == ["op-b"]


# --- applying job decisions -------------------------------------------------------------------


async def test_apply_job_with_a_transition_writes_exactly_one_transition_row(
    store: Store,
) -> None:
    record = await register_job(store, jid(1), T0)
    record = await poll(store, record, seen(VAULT, record.job_id, "InProgress"), T0 + SEC)

    [row] = await rows(store, "transitions", record.pk)
    assert (row.seq, row.from_status, row.to_status) == (1, None, "InProgress")
    assert record.status == "InProgress"
    assert (record.version, record.poll_count) == (1, 1)

    # No status change: no transition row.
    record = await poll(
        store, record, seen(VAULT, record.job_id, "InProgress", duration="00:00:20"), T0 + 6 * SEC
    )
    assert len(await rows(store, "transitions", record.pk)) == 1

    record = await poll(store, record, seen(VAULT, record.job_id, "Cancelling"), T0 + 11 * SEC)
    record = await poll(store, record, seen(VAULT, record.job_id, "Cancelled"), T0 + 16 * SEC)
    chain = [
        (r.seq, r.from_status, r.to_status) for r in await rows(store, "transitions", record.pk)
    ]
    # seq is the job's version after the write: increasing per job, not consecutive.
    assert chain == [
        (1, None, "InProgress"),
        (3, "InProgress", "Cancelling"),
        (4, "Cancelling", "Cancelled"),
    ]

    # Another job's history starts at seq 1 again.
    other = await register_job(store, jid(2), T0)
    other = await poll(store, other, seen(VAULT, other.job_id, "InProgress"), T0 + SEC)
    [row] = await rows(store, "transitions", other.pk)
    assert (row.seq, row.from_status) == (1, None)


async def test_apply_job_with_a_stale_version_returns_false_and_writes_nothing(
    store: Store,
) -> None:
    stale = await register_job(store, jid(1), T0)
    winner = decide_job(stale.state(), seen(VAULT, stale.job_id, "InProgress"), T0, POLICY, 0.5)
    assert await store.apply_job(stale, winner, T0 + SEC)
    current = await reload(store, stale.job_id)
    assert current.version == stale.version + 1
    history_before = await store.history(stale.pk)

    loser = decide_job(stale.state(), seen(VAULT, stale.job_id, "Completed"), T0, POLICY, 0.5)
    assert loser.transition == (None, "Completed") and loser.snapshot is not None
    assert await store.apply_job(stale, loser, T0 + 2 * SEC) is False
    assert await reload(store, stale.job_id) == current
    assert await store.history(stale.pk) == history_before

    # A failed poll decided on the stale record loses too.
    failure = decide_job(stale.state(), Failure("boom", transient=True), T0, POLICY, 0.5)
    assert await store.apply_job(stale, failure, T0 + 3 * SEC) is False
    assert await reload(store, stale.job_id) == current

    # The current version still applies.
    final = decide_job(current.state(), seen(VAULT, stale.job_id, "Completed"), T0, POLICY, 0.5)
    assert await store.apply_job(current, final, T0 + 4 * SEC)
    assert (await reload(store, stale.job_id)).version == current.version + 1


async def test_concurrent_apply_job_on_one_version_has_exactly_one_winner(
    store: Store,
) -> None:
    record = await register_job(store, jid(1), T0)
    statuses = ["InProgress", "Completed", "Failed", "Cancelling", "Cancelled"]
    decisions = [
        decide_job(record.state(), seen(VAULT, record.job_id, s), T0 + SEC, POLICY, 0.5)
        for s in statuses
    ]
    outcomes = await asyncio.gather(*(store.apply_job(record, d, T0 + SEC) for d in decisions))
    assert sorted(outcomes) == [False] * 4 + [True]
    winner = statuses[outcomes.index(True)]

    current = await reload(store, record.job_id)
    assert (current.status, current.version, current.poll_count) == (winner, 1, 1)
    transitions, snapshots = await store.history(record.pk)
    assert [(t.seq, t.from_status, t.to_status) for t in transitions] == [(1, None, winner)]
    assert [s.status for s in snapshots] == [winner]


async def test_snapshots_are_deduplicated_by_content_hash(store: Store) -> None:
    record = await register_job(store, jid(1), T0)
    record = await poll(store, record, seen(VAULT, record.job_id, "InProgress"), T0 + SEC)
    assert len(await rows(store, "snapshots", record.pk)) == 1
    first_hash = record.last_snapshot_hash
    assert first_hash is not None

    # The same properties again, handed to the store with a snapshot (as after a restart that
    # lost the cached hash): the store keeps one row per content hash.
    same = seen(VAULT, record.job_id, "InProgress")
    forgetful = JobState(status=record.status, poll_count=record.poll_count)
    decision = decide_job(forgetful, same, T0 + 2 * SEC, POLICY, 0.5)
    assert decision.snapshot is not None and decision.snapshot.content_hash == first_hash
    assert await store.apply_job(record, decision, T0 + 2 * SEC)
    record = await reload(store, record.job_id)
    assert len(await rows(store, "snapshots", record.pk)) == 1

    # Only the volatile duration changed: same content hash, no new snapshot.
    record = await poll(
        store, record, seen(VAULT, record.job_id, "InProgress", duration="00:01:00"), T0 + 3 * SEC
    )
    assert record.last_snapshot_hash == first_hash
    assert len(await rows(store, "snapshots", record.pk)) == 1

    # extendedInfo changed: a new snapshot.
    progressed = seen(VAULT, record.job_id, "InProgress", task_status="Completed")
    record = await poll(store, record, progressed, T0 + 4 * SEC)
    snaps = await rows(store, "snapshots", record.pk)
    assert len(snaps) == 2
    assert record.last_snapshot_hash == snaps[-1].content_hash != first_hash

    _, history = await store.history(record.pk)
    assert [s.properties for s in history] == [
        same.job.properties,
        progressed.job.properties,
    ]
    assert [s.status for s in history] == ["InProgress", "InProgress"]

    # Back to content already stored: nothing new, but the cached hash follows.
    record = await poll(store, record, seen(VAULT, record.job_id, "InProgress"), T0 + 5 * SEC)
    assert len(await rows(store, "snapshots", record.pk)) == 2
    assert record.last_snapshot_hash == first_hash

    # A list item (no extendedInfo) never makes a snapshot.
    record = await poll(
        store,
        record,
        seen(VAULT, record.job_id, "InProgress", full=False, task_status="X"),
        T0 + 6 * SEC,
    )
    assert len(await rows(store, "snapshots", record.pk)) == 2


async def test_terminal_decision_finishes_tracking(store: Store) -> None:
    record = await register_job(store, jid(1), T0)
    record = await poll(store, record, seen(VAULT, record.job_id, "InProgress"), T0 + SEC)
    assert record.finished_at is None

    done_at = T0 + 90 * SEC
    body = seen(VAULT, record.job_id, "CompletedWithWarnings", end_time="2026-03-01T12:01:29Z")
    record = await poll(store, record, body, done_at)
    assert record.tracking is Tracking.FINISHED and record.finished
    assert record.status == "CompletedWithWarnings"
    assert record.finished_at == done_at
    assert record.last_polled_at == done_at
    assert record.next_poll_at is None
    assert record.end_time == datetime(2026, 3, 1, 12, 1, 29, tzinfo=UTC)
    assert await store.due_jobs(done_at + timedelta(days=365), 100) == []


async def test_lost_job_is_finished_with_an_error(store: Store) -> None:
    record = await register_job(store, jid(1), T0)
    record = await poll(store, record, Missing(), T0 + SEC)
    assert (record.tracking, record.not_found_since) == (Tracking.ACTIVE, T0 + SEC)
    lost_at = T0 + SEC + POLICY.not_found_grace
    record = await poll(store, record, Missing(), lost_at)
    assert record.tracking is Tracking.LOST
    assert record.finished_at == lost_at
    assert record.last_error_at == lost_at and record.last_error
    assert record.error_count == 1
    assert record.not_found_since == T0 + SEC
    assert await store.due_jobs(lost_at + timedelta(days=1), 10) == []


async def test_history_is_oldest_first_with_aware_utc_datetimes(store: Store) -> None:
    record = await register_job(store, jid(1), T0)
    steps = [
        ("InProgress", None, T0 + 5 * SEC),
        ("InProgress", "Completed", T0 + 10 * SEC),
        ("Completed", None, T0 + 15 * SEC),
    ]
    for status, task_status, at in steps:
        record = await poll(
            store, record, seen(VAULT, record.job_id, status, task_status=task_status), at
        )

    transitions, snapshots = await store.history(record.pk)
    assert transitions == [
        TransitionRecord(1, None, "InProgress", T0 + 5 * SEC),
        TransitionRecord(3, "InProgress", "Completed", T0 + 15 * SEC),  # seq = version
    ]
    assert [s.observed_at for s in snapshots] == [T0 + 5 * SEC, T0 + 10 * SEC, T0 + 15 * SEC]
    assert [s.status for s in snapshots] == ["InProgress", "InProgress", "Completed"]
    assert_aware_utc(*(t.observed_at for t in transitions), *(s.observed_at for s in snapshots))
    assert await store.history(10_000) == ([], [])


# --- operations ----------------------------------------------------------------------------


async def test_apply_operation_registers_its_jobs_in_the_operation_vault(
    store: Store,
) -> None:
    known, new = jid(1), jid(2)
    await store.register([JobRegistration(VAULT, known, "cli")], T0)
    await store.register([op_registration(VAULT, "op-1")], T0)
    [op] = await store.due_operations(T0, 10)

    running = decide_operation(op.state(), op_seen("InProgress"), T0 + SEC, POLICY, 0.5)
    assert await store.apply_operation(op, running, T0 + SEC) == []
    op = await reload_op(store, "op-1")
    assert (op.status, op.tracking, op.version, op.poll_count) == (
        "InProgress",
        Tracking.ACTIVE,
        1,
        1,
    )

    done = decide_operation(op.state(), op_seen("Succeeded", [known, new]), T0 + 6 * SEC, POLICY, 0)
    results = await store.apply_operation(op, done, T0 + 6 * SEC)
    assert results == [
        RegisterResult("job", VAULT.id, known, False),
        RegisterResult("job", VAULT.id, new, True),
    ]
    op = await reload_op(store, "op-1")
    assert (op.status, op.tracking, op.job_ids, op.version) == (
        "Succeeded",
        Tracking.FINISHED,
        (known, new),
        2,
    )
    assert op.next_poll_at is None
    assert await store.due_operations(T0 + timedelta(days=1), 10) == []

    registered = await reload(store, new)
    assert (registered.source, registered.vault_id, registered.tracking) == (
        "operation",
        VAULT.id,
        Tracking.ACTIVE,
    )
    assert (registered.registered_at, registered.next_poll_at) == (T0 + 6 * SEC, T0 + 6 * SEC)
    assert (await reload(store, known)).source == "cli", "an already tracked job is unchanged"
    [linked] = [r.operation_pk for r in await table_rows(store, "jobs") if r.job_id == new]
    assert linked == op.pk


async def test_apply_operation_with_a_stale_version_returns_none_and_writes_nothing(
    store: Store,
) -> None:
    await store.register([op_registration(VAULT, "op-1")], T0)
    stale = await reload_op(store, "op-1")
    first = decide_operation(stale.state(), op_seen("InProgress"), T0, POLICY, 0.5)
    assert await store.apply_operation(stale, first, T0 + SEC) == []
    current = await reload_op(store, "op-1")

    late = decide_operation(stale.state(), op_seen("Succeeded", [jid(9)]), T0, POLICY, 0.5)
    assert await store.apply_operation(stale, late, T0 + 2 * SEC) is None
    assert await reload_op(store, "op-1") == current
    assert await store.list_jobs() == []


async def test_apply_operation_is_one_transaction(store: Store) -> None:
    await store.register([op_registration(VAULT, "op-1")], T0)
    op = await reload_op(store, "op-1")
    # The second job id is invalid (NOT NULL) so registering it fails after the operation row
    # and the first job were written: both must be rolled back.
    broken = OperationDecision(
        "Succeeded", Tracking.FINISHED, None, job_ids=cast(tuple[str, ...], (jid(1), None))
    )
    with pytest.raises(StoreError, match="saving operation op-1"):
        await store.apply_operation(op, broken, T0 + SEC)
    assert await reload_op(store, "op-1") == op
    assert await store.list_jobs() == []


# --- listing and counting -------------------------------------------------------------------


async def _population(store: Store) -> dict[str, JobRecord]:
    """Five jobs in every tracking state, registered one second apart."""
    names = ["running", "completed", "failed", "new", "lost"]
    jobs = {
        name: await register_job(store, jid(i + 1), T0 + i * SEC) for i, name in enumerate(names)
    }
    at = T0 + 10 * SEC
    jobs["running"] = await poll(store, jobs["running"], seen(VAULT, jid(1), "InProgress"), at)
    jobs["completed"] = await poll(store, jobs["completed"], seen(VAULT, jid(2), "Completed"), at)
    jobs["failed"] = await poll(store, jobs["failed"], seen(VAULT, jid(3), "Failed"), at)
    lost = await poll(store, jobs["lost"], seen(VAULT, jid(5), "InProgress"), at)
    lost = await poll(store, lost, Missing(), at + SEC)
    jobs["lost"] = await poll(store, lost, Missing(), at + SEC + POLICY.not_found_grace)
    return jobs


async def test_list_jobs_filters_by_status_case_insensitively(store: Store) -> None:
    jobs = await _population(store)

    def ids(records: list[JobRecord]) -> list[str]:
        return [r.job_id for r in records]

    assert ids(await store.list_jobs()) == [j.job_id for j in jobs.values()]
    assert ids(await store.list_jobs("inprogress")) == [jid(1), jid(5)]
    assert ids(await store.list_jobs("InProgress")) == [jid(1), jid(5)]
    assert ids(await store.list_jobs("COMPLETED")) == [jid(2)]
    assert ids(await store.list_jobs("CompletedWithWarnings")) == []
    assert ids(await store.list_jobs(limit=2)) == [jid(1), jid(2)]
    assert ids(await store.list_jobs("inprogress", limit=1)) == [jid(1)]


async def test_list_jobs_filters_by_tracking_state(store: Store) -> None:
    await _population(store)

    async def ids(status: str) -> list[str]:
        return [r.job_id for r in await store.list_jobs(status)]

    assert await ids("active") == [jid(1), jid(4)]
    assert await ids("finished") == [jid(2), jid(3)]
    assert await ids("Finished") == [jid(2), jid(3)]
    assert await ids("lost") == [jid(5)]
    assert await ids("LOST") == [jid(5)]


async def test_list_jobs_by_azure_status_failed(store: Store) -> None:
    await _population(store)
    assert [r.job_id for r in await store.list_jobs("Failed")] == [jid(3)]


async def test_find_jobs(store: Store) -> None:
    job = jid(1)
    await store.register([JobRegistration(VAULT, job, "cli")], T0)
    await store.register([JobRegistration(OTHER_VAULT, job, "cli")], T0 + SEC)
    await store.register([JobRegistration(VAULT, jid(2), "cli")], T0)

    found = await store.find_jobs(job)
    assert sorted(r.vault_id for r in found) == sorted([VAULT.id, OTHER_VAULT.id])
    assert {r.job_id for r in found} == {job}
    assert {r.pk for r in await store.find_jobs(job.upper())} == {r.pk for r in found}
    assert await store.find_jobs(jid(3)) == []


async def test_counts(store: Store) -> None:
    assert await store.counts() == {"operations_active": 0}
    await _population(store)
    await store.register([op_registration(VAULT, "op-1"), op_registration(VAULT, "op-2")], T0)
    op = await reload_op(store, "op-2")
    failed = decide_operation(op.state(), op_seen("Failed"), T0, POLICY, 0.5)
    assert await store.apply_operation(op, failed, T0) == []

    assert await store.counts() == {
        "jobs_active": 2,
        "jobs_finished": 2,
        "jobs_lost": 1,
        "operations_active": 1,
    }


# --- datetimes and a whole lifecycle -----------------------------------------------------------


async def test_datetimes_round_trip_as_aware_utc(store: Store) -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    registered = datetime(2026, 3, 1, 17, 30, 0, 123456, tzinfo=ist)  # 12:00:00.123456 UTC
    record = await register_job(store, jid(1), registered)
    assert record.registered_at == registered
    assert record.registered_at.replace(tzinfo=None) == datetime(2026, 3, 1, 12, 0, 0, 123456)
    assert_aware_utc(record.registered_at, record.next_poll_at)

    # Due-ness compares instants, whatever zone `now` is given in.
    plus2 = timezone(timedelta(hours=2))
    assert await store.due_jobs(datetime(2026, 3, 1, 14, 0, 0, 123455, tzinfo=plus2), 5) == []
    assert len(await store.due_jobs(datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=plus2), 5)) == 1

    failed_at = T0 + timedelta(seconds=3, microseconds=1)
    record = await poll(store, record, Failure("HTTP 503", transient=True), failed_at)
    assert record.last_error_at == failed_at
    record = await poll(store, record, Missing(), T0 + 4 * SEC)
    assert record.not_found_since == T0 + 4 * SEC
    assert_aware_utc(record.not_found_since, record.last_polled_at, record.next_poll_at)
    record = await poll(store, record, seen(VAULT, record.job_id, "Completed"), T0 + 5 * SEC)
    assert record.start_time == datetime(2026, 3, 1, 11, 59, 58, 123456, tzinfo=UTC)
    assert record.not_found_since is None, "seen again: the 404 streak is over"
    assert record.finished_at == T0 + 5 * SEC
    assert_aware_utc(
        record.registered_at,
        record.last_polled_at,
        record.start_time,
        record.end_time,
        record.finished_at,
        record.last_error_at,
        record.not_found_since,
    )
    assert record.to_json()["registered_at"] == "2026-03-01T12:00:00.123456Z"

    [op_result] = await store.register([op_registration(VAULT, "op-1")], registered)
    assert op_result.created
    op = await reload_op(store, "op-1")
    assert op.registered_at == registered
    assert_aware_utc(op.registered_at, op.next_poll_at)


async def test_naive_datetimes_are_rejected(store: Store) -> None:
    with pytest.raises(StoreError):
        await store.register([JobRegistration(VAULT, jid(1), "cli")], datetime(2026, 3, 1))
    assert await store.list_jobs() == []


async def test_full_lifecycle_none_inprogress_completed(store: Store) -> None:
    await store.register([JobRegistration(VAULT, jid(1), "cli")], T0)
    now = T0
    for status in ("InProgress", "InProgress", "InProgress", "Completed"):
        [record] = await store.due_jobs(now, 10)
        decision: JobDecision = decide_job(
            record.state(), seen(VAULT, record.job_id, status), now, POLICY, 0.5
        )
        assert await store.apply_job(record, decision, now)
        if decision.next_poll_at is not None:
            now = decision.next_poll_at

    [record] = await store.list_jobs()
    assert record.finished and record.status == "Completed"
    assert (record.poll_count, record.version, record.error_count) == (4, 4, 0)
    transitions, snapshots = await store.history(record.pk)
    assert [(t.from_status, t.to_status) for t in transitions] == [
        (None, "InProgress"),
        ("InProgress", "Completed"),
    ]
    assert [t.seq for t in transitions] == [1, 4]  # the job's version at each transition
    assert [s.status for s in snapshots] == ["InProgress", "Completed"]
    assert await store.due_jobs(now + timedelta(days=1), 10) == []
    assert await store.counts() == {"jobs_finished": 1, "operations_active": 0}


# --- batches, stopping, more listing ---------------------------------------------------------


async def test_apply_jobs_commits_each_compare_and_set_on_its_own(store: Store) -> None:
    a, b, c = [await register_job(store, jid(n), T0) for n in (1, 2, 3)]
    stale_b = b
    b = await poll(store, b, seen(VAULT, b.job_id, "InProgress"), T0 + SEC)

    def write(record: JobRecord, status: str) -> JobWrite:
        decision = decide_job(record.state(), seen(VAULT, record.job_id, status), T0, POLICY, 0)
        return JobWrite(record, decision, T0 + 2 * SEC)

    results = await store.apply_jobs(
        [write(a, "InProgress"), write(stale_b, "Failed"), write(c, "Completed")]
    )
    assert results == [True, False, True]
    assert (await reload(store, a.job_id)).status == "InProgress"
    assert await reload(store, b.job_id) == b
    assert (await reload(store, c.job_id)).tracking is Tracking.FINISHED

    # Two writes for one job in one batch: the second was decided on a version now gone.
    a = await reload(store, a.job_id)
    twice = await store.apply_jobs([write(a, "Completed"), write(a, "Failed")])
    assert twice == [True, False]
    assert (await reload(store, a.job_id)).status == "Completed"
    assert await store.apply_jobs([]) == []


def batch_write(record: JobRecord, status: str, at: datetime, *hooks: str) -> JobWrite:
    """A poll's write of `status` decided on `record`, announcing it to `hooks`."""
    decision = decide_job(record.state(), seen(VAULT, record.job_id, status), at, POLICY, 0)
    entries = [
        OutboxEntry(f"ev-{record.pk}-{record.version}", h, "job.status", "{}") for h in hooks
    ]
    return JobWrite(record, decision, at, entries)


async def test_apply_jobs_writes_the_rows_of_the_winners_only(store: Store) -> None:
    """Losers of a mixed batch leave no transition, snapshot or outbox row; winners get
    theirs, as write by write."""
    a, b, c, d = [await register_job(store, jid(n), T0) for n in (1, 2, 3, 4)]
    stale_b, stale_d = b, d
    b = await poll(store, b, seen(VAULT, b.job_id, "InProgress"), T0 + SEC)
    d = await poll(store, d, seen(VAULT, d.job_id, "InProgress"), T0 + SEC)
    before = {r.pk: await store.history(r.pk) for r in (b, d)}

    at = T0 + 2 * SEC
    writes = [
        batch_write(a, "InProgress", at, "hook"),
        batch_write(stale_b, "Completed", at, "hook"),
        batch_write(c, "Failed", at, "hook", "other"),
        batch_write(stale_d, "Cancelled", at, "hook"),
    ]
    assert await store.apply_jobs(writes) == [True, False, True, False]

    for record, status in ((a, "InProgress"), (c, "Failed")):
        current = await reload(store, record.job_id)
        assert (current.status, current.version, current.poll_count) == (status, 1, 1)
        transitions, snapshots = await store.history(record.pk)
        assert [(t.seq, t.from_status, t.to_status, t.observed_at) for t in transitions] == [
            (1, None, status, at)
        ]
        assert [(s.status, s.observed_at) for s in snapshots] == [(status, at)]
    assert [await reload(store, r.job_id) for r in (b, d)] == [b, d]
    assert {r.pk: await store.history(r.pk) for r in (b, d)} == before
    outbox = await store.outbox_list("pending")
    assert sorted((o.event_id, o.webhook) for o in outbox) == [
        (f"ev-{a.pk}-0", "hook"),
        (f"ev-{c.pk}-0", "hook"),
        (f"ev-{c.pk}-0", "other"),
    ]
    assert {(o.created_at, o.next_attempt_at, o.attempts) for o in outbox} == {(at, at, 0)}


async def test_apply_jobs_checks_a_jobs_later_write_against_the_version_its_first_leaves(
    store: Store,
) -> None:
    a, b = [await register_job(store, jid(n), T0) for n in (1, 2)]
    first = batch_write(a, "InProgress", T0 + SEC)
    later = batch_write(first.committed, "Completed", T0 + 2 * SEC)
    stale = batch_write(a, "Failed", T0 + 2 * SEC)
    results = await store.apply_jobs([first, batch_write(b, "InProgress", T0 + SEC), later, stale])
    assert results == [True, True, True, False]
    current = await reload(store, a.job_id)
    assert (current.status, current.tracking, current.version) == (
        "Completed",
        Tracking.FINISHED,
        2,
    )
    transitions, snapshots = await store.history(a.pk)
    assert [(t.seq, t.from_status, t.to_status) for t in transitions] == [
        (1, None, "InProgress"),
        (2, "InProgress", "Completed"),
    ]
    assert [s.status for s in snapshots] == ["InProgress", "Completed"]
    assert (await reload(store, b.job_id)).status == "InProgress"


async def test_concurrent_apply_jobs_on_the_same_jobs_have_one_winner_per_job(
    store: Store,
) -> None:
    records = [await register_job(store, jid(n), T0) for n in range(1, 41)]
    statuses = ["InProgress", "Completed", "Failed"]
    batches = [
        # Each batch in its own order, so that their row locks cross.
        [batch_write(r, status, T0 + SEC) for r in records[i::2] + records[1 - i :: 2]]
        for i, status in enumerate(statuses[:2])
    ]
    batches.append([batch_write(r, statuses[2], T0 + SEC) for r in reversed(records)])
    outcomes = await asyncio.gather(*(store.apply_jobs(batch) for batch in batches))
    won: dict[int, list[str]] = {}
    for batch, results in zip(batches, outcomes, strict=True):
        for write, ok in zip(batch, results, strict=True):
            if ok:
                won.setdefault(write.record.pk, []).append(write.decision.status or "")
    assert sorted(won) == sorted(r.pk for r in records)
    for record in records:
        [status] = won[record.pk]
        assert (await reload(store, record.job_id)).status == status
        transitions, _ = await store.history(record.pk)
        assert [(t.seq, t.to_status) for t in transitions] == [(1, status)]


async def test_apply_jobs_writes_nothing_when_the_transaction_fails(store: Store) -> None:
    a, b = [await register_job(store, jid(n), T0) for n in (1, 2)]
    entry = OutboxEntry("e-1", "hook", "job.status_changed", "{}")

    def write(record: JobRecord) -> JobWrite:
        decision = decide_job(
            record.state(), seen(VAULT, record.job_id, "InProgress"), T0, POLICY, 0
        )
        return JobWrite(record, decision, T0 + SEC, (entry,))

    # The same event for the same webhook twice breaks the outbox's unique key.
    with pytest.raises(StoreError, match="saving 2 jobs"):
        await store.apply_jobs([write(a), write(b)])
    assert [await reload(store, r.job_id) for r in (a, b)] == [a, b]
    assert await row_count(store, "transitions") == 0
    assert await store.outbox_counts() == {"pending": 0, "delivered": 0, "dead": 0}


async def test_outbox_rows_are_committed_with_the_decision_and_delivered_in_order(
    store: Store,
) -> None:
    a, b = [await register_job(store, jid(n), T0) for n in (1, 2)]

    async def emit(record: JobRecord, at: datetime, *hooks: str) -> None:
        decision = decide_job(
            record.state(), seen(VAULT, record.job_id, "InProgress"), at, POLICY, 0
        )
        entries = [
            OutboxEntry(f"ev-{record.pk}", h, "job.status_changed", '{"n": 1}') for h in hooks
        ]
        assert await store.apply_job(record, decision, at, entries)

    await emit(b, T0 + 2 * SEC, "slow", "fast")
    await emit(a, T0 + SEC, "fast")
    due = await store.due_outbox(T0 + 5 * SEC, 10)
    assert [(o.event_id, o.webhook) for o in due] == [
        (f"ev-{a.pk}", "fast"),
        (f"ev-{b.pk}", "slow"),
        (f"ev-{b.pk}", "fast"),
    ]
    first = due[0]
    assert (first.state, first.attempts, first.created_at, first.next_attempt_at) == (
        "pending",
        0,
        T0 + SEC,
        T0 + SEC,
    )
    assert first.payload == '{"n": 1}' and first.event_type == "job.status_changed"
    assert await store.due_outbox(T0, 10) == []
    assert [o.pk for o in await store.due_outbox(T0 + 5 * SEC, 1)] == [first.pk]
    assert [o.pk for o in await store.due_outbox(T0 + 5 * SEC, 10, exclude={first.pk})] == [
        o.pk for o in due[1:]
    ]
    skipped = await store.due_outbox(T0 + 5 * SEC, 10, skip_webhooks={"fast"})
    assert [o.webhook for o in skipped] == ["slow"]

    # Delivered, retried later, dead.
    await store.outbox_result(first, T0 + 6 * SEC, delivered=True)
    await store.outbox_result(
        due[1], T0 + 6 * SEC, delivered=False, error="HTTP 503", next_attempt_at=T0 + 60 * SEC
    )
    await store.outbox_result(due[2], T0 + 6 * SEC, delivered=False, error="HTTP 410")
    assert await store.outbox_counts() == {"pending": 1, "delivered": 1, "dead": 1}
    [delivered] = await store.outbox_list("delivered")
    assert (delivered.attempts, delivered.delivered_at, delivered.next_attempt_at) == (
        1,
        T0 + 6 * SEC,
        None,
    )
    [retry] = await store.outbox_list("pending")
    assert (retry.attempts, retry.last_error, retry.next_attempt_at) == (
        1,
        "HTTP 503",
        T0 + 60 * SEC,
    )
    assert await store.due_outbox(T0 + 59 * SEC, 10) == []
    [dead] = await store.outbox_list("dead")
    assert (dead.attempts, dead.last_error, dead.next_attempt_at) == (1, "HTTP 410", None)
    # A result for a delivery no longer pending changes nothing.
    await store.outbox_result(delivered, T0 + 7 * SEC, delivered=False, error="late")
    assert await store.outbox_list("delivered") == [delivered]

    assert await store.outbox_requeue_dead(T0 + 8 * SEC) == 1
    assert await store.outbox_requeue_dead(T0 + 8 * SEC) == 0
    [requeued] = [o for o in await store.outbox_list("pending") if o.pk == dead.pk]
    assert (requeued.attempts, requeued.next_attempt_at) == (0, T0 + 8 * SEC)
    assert await store.outbox_counts() == {"pending": 2, "delivered": 1, "dead": 0}
    assert [o.pk for o in await store.outbox_list("pending", limit=1)] == [retry.pk]
    assert_aware_utc(*(o.created_at for o in await store.outbox_list("pending")))


async def test_stop_tracking_stops_only_an_active_job(store: Store) -> None:
    record = await register_job(store, jid(1), T0)
    assert await store.stop_tracking(record, T0 + SEC)
    stopped = await reload(store, record.job_id)
    assert (stopped.tracking, stopped.next_poll_at, stopped.finished_at, stopped.version) == (
        Tracking.STOPPED,
        None,
        T0 + SEC,
        record.version + 1,
    )
    assert not await store.stop_tracking(stopped, T0 + 2 * SEC)
    assert await store.due_jobs(T0 + timedelta(days=1), 10) == []
    # A decision made before the stop loses its compare-and-set.
    late = decide_job(record.state(), seen(VAULT, record.job_id, "InProgress"), T0, POLICY, 0)
    assert await store.apply_job(record, late, T0 + 3 * SEC) is False
    assert await store.list_jobs("stopped") == [stopped]


async def test_list_jobs_by_vault_finished_since_stuck_and_pages(store: Store) -> None:
    jobs = await _population(store)
    other = await register_job(store, jid(9), T0 + 20 * SEC, OTHER_VAULT)
    running = jobs["running"]
    stuck = JobDecision("InProgress", Tracking.ACTIVE, T0 + 60 * SEC, stuck_since=T0 + 30 * SEC)
    assert await store.apply_job(running, stuck, T0 + 30 * SEC)

    def ids(records: list[JobRecord]) -> list[str]:
        return [r.job_id for r in records]

    assert ids(await store.list_jobs(vault_id=OTHER_VAULT.id.upper() + "/")) == [other.job_id]
    assert len(await store.list_jobs(vault_id=VAULT.id)) == 5
    assert ids(await store.list_jobs(finished=True)) == [jid(2), jid(3)]
    assert ids(await store.list_jobs(finished=False)) == [jid(1), jid(4), jid(5), jid(9)]
    assert ids(await store.list_jobs(since=T0 + 3 * SEC)) == [jid(4), jid(5), jid(9)]
    assert ids(await store.list_jobs(stuck=True)) == [jid(1)]
    first = await store.list_jobs(limit=2)
    rest = await store.list_jobs(limit=10, after_pk=first[-1].pk)
    assert ids(first + rest) == ids(await store.list_jobs())
    assert await store.job_status_counts() == (
        {
            ("InProgress", "active"): 1,
            ("Completed", "finished"): 1,
            ("Failed", "finished"): 1,
            ("unseen", "active"): 2,
            ("InProgress", "lost"): 1,
        },
        1,
    )


async def test_sweep_candidates_are_the_vaults_due_inprogress_jobs(store: Store) -> None:
    jobs = [await register_job(store, jid(n), T0 + n * SEC) for n in range(1, 5)]
    jobs = [await poll(store, r, seen(VAULT, r.job_id, "InProgress"), T0 + 10 * SEC) for r in jobs]
    other = await register_job(store, jid(9), T0, OTHER_VAULT)
    await poll(store, other, seen(OTHER_VAULT, other.job_id, "InProgress"), T0 + 10 * SEC)
    unseen = await register_job(store, jid(8), T0)
    horizon = T0 + 10 * SEC + POLICY.min_interval

    found = await store.sweep_candidates(VAULT.id.upper(), horizon, 10)
    assert [r.pk for r in found] == [r.pk for r in jobs]
    assert unseen.pk not in {r.pk for r in found}
    assert await store.sweep_candidates(VAULT.id, T0 + 10 * SEC, 10) == []
    limited = await store.sweep_candidates(VAULT.id, horizon, 2, exclude={jobs[0].pk})
    assert [r.pk for r in limited] == [jobs[1].pk, jobs[2].pk]


async def test_finished_durations_are_the_recent_finished_jobs(store: Store) -> None:
    ends = {
        1: "2026-03-01T12:01:58.1234567Z",
        2: "2026-03-01T11:00:00Z",
        3: "2026-03-01T12:00:08.1234567Z",
    }
    for n, end in ends.items():
        record = await register_job(store, jid(n), T0)
        await poll(store, record, seen(VAULT, record.job_id, "Completed", end_time=end), T0)
    running = await register_job(store, jid(4), T0)
    await poll(store, running, seen(VAULT, running.job_id, "InProgress"), T0)
    failed = await register_job(store, jid(5), T0)
    await poll(store, failed, seen(VAULT, failed.job_id, "Failed", end_time=ends[3]), T0)

    # Newest first; a job that ended before it started (clock skew) is left out, and so is
    # one that failed (it says nothing of how long a backup takes).
    assert await store.finished_durations() == [
        ("Backup", "AzureIaaSVMJob", "vm-01", 10.0),
        ("Backup", "AzureIaaSVMJob", "vm-01", 120.0),
    ]
    assert await store.finished_durations(limit=1) == [("Backup", "AzureIaaSVMJob", "vm-01", 10.0)]
