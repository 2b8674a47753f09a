"""The read-rate learner, alone and inside `ReadBudget`, on a fake clock against a simulated
ARM bucket that other clients drain too.

The simulation steps time by 10 ms. ARM's bucket refills at `refill` reads/s up to `burst`;
"others" take `others` reads/s out of it (when it has them). Our side is the real
`ReadBudget`: every read it lets through is answered `latency` later with ARM's remaining
count, or with a 429 (and Retry-After) when the bucket was dry; a read it holds back counts
as waiting, as `acquire` does. At most `in_flight` reads are out at once, as the ARM client's
`polling.concurrency` allows. Demand is unlimited: the daemon always has a job to read.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from backupjobd.adapters.budget import ReadBudget
from backupjobd.core.pacing import DEMAND_WINDOW_S, PacingRules, RateLearner
from backupjobd.testing import FakeClock

SUB = "aaaaaaaa-0000-0000-0000-000000000001"
STEP_S = 0.01


@dataclass
class Outcome:
    sent: int = 0
    throttled: int = 0
    #: (time, learned rate) once a second.
    rates: list[tuple[float, float]] = field(default_factory=list)
    #: (time, reads we sent that second).
    per_second: list[tuple[float, int]] = field(default_factory=list)

    @property
    def throttled_share(self) -> float:
        return self.throttled / max(1, self.sent)

    def mean_reads(self, start: float, end: float) -> float:
        picked = [n for t, n in self.per_second if start <= t < end]
        return sum(picked) / max(1, len(picked))


def simulate(
    seconds: float,
    *,
    burst: float,
    refill: float,
    others: float | Callable[[float], float],
    budget: ReadBudget,
    clock: FakeClock,
    latency: float = 0.2,
    in_flight: int = 16,
) -> Outcome:
    start = clock()
    arm_tokens = burst
    answers: deque[tuple[float, int | None]] = deque()  # (due, remaining or None for a 429)
    outcome = Outcome()
    this_second = 0
    steps = round(seconds / STEP_S)
    for step in range(steps):
        clock.advance(STEP_S)
        now = clock() - start
        taken = others(now) if callable(others) else others
        arm_tokens = min(burst, max(0.0, arm_tokens + (refill - taken) * STEP_S))
        while answers and answers[0][0] <= now:
            _, remaining = answers.popleft()
            if remaining is None:
                budget.throttled(SUB, math.ceil(1 / refill))
            else:
                budget.observe_remaining(SUB, remaining)
        while len(answers) < in_flight and budget.try_take(SUB):
            outcome.sent += 1
            this_second += 1
            if arm_tokens >= 1.0:
                arm_tokens -= 1.0
                answers.append((now + latency, int(arm_tokens)))
            else:
                outcome.throttled += 1
                answers.append((now + latency, None))
        if budget.delay(SUB) > 0:
            budget.waiting(SUB)
        if (step + 1) % round(1 / STEP_S) == 0:
            [state] = budget.snapshot()
            outcome.rates.append((now, state.rate))
            outcome.per_second.append((now, this_second))
            this_second = 0
    return outcome


def daemon_budget(
    clock: FakeClock, *, burst: float = 250, rate: float = 25, share: float = 0.7
) -> ReadBudget:
    return ReadBudget(burst, rate, reserve=10, max_share=share, clock=clock)


# --------------------------------------------------------------------------- the cases


def test_others_taking_15_of_25_reads_a_second() -> None:
    clock = FakeClock()
    outcome = simulate(
        900, burst=250, refill=25, others=15, budget=daemon_budget(clock), clock=clock
    )
    assert outcome.throttled_share <= 0.01
    # 10 reads/s are left to us; the learner settles just under them.
    assert 7.0 <= outcome.mean_reads(300, 900) <= 10.5


def test_a_100_10_budget_the_config_does_not_know() -> None:
    clock = FakeClock()
    outcome = simulate(
        900, burst=100, refill=10, others=0, budget=daemon_budget(clock), clock=clock
    )
    assert outcome.throttled_share <= 0.01
    assert 7.0 <= outcome.mean_reads(300, 900) <= 10.5


def test_the_rate_comes_back_when_the_others_stop() -> None:
    clock = FakeClock()
    budget = daemon_budget(clock)
    outcome = simulate(
        900,
        burst=250,
        refill=25,
        others=lambda t: 15.0 if t < 300 else 0.0,
        budget=budget,
        clock=clock,
    )
    assert outcome.throttled_share <= 0.01
    ceiling = 0.7 * 25
    assert outcome.mean_reads(240, 300) <= 10.5
    # Within two minutes of the others stopping, we are back at our share and stay there.
    assert outcome.mean_reads(420, 900) >= 0.9 * ceiling
    assert max(rate for _, rate in outcome.rates) <= ceiling + 1e-9


def test_when_others_take_everything_we_fall_to_the_floor_without_a_storm() -> None:
    clock = FakeClock()
    outcome = simulate(
        600, burst=250, refill=25, others=30, budget=daemon_budget(clock), clock=clock
    )
    # The bucket is dry whatever we do: we keep trying, slowly, and never storm.
    assert outcome.mean_reads(120, 600) <= 1.0
    assert outcome.throttled <= 0.6 * 480


def test_a_daemon_alone_keeps_to_its_share() -> None:
    clock = FakeClock()
    outcome = simulate(
        600, burst=250, refill=25, others=0, budget=daemon_budget(clock), clock=clock
    )
    assert outcome.throttled == 0
    assert 0.95 * 17.5 <= outcome.mean_reads(60, 600) <= 17.5 + 0.5


def test_the_old_fixed_pacing_is_throttled_in_the_same_cases() -> None:
    """The baseline the learner is measured against: a fixed 25/s with the remainder only
    capping the bucket (share 1, no cuts) is throttled far more than 1 %."""
    clock = FakeClock()
    fixed = ReadBudget(250, 25, reserve=10, max_share=1.0, clock=clock)
    fixed._rules = PacingRules(burst=250, reads_per_second=25, backoff=1.0, throttle_backoff=1.0)
    outcome = simulate(600, burst=100, refill=10, others=0, budget=fixed, clock=clock)
    assert outcome.throttled_share > 0.05


# --------------------------------------------------------------------------- the learner alone


RULES = PacingRules(burst=250, reads_per_second=25, max_share=0.8, reserve=10)


def test_it_starts_at_its_share_of_the_configured_rate() -> None:
    learner = RateLearner(RULES, 0.0)
    assert learner.rate == pytest.approx(20.0)
    assert learner.low_water == pytest.approx(50.0)
    assert learner.high_water == pytest.approx(150.0)


def test_the_burst_is_learned_from_the_first_remainder_then_only_grows() -> None:
    learner = RateLearner(RULES, 0.0)
    learner.seen(0.0, 99)
    assert learner.burst == 100
    assert learner.low_water == pytest.approx(20.0)
    learner.seen(0.1, 60)
    assert learner.burst == 100
    learner.seen(0.2, 149)
    assert learner.burst == 150


def test_a_remainder_under_the_low_water_mark_cuts_once_per_cooldown() -> None:
    learner = RateLearner(RULES, 0.0)
    learner.seen(0.0, 249)
    learner.seen(1.0, 40)
    assert learner.rate == pytest.approx(14.0)
    learner.seen(1.5, 30)  # within the cool-down: the first cut has not shown yet
    assert learner.rate == pytest.approx(14.0)
    learner.seen(3.0, 20)
    assert learner.rate == pytest.approx(9.8)
    assert learner.cuts == 2


def test_a_429_halves_the_rate_but_never_below_the_floor() -> None:
    learner = RateLearner(RULES, 0.0)
    learner.throttled(0.0)
    assert learner.rate == pytest.approx(10.0)
    assert learner.remaining == 0
    for second in range(1, 40):
        learner.throttled(second * 3.0)
    assert learner.rate == pytest.approx(RULES.floor)


def test_it_probes_up_only_with_demand_and_a_high_remainder() -> None:
    learner = RateLearner(RULES, 0.0)
    learner.throttled(0.0)
    assert learner.rate == pytest.approx(10.0)
    learner.seen(1.0, 240)
    learner.seen(2.0, 240)  # no read waited: nothing to probe for
    assert learner.rate == pytest.approx(10.0)
    learner.waited(2.0)
    learner.seen(3.0, 240)  # a second of demand: one step of ceiling / probe_s
    assert learner.rate == pytest.approx(10.0 + 20.0 / 60)
    learner.waited(3.0)
    learner.seen(4.0, 100)  # between the marks: hold
    assert learner.rate == pytest.approx(10.0 + 20.0 / 60)
    learner.seen(4.0 + DEMAND_WINDOW_S + 1, 240)  # the demand is stale
    assert learner.rate == pytest.approx(10.0 + 20.0 / 60)


def test_probing_stops_at_the_ceiling() -> None:
    learner = RateLearner(RULES, 0.0)
    for second in range(1, 200):
        learner.waited(float(second))
        learner.seen(float(second), 249)
    assert learner.rate == pytest.approx(RULES.ceiling)


def test_a_long_gap_between_answers_is_one_step_not_a_leap() -> None:
    learner = RateLearner(RULES, 0.0)
    learner.throttled(0.0)
    learner.seen(1.0, 249)
    learner.waited(500.0)
    learner.seen(500.0, 249)
    assert learner.rate == pytest.approx(10.0 + 20.0 / 60)


def test_the_ceiling_is_never_under_the_floor() -> None:
    rules = PacingRules(reads_per_second=0.01, max_share=0.5)
    assert rules.ceiling == rules.floor
