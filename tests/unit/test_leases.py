"""The lease rules of several replicas, table by table: claim, renew, expire, rebalance as
replicas join and leave, and the fence a write carries."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from backupjobd.core.leases import Fence, Lease, LeasePlan, fair_share, plan_leases
from backupjobd.testing import BASE

NOW = BASE
LEASE = timedelta(seconds=15)
SUBS = [f"{n:08x}-0000-4000-8000-000000000000" for n in range(1, 7)]


def held(sub: str, owner: str, epoch: int = 1, left: float = 10.0) -> Lease:
    return Lease(sub, owner, epoch, NOW + timedelta(seconds=left))


def apply(plan: LeasePlan, rows: dict[str, Lease], me: str, now: datetime) -> dict[str, Lease]:
    """The plan as the store applies it (every compare-and-set wins here)."""
    out = dict(rows)
    for lease in plan.renew:
        out[lease.subscription] = replace(lease, expires_at=now + LEASE)
    for lease in plan.claim:
        out[lease.subscription] = Lease(lease.subscription, me, lease.epoch + 1, now + LEASE)
    for sub in plan.create:
        out[sub] = Lease(sub, me, 1, now + LEASE)
    for lease in plan.release:
        out[lease.subscription] = replace(lease, owner=None, expires_at=None)
    return out


def owners(rows: dict[str, Lease], now: datetime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lease in rows.values():
        if lease.owner and not lease.free(now):
            counts[lease.owner] = counts.get(lease.owner, 0) + 1
    return counts


def settle(
    rows: dict[str, Lease],
    live: list[str],
    now: datetime,
    beats: int = 3,
    subs: list[str] = SUBS,
) -> dict[str, Lease]:
    """A few rounds of heartbeats by every live replica, in turn."""
    for _ in range(beats):
        for me in live:
            rows = apply(plan_leases(me, now, rows.values(), subs, live), rows, me, now)
    return rows


@pytest.mark.parametrize(
    ("subs", "replicas", "share"),
    [(0, 1, 0), (1, 3, 1), (2, 3, 1), (6, 3, 2), (7, 3, 3), (6, 1, 6)],
)
def test_fair_share(subs: int, replicas: int, share: int) -> None:
    assert fair_share(subs, replicas) == share


def test_a_lone_replica_creates_a_lease_for_every_subscription_with_work() -> None:
    plan = plan_leases("a", NOW, [], SUBS, ["a"])
    assert sorted(plan.create) == SUBS
    assert plan.renew == plan.claim == plan.release == ()


def test_its_own_leases_are_renewed_and_nothing_else_changes() -> None:
    rows = [held(s, "a") for s in SUBS]
    plan = plan_leases("a", NOW, rows, SUBS, ["a"])
    assert plan.renew == tuple(rows)
    assert plan.claim == plan.create == plan.release == ()


def test_an_expired_lease_of_a_dead_replica_is_claimed() -> None:
    rows = [held(SUBS[0], "dead", epoch=4, left=-1.0), held(SUBS[1], "a")]
    plan = plan_leases("a", NOW, rows, SUBS[:2], ["a"])
    assert plan.claim == (rows[0],)
    assert plan.renew == (rows[1],)
    after = apply(plan, {r.subscription: r for r in rows}, "a", NOW)
    assert after[SUBS[0]].owner == "a" and after[SUBS[0]].epoch == 5


def test_a_live_lease_of_another_replica_is_left_alone() -> None:
    rows = [held(SUBS[0], "b")]
    plan = plan_leases("a", NOW, rows, SUBS[:1], ["a", "b"])
    assert plan == LeasePlan()


def test_an_unowned_row_is_claimed() -> None:
    rows = [Lease(SUBS[0], None, 3, None)]
    assert plan_leases("a", NOW, rows, SUBS[:1], ["a"]).claim == tuple(rows)


def test_a_lease_without_work_is_given_up() -> None:
    rows = [held(SUBS[0], "a"), held(SUBS[1], "a")]
    plan = plan_leases("a", NOW, rows, SUBS[:1], ["a"])
    assert plan.renew == (rows[0],)
    assert plan.release == (rows[1],)


def test_rebalance_as_replicas_join_and_leave_1_3_2() -> None:
    rows = settle({}, ["a"], NOW)
    assert owners(rows, NOW) == {"a": 6}
    rows = settle(rows, ["a", "b", "c"], NOW)
    assert owners(rows, NOW) == {"a": 2, "b": 2, "c": 2}
    # c dies: its leases expire, a and b take them over, three each.
    later = NOW + LEASE + timedelta(seconds=1)
    rows = {
        s: (replace(r, expires_at=later + LEASE) if r.owner != "c" else r) for s, r in rows.items()
    }
    rows = settle(rows, ["a", "b"], later)
    assert owners(rows, later) == {"a": 3, "b": 3}
    epochs = {r.epoch for r in rows.values()}
    assert max(epochs) >= 3  # every hand-over raised the epoch


def test_an_extra_lease_stays_while_nobody_is_starved() -> None:
    """7 subscriptions over 3 replicas: 3/2/2 is fair; the one with 3 keeps them."""
    subs = [*SUBS, "0000000f-0000-4000-8000-000000000000"]
    rows = {s: held(s, "a") for s in subs[:3]}
    rows |= {s: held(s, "b") for s in subs[3:5]}
    rows |= {s: held(s, "c") for s in subs[5:]}
    plan = plan_leases("a", NOW, rows.values(), subs, ["a", "b", "c"])
    assert plan.release == ()
    assert len(plan.renew) == 3


def test_two_replicas_joining_at_once_prefer_different_rows() -> None:
    free = [Lease(s, None, 1, None) for s in SUBS]
    first_b = plan_leases("b", NOW, free, SUBS, ["a", "b", "c"]).claim
    first_c = plan_leases("c", NOW, free, SUBS, ["a", "b", "c"]).claim
    assert len(first_b) == len(first_c) == 2
    assert first_b != first_c


def test_the_fence_names_the_epochs_a_write_must_find() -> None:
    fence = Fence("a", {SUBS[0]: 3})
    assert fence.holds(SUBS[0].upper())
    assert not fence.holds(SUBS[1])
    assert fence.epochs_for([SUBS[0], SUBS[1]]) == {SUBS[0]: 3, SUBS[1]: -1}


def test_replicas_at_the_quota_still_make_room_for_a_starved_one() -> None:
    """4 subscriptions on 3 replicas holding 2/2/0: both give one up, the third claims."""
    subs = SUBS[:4]
    rows = {s: held(s, "a") for s in subs[:2]} | {s: held(s, "b") for s in subs[2:]}
    rows = settle(rows, ["a", "b", "c"], NOW, subs=subs)
    assert sorted(owners(rows, NOW).values()) == [1, 1, 2]
    assert set(owners(rows, NOW)) == {"a", "b", "c"}
