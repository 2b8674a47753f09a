"""A bounded soak: the real daemon, 200 jobs, 10% faulty answers, a tight read budget and
three `kill -9` restarts. Every job must end with its true status and a clean history."""

from __future__ import annotations

from pathlib import Path

from bench.soak import SoakParams, run_soak


def test_soak_with_faults_tight_budget_and_kill_9_restarts(tmp_path: Path) -> None:
    params = SoakParams(jobs=200, operations=20, fault_rate=0.10, restarts=3)
    report = run_soak(params, tmp_path)
    print("\n" + "\n".join(report.lines()))
    assert report.jobs == 200
    assert report.restarts == 3
    assert report.faults_injected > 0, "the soak injected no fault: it proves nothing"
    assert report.wrong_statuses == []
    assert report.broken_histories == []
    assert report.finished == 200
    # The daemon keeps inside the budget the emulator enforces: no 429 from the budget itself
    # (the injected 429s are counted as faults, not here).
    assert report.throttled_429s == 0
