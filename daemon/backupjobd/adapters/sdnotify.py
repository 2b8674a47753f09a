"""A dependency-free sd_notify client, so that systemd knows when the daemon is up and alive.

systemd (`Type=notify`, `WatchdogSec=`) passes the socket in `NOTIFY_SOCKET`: a filesystem
path, or an abstract-namespace name when it starts with `@`. Every message is one datagram of
newline-separated `KEY=value` lines. Without a socket every method does nothing, so the same
code runs under systemd, in a container and in a terminal. Notification must never take the
daemon down: a failed send is logged once at WARNING and otherwise ignored. The socket is
non-blocking, so a stalled systemd can never stall the event loop.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

logger = logging.getLogger(__name__)


class SdNotifier:
    """Sends service state to systemd over the socket named by `NOTIFY_SOCKET`."""

    def __init__(self, notify_socket: str | None) -> None:
        """`notify_socket` is the value of NOTIFY_SOCKET as given, or None/"" for none."""
        self._address: str | bytes | None = None
        self._warned = False
        if not notify_socket:
            return
        if notify_socket.startswith("@"):
            self._address = b"\0" + notify_socket[1:].encode()
        elif notify_socket.startswith("/"):
            self._address = notify_socket
        else:
            # e.g. vsock:CID:PORT (systemd 253+ for VMs), which this client does not speak.
            logger.warning("NOTIFY_SOCKET %r is not a unix socket; not notifying", notify_socket)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SdNotifier:
        """A notifier for the socket named in `env` (the process environment, passed in)."""
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether a socket is configured; lets callers skip building status text."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Startup finished: systemd lets `systemctl start` return and starts dependents."""
        self.notify("READY=1", *_status_lines(status))

    def watchdog(self) -> None:
        """Keep-alive: systemd restarts the service when these stop for WatchdogSec."""
        self.notify("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        """Shutdown began: systemd shows `deactivating` instead of assuming a hang."""
        self.notify("STOPPING=1", *_status_lines(status))

    def status(self, text: str) -> None:
        """Free-form state shown by `systemctl status`."""
        self.notify(*_status_lines(text))

    def notify(self, *lines: str) -> bool:
        """Send `KEY=value` lines as one datagram; True if sent (False also when disabled)."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("sd_notify to %r failed (reported once): %s", self._address, exc)
            else:
                logger.debug("sd_notify to %r failed: %s", self._address, exc)
            return False
        return True


def _status_lines(text: str | None) -> tuple[str, ...]:
    """A STATUS= line, on one line whatever the text holds (newlines would split the message)."""
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.splitlines()),)


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None for no watchdog.

    `env` is the process environment and `pid` our process id (os.getpid()), both passed
    in. WATCHDOG_PID, when set, names the process the watchdog is meant for: a child that
    inherited the variables must not ping on its parent's behalf.
    """
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != pid:
                return None
        except ValueError:
            logger.warning("ignoring WATCHDOG_PID=%r: not a process id", raw_pid)
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        logger.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
