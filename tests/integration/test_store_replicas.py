"""Several replicas on one store, in memory, on SQLite and on PostgreSQL (the `store` fixture):
heartbeats claim, renew and hand over subscription leases; polling reads take only the
subscriptions a replica owns; a write under a fence whose lease has moved on is refused in
its own transaction and leaves nothing behind."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text

from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core.azure import vault_from_id
from backupjobd.core.decisions import PollPolicy, decide_job, decide_operation
from backupjobd.core.leases import LIVENESS_LOCK_SPACE, Fence, Lease, ReplicaBeat
from backupjobd.core.model import JobWrite
from backupjobd.store import Store
from tests.integration.test_store_contract import (
    T0,
    jid,
    op_registration,
    op_seen,
    register_job,
    reload,
    reload_op,
    rows,
    seen,
)

SUBS = [f"{n}{n}{n}{n}{n}{n}{n}{n}-0000-4000-8000-00000000000{n}" for n in range(1, 5)]
VAULTS = [
    vault_from_id(
        f"/subscriptions/{s}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v"
    )
    for s in SUBS
]
LEASE = timedelta(seconds=15)
POLICY = PollPolicy()


def beat(replica: str, *, stopped: bool = False, rate: float = 9.5) -> ReplicaBeat:
    return ReplicaBeat(
        instance_id=replica,
        hostname=f"host-{replica}",
        pid=100,
        started_at=T0,
        lease_for=LEASE,
        live_within=LEASE,
        budgets=({"subscription_id": SUBS[0], "rate": rate},),
        stopped=stopped,
    )


def fence_of(replica: str, leases: list[Lease]) -> Fence:
    return Fence(replica, {lease.subscription: lease.epoch for lease in leases})


async def jobs_in_every_subscription(store: Store) -> None:
    for n, vault in enumerate(VAULTS):
        await register_job(store, jid(n + 1), T0, vault)


async def test_a_lone_replica_owns_every_subscription_with_work(store: Store) -> None:
    await jobs_in_every_subscription(store)
    held = await store.replica_heartbeat(beat("a"), T0)
    assert [lease.subscription for lease in held] == SUBS
    assert all(lease.owner == "a" and lease.epoch == 1 for lease in held)
    assert all(lease.expires_at == T0 + LEASE for lease in held)
    [replica] = await store.replicas(T0 - LEASE, T0)
    assert replica.instance_id == "a" and replica.hostname == "host-a"
    assert replica.owns == tuple(SUBS)
    assert replica.budgets == ({"subscription_id": SUBS[0], "rate": 9.5},)
    # The next beat renews (same epochs, later expiry).
    later = T0 + timedelta(seconds=3)
    again = await store.replica_heartbeat(beat("a", rate=7.0), later)
    assert [(x.subscription, x.epoch) for x in again] == [(s, 1) for s in SUBS]
    assert {x.expires_at for x in again} == {later + LEASE}
    [replica] = await store.replicas(T0, later)
    assert replica.budgets[0]["rate"] == 7.0


async def test_a_joining_replica_gets_its_fair_share_and_reads_only_its_own(
    store: Store,
) -> None:
    await jobs_in_every_subscription(store)
    await store.replica_heartbeat(beat("a"), T0)
    t1 = T0 + timedelta(seconds=1)
    assert await store.replica_heartbeat(beat("b"), t1) == []  # a holds everything
    t2 = t1 + timedelta(seconds=1)
    a_held = await store.replica_heartbeat(beat("a"), t2)  # sees b live and under its floor
    assert len(a_held) == 2
    t3 = t2 + timedelta(seconds=1)
    b_held = await store.replica_heartbeat(beat("b"), t3)
    assert len(b_held) == 2
    mine_a = {x.subscription for x in a_held}
    mine_b = {x.subscription for x in b_held}
    assert mine_a | mine_b == set(SUBS) and not mine_a & mine_b
    assert all(x.epoch == 2 for x in b_held)  # taken over from a: a new epoch
    due_a = await store.due_jobs(t3, 100, subscriptions=mine_a)
    due_b = await store.due_jobs(t3, 100, subscriptions=mine_b)
    assert {j.vault_id.split("/")[2] for j in due_a} == mine_a
    assert {j.vault_id.split("/")[2] for j in due_b} == mine_b
    assert await store.due_jobs(t3, 100, subscriptions=()) == []
    owners = {r.instance_id: r.owns for r in await store.replicas(T0, t3)}
    assert owners == {"a": tuple(sorted(mine_a)), "b": tuple(sorted(mine_b))}


async def test_a_dead_replica_s_subscriptions_are_taken_over_and_pulled_forward(
    store: Store,
) -> None:
    await jobs_in_every_subscription(store)
    a_held = await store.replica_heartbeat(beat("a"), T0)
    # a's sweeps had pushed its jobs far out (a sweep lease).
    far = T0 + timedelta(hours=1)
    for n in range(len(SUBS)):
        record = await reload(store, jid(n + 1), VAULTS[n])
        assert await store.reschedule_jobs([record.pk], far)
    # a dies; b starts after a's leases expired.
    after = T0 + LEASE + timedelta(seconds=1)
    b_held = await store.replica_heartbeat(beat("b"), after)
    assert [x.subscription for x in b_held] == SUBS
    assert [x.epoch for x in b_held] == [2] * len(SUBS)
    due = await store.due_jobs(after, 100, subscriptions=SUBS)
    assert len(due) == len(SUBS)  # due now, not in an hour
    # a comes back from its pause: everything it writes under its old fence is refused.
    stale = fence_of("a", a_held)
    record = await reload(store, jid(1), VAULTS[0])
    decision = decide_job(record.state(), seen(VAULTS[0], jid(1), "InProgress"), after, POLICY, 0.5)
    assert await store.apply_job(record, decision, after, fence=stale) is False
    assert (await reload(store, jid(1), VAULTS[0])).version == record.version
    assert await rows(store, "transitions", record.pk) == []
    assert await store.reschedule_jobs([record.pk], far, fence=stale) == 0
    assert (await reload(store, jid(1), VAULTS[0])).next_poll_at == record.next_poll_at
    # b's fence is current: the same write goes through.
    assert await store.apply_job(record, decision, after, fence=fence_of("b", b_held))
    assert len(await rows(store, "transitions", record.pk)) == 1
    assert {r.instance_id for r in await store.replicas(after - LEASE, after)} == {"b"}


async def test_a_batch_under_a_fence_writes_the_owned_and_refuses_the_rest(
    store: Store,
) -> None:
    await jobs_in_every_subscription(store)
    held = await store.replica_heartbeat(beat("a"), T0)
    fence = Fence("a", {x.subscription: x.epoch for x in held if x.subscription != SUBS[1]})
    writes = []
    for n, vault in enumerate(VAULTS):
        record = await reload(store, jid(n + 1), vault)
        decision = decide_job(
            record.state(), seen(vault, jid(n + 1), "InProgress"), T0, POLICY, 0.5
        )
        writes.append(JobWrite(record, decision, T0))
    assert await store.apply_jobs(writes, fence) == [True, False, True, True]
    assert (await reload(store, jid(2), VAULTS[1])).version == writes[1].record.version


async def test_an_operation_under_a_stale_fence_is_refused(store: Store) -> None:
    [result] = await store.register([op_registration(VAULTS[0], "op-1")], T0)
    assert result.created
    await store.replica_heartbeat(beat("a"), T0)
    record = await reload_op(store, "op-1")
    decision = decide_operation(record.state(), op_seen("Succeeded", [jid(9)]), T0, POLICY, 0.5)
    assert await store.apply_operation(record, decision, T0, fence=Fence("a", {})) is None
    assert (await reload_op(store, "op-1")).version == record.version
    assert await store.find_jobs(jid(9)) == []
    ops = await store.due_operations(T0, 10, subscriptions=[SUBS[1]])
    assert ops == []
    assert len(await store.due_operations(T0, 10, subscriptions=[SUBS[0]])) == 1


async def test_a_stopping_replica_hands_its_leases_over_at_once(store: Store) -> None:
    await jobs_in_every_subscription(store)
    await store.replica_heartbeat(beat("a"), T0)
    t1 = T0 + timedelta(seconds=1)
    assert await store.replica_heartbeat(beat("a", stopped=True), t1) == []
    assert await store.replicas(T0, t1) == []
    held = await store.replica_heartbeat(beat("b"), t1 + timedelta(seconds=1))
    assert [x.subscription for x in held] == SUBS


async def test_leases_follow_work(store: Store) -> None:
    """A subscription without active jobs is given up; discovery's are kept."""
    assert await store.replica_heartbeat(beat("a"), T0) == []
    wanted = ReplicaBeat("a", "h", 1, T0, LEASE, LEASE, wanted=(SUBS[3].upper(),))
    assert [x.subscription for x in await store.replica_heartbeat(wanted, T0)] == [SUBS[3]]


async def test_replicas_with_their_own_stores_split_the_work(
    backend: str, backend_url: str | None
) -> None:
    """Three stores on one database (as three processes would have), heartbeating at once."""
    if backend_url is None:
        pytest.skip("SQL only: separate stores share a database")
    stores = [SqlStore.from_url(backend_url) for _ in range(3)]
    try:
        await stores[0].migrate()
        await jobs_in_every_subscription(stores[0])
        now: datetime = T0
        counts: list[int] = []
        rounds = 0
        # A hand-over takes two beats (one gives up, the other claims), in whatever order
        # the database serialises them: a few rounds, bounded.
        while counts != [1, 1, 2] and rounds < 10:
            rounds += 1
            now += timedelta(seconds=1)
            await asyncio.gather(
                *(s.replica_heartbeat(beat(f"r{i}"), now) for i, s in enumerate(stores))
            )
            owned = {r.instance_id: r.owns for r in await stores[0].replicas(T0, now)}
            counts = sorted(len(v) for v in owned.values())
        assert counts == [1, 1, 2], f"not fair after {rounds} rounds"
        flat = [s for v in owned.values() for s in v]
        assert sorted(flat) == SUBS
    finally:
        for s in stores:
            await s.close()


async def test_a_sole_replica_takes_a_dead_one_s_leases_at_once(store: Store) -> None:
    """SQLite: `serve` holds the file's lock, so the replica before it is dead; its leases
    are not waited out (a restart after kill -9 polls at once)."""
    await jobs_in_every_subscription(store)
    dead = await store.replica_heartbeat(beat("dead"), T0)
    assert len(dead) == len(SUBS)
    t1 = T0 + timedelta(seconds=1)  # well within the dead one's leases
    assert await store.replica_heartbeat(beat("b"), t1) == []
    sole = ReplicaBeat("c", "h", 1, T0, LEASE, LEASE, sole=True)
    held = await store.replica_heartbeat(sole, t1)
    assert [x.subscription for x in held] == SUBS
    assert [x.epoch for x in held] == [2] * len(SUBS)


async def test_a_fenced_reschedule_reads_its_jobs_in_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL takes at most 32,767 arguments: the keys go in chunks (here of 2)."""
    from backupjobd.adapters.sql import leases as sql_leases

    monkeypatch.setattr(sql_leases, "_KEYS_PER_QUERY", 2)
    await jobs_in_every_subscription(store)
    held = await store.replica_heartbeat(beat("a"), T0)
    pks = [(await reload(store, jid(n + 1), VAULTS[n])).pk for n in range(len(SUBS))]
    far = T0 + timedelta(hours=1)
    assert await store.reschedule_jobs(pks, far, fence=fence_of("a", held)) == len(SUBS)
    partial = Fence("a", {x.subscription: x.epoch for x in held[1:]})
    assert await store.reschedule_jobs(pks, T0, fence=partial) == 0  # one stale: none moved


async def test_a_replica_whose_process_died_loses_its_leases_at_the_next_heartbeat(
    pg_database_url: str,
) -> None:
    """PostgreSQL: a replica holds its liveness lock on a connection of its own; when that
    connection goes (the process died: here its backend is terminated), another replica
    takes its leases at once, well before they expire, and its old fence writes nothing."""
    a, b = SqlStore.from_url(pg_database_url), SqlStore.from_url(pg_database_url)
    try:
        await a.migrate()
        await jobs_in_every_subscription(a)
        key = await a.hold_liveness("a")
        assert key is not None and await a.hold_liveness("a") == key  # held, kept
        a_held = await a.replica_heartbeat(dataclasses.replace(beat("a"), liveness_key=key), T0)
        assert len(a_held) == len(SUBS)
        assert await b.hold_liveness("b") is not None
        # a is alive: b, a second later, takes nothing (it was not there for the split).
        t1 = T0 + timedelta(seconds=1)
        assert await b.replica_heartbeat(beat("b"), t1) == []
        # a's process dies: its connections close, and its liveness lock with them.
        async with b._db.engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND classid = :space AND objid = :key"
                    " AND granted"
                ),
                {"space": LIVENESS_LOCK_SPACE, "key": key & 0xFFFFFFFF},
            )
        assert killed == 1
        t2 = T0 + timedelta(seconds=2)  # a's leases run to T0 + 15 s
        b_held = await _beat_until_owning(b, "b", t2, len(SUBS))
        assert [x.epoch for x in b_held] == [2] * len(SUBS)
        # a owns nothing now, and its last beat is recent: dead all the same, it takes no
        # share (b does not give half of its leases up for it).
        t3 = t2 + timedelta(seconds=3)
        assert len(await b.replica_heartbeat(beat("b"), t3)) == len(SUBS)
        record = await reload(b, jid(1), VAULTS[0])
        decision = decide_job(
            record.state(), seen(VAULTS[0], jid(1), "InProgress"), t2, POLICY, 0.5
        )
        assert await b.apply_job(record, decision, t2, fence=fence_of("a", a_held)) is False
        # a's heartbeat, if it came back, takes its lock again (a new connection).
        assert await a.hold_liveness("a") == key
    finally:
        await a.close()
        await b.close()


async def _beat_until_owning(
    store: SqlStore, replica: str, now: datetime, count: int
) -> list[Lease]:
    """The terminated backend's locks go once PostgreSQL has ended it: a few beats, bounded."""
    for _ in range(50):
        held = await store.replica_heartbeat(beat(replica), now)
        if len(held) == count:
            return held
        await asyncio.sleep(0.1)
    pytest.fail(f"{replica} never took the dead replica's leases")


async def test_a_replica_without_a_liveness_lock_keeps_its_leases_until_they_expire(
    pg_database_url: str,
) -> None:
    """One that declared no lock (another replica had its key) is not taken for dead."""
    a, b = SqlStore.from_url(pg_database_url), SqlStore.from_url(pg_database_url)
    try:
        await a.migrate()
        await jobs_in_every_subscription(a)
        assert len(await a.replica_heartbeat(beat("a"), T0)) == len(SUBS)
        await b.hold_liveness("b")
        assert await b.replica_heartbeat(beat("b"), T0 + timedelta(seconds=14)) == []
        taken = await b.replica_heartbeat(beat("b"), T0 + LEASE + timedelta(seconds=1))
        assert len(taken) == len(SUBS)
    finally:
        await a.close()
        await b.close()
