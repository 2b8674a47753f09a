"""Adaptive intervals: soon after start, sparse in the middle of a long job, back to the base
interval near its expected end, never beyond the maximum detection lag; durations learned
from finished jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from backupjobd.core.decisions import DurationModel, PollPolicy, next_interval

S = timedelta(seconds=1)
POLICY = PollPolicy(interval=30 * S, min_interval=5 * S, early_polls=3, max_detection_lag=120 * S)


@pytest.mark.parametrize(
    ("polls", "elapsed", "expected", "interval"),
    [
        (1, 0 * S, 3600 * S, 5 * S),  # early polls: the minimum, whatever history says
        (2, 10 * S, 3600 * S, 5 * S),
        (3, 60 * S, None, 30 * S),  # no history: the base interval
        (3, 60 * S, 3600 * S, 120 * S),  # middle of a long job: capped by the detection lag
        (3, 3300 * S, 3600 * S, 120 * S),  # 300 s left: half is 150 s, capped at 120 s
        (3, 3500 * S, 3600 * S, 50 * S),  # 100 s left: half is 50 s
        (3, 3560 * S, 3600 * S, 30 * S),  # near the end: the base interval
        (3, 4000 * S, 3600 * S, 30 * S),  # past the expected end: the base interval
        (3, 100 * S, 150 * S, 30 * S),  # short jobs never go below the base
    ],
)
def test_next_interval(
    polls: int, elapsed: timedelta, expected: timedelta | None, interval: timedelta
) -> None:
    assert next_interval(polls, POLICY, elapsed, expected) == interval


def test_the_detection_lag_is_never_exceeded() -> None:
    for remaining in range(0, 100_000, 97):
        got = next_interval(5, POLICY, 0 * S, remaining * S)
        assert POLICY.interval <= got <= POLICY.max_detection_lag


def test_duration_model_prefers_the_entity_then_the_kind_and_needs_samples() -> None:
    samples = [("Backup", "AzureIaaSVMJob", "vm1", s) for s in (100.0, 110.0, 300.0)]
    samples += [("Backup (Full)", "AzureIaaSVMJob", "vm2", s) for s in (1000.0, 1200.0)]
    samples += [("Restore", "AzureIaaSVMJob", "vm1", 50.0)] * 2
    model = DurationModel(samples)
    assert model.expected("Backup", "AzureIaaSVMJob", "VM1") == 110 * S
    # vm2 has 2 samples only: the (operation, job type) median of all 5 backups
    assert model.expected("Backup", "AzureIaaSVMJob", "vm2") == 300 * S
    assert model.expected("Restore", "AzureIaaSVMJob", "vm1") is None  # too few samples
    assert model.expected("Backup", "AzureStorageJob", "share") is None
    assert model.expected(None, None, None) is None
