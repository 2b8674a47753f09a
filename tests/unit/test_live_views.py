"""What `top` draws from one frame and what `wait` prints per job, on a fixed clock."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import timedelta

from rich.console import Console

from backupjobd.cli.live import TopFrame, WaitProgress, expected_end, plain_line, render_frame, span
from backupjobd.core.azure import ErrorDetail
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import JobRecord
from tests.unit.test_events import NOW, record

START = NOW - timedelta(minutes=4)


def job(n: int, **changes: object) -> JobRecord:
    values: dict[str, object] = {
        "pk": n,
        "job_id": f"{n:08d}-0000-4000-8000-000000000000",
        "status": "InProgress",
        "operation": "Backup",
        "job_type": "AzureIaaSVMJob",
        "entity_friendly_name": f"vm{n}",
        "start_time": START,
        "progress_percent": 40.0,
    }
    values.update(changes)
    return record(**values)


def draw(frame: TopFrame, rows: int = 20) -> str:
    console = Console(record=True, width=180, force_terminal=False)
    console.print(render_frame(frame, rows, 2.0))
    return console.export_text()


def frame(
    in_flight: list[JobRecord], failures: Sequence[JobRecord] = (), alive: int = 1
) -> TopFrame:
    return TopFrame(
        now=NOW,
        in_flight=in_flight,
        failures=list(failures),
        counts={"jobs_active": len(in_flight), "jobs_finished": 7, "operations_active": 1},
        replicas_alive=alive,
    )


def test_spans_are_short() -> None:
    cases = {0: "0s", 59: "59s", 60: "1m00s", 3599: "59m59s", 3600: "1h00m", 90061: "1d01h"}
    assert {s: span(timedelta(seconds=s)) for s in cases} == cases


def test_expected_end_says_when_or_how_late() -> None:
    assert expected_end(job(1), NOW) == "-"
    soon = job(1, expected_end_at=NOW + timedelta(minutes=5))
    assert expected_end(soon, NOW) == f"{NOW + timedelta(minutes=5):%H:%M:%S} (in 5m00s)"
    late = job(1, expected_end_at=NOW - timedelta(seconds=70))
    assert expected_end(late, NOW) == "overdue 1m10s"


def test_a_frame_shows_rows_flags_counts_and_failures() -> None:
    stuck = job(1, stuck_since=NOW - timedelta(minutes=1))
    overdue = job(2, expected_end_at=NOW - timedelta(minutes=2))
    on_time = job(3, expected_end_at=NOW + timedelta(minutes=6), progress_percent=None)
    error = ErrorDetail(code="UserErrorX", message="the disk is gone", recommendations=())
    failed = job(
        4,
        status="Failed",
        tracking=Tracking.FINISHED,
        end_time=NOW - timedelta(hours=1),
        error_details=(error,),
    )
    text = draw(frame([stuck, overdue, on_time], [failed]))
    assert "1 daemon(s) alive" in text
    assert "active 3 (stuck 1, overdue 1)  finished 7" in text
    rows = {
        n: next(line for line in text.splitlines() if f"{n:08d}"[:8] in line) for n in (1, 2, 3, 4)
    }
    assert "STUCK" in rows[1] and "OVERDUE" not in rows[1]
    assert "OVERDUE" in rows[2] and "overdue 2m00s" in rows[2]
    assert "(in 6m00s)" in rows[3] and "%" not in rows[3].split("(in")[0].split("vm3")[1]
    assert "40%" in rows[1] and "4m00s" in rows[1]
    assert "Failed" in rows[4] and "UserErrorX: the disk is gone" in rows[4]


def test_no_daemon_and_nothing_in_flight_say_so() -> None:
    text = draw(frame([], alive=0))
    assert "no daemon running: nothing is polled" in text
    assert "nothing in flight" in text and "none" in text


def test_rows_that_do_not_fit_are_counted() -> None:
    text = draw(frame([job(n) for n in range(1, 8)]), rows=3)
    assert "… and 4 more in flight" in text


def test_names_are_text_not_markup() -> None:
    text = draw(frame([job(1, entity_friendly_name="[bold]x\x1b[2J")]))
    assert "[bold]x\\x1b[2J" in text


def test_plain_lines_only_when_something_changed() -> None:
    out = io.StringIO()
    progress = WaitProgress(out, terminal=False, now=lambda: NOW)
    progress.update([job(1)])
    progress.update([job(1)])
    progress.update([job(1, progress_percent=55.0)])
    progress.update([job(1, status="Completed", tracking=Tracking.FINISHED, end_time=NOW)])
    progress.close()
    assert out.getvalue().splitlines() == [
        f"job {job(1).job_id}: InProgress 40%, 4m00s elapsed",
        f"job {job(1).job_id}: InProgress 55%, 4m00s elapsed",
        f"job {job(1).job_id}: Completed 40%, 4m00s elapsed",
    ]
    assert plain_line(job(1, not_found_since=NOW, status=None), NOW).startswith(
        f"job {job(1).job_id}: not visible yet, 0 reads since"
    )
