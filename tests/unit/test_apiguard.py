"""The pure rules of `apiguard`: which Host names and Origins a token-less API answers, the
connection cap, and the accept() failure log that backs off."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from backupjobd.http import guard as apiguard
from backupjobd.http.guard import (
    AcceptFailureLog,
    ApiStartError,
    ProtocolLog,
    check_unix_socket,
    connection_cap,
    host_allowed,
    host_name,
    is_json_content_type,
    listen_error,
    origin_allowed,
)
from backupjobd.testing import FakeClock


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:8080", "127.0.0.1"),
        ("LOCALHOST", "localhost"),
        ("[::1]:8080", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("Example.COM:80", "example.com"),
        (" localhost ", "localhost"),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, True),
        ("127.0.0.1:8080", True),
        ("127.1.2.3", True),
        ("localhost:8080", True),
        ("localhost.", True),
        ("[::1]:8080", True),
        ("attacker.example:8080", False),
        ("attacker.example", False),
        ("localhost.attacker.example", False),
        ("127.0.0.1.nip.io", False),
        ("0.0.0.0:8080", False),
        ("10.0.0.5", False),
        ("", False),
        ("backupjobd.internal:8080", True),
        ("BACKUPJOBD.internal", True),
    ],
)
def test_host_allowed(header: str | None, allowed: bool) -> None:
    assert host_allowed(header, ("backupjobd.internal",)) is allowed


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:8080", True),
        (None, None, True),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://api.example:443", "api.example:443", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("http://localhost:8080", "127.0.0.1:8080", False),
        ("http://attacker.example", "127.0.0.1:8080", False),
        ("null", "127.0.0.1:8080", False),
        ("file://", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", None, False),
    ],
)
def test_origin_allowed(origin: str | None, host: str | None, allowed: bool) -> None:
    assert origin_allowed(origin, host) is allowed


@pytest.mark.parametrize(
    ("content_type", "json"),
    [
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/merge-patch+json", True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("", False),
        ("application/jsonp", False),
    ],
)
def test_json_content_types(content_type: str, json: bool) -> None:
    assert is_json_content_type(content_type) is json


@pytest.mark.parametrize(
    ("configured", "limit", "cap"),
    [(256, None, 256), (256, 65536, 256), (256, 128, 64), (256, 4, 4), (10, 1024, 10)],
)
def test_connection_cap_stays_under_half_the_descriptors(
    configured: int, limit: int | None, cap: int
) -> None:
    assert connection_cap(configured, limit) == cap
    assert connection_cap(configured, limit, in_use=20) <= cap


def test_accept_failures_are_logged_once_then_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    handler = AcceptFailureLog(clock)
    sheds: list[int] = []
    handler.on_exhausted = lambda: sheds.append(1)
    loop = asyncio.new_event_loop()
    context: dict[str, Any] = {
        "message": "socket.accept() out of system resource",
        "exception": OSError(errno.EMFILE, "Too many open files"),
    }
    try:
        with caplog.at_level(logging.WARNING, logger="backupjobd.http.guard"):
            for _ in range(100):
                handler(loop, context)
                clock.t += 0.5
            clock.t += apiguard.ACCEPT_LOG_BACKOFF_SECONDS
            handler(loop, context)
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "backupjobd.http.guard"]
    assert len(lines) == 2, lines
    assert "Too many open files" in lines[0]
    assert "99 more since the last report" in lines[1]
    assert len(sheds) == 101  # every failure frees descriptors, only two are logged
    assert not any(r.exc_info for r in caplog.records)


def test_other_loop_errors_still_reach_the_default_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            AcceptFailureLog()(loop, {"message": "Task exception was never retrieved"})
    finally:
        loop.close()
    assert "Task exception was never retrieved" in caplog.text


def test_accept_retries_left_after_the_socket_closed_are_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """At shutdown, asyncio's pending accept retries (one per starved accept of a batch)
    fail on descriptor -1; the default handler would log each with a traceback."""
    loop = asyncio.new_event_loop()

    def _start_serving() -> None:
        raise AssertionError("not called")

    stale = {
        "message": "Exception in callback BaseSelectorEventLoop._start_serving()",
        "exception": ValueError("Invalid file descriptor: -1"),
        "handle": asyncio.Handle(_start_serving, (), loop),
    }
    other = {**stale, "exception": ValueError("something else")}
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            for _ in range(99):
                AcceptFailureLog()(loop, stale)
            assert caplog.text == ""
            AcceptFailureLog()(loop, other)
    finally:
        loop.close()
    assert "something else" in caplog.text


def test_protocol_log_is_one_line_at_info_at_most(caplog: pytest.LogCaptureFixture) -> None:
    log = ProtocolLog(logging.getLogger("backupjobd.test.http"), {})
    caplog.set_level(logging.DEBUG, logger="backupjobd.test.http")
    try:
        raise ValueError("bad header\nsecond line")
    except ValueError as exc:
        log.exception("Error handling request from %s", "127.0.0.1", exc_info=exc)
        log.debug("Error handling request from %s", "127.0.0.1", exc_info=exc)
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.DEBUG]
    assert all(r.exc_info is None for r in caplog.records)
    assert caplog.records[0].getMessage() == (
        "HTTP API: Error handling request from 127.0.0.1 (ValueError: bad header)"
    )


def test_listen_errors_are_one_line() -> None:
    error = listen_error("127.0.0.1:8080", OSError(errno.EADDRINUSE, "Address in use"))
    assert str(error) == (
        "the HTTP API cannot listen on 127.0.0.1:8080: address already in use "
        "(another process listens there)"
    )


def test_unix_socket_checks(tmp_path: Path) -> None:
    check_unix_socket(str(tmp_path / "new.sock"))  # nothing there yet: fine
    with pytest.raises(ApiStartError, match="does not exist"):
        check_unix_socket(str(tmp_path / "missing" / "api.sock"))
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(ApiStartError, match="not a socket"):
        check_unix_socket(str(plain))
    path = str(tmp_path / "live.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen()
    try:
        with pytest.raises(ApiStartError, match="in use by another live process"):
            check_unix_socket(path)
    finally:
        live.close()
    check_unix_socket(path)  # the file stays behind, nobody listens: stale, fine
