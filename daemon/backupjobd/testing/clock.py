"""Fake time for tests: one `FakeClock` and one `policy(...)` on test-scale intervals.

The emulator and the read budget read monotonic seconds (call the clock), the store and the
decisions a timezone-aware datetime (`now()`); one object serves both, so moving it moves
every side at once and nothing sleeps. The poll policy lives here because its intervals are
the time scale such a clock is advanced by.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from backupjobd.core.decisions import PollPolicy

#: The wall time a fake clock reads at zero seconds.
BASE: Final = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)

#: Short intervals so that a job's life fits in a few fake seconds.
TEST_POLICY: Final = PollPolicy(
    interval=timedelta(seconds=2),
    min_interval=timedelta(seconds=1),
    early_polls=3,
    not_found_grace=timedelta(seconds=10),
    max_backoff=timedelta(seconds=4),
    operation_interval=timedelta(seconds=1),
)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class FakeClock:
    """Seconds when called (monotonic), `base` plus those seconds from `now()`.

    `start` is the first reading; `now()` is `base` at zero seconds, not at `start`.
    """

    def __init__(self, start: float = 0.0, *, base: datetime = BASE) -> None:
        if base.tzinfo is None:
            raise ValueError("a fake clock's base must be timezone-aware")
        self.t = float(start)
        self.base = base

    def __call__(self) -> float:
        return self.t

    def now(self) -> datetime:
        return self.base + timedelta(seconds=self.t)

    def advance(self, seconds: float | timedelta) -> None:
        self.t += _seconds(seconds)

    def advance_to(self, when: datetime) -> None:
        """Jump to `when`; never back."""
        self.t = max(self.t, (when - self.base).total_seconds())


def _is_duration(name: str, value: Any) -> bool:
    return isinstance(getattr(TEST_POLICY, name, None), timedelta) and isinstance(
        value, int | float
    )


def policy(**overrides: Any) -> PollPolicy:
    """`TEST_POLICY` with some fields replaced; durations may be given as seconds."""
    changes: dict[str, Any] = {
        name: timedelta(seconds=value) if _is_duration(name, value) else value
        for name, value in overrides.items()
    }
    return dataclasses.replace(TEST_POLICY, **changes)
