"""How the emulator misbehaves on purpose: queued and random faults, and ARM's read budget.

Clients are only as good as their handling of 429s, 5xx, garbled or cut bodies and dropped
connections; these make each one happen on request, reproducibly (random faults are seeded).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from backupjobd.emulator.render import arm_error

logger = logging.getLogger(__name__)

FAULT_KINDS: Final = frozenset({"429", "500", "502", "503", "504", "garbled", "truncated", "reset"})
#: Kinds drawn by random faults when the admin request names none.
DEFAULT_RANDOM_FAULT_KINDS: Final = ("500", "503", "garbled", "truncated", "429")
#: ARM's documented read budget: 250 requests of burst, refilled at 25 per second.
ARM_READ_BURST: Final = 250
ARM_READ_REFILL_PER_SECOND: Final = 25.0
READS_REMAINING_HEADER: Final = "x-ms-ratelimit-remaining-subscription-reads"


@dataclass(slots=True)
class Fault:
    """A queued misbehaviour served instead of the next matching ARM answers."""

    kind: str
    remaining: int
    retry_after: int = 1
    path_contains: str | None = None

    def matches(self, path: str) -> bool:
        return self.path_contains is None or self.path_contains.lower() in path.lower()


@dataclass(slots=True)
class RandomFaults:
    """Each ARM request independently misbehaves with probability ``rate`` (seeded)."""

    rate: float
    kinds: tuple[str, ...]
    retry_after: int
    seed: int | None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> Fault | None:
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        return Fault(self.rng.choice(self.kinds), 1, self.retry_after)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class ReadBudget:
    """ARM's per-subscription read token bucket, so clients can be tested against it.

    Every read takes one token; tokens come back at ``refill_per_second`` up to ``burst``.
    ``others_per_second`` stands for the other clients of the same principal (the portal,
    scripts, other daemons): they take that many reads a second out of every bucket.
    """

    def __init__(
        self, burst: int, refill_per_second: float, others_per_second: float = 0.0
    ) -> None:
        if burst < 1:
            raise ValueError("read_burst must be >= 1")
        if not refill_per_second > 0 or not math.isfinite(refill_per_second):
            raise ValueError("read_refill_per_second must be > 0")
        if not 0 <= others_per_second < math.inf:
            raise ValueError("read_others_per_second must be >= 0")
        self.burst = burst
        self.refill_per_second = refill_per_second
        self.others_per_second = others_per_second
        self._buckets: dict[str, _Bucket] = {}

    def take(self, subscription: str, now: float) -> tuple[bool, int, int]:
        """(allowed, whole tokens left, seconds until one token is back when refused)."""
        bucket = self._buckets.get(subscription)
        if bucket is None:
            bucket = self._buckets[subscription] = _Bucket(float(self.burst), now)
        elapsed = max(0.0, now - bucket.updated)
        net = self.refill_per_second - self.others_per_second
        bucket.tokens = min(float(self.burst), max(0.0, bucket.tokens + elapsed * net))
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, int(bucket.tokens), 0
        wait = math.ceil((1.0 - bucket.tokens) / max(net, self.refill_per_second / 10))
        return False, 0, max(1, wait)

    def refill(self) -> None:
        self._buckets.clear()


async def serve_fault(
    fault: Fault,
    request: web.Request,
    answer: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """The misbehaviour instead of ``answer`` (which "truncated" calls, to cut its body)."""
    logger.info("emulator fault %s served for %s %s", fault.kind, request.method, request.path)
    if fault.kind == "429":
        return arm_error(
            429,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation "
            "type - 'Read'.",
            **{"Retry-After": str(fault.retry_after)},
        )
    if fault.kind in {"500", "502", "503", "504"}:
        codes = {
            "500": "InternalServerError",
            "502": "BadGateway",
            "503": "ServiceUnavailable",
            "504": "GatewayTimeout",
        }
        return arm_error(int(fault.kind), codes[fault.kind], "Injected fault.")
    if fault.kind == "garbled":
        return web.Response(
            status=200,
            body=b"<html><body>502 Bad Gateway \x00\xff</body></html>",
            content_type="application/json",
        )
    if fault.kind == "truncated":
        real = await answer()
        body = real.body if isinstance(real, web.Response) else None
        raw = body if isinstance(body, bytes) and len(body) > 2 else b'{"value": [{"id": "x"}]}'
        return web.Response(status=200, body=raw[: len(raw) // 2], content_type="application/json")
    # reset: drop the connection without any answer; writing the response then fails quietly.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def throttled(
    retry_after: int, *, kind: str = "read", header: str = READS_REMAINING_HEADER
) -> web.Response:
    """ARM's own 429 when the subscription's read (or write) budget is spent."""
    return arm_error(
        429,
        "SubscriptionRequestsThrottled",
        f"Number of '{kind}' requests for subscription exceeded the limit. "
        f"Please try again after '{retry_after}' seconds.",
        **{"Retry-After": str(retry_after), header: "0"},
    )
