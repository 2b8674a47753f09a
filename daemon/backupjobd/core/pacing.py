"""How fast to read one subscription, learned from what Azure says is left (pure; the clock
is passed in as monotonic seconds).

ARM's read budget is one token bucket per subscription and principal, shared by everyone
who uses it: the portal, scripts, Terraform, other daemons. The configured `[throttle]`
numbers are a ceiling, not a fact. What is left to us shows in two signals, and the
`RateLearner` paces to them the way additive-increase / multiplicative-decrease limiters
do (TCP's congestion window, the AWS SDKs' adaptive retry mode, client-side throttling in
Google's SRE book):

- `x-ms-ratelimit-remaining-subscription-reads` on every answer: when it falls under the
  low-water mark (the share of the bucket kept for others), reads are coming out faster
  than the bucket refills, so the rate is cut (x0.7, at most once per cool-down, so one
  cut shows before the next);
- a 429: the bucket ran dry, so the rate is halved;
- while the remainder stays above the high-water mark and our reads are waiting for the
  pacer (demand is there), the rate creeps up by a small step per second, never past
  `max_share` of the configured rate.

The burst is learned too: the highest remainder seen (plus the read that revealed it); an
empty bucket (a remainder of 0, a 429) says nothing about its size. However low the first
remainder, the usable part of the bucket (`capacity`) keeps room for one read, so reads go
on at the learned rate and the next remainders correct the burst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: A read that waited for the pacer less than this long ago counts as demand for more.
DEMAND_WINDOW_S = 2.0


@dataclass(frozen=True, slots=True)
class PacingRules:
    """The `[throttle]` settings a learner works within."""

    #: The configured burst: the low-water mark's base until Azure's remainder is seen.
    burst: float = 250.0
    #: The configured refill (reads/s): with `max_share`, the ceiling of the learned rate.
    reads_per_second: float = 25.0
    #: The most of the budget we take: a share of the configured rate, and the rest of the
    #: bucket (1 - max_share of it) is never drawn on by us.
    max_share: float = 1.0
    #: The low-water mark is never under this many reads.
    reserve: float = 10.0
    #: Rate x this when the remainder falls under the low-water mark ...
    backoff: float = 0.7
    #: ... and x this on a 429.
    throttle_backoff: float = 0.5
    #: Seconds between two cuts.
    cooldown_s: float = 2.0
    #: Seconds an additive probe takes from nothing to the ceiling.
    probe_s: float = 60.0
    #: The rate is never cut below this (reads/s): a job still gets read.
    floor: float = 0.2

    @property
    def ceiling(self) -> float:
        return max(self.floor, self.max_share * self.reads_per_second)


class RateLearner:
    """The read rate one subscription's budget leaves to us, learned by AIMD."""

    __slots__ = (
        "_burst_seen",
        "_demand_until",
        "_last_cut",
        "_last_raise",
        "burst",
        "cuts",
        "rate",
        "remaining",
        "rules",
    )

    def __init__(self, rules: PacingRules, now: float) -> None:
        self.rules = rules
        self.rate = rules.ceiling
        self.burst = rules.burst
        self.remaining: int | None = None
        self.cuts = 0
        self._burst_seen = False
        self._last_cut = -math.inf
        self._last_raise = now
        self._demand_until = -math.inf

    @property
    def low_water(self) -> float:
        """The remainder we leave to others: under it, we read slower (never more than half
        the burst, whatever the reserve)."""
        return min(
            max(self.rules.reserve, (1.0 - self.rules.max_share) * self.burst), self.burst / 2
        )

    @property
    def capacity(self) -> float:
        """The part of the bucket our own pacing may hold: at least one read."""
        return max(1.0, self.burst - self.low_water)

    @property
    def high_water(self) -> float:
        """Above it, with demand, we probe for more."""
        return (self.low_water + self.burst) / 2.0

    def waited(self, now: float) -> None:
        """A read had to wait for the pacer: the rate, not the work, is what limits us."""
        self._demand_until = now + DEMAND_WINDOW_S

    def seen(self, now: float, remaining: int) -> None:
        """An answer's remaining-reads header."""
        reads = max(0, remaining)
        self.remaining = reads
        # The read that carried the header was taken out of the bucket already. An empty
        # bucket tells nothing of its size.
        if reads > 0 and self._burst_seen:
            self.burst = max(self.burst, reads + 1.0)
        elif reads > 0:
            self.burst, self._burst_seen = reads + 1.0, True
        if reads < self.low_water:
            self._cut(now, self.rules.backoff)
        elif reads >= self.high_water and now < self._demand_until:
            self._raise(now)
        else:
            self._last_raise = now

    def throttled(self, now: float) -> None:
        """A 429: the bucket is dry."""
        self.remaining = 0
        self._cut(now, self.rules.throttle_backoff)

    def _cut(self, now: float, factor: float) -> None:
        self._last_raise = now
        if now - self._last_cut < self.rules.cooldown_s:
            return
        self._last_cut = now
        self.rate = max(self.rules.floor, self.rate * factor)
        self.cuts += 1

    def _raise(self, now: float) -> None:
        elapsed = min(max(0.0, now - self._last_raise), 1.0)
        self._last_raise = now
        step = self.rules.ceiling / self.rules.probe_s * elapsed
        self.rate = min(self.rules.ceiling, self.rate + step)
