"""What `jobs show` and `wait` print of a job's errors, and of a job Azure has not shown."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from backupjobd.cli import render
from backupjobd.core.azure import ErrorDetail
from tests.unit.test_events import record

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAILED = dataclasses.replace(
    record(),
    status="Failed",
    error_details=(
        ErrorDetail("400239", "Snapshot transfer timed out", ("Retry later", "Check the agent")),
        ErrorDetail(None, "\x1b[2Jforged"),
    ),
)


def test_error_lines_aligned_for_show_and_plain_for_wait() -> None:
    assert render.error_lines(FAILED) == [
        "error:                  400239: Snapshot transfer timed out",
        "  recommendation:       Retry later",
        "  recommendation:       Check the agent",
        "error:                  \x1b[2Jforged",
    ]
    assert render.error_lines(FAILED, aligned=False)[:2] == [
        "error: 400239: Snapshot transfer timed out",
        "recommendation: Retry later",
    ]
    assert render.error_lines(record()) == []


def test_show_prints_the_errors_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    render.job_details(FAILED)
    out = capsys.readouterr().out
    assert "error:                  400239: Snapshot transfer timed out\n" in out
    assert "\\x1b[2Jforged" in out and "\x1b" not in out
    assert "error_details" not in out


@pytest.mark.parametrize(
    ("changes", "shown"),
    [
        ({}, "unseen"),
        (
            {"not_found_since": WHEN, "poll_count": 4},
            "not visible yet, 4 reads since 2026-03-01 12:00:00",
        ),
        ({"status": "InProgress"}, "InProgress"),
    ],
)
def test_a_job_azure_has_not_shown_says_why(changes: dict[str, object], shown: str) -> None:
    job = dataclasses.replace(record(), **{"status": None, **changes})  # type: ignore[arg-type]
    assert render.seen_state(job) == shown
