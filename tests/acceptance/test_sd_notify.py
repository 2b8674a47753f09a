"""The real daemon speaks the sd_notify protocol (Type=notify): READY once serving, WATCHDOG
pings from the event loop, STOPPING on SIGTERM — captured with a datagram socket, no systemd."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.acceptance.conftest import Daemon, Emulator, wait_until


def test_ready_watchdog_and_stopping_reach_the_notify_socket(
    tmp_path: Path, emulator: Emulator, daemon: Daemon
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    received: list[str] = []

    def drain() -> list[str]:
        while True:
            try:
                received.append(sock.recv(4096).decode())
            except BlockingIOError:
                return received

    daemon.env.update(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="1000000")
    try:
        daemon.start()
        wait_until("READY=1", lambda: any("READY=1" in m for m in drain()), 30)
        wait_until(
            "two watchdog pings",
            lambda: sum("WATCHDOG=1" in m for m in drain()) >= 2,
            10,
        )
        assert daemon.stop() == 0
        drain()
        assert any("STOPPING=1" in m for m in received), received
        ready = next(m for m in received if "READY=1" in m)
        assert "STATUS=" in ready
    finally:
        sock.close()
