"""The operator's live views as real processes against the daemon and the emulator:
`backupjobd top` drawn in a pseudo-terminal, `wait`'s live line on a terminal and its plain
lines elsewhere, and `expected_end_at` learned from similar jobs that finished."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable

import pytest

from tests.acceptance.conftest import BIN, VAULT, Daemon, Emulator, wait_until

HOSTILE = "vm-<script>[bold red]x\x1b[2J"
READ_LIMIT_S = 30
# rich's own colours, cursor moves and line clears: what is left is the text drawn.
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """A process on a pseudo-terminal of a fixed size, read with bounded waits."""

    def __init__(self, argv: list[str], env: dict[str, str], columns: int = 200) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        self.process = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "50"},
            close_fds=True,
        )
        os.close(slave)
        self.raw = b""

    def read_until(self, what: str, done: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not done(self.text()):
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.text()}")
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                if not chunk:
                    if self.process.poll() is not None:
                        break
                    continue
                self.raw += chunk
        return self.text()

    def text(self) -> str:
        return _ANSI.sub(b"", self.raw).decode("utf-8", "replace")

    def drain(self, timeout: float) -> None:
        """Read until the process exits (its output must not block it)."""
        self.read_until("the process to exit", lambda _: self.process.poll() is not None, timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def running_daemon(daemon: Daemon) -> Daemon:
    daemon.start()
    wait_until("the daemon's heartbeat", lambda: _alive(daemon), 30)
    return daemon


def _alive(daemon: Daemon) -> bool:
    out = daemon.cli("replicas", "--json")
    return out.returncode == 0 and bool(json.loads(out.stdout))


def last_row(text: str, job_id: str) -> str:
    """The job's row in the latest frame drawn ("" before it appears)."""
    rows = [line for line in text.splitlines() if job_id[:8] in line]
    return rows[-1] if rows else ""


def _finished(daemon: Daemon, job_ids: list[str]) -> bool:
    jobs = {j["job_id"]: j for j in daemon.jobs()}
    return all(jobs.get(i, {}).get("finished") for i in job_ids)


def test_top_draws_jobs_in_flight_flags_and_failures(
    emulator: Emulator, running_daemon: Daemon
) -> None:
    daemon = running_daemon
    # Three restores of 2 s finish first: a fourth one still running after them is overdue.
    similar = emulator.create_jobs(
        [{"operation": "Restore", "duration_seconds": 2, "entity_friendly_name": "vm-r"}] * 3
    )
    failed = emulator.create_jobs([{"final_status": "Failed", "duration_seconds": 1}])
    daemon.ok("register", "--vault", VAULT, *(f"--job-id={j['job_id']}" for j in similar + failed))
    ids = [j["job_id"] for j in similar + failed]
    wait_until("the short jobs to finish", lambda: _finished(daemon, ids), 40)

    slow, hostile = emulator.create_jobs(
        [
            {"operation": "Restore", "duration_seconds": 300, "entity_friendly_name": "vm-r"},
            {"duration_seconds": 300, "entity_friendly_name": HOSTILE},
        ]
    )
    daemon.ok(
        "register", "--vault", VAULT, f"--job-id={slow['job_id']}", f"--job-id={hostile['job_id']}"
    )
    wait_until(
        "the slow restore to be seen with progress",
        lambda: (
            json.loads(daemon.ok("jobs", "show", slow["job_id"], "--json"))["status"]
            == "InProgress"
        ),
        30,
    )

    shown = json.loads(daemon.ok("jobs", "show", slow["job_id"], "--json"))
    assert shown["expected_end_at"] is not None  # learned from the three restores
    unknown = json.loads(daemon.ok("jobs", "show", hostile["job_id"], "--json"))
    assert unknown["expected_end_at"] is None  # no backup has finished yet

    term = Terminal(
        [str(BIN), "--config", str(daemon.config_path), "top", "--interval", "0.5"], daemon.env
    )
    try:
        text = term.read_until(
            "both jobs in flight, the slow one overdue, and the failure",
            lambda t: (
                "OVERDUE" in last_row(t, slow["job_id"])
                and all(last_row(t, j["job_id"]) for j in (hostile, *failed))
            ),
            READ_LIMIT_S,
        )
        assert "In flight" in text and "Failed in the last 24 h" in text
        assert "1 daemon(s) alive" in text
        slow_row = last_row(text, slow["job_id"])
        assert "OVERDUE" in slow_row and "overdue " in slow_row and "Restore" in slow_row
        assert re.search(r"\d+%", slow_row), slow_row
        hostile_row = last_row(text, hostile["job_id"])
        assert "OVERDUE" not in hostile_row
        assert "vm-<script>[bold red]x\\x1b[2J" in hostile_row  # as text, escape spelled out
        assert b"\x1b[2J" not in term.raw
        failed_row = last_row(text, failed[0]["job_id"])
        assert "Failed" in failed_row and "400239: Backup failed as the snapshot" in failed_row
        # Redrawn: a second frame comes without anything new happening.
        frames = text.count("backupjobd top")
        term.read_until("a redraw", lambda t: t.count("backupjobd top") > frames, READ_LIMIT_S)
        term.process.send_signal(signal.SIGINT)
        term.drain(READ_LIMIT_S)
        assert term.process.returncode == 0
    finally:
        term.close()

    once = daemon.cli("top", "--once")
    assert once.returncode == 0, once.stderr
    assert slow["job_id"][:8] in once.stdout and "\x1b" not in once.stdout  # not a terminal


def test_wait_shows_a_live_line_on_a_terminal_and_plain_lines_elsewhere(
    emulator: Emulator, daemon: Daemon
) -> None:
    (job,) = emulator.create_jobs([{"duration_seconds": 4}])
    piped = subprocess.run(
        [str(BIN), "--config", str(daemon.config_path), "wait", job["job_id"], "--vault", VAULT],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == f"job {job['job_id']}: Completed\n"  # what scripts read: unchanged
    progress = [line for line in piped.stderr.splitlines() if line.startswith("job ")]
    assert progress[0].startswith(f"job {job['job_id']}: ")
    assert any(re.search(r": InProgress \d+%, \d+s elapsed", line) for line in progress), progress
    assert progress[-1].startswith(f"job {job['job_id']}: Completed 100%"), progress

    (second,) = emulator.create_jobs([{"duration_seconds": 4}])
    term = Terminal(
        [str(BIN), "--config", str(daemon.config_path), "wait", second["job_id"], "--vault", VAULT],
        daemon.env,
    )
    try:
        text = term.read_until(
            "the live line",
            lambda t: re.search(r"job \S{8}… +InProgress .*\d+% +\d+s elapsed", t) is not None,
            READ_LIMIT_S,
        )
        assert "expected end -" in text
        term.drain(READ_LIMIT_S)
        assert term.process.returncode == 0
        assert f"job {second['job_id']}: Completed" in term.text()
    finally:
        term.close()

    quiet = daemon.cli("wait", second["job_id"], "-q")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
