"""The ARM read budget (one token bucket per subscription), on a fake clock.

`acquire` sleeps through `asyncio.sleep` in `backupjobd.adapters.budget`; the tests replace that
module's `asyncio` with a namespace whose `sleep` advances the fake clock (or parks until
the test releases it), so nothing here waits in real time.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from backupjobd.adapters import budget as budget_module
from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.budget import BucketState, ReadBudget
from backupjobd.adapters.credentials import StaticTokenProvider
from backupjobd.core import azure
from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorState, JobSpec, build_emulator_app
from backupjobd.errors import TransientError
from backupjobd.testing import FakeClock

SUB_A = "aaaaaaaa-0000-0000-0000-000000000001"
SUB_B = "bbbbbbbb-0000-0000-0000-000000000002"
STEP_TIMEOUT_S = 5.0


def tokens(budget: ReadBudget, subscription: str) -> float:
    [state] = [s for s in budget.snapshot() if s.subscription_id == subscription.lower()]
    return state.tokens


# --------------------------------------------------------------------------- the bucket


def test_a_fresh_subscription_has_the_whole_burst_then_nothing() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(5, 2.0, reserve=0, clock=clock)
    assert budget.delay(SUB_A) == 0.0
    assert [budget.try_take(SUB_A) for _ in range(5)] == [True] * 5
    assert budget.try_take(SUB_A) is False
    assert budget.delay(SUB_A) == pytest.approx(0.5)  # one token at 2/s
    [state] = budget.snapshot()
    assert state.reads == 5
    assert state.tokens == pytest.approx(0.0)


def test_tokens_refill_with_time_up_to_the_burst() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(10, 4.0, reserve=0, clock=clock)
    for _ in range(10):
        assert budget.try_take(SUB_A)
    clock.advance(0.5)  # two tokens back
    assert budget.try_take(SUB_A)
    assert budget.try_take(SUB_A)
    assert not budget.try_take(SUB_A)
    clock.advance(1000)
    assert tokens(budget, SUB_A) == pytest.approx(10.0)  # capped at the burst
    assert [budget.try_take(SUB_A) for _ in range(11)] == [True] * 10 + [False]


@pytest.mark.parametrize(
    ("spent", "elapsed", "expected"),
    [
        (0, 0.0, 0.0),  # tokens left: no wait
        (4, 0.0, 0.25),  # empty at 4/s: a quarter second for one token
        (4, 0.125, 0.125),  # half a token back: half the wait left
        (4, 0.25, 0.0),  # exactly one token back
    ],
)
def test_delay_is_the_time_until_one_token(spent: int, elapsed: float, expected: float) -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(4, 4.0, reserve=0, clock=clock)
    for _ in range(spent):
        assert budget.try_take(SUB_A)
    clock.advance(elapsed)
    assert budget.delay(SUB_A) == pytest.approx(expected)
    # delay() only looks: it takes no token.
    assert budget.delay(SUB_A) == pytest.approx(expected)


def test_try_take_refuses_without_spending() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(1, 1.0, reserve=0, clock=clock)
    assert budget.try_take(SUB_A)
    assert not budget.try_take(SUB_A)
    assert not budget.try_take(SUB_A)
    [state] = budget.snapshot()
    assert state.reads == 1
    assert state.tokens == pytest.approx(0.0)  # refusals did not go negative


# --------------------------------------------------------------------------- Azure's count


def test_observe_remaining_lowers_our_count_keeping_the_reserve() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, reserve=10, clock=clock)
    budget.observe_remaining(SUB_A, 100)
    assert tokens(budget, SUB_A) == pytest.approx(90.0)  # 100 minus the reserve of 10
    budget.observe_remaining(SUB_A, 200)  # a higher count never raises ours
    assert tokens(budget, SUB_A) == pytest.approx(90.0)
    budget.observe_remaining(SUB_A, 5)  # below the reserve: nothing left, never negative
    assert tokens(budget, SUB_A) == pytest.approx(0.0)
    assert budget.delay(SUB_A) == pytest.approx(1 / 17.5)  # and the learner cut 25/s by 0.7
    budget.observe_remaining(SUB_A, 0)
    assert tokens(budget, SUB_A) == pytest.approx(0.0)


def test_observe_remaining_never_raises_above_what_we_spent() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(20, 1.0, reserve=2, clock=clock)
    for _ in range(15):
        assert budget.try_take(SUB_A)
    budget.observe_remaining(SUB_A, 250)  # Azure's big number does not refund our reads
    assert tokens(budget, SUB_A) == pytest.approx(3.0)  # 18 (the burst less the reserve) - 15


def test_the_reserve_is_at_most_half_the_burst() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(10, 1.0, reserve=50, clock=clock)
    budget.observe_remaining(SUB_A, 8)
    # The low-water mark is at most half the burst: 9 learned from the 8 seen, so 4.5.
    assert tokens(budget, SUB_A) == pytest.approx(3.5)


def test_observe_remaining_refills_before_comparing() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(100, 10.0, reserve=0, clock=clock)
    for _ in range(100):
        assert budget.try_take(SUB_A)
    clock.advance(3)  # 30 tokens back
    budget.observe_remaining(SUB_A, 50)
    assert tokens(budget, SUB_A) == pytest.approx(30.0)


# --------------------------------------------------------------------------- 429


def test_throttled_pauses_the_subscription_for_retry_after_and_empties_it() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, reserve=10, clock=clock)
    assert budget.try_take(SUB_A)
    budget.throttled(SUB_A, 7)
    assert tokens(budget, SUB_A) == pytest.approx(0.0)
    assert budget.delay(SUB_A) == pytest.approx(7.0)
    assert not budget.try_take(SUB_A)
    clock.advance(6.5)
    assert budget.delay(SUB_A) == pytest.approx(0.5)  # tokens came back; the pause still holds
    assert not budget.try_take(SUB_A)
    clock.advance(0.5)
    assert budget.delay(SUB_A) == 0.0
    assert budget.try_take(SUB_A)
    [state] = budget.snapshot()
    assert state.throttled == 1
    assert state.reads == 2


@pytest.mark.parametrize(
    ("burst", "rate", "expected"),
    [
        (250, 25.0, 10.0),  # the time to refill the whole bucket
        (5, 10.0, 1.0),  # never less than a second
    ],
)
def test_throttled_without_retry_after_pauses_for_a_default(
    burst: int, rate: float, expected: float
) -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(burst, rate, reserve=0, clock=clock)
    budget.throttled(SUB_A, None)
    assert budget.delay(SUB_A) == pytest.approx(expected)
    assert tokens(budget, SUB_A) == pytest.approx(0.0)


def test_a_shorter_retry_after_does_not_cut_a_pause_short() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, clock=clock)
    budget.throttled(SUB_A, 30)
    clock.advance(5)
    budget.throttled(SUB_A, 2)
    assert budget.delay(SUB_A) == pytest.approx(25.0)
    budget.throttled(SUB_A, 60)
    assert budget.delay(SUB_A) == pytest.approx(60.0)
    [state] = budget.snapshot()
    assert state.throttled == 3


def test_subscriptions_have_independent_buckets() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(3, 1.0, reserve=0, clock=clock)
    budget.throttled(SUB_A, 120)
    assert budget.delay(SUB_A) == pytest.approx(120.0)
    assert budget.delay(SUB_B) == 0.0
    assert [budget.try_take(SUB_B) for _ in range(4)] == [True, True, True, False]
    # Exhausting B leaves a third subscription at its full burst.
    sub_c = "cccccccc-0000-0000-0000-000000000003"
    assert budget.delay(sub_c) == 0.0
    assert tokens(budget, sub_c) == pytest.approx(3.0)
    budget.observe_remaining(SUB_B, 0)
    assert budget.delay(SUB_A) == pytest.approx(120.0)


def test_subscription_ids_are_compared_case_insensitively() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(2, 1.0, reserve=0, clock=clock)
    assert budget.try_take(SUB_A.upper())
    assert budget.try_take(SUB_A)
    assert not budget.try_take(SUB_A.upper())
    assert [s.subscription_id for s in budget.snapshot()] == [SUB_A]


def test_snapshot_reports_every_bucket_sorted() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(50, 5.0, reserve=0, clock=clock)
    assert budget.snapshot() == []
    for _ in range(10):
        assert budget.try_take(SUB_B)
    assert budget.try_take(SUB_A)
    budget.throttled(SUB_A, 4)
    clock.advance(1)
    assert budget.snapshot() == [
        # emptied by the 429, which halved the rate: 1 s of refill at 2.5/s
        BucketState(SUB_A, 2.5, 3.0, 1, 1, rate=2.5, burst=50, remaining=0),
        BucketState(SUB_B, 45.0, 0.0, 10, 0, rate=5.0, burst=50),  # 40 left, 1 s of refill
    ]


# --------------------------------------------------------------------------- acquire


def _fake_asyncio(sleep: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(sleep=sleep, Lock=asyncio.Lock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """`asyncio.sleep` in the budget module advances the fake clock; returns the delays."""
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        clock.advance(seconds)
        await real_sleep(0)

    monkeypatch.setattr(budget_module, "asyncio", _fake_asyncio(fake_sleep))
    return delays


async def test_acquire_takes_a_token_without_waiting_while_there_are_some(
    clock: FakeClock, slept: list[float]
) -> None:
    budget = ReadBudget(3, 1.0, reserve=0, clock=clock)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        for _ in range(3):
            await budget.acquire(SUB_A)
    assert slept == []
    assert budget.snapshot()[0].reads == 3


async def test_acquire_waits_for_the_refill(clock: FakeClock, slept: list[float]) -> None:
    budget = ReadBudget(2, 4.0, reserve=0, clock=clock)
    start = clock()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        for _ in range(5):
            await budget.acquire(SUB_A)
    # Two from the burst, then one every quarter second.
    assert slept == pytest.approx([0.25, 0.25, 0.25])
    assert clock() - start == pytest.approx(0.75)
    assert budget.snapshot()[0].reads == 5


async def test_acquire_waits_out_a_429(clock: FakeClock, slept: list[float]) -> None:
    budget = ReadBudget(250, 25.0, clock=clock)
    budget.throttled(SUB_A, 7)
    start = clock()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await budget.acquire(SUB_A)
    assert clock() - start == pytest.approx(7.0)
    assert sum(slept) == pytest.approx(7.0)


async def test_concurrent_acquires_share_the_refill(clock: FakeClock, slept: list[float]) -> None:
    budget = ReadBudget(1, 2.0, reserve=0, clock=clock)
    start = clock()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await asyncio.gather(*(budget.acquire(SUB_A) for _ in range(5)))
    # One from the burst, four at 2/s: the pollers queue rather than all sending at once.
    assert clock() - start == pytest.approx(2.0)
    assert budget.snapshot()[0].reads == 5


@dataclass
class ParkedSleep:
    """A sleep that waits until the test releases it, then advances the clock."""

    seconds: float
    released: asyncio.Event


class Parked(list[ParkedSleep]):
    """The parked sleeps, with an event set each time one more arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = asyncio.Event()

    async def until(self, count: int) -> ParkedSleep:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while len(self) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self[count - 1]


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> Parked:
    sleeps = Parked()

    async def fake_sleep(seconds: float) -> None:
        entry = ParkedSleep(seconds, asyncio.Event())
        sleeps.append(entry)
        sleeps.arrived.set()
        await entry.released.wait()

    monkeypatch.setattr(budget_module, "asyncio", _fake_asyncio(fake_sleep))
    return sleeps


async def test_a_throttled_subscription_does_not_hold_up_another(
    clock: FakeClock, parked: Parked
) -> None:
    budget = ReadBudget(250, 25.0, clock=clock)
    budget.throttled(SUB_A, 60)
    waiting = asyncio.create_task(budget.acquire(SUB_A))
    first = await parked.until(1)
    assert first.seconds == pytest.approx(60.0)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await budget.acquire(SUB_B)  # no sleep: B has its whole burst
    assert len(parked) == 1
    assert not waiting.done()
    clock.advance(60)
    first.released.set()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await waiting
    assert len(parked) == 1


async def test_a_429_during_the_wait_extends_it(clock: FakeClock, parked: Parked) -> None:
    budget = ReadBudget(1, 4.0, reserve=0, clock=clock)
    assert budget.try_take(SUB_A)
    waiting = asyncio.create_task(budget.acquire(SUB_A))
    first = await parked.until(1)
    assert first.seconds == pytest.approx(0.25)
    budget.throttled(SUB_A, 5)  # another poller got a 429 meanwhile
    clock.advance(0.25)
    first.released.set()
    second = await parked.until(2)
    assert second.seconds == pytest.approx(4.75)
    assert not waiting.done()
    clock.advance(4.75)
    second.released.set()
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await waiting
    assert budget.snapshot()[0].reads == 2


# --------------------------------------------------------------------------- ArmClient

TOKEN = "budget-token"
API = "2025-08-01"
VAULT_A = azure.vault_from_id(DEFAULT_VAULT_ID)
OTHER_SUB = "99999999-8888-7777-6666-555555555555"
VAULT_B_ID = DEFAULT_VAULT_ID.replace(VAULT_A.subscription_id, OTHER_SUB)
VAULT_B = azure.vault_from_id(VAULT_B_ID)


@dataclass
class Emu:
    state: EmulatorState
    budget: ReadBudget
    arm: ArmClient


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    emu_clock = FakeClock(1000.0)
    budget_clock = FakeClock(1000.0)
    state = EmulatorState(clock=emu_clock, required_token=TOKEN)
    server = TestServer(build_emulator_app(state), host="127.0.0.1")
    await server.start_server()
    budget = ReadBudget(250, 25.0, reserve=10, clock=budget_clock)
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            endpoint = str(server.make_url("")).rstrip("/")
            arm = ArmClient(
                session, StaticTokenProvider(TOKEN), endpoint, API, timeout_seconds=5, budget=budget
            )
            yield Emu(state, budget, arm)
    finally:
        await server.close()


async def test_a_429_pauses_only_its_subscription(emu: Emu) -> None:
    job_a = emu.state.add_job(JobSpec(duration_seconds=600))
    job_b = emu.state.add_job(JobSpec(duration_seconds=600), vault_id=VAULT_B_ID)
    emu.state.add_fault("429", retry_after=7)
    async with asyncio.timeout(STEP_TIMEOUT_S):
        with pytest.raises(TransientError) as raised:
            await emu.arm.get_job(VAULT_A, job_a.job_id)
    assert raised.value.retry_after == 7
    assert emu.budget.delay(VAULT_A.subscription_id) >= 6.9
    assert emu.budget.delay(VAULT_B.subscription_id) == 0.0
    # The other subscription reads right away (no sleep: the budget's clock stands still).
    async with asyncio.timeout(STEP_TIMEOUT_S):
        seen = await emu.arm.get_job(VAULT_B, job_b.job_id)
    assert seen.status == "InProgress"
    states = {s.subscription_id: s for s in emu.budget.snapshot()}
    assert states[VAULT_A.subscription_id].throttled == 1
    assert states[VAULT_A.subscription_id].tokens == 0.0
    assert states[OTHER_SUB].throttled == 0
    assert states[OTHER_SUB].reads == 1


async def test_the_remaining_reads_header_lowers_the_budget(emu: Emu) -> None:
    emu.state.configure_reads(100)  # the emulator now answers with its remaining count
    job = emu.state.add_job(JobSpec(duration_seconds=600))
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await emu.arm.get_job(VAULT_A, job.job_id)
    # Azure said 99 left; we keep the reserve of 10 below that (our own count was 249).
    assert tokens(emu.budget, VAULT_A.subscription_id) == pytest.approx(89.0)
    assert emu.budget.delay(VAULT_A.subscription_id) == 0.0


def test_fullness_is_the_share_of_the_usable_bucket_left() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(100, 10.0, reserve=0, max_share=0.8, clock=clock)
    assert budget.fullness(SUB_A) == pytest.approx(1.0)  # 80 usable, all there
    for _ in range(40):
        assert budget.try_take(SUB_A)
    assert budget.fullness(SUB_A) == pytest.approx(0.5)
    budget.throttled(SUB_A, 5)
    assert budget.fullness(SUB_A) == 0.0


# --------------------------------------------------------------------------- no wedge (review)


def test_a_low_first_remainder_does_not_stop_reads() -> None:
    """Another client had drained the shared bucket: Azure says 5 left. Reads go on at the
    learned rate, and a later, higher remainder teaches the real burst."""
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, reserve=10, max_share=0.7, clock=clock)
    assert budget.try_take(SUB_A)
    budget.observe_remaining(SUB_A, 5)
    clock.advance(3600)
    assert budget.delay(SUB_A) == 0.0
    assert budget.try_take(SUB_A)
    budget.observe_remaining(SUB_A, 240)
    [state] = budget.snapshot()
    assert state.burst == 241


def test_an_empty_bucket_says_nothing_of_its_size() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, reserve=10, clock=clock)
    budget.observe_remaining(SUB_A, 0)  # a 429's header
    [state] = budget.snapshot()
    assert state.burst == 250


def test_a_burst_of_one_still_reads() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(1, 25.0, reserve=10, max_share=0.7, clock=clock)
    clock.advance(3600)
    assert budget.try_take(SUB_A)


def test_detail_reads_have_room_in_a_full_bucket_whatever_the_share() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, reserve=10, max_share=0.5, clock=clock)
    assert budget.fullness(SUB_A) == 1.0
    assert budget.spare_reads(SUB_A) > 0


def test_a_429_without_retry_after_pauses_a_minute_at_most() -> None:
    clock = FakeClock(1000.0)
    budget = ReadBudget(250, 25.0, reserve=10, clock=clock)
    for _ in range(10):
        budget.throttled(SUB_A, 0)
        clock.advance(3)  # every cut counts: the rate falls to its floor
    budget.throttled(SUB_A, None)
    assert budget.delay(SUB_A) <= 60.0
