"""Live terminal views: `backupjobd top` and the lines `wait` keeps up to date while it waits.

rich draws them (imported by these two commands only, so the other commands stay fast to
start). Every value from Azure enters as plain `Text` after `printable`, never as rich markup:
a VM named `[red]x` or one holding escape codes prints as the characters it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from backupjobd.adapters.durations import Durations
from backupjobd.cli import render
from backupjobd.core.azure import Phase, job_phase
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import JobRecord, iso
from backupjobd.core.text import printable
from backupjobd.store import Store

#: What a finished job is counted a success with (`top` lists the others as failures).
SUCCEEDED = (Phase.SUCCEEDED, Phase.WARNINGS)
FAILURES_SHOWN = 10
FAILURES_WINDOW = timedelta(hours=24)
#: The most jobs one refresh reads of those in flight, and of those finished in the window.
ROWS_READ = 500


# --------------------------------------------------------------------------- shared cells


def elapsed(job: JobRecord, now: datetime) -> timedelta:
    """Since Azure started the job (since its registration before Azure showed it)."""
    return max(timedelta(0), (job.end_time or now) - (job.start_time or job.registered_at))


def span(value: timedelta) -> str:
    """`45s`, `3m12s`, `2h05m`, `3d04h`: short enough for a column."""
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def expected_end(job: JobRecord, now: datetime) -> str:
    """`17:45:00 (in 5m00s)`, `overdue 3m10s`, or `-` when nothing similar has finished."""
    if job.expected_end_at is None:
        return "-"
    if job.overdue(now):
        return f"overdue {span(now - job.expected_end_at)}"
    return f"{job.expected_end_at:%H:%M:%S} (in {span(job.expected_end_at - now)})"


def status_of(job: JobRecord) -> str:
    if job.tracking is Tracking.LOST:
        return "lost"
    return render.seen_state(job)


def plain_line(job: JobRecord, now: datetime) -> str:
    """One line per job for a log or a pipe (`wait` when not on a terminal)."""
    parts = [f"job {job.job_id}: {status_of(job)}"]
    if job.progress_percent is not None:
        parts.append(f" {render.percent(job.progress_percent)}")
    parts.append(f", {span(elapsed(job, now))} elapsed")
    if job.expected_end_at is not None:
        parts.append(f", expected end {expected_end(job, now)}")
    return "".join(parts)


def _text(value: str | None, style: str = "") -> Text:
    return Text(printable(value) if value else "-", style=style, no_wrap=True, overflow="ellipsis")


def _bar(job: JobRecord, width: int = 20) -> RenderableType:
    if job.progress_percent is None:
        return Text("", no_wrap=True)
    return ProgressBar(total=100, completed=job.progress_percent, width=width)


# --------------------------------------------------------------------------- wait


class WaitProgress:
    """What `wait` shows while it waits, on stderr (stdout keeps the final lines scripts
    read): on a terminal one live line per job, redrawn every second; elsewhere a plain line
    each time a job's status or progress changes."""

    def __init__(self, stream: IO[str], terminal: bool, now: Callable[[], datetime]) -> None:
        self._stream = stream
        self._now = now
        self._jobs: Sequence[JobRecord] = ()
        self._shown: dict[int, tuple[object, ...]] = {}
        self._live: Live | None = None
        if terminal:
            console = Console(file=stream, highlight=False)
            self._live = Live(
                _Renderer(self._rows), console=console, transient=True, refresh_per_second=1
            )
            self._live.start()

    def update(self, jobs: Sequence[JobRecord]) -> None:
        self._jobs = jobs
        if self._live is not None:
            self._live.refresh()
            return
        now = self._now()
        for job in jobs:
            key = (job.status, job.tracking, job.progress_percent, job.not_found_since is None)
            if self._shown.get(job.pk) != key:
                self._shown[job.pk] = key
                self._stream.write(printable(plain_line(job, now)) + "\n")
                self._stream.flush()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _rows(self) -> RenderableType:
        now = self._now()
        grid = Table.grid(padding=(0, 1))
        for job in self._jobs:
            grid.add_row(
                Text(f"job {job.job_id[:8]}…", no_wrap=True),
                _text(status_of(job)),
                _bar(job),
                Text(render.percent(job.progress_percent), no_wrap=True),
                Text(f"{span(elapsed(job, now))} elapsed", no_wrap=True),
                Text(f"expected end {expected_end(job, now)}", no_wrap=True),
            )
        return grid


@dataclass
class _Renderer:
    """Renders `build()` afresh each time rich draws, so elapsed times keep moving."""

    build: Callable[[], RenderableType]

    def __rich__(self) -> RenderableType:
        return self.build()


# --------------------------------------------------------------------------- top


@dataclass(frozen=True)
class TopFrame:
    """What one refresh of `top` read from the database."""

    now: datetime
    in_flight: list[JobRecord]
    failures: list[JobRecord]
    counts: Mapping[str, int]
    replicas_alive: int
    vault: str | None = None


async def read_frame(
    store: Store,
    durations: Durations,
    now: datetime,
    *,
    vault_id: str | None,
    liveness_window: timedelta,
) -> TopFrame:
    unfinished = await store.list_jobs(
        finished=False, limit=ROWS_READ, vault_id=vault_id, newest_first=True
    )
    in_flight = await durations.annotated(
        store, (j for j in unfinished if j.tracking is Tracking.ACTIVE)
    )
    in_flight.sort(key=lambda j: (j.stuck_since is None, not j.overdue(now), -_age(j, now)))
    finished = await store.list_jobs(
        finished=True,
        since=now - FAILURES_WINDOW,
        limit=ROWS_READ,
        vault_id=vault_id,
        newest_first=True,
    )
    failures = [j for j in finished if job_phase(j.status) not in SUCCEEDED]
    failures.sort(key=lambda j: j.end_time or j.finished_at or j.registered_at, reverse=True)
    return TopFrame(
        now=now,
        in_flight=in_flight,
        failures=failures[:FAILURES_SHOWN],
        counts=await store.counts(),
        replicas_alive=await store.live_instances(now - liveness_window),
        vault=vault_id,
    )


def _age(job: JobRecord, now: datetime) -> float:
    return elapsed(job, now).total_seconds()


def render_frame(frame: TopFrame, rows: int, interval: float | None) -> RenderableType:
    """The whole screen: a summary line, the jobs in flight (flagged ones first), the
    failures of the last 24 hours."""
    now = frame.now
    counts = frame.counts
    stuck = sum(1 for j in frame.in_flight if j.stuck_since is not None)
    overdue = sum(1 for j in frame.in_flight if j.overdue(now))
    daemon = (
        f"{frame.replicas_alive} daemon(s) alive"
        if frame.replicas_alive
        else "no daemon running: nothing is polled"
    )
    header = Text(no_wrap=True, overflow="ellipsis")
    header.append(f"backupjobd top  {now:%Y-%m-%d %H:%M:%S}Z  ", style="bold")
    header.append(daemon, style="" if frame.replicas_alive else "bold red")
    active, operations = counts.get("jobs_active", 0), counts.get("operations_active", 0)
    header.append(
        f"  ·  active {active} (stuck {stuck}, overdue {overdue})"
        f"  finished {counts.get('jobs_finished', 0)}  lost {counts.get('jobs_lost', 0)}"
        f"  stopped {counts.get('jobs_stopped', 0)}  operations {operations}"
    )
    if frame.vault:
        header.append(f"  vault {printable(frame.vault.rsplit('/', 1)[-1])}")
    if interval is not None:
        header.append(f"  ·  every {interval:g}s, Ctrl-C quits", style="dim")

    flight = Table(title="In flight", title_justify="left", expand=True, pad_edge=False)
    for name, options in _IN_FLIGHT_COLUMNS:
        flight.add_column(name, **options)
    shown = frame.in_flight[: max(1, rows)]
    for job in shown:
        flags = []
        if job.stuck_since is not None:
            flags.append("STUCK")
        if job.overdue(now):
            flags.append("OVERDUE")
        flight.add_row(
            Text(job.job_id[:8], no_wrap=True),
            _text(job.vault_id.rsplit("/", 1)[-1]),
            _text(job.operation),
            _text(job.entity_friendly_name),
            _text(status_of(job)),
            _bar(job, 12),
            Text(render.percent(job.progress_percent), no_wrap=True),
            Text(span(elapsed(job, now)), no_wrap=True),
            _text(expected_end(job, now), "red" if job.overdue(now) else ""),
            Text(" ".join(flags), style="bold red" if flags else "", no_wrap=True),
        )
    if not shown:
        flight.add_row(*(["nothing in flight"] + [""] * (len(_IN_FLIGHT_COLUMNS) - 1)))
    hidden = len(frame.in_flight) - len(shown)
    parts: list[RenderableType] = [header, flight]
    if hidden > 0:
        parts.append(Text(f"… and {hidden} more in flight", style="dim"))

    failed = Table(title="Failed in the last 24 h", title_justify="left", expand=True)
    for name, options in _FAILURE_COLUMNS:
        failed.add_column(name, **options)
    for job in frame.failures:
        detail = job.error_details[0] if job.error_details else None
        error = f"{detail.code}: {detail.message}" if detail and detail.code else None
        failed.add_row(
            Text(render.short(iso(job.end_time or job.finished_at)), no_wrap=True),
            Text(job.job_id[:8], no_wrap=True),
            _text(job.vault_id.rsplit("/", 1)[-1]),
            _text(job.entity_friendly_name),
            _text(status_of(job), "red"),
            _text(error or (detail.message if detail else job.last_error)),
        )
    if not frame.failures:
        failed.add_row(*(["none"] + [""] * (len(_FAILURE_COLUMNS) - 1)))
    parts.append(failed)
    return Group(*parts)


_IN_FLIGHT_COLUMNS: list[tuple[str, dict[str, Any]]] = [
    ("JOB", {"no_wrap": True}),
    ("VAULT", {"max_width": 24}),
    ("OPERATION", {"max_width": 18}),
    ("ENTITY", {"max_width": 28}),
    ("STATUS", {"max_width": 16}),
    ("PROGRESS", {"width": 12}),
    ("%", {"justify": "right", "no_wrap": True}),
    ("ELAPSED", {"justify": "right", "no_wrap": True}),
    ("EXPECTED END", {"no_wrap": True}),
    ("FLAGS", {"no_wrap": True}),
]
_FAILURE_COLUMNS: list[tuple[str, dict[str, Any]]] = [
    ("ENDED", {"no_wrap": True}),
    ("JOB", {"no_wrap": True}),
    ("VAULT", {"max_width": 24}),
    ("ENTITY", {"max_width": 28}),
    ("STATUS", {"no_wrap": True}),
    ("ERROR", {"ratio": 1}),
]


async def run_top(
    store: Store,
    *,
    now: Callable[[], datetime],
    vault_id: str | None,
    interval: float,
    once: bool,
    liveness_window: timedelta,
    console: Console | None = None,
) -> None:
    """Redraw every `interval` seconds until interrupted; `once`: print one frame."""
    console = console or Console(highlight=False)
    durations = Durations()

    async def frame() -> RenderableType:
        read = await read_frame(
            store, durations, now(), vault_id=vault_id, liveness_window=liveness_window
        )
        rows = max(3, console.height - 12 - len(read.failures)) if console.is_terminal else 200
        return render_frame(read, rows, None if once else interval)

    if once:
        console.print(await frame())
        return
    # Ctrl-C ends the loop between frames, and the store closes as after any command: a
    # cancellation landing inside a read could leave a database thread behind that keeps
    # the process from exiting.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        with Live(await frame(), console=console, auto_refresh=False, screen=False) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
                if not stop.is_set():
                    live.update(await frame(), refresh=True)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
