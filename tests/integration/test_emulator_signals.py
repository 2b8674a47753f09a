"""`backupjobd emulator` stops cleanly on SIGTERM and SIGINT, also as PID 1.

A container's PID 1 has no default signal actions: SIGTERM without a handler is dropped, and
`docker stop` waits out its timeout before SIGKILL. `unshare --pid --fork` (root) makes the
emulator PID 1 of a new PID namespace, where the kernel applies the same rule, so the test
sees what a container would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backupjobd.emulator import free_port, listening

BIN = Path(sys.executable).parent / "backupjobd"
START_TIMEOUT_S = 20.0
# CI (BACKUPJOBD_REQUIRE_TOOLS=1) runs as root with util-linux: there the PID 1 case must run.
REQUIRE_TOOLS = os.environ.get("BACKUPJOBD_REQUIRE_TOOLS") == "1"
STOP_TIMEOUT_S = 10.0


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not listening(port):
        assert proc.poll() is None, f"exited {proc.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, f"not listening after {START_TIMEOUT_S} s"
        time.sleep(0.05)


def _wait_child(parent_pid: int) -> int:
    """The one child of `unshare --fork`, which is PID 1 inside its namespace."""
    children = Path(f"/proc/{parent_pid}/task/{parent_pid}/children")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not children.read_text().split():
        assert time.monotonic() < deadline, "unshare started no child"
        time.sleep(0.05)
    [child] = children.read_text().split()
    return int(child)


def _stopped(proc: subprocess.Popen[bytes]) -> int | None:
    try:
        return proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT_S)
        return None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_emulator_stops_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    port = free_port()
    log = tmp_path / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN), "emulator", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    _wait_listening(port, proc, log)

    proc.send_signal(signum)

    assert _stopped(proc) == 0, log.read_text()
    assert f"received {signum.name}: stopping" in log.read_text()
    assert not listening(port)


def test_emulator_stops_on_sigterm_as_pid_1(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        _cannot("needs root and util-linux unshare to run the emulator as a PID namespace's init")
    assert unshare is not None
    probe = subprocess.run(
        [unshare, "--pid", "--fork", "sh", "-c", "test $$ -eq 1"], capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        _cannot(f"cannot make a PID namespace here: {probe.stderr.decode().strip()}")
    port = free_port()
    log = tmp_path / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [unshare, "--pid", "--fork", str(BIN), "emulator", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        emulator_pid = _wait_child(proc.pid)
        _wait_listening(port, proc, log)

        os.kill(emulator_pid, signal.SIGTERM)  # unshare forwards nothing: signal the init

        assert _stopped(proc) == 0, f"PID 1 ignored SIGTERM; log:\n{log.read_text()}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
    assert "received SIGTERM: stopping" in log.read_text()


def _cannot(reason: str) -> None:
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason} (BACKUPJOBD_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(reason)
