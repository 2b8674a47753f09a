"""The sd_notify client against real AF_UNIX datagram sockets standing in for systemd.

Each test binds a receiving socket (a file in a short temporary directory, or an abstract
name), points the notifier at it and reads back exactly the datagrams systemd would get.
Sends are synchronous, so a datagram is queued before `notify` returns; the receiver has a
timeout only so that a bug fails the test instead of hanging it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backupjobd.adapters.sdnotify import SdNotifier, watchdog_interval

RECV_TIMEOUT_S = 5.0


class Receiver:
    """A bound datagram socket playing systemd's notify socket."""

    def __init__(self, sock: socket.socket, notify_socket: str) -> None:
        self.sock = sock
        self.notify_socket = notify_socket

    def messages(self, count: int) -> list[str]:
        return [self.sock.recv(4096).decode() for _ in range(count)]

    def assert_empty(self) -> None:
        self.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            self.sock.recv(4096)


@pytest.fixture
def path_receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    # tmp_path_factory keeps the path short: sun_path holds 107 bytes at most.
    path = tmp_path_factory.mktemp("sdn") / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(RECV_TIMEOUT_S)
        yield Receiver(sock, str(path))


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"backupjobd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(RECV_TIMEOUT_S)
        yield Receiver(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest) -> Receiver:
    fixture = "path_receiver" if request.param == "path" else "abstract_receiver"
    result: Receiver = request.getfixturevalue(fixture)
    return result


def test_lifecycle_messages(receiver: Receiver) -> None:
    notifier = SdNotifier(receiver.notify_socket)
    assert notifier.enabled

    notifier.ready()
    notifier.watchdog()
    notifier.status("tracking 3 jobs")
    notifier.stopping()

    assert receiver.messages(4) == [
        "READY=1",
        "WATCHDOG=1",
        "STATUS=tracking 3 jobs",
        "STOPPING=1",
    ]
    receiver.assert_empty()


def test_ready_and_stopping_carry_a_status_in_the_same_datagram(receiver: Receiver) -> None:
    notifier = SdNotifier(receiver.notify_socket)

    notifier.ready(status="serving")
    notifier.stopping(status="draining 2 polls")

    assert receiver.messages(2) == [
        "READY=1\nSTATUS=serving",
        "STOPPING=1\nSTATUS=draining 2 polls",
    ]


def test_status_text_stays_on_one_line(path_receiver: Receiver) -> None:
    notifier = SdNotifier(path_receiver.notify_socket)

    notifier.status("line one\nREADY=1\r\nline three")

    assert path_receiver.messages(1) == ["STATUS=line one READY=1 line three"]


def test_from_env_reads_notify_socket_from_the_mapping(path_receiver: Receiver) -> None:
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": path_receiver.notify_socket})

    assert notifier.notify("READY=1", "MAINPID=42") is True

    assert path_receiver.messages(1) == ["READY=1\nMAINPID=42"]


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_a_socket_every_method_is_a_no_op(env: dict[str, str]) -> None:
    notifier = SdNotifier.from_env(env)

    assert not notifier.enabled
    notifier.ready("x")
    notifier.watchdog()
    notifier.status("x")
    notifier.stopping("x")
    assert notifier.notify("READY=1") is False


def test_unsupported_socket_kind_is_disabled_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="backupjobd.adapters.sdnotify"):
        notifier = SdNotifier("vsock:2:1234")

    assert not notifier.enabled
    notifier.ready()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_send_errors_never_raise_and_warn_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = SdNotifier(str(tmp_path / "nobody-listens.sock"))

    with caplog.at_level(logging.DEBUG, logger="backupjobd.adapters.sdnotify"):
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        assert notifier.notify("WATCHDOG=1") is False

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()


def test_a_full_receiver_queue_does_not_block(path_receiver: Receiver) -> None:
    """systemd not reading its socket must not stall the daemon's event loop."""
    notifier = SdNotifier(path_receiver.notify_socket)
    # The kernel queues at most net.unix.max_dgram_qlen datagrams per receiver; past that a
    # blocking sender would wait (here: forever). Returning at all is most of the assertion.
    queue_limit = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())

    results = [notifier.notify("WATCHDOG=1") for _ in range(queue_limit + 10)]

    assert results[0] is True
    assert results[-1] is False
    assert path_receiver.messages(1) == ["WATCHDOG=1"]


# --- watchdog_interval -------------------------------------------------------------------


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid=123) == 15.0


def test_watchdog_interval_for_our_pid() -> None:
    env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env, pid=os.getpid()) == 15.0


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "124"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
    ],
)
def test_no_watchdog_interval(env: dict[str, str]) -> None:
    assert watchdog_interval(env, pid=123) is None
