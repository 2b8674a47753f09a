"""The real `backupjobd serve` against signals and start-up faults: SIGHUP drains like
SIGTERM, SIGUSR1/SIGUSR2 are ignored, and a busy port, a bad bind, an in-memory database, a
short API token or a libpq-style PostgreSQL URL are one line each; a database that is
unreachable at start is waited for."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import BIN, VAULT, Daemon, free_port, wait_until

PG_HOST, PG_PORT = "127.0.0.1", 5432


def add_config(daemon: Daemon, text: str) -> None:
    daemon.config_path.write_text(daemon.config_path.read_text() + text)


def serving(daemon: Daemon) -> bool:
    return "backupjobd serving" in daemon.log_text()


def run_serve(daemon: Daemon, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "--config", str(daemon.config_path), "serve"],
        env=daemon.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_waiting_for_the_database(daemon: Daemon) -> None:
    """Start `serve` on a database it cannot use yet: it says so and keeps waiting."""
    daemon.start()
    assert daemon.process is not None
    wait_until(
        "serve to report the database unavailable",
        lambda: "database unavailable at start" in daemon.log_text(),
        30,
    )
    assert daemon.process.poll() is None, daemon.log_text()


def serves_then_stops_cleanly(daemon: Daemon) -> None:
    wait_until("serve to start once the database answers", lambda: serving(daemon), 60)
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.log_text()


def one_line_error(out: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("backupjobd: error:")]
    assert len(lines) == 1 and text in lines[0], out.stderr


def test_sighup_drains_like_sigterm(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.process is not None
    wait_until("serve to start", lambda: serving(daemon), 30)
    daemon.process.send_signal(signal.SIGHUP)
    assert daemon.process.wait(timeout=30) == 0
    log = daemon.log_text()
    assert "received SIGHUP: draining" in log
    assert "stopped cleanly" in log


def test_sigusr1_and_sigusr2_are_ignored(daemon: Daemon) -> None:
    daemon.start()
    assert daemon.process is not None
    wait_until("serve to start", lambda: serving(daemon), 30)
    for signum in (signal.SIGUSR1, signal.SIGUSR2):
        daemon.process.send_signal(signum)
        line = f"received {signal.Signals(signum).name}: ignored"
        wait_until(line, lambda line=line: line in daemon.log_text(), 10)
    assert daemon.process.poll() is None
    assert daemon.stop() == 0


def test_a_busy_api_port_is_one_line(daemon: Daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        add_config(daemon, f"\n[api]\nenabled = true\nport = {taken.getsockname()[1]}\n")
        out = run_serve(daemon)
    one_line_error(out, 1, "address already in use")


def test_a_bind_with_a_space_is_one_line(daemon: Daemon) -> None:
    add_config(daemon, '\n[api]\nenabled = true\nbind = "127.0.0.1 "\n')
    one_line_error(run_serve(daemon), 2, "api.bind")


def test_a_unix_socket_in_a_missing_directory_is_one_line(daemon: Daemon, tmp_path: Path) -> None:
    add_config(daemon, f'\n[api]\nenabled = true\nunix_socket = "{tmp_path}/no/such/api.sock"\n')
    one_line_error(run_serve(daemon), 1, "does not exist")


def test_an_in_memory_database_is_refused_for_serve(daemon: Daemon) -> None:
    daemon.env["BACKUPJOBD_DATABASE__URL"] = "sqlite+aiosqlite:///:memory:"
    one_line_error(run_serve(daemon), 2, "memory")


def test_a_short_api_token_is_refused(daemon: Daemon) -> None:
    add_config(daemon, '\n[api]\nenabled = true\nbind = "0.0.0.0"\n')
    daemon.env["BACKUPJOBD_API_TOKEN"] = "abcde"
    out = run_serve(daemon)
    one_line_error(out, 2, "at least")
    assert "abcde" not in out.stderr


@pytest.mark.postgres
def test_a_libpq_sslmode_is_understood(daemon: Daemon) -> None:
    """`?sslmode=disable` is how libpq URLs say it; asyncpg calls it `ssl`. Before, asyncpg's
    connect() died with a TypeError traceback on every attempt. A database that does not
    exist shows that the connection reached the server (which answers in one line)."""
    base = f"postgresql+asyncpg://postgres@{PG_HOST}:{PG_PORT}/backupjobd_no_such_db"
    daemon.env["BACKUPJOBD_DATABASE__URL"] = f"{base}?sslmode=disable"
    out = daemon.cli("jobs", "list")
    one_line_error(out, 1, "does not exist")
    assert "Connect call failed" not in out.stderr, "PostgreSQL must run for this test"
    daemon.env["BACKUPJOBD_DATABASE__URL"] = f"{base}?sslmode=disable&bogus=1"
    one_line_error(daemon.cli("jobs", "list"), 2, "unknown PostgreSQL option 'bogus'")


class _Proxy:
    """A TCP proxy to PostgreSQL that starts refusing and can be opened later: a database
    that is down when `serve` starts and comes back."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def open(self) -> None:
        async def start() -> asyncio.Server:
            return await asyncio.start_server(self._client, "127.0.0.1", self.port)

        self._server = asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def pg_proxy() -> Iterator[_Proxy]:
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
    except OSError as exc:
        if os.environ.get("BACKUPJOBD_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL at {PG_HOST}:{PG_PORT} is unavailable: {exc}")
        pytest.skip(f"PostgreSQL at {PG_HOST}:{PG_PORT} is unavailable: {exc}")
    proxy = _Proxy()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.mark.postgres
def test_a_database_down_at_start_is_waited_for(daemon: Daemon, pg_proxy: _Proxy) -> None:
    daemon.env["BACKUPJOBD_DATABASE__URL"] = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{pg_proxy.port}/test"
    )
    start_waiting_for_the_database(daemon)
    pg_proxy.open()
    serves_then_stops_cleanly(daemon)


def test_a_signal_while_waiting_for_the_database_stops_cleanly(daemon: Daemon) -> None:
    daemon.env["BACKUPJOBD_DATABASE__URL"] = (
        f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
    )
    start_waiting_for_the_database(daemon)
    assert daemon.stop() == 0
    assert "stopped before the database became available" in daemon.log_text()
    assert "Traceback" not in daemon.log_text()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, for a full disk and a read-only mount."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; returns the filler file."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    out.write(b"\0" * chunk)
    return filler


def test_a_full_disk_at_start_is_waited_for(daemon: Daemon, small_disk: Path) -> None:
    daemon.env["BACKUPJOBD_DATABASE__URL"] = f"sqlite+aiosqlite:///{small_disk}/backupjobd.db"
    filler = fill(small_disk)
    start_waiting_for_the_database(daemon)
    filler.unlink()
    serves_then_stops_cleanly(daemon)


def test_a_database_in_a_missing_directory_is_one_line(daemon: Daemon, tmp_path: Path) -> None:
    daemon.env["BACKUPJOBD_DATABASE__URL"] = f"sqlite+aiosqlite:///{tmp_path}/nowhere/x.db"
    one_line_error(run_serve(daemon), 1, "does not exist")


def test_idle_connections_under_a_low_descriptor_limit(daemon: Daemon) -> None:
    """`ulimit -n 128` and 200 idle clients: the health probe still answers, the log stays
    small (no accept() traceback per attempt), and the daemon keeps working."""
    port = free_port()
    add_config(daemon, f"\n[api]\nenabled = true\nport = {port}\n")
    log = daemon.log_path.open("ab")
    daemon.process = subprocess.Popen(
        [str(BIN), "--config", str(daemon.config_path), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=daemon.env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128)),
    )
    try:
        wait_until("the API to listen", lambda: "HTTP API listening" in daemon.log_text(), 30)
        cap = re.search(r"at most (\d+) connections", daemon.log_text())
        assert cap is not None and int(cap.group(1)) <= 64  # half of the free descriptors
        idle = []
        for _ in range(200):
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        status = http_status(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        job = str(uuid.uuid4())
        out = daemon.cli("register", "--job", f"{VAULT}/backupJobs/{job}")
        assert out.returncode == 0, out.stderr
        for sock in idle:
            sock.close()
        assert daemon.process.poll() is None
        assert daemon.stop() == 0
    finally:
        log.close()
    assert daemon.log_path.stat().st_size < 100_000
    assert "Traceback" not in daemon.log_text()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
