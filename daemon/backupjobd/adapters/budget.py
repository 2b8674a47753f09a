"""The ARM read budget: one token bucket per subscription, shared by every poller.

Azure Resource Manager refills 25 reads/s into a bucket of 250 per subscription (per
principal, per region) and answers 429 beyond it. Staying inside the bucket ourselves
costs nothing; being throttled costs minutes. Other clients share that bucket, so our own
bucket refills at the rate a `RateLearner` (core/pacing.py) learns from what Azure says:
`x-ms-ratelimit-remaining-subscription-reads` on every answer (which also caps our count,
keeping the low-water mark for others) and 429s, whose `Retry-After` pauses the whole
subscription, so the daemon backs off as a whole rather than job by job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from backupjobd.core.pacing import PacingRules, RateLearner
from backupjobd.core.sweeps import SPARE_FULL

logger = logging.getLogger(__name__)

#: Progress snapshots spend only what is above this share of the usable bucket: where vaults
#: already sweep as often as they may (`core.sweeps.SPARE_FULL`), so that detection lag gets
#: the spare reads first.
SPARE_FOR_DETAILS = SPARE_FULL
MAX_DEFAULT_PAUSE_S = 60.0


@dataclass
class _Bucket:
    tokens: float
    updated: float
    pace: RateLearner
    paused_until: float = 0.0
    reads: int = 0
    throttled: int = 0


@dataclass(frozen=True, slots=True)
class BucketState:
    subscription_id: str
    tokens: float
    paused_for: float
    reads: int
    throttled: int
    #: The learned read rate (reads/s) and burst, and the last remainder Azure reported.
    rate: float = 0.0
    burst: float = 0.0
    remaining: int | None = None


class ReadBudget:
    def __init__(
        self,
        burst: float = 250.0,
        refill_per_second: float = 25.0,
        *,
        reserve: float = 10.0,
        max_share: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rules = PacingRules(
            burst=burst,
            reads_per_second=refill_per_second,
            max_share=max_share,
            reserve=min(reserve, burst / 2),
        )
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _bucket(self, subscription_id: str) -> _Bucket:
        key = subscription_id.lower()
        bucket = self._buckets.get(key)
        if bucket is None:
            now = self._clock()
            pace = RateLearner(self._rules, now)
            bucket = _Bucket(tokens=pace.capacity, updated=now, pace=pace)
            self._buckets[key] = bucket
        return bucket

    def _refill(self, bucket: _Bucket, now: float) -> None:
        if now > bucket.updated:
            refilled = bucket.tokens + (now - bucket.updated) * bucket.pace.rate
            # A burst of ours never takes Azure's bucket under the low-water mark.
            bucket.tokens = min(bucket.pace.capacity, refilled)
            bucket.updated = now

    def delay(self, subscription_id: str) -> float:
        """Seconds until a read may be sent for this subscription (0 = now); takes no token."""
        bucket = self._bucket(subscription_id)
        now = self._clock()
        self._refill(bucket, now)
        wait = max(0.0, bucket.paused_until - now)
        if bucket.tokens < 1.0:
            wait = max(wait, (1.0 - bucket.tokens) / bucket.pace.rate)
        return wait

    def fullness(self, subscription_id: str) -> float:
        """How full the part of the bucket we may use is, 0 to 1 (0 while paused)."""
        bucket = self._bucket(subscription_id)
        now = self._clock()
        self._refill(bucket, now)
        if bucket.paused_until > now:
            return 0.0
        return max(0.0, min(1.0, bucket.tokens / bucket.pace.capacity))

    def spare_reads(self, subscription_id: str) -> int:
        """Reads in the top tenth of the usable bucket: what optional reads (progress
        snapshots) may spend now without eating into what status reads and sooner sweeps
        (which draw from half full up, fastest from nine tenths,
        `core.sweeps.spare_sweep_interval`) need; 0 or less while paused."""
        capacity = self._bucket(subscription_id).pace.capacity
        return int(self.fullness(subscription_id) * capacity - SPARE_FOR_DETAILS * capacity)

    def affordable(self, subscription_id: str, within_seconds: float) -> int:
        """How many reads the bucket can serve within `within_seconds` (0 while paused)."""
        bucket = self._bucket(subscription_id)
        now = self._clock()
        self._refill(bucket, now)
        if bucket.paused_until > now:
            return 0
        return int(max(0.0, bucket.tokens) + bucket.pace.rate * within_seconds)

    def try_take(self, subscription_id: str) -> bool:
        bucket = self._bucket(subscription_id)
        if self.delay(subscription_id) > 0:
            return False
        bucket.tokens -= 1.0
        bucket.reads += 1
        return True

    async def acquire(self, subscription_id: str) -> None:
        """Wait for a read token; subscriptions never wait for each other."""
        key = subscription_id.lower()
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # FIFO among the pollers of one subscription
            # Waiting here is the rate limit itself (the refill is a function of time), and a
            # 429 arriving meanwhile can extend it, hence the loop.
            while not self.try_take(key):
                self.waiting(key)
                await asyncio.sleep(self.delay(key))

    def waiting(self, subscription_id: str) -> None:
        """A read is waiting for the pacer: demand that would take a higher rate."""
        self._bucket(subscription_id).pace.waited(self._clock())

    def observe_remaining(self, subscription_id: str, remaining: int) -> None:
        """Azure's count teaches the learner, and is the truth when it is lower than ours
        (others share the budget): we never draw it below the low-water mark."""
        bucket = self._bucket(subscription_id)
        now = self._clock()
        self._refill(bucket, now)
        bucket.pace.seen(now, remaining)
        ceiling = max(0.0, float(remaining) - bucket.pace.low_water)
        if ceiling < bucket.tokens:
            bucket.tokens = ceiling

    def throttled(self, subscription_id: str, retry_after: float | None) -> None:
        """A 429: pause every read of this subscription until Retry-After has passed."""
        bucket = self._bucket(subscription_id)
        now = self._clock()
        self._refill(bucket, now)
        pace = bucket.pace
        # Without Retry-After: the time the bucket takes to refill, within [1, 60] s (the
        # learned rate may be at its floor, and a minute is long enough to ask again).
        pause = (
            retry_after
            if retry_after is not None
            else min(MAX_DEFAULT_PAUSE_S, max(1.0, pace.burst / pace.rate))
        )
        if now + pause > bucket.paused_until:
            logger.warning(
                "ARM throttled subscription %s: pausing its reads for %.0f s",
                subscription_id,
                pause,
                extra={"action": "throttled"},
            )
        bucket.paused_until = max(bucket.paused_until, now + pause)
        bucket.tokens = 0.0
        bucket.throttled += 1
        pace.throttled(now)

    def snapshot(self) -> list[BucketState]:
        now = self._clock()
        out = []
        for key, bucket in sorted(self._buckets.items()):
            self._refill(bucket, now)
            out.append(
                BucketState(
                    key,
                    bucket.tokens,
                    max(0.0, bucket.paused_until - now),
                    bucket.reads,
                    bucket.throttled,
                    bucket.pace.rate,
                    bucket.pace.burst,
                    bucket.pace.remaining,
                )
            )
        return out
