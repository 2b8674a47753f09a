"""`backupjobd healthcheck` (the real executable) against real listeners: it finds the API
where the config puts it (a non-default port on a wildcard bind, a unix socket), reads the
answer, and says in one line why it is unhealthy. The acceptance test runs it against a
real `serve`."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backupjobd.emulator import free_port

BIN = Path(sys.executable).parent / "backupjobd"


class _Answers(BaseHTTPRequestHandler):
    """Answers each path with the (status, document) the test put in `server.answers`."""

    def do_GET(self) -> None:
        status, document = self.server.answers.get(self.path, (404, {"error": "no route"}))  # type: ignore[attr-defined]
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix" if isinstance(self.client_address, str) else super().address_string()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _serving(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    server.answers = {}  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def tcp_server() -> Iterator[Any]:
    yield from _serving(ThreadingHTTPServer(("127.0.0.1", free_port()), _Answers))


@pytest.fixture
def unix_server(tmp_path: Path) -> Iterator[Any]:
    path = tmp_path / "api.sock"
    yield from _serving(_UnixHTTPServer(str(path), _Answers))


def healthcheck(*args: str, **api: str) -> subprocess.CompletedProcess[str]:
    """`backupjobd healthcheck ARGS` with the API configured only through the environment,
    as in the image (no config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}
    env.update({f"BACKUPJOBD_API__{key.upper()}": value for key, value in api.items()})
    return subprocess.run(
        [str(BIN), "healthcheck", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_healthy_on_a_non_default_port_of_a_wildcard_bind(tcp_server: Any) -> None:
    port = tcp_server.server_address[1]
    tcp_server.answers["/healthz"] = (200, {"status": "ok", "last_tick_age_seconds": 1.5})

    result = healthcheck(enabled="true", bind="0.0.0.0", port=str(port))

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"healthy: http://127.0.0.1:{port}/healthz answered 200 (last tick 1.5 s ago)\n"
    )
    assert tcp_server.seen == ["/healthz"]


def test_unhealthy_answer_exits_1_with_one_line(tcp_server: Any) -> None:
    port = tcp_server.server_address[1]
    tcp_server.answers["/healthz"] = (503, {"status": "unhealthy", "last_tick_age_seconds": 95})

    result = healthcheck(enabled="true", bind="0.0.0.0", port=str(port))

    assert result.returncode == 1
    assert result.stderr == (
        f"backupjobd: error: unhealthy: http://127.0.0.1:{port}/healthz answered 503"
        " (last tick 95.0 s ago)\n"
    )


def test_ready_probes_readyz(tcp_server: Any) -> None:
    port = tcp_server.server_address[1]
    tcp_server.answers["/readyz"] = (200, {"status": "ready", "checks": {}})

    result = healthcheck("--ready", enabled="true", port=str(port))

    assert result.returncode == 0, result.stderr
    assert tcp_server.seen == ["/readyz"]


def test_nothing_listening_is_unhealthy() -> None:
    port = free_port()

    result = healthcheck(enabled="true", bind="0.0.0.0", port=str(port))

    assert result.returncode == 1
    assert result.stderr == (
        f"backupjobd: error: unhealthy: http://127.0.0.1:{port}/healthz: Connection refused\n"
    )


def test_a_listener_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (backlog), never replies
        port = silent.getsockname()[1]
        started = time.monotonic()

        result = healthcheck("--timeout", "0.5", enabled="true", port=str(port))

        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.endswith("/healthz: no answer within 0.5 s\n"), result.stderr
    assert elapsed < 10


def test_unix_socket(unix_server: Any) -> None:
    unix_server.answers["/healthz"] = (200, {"status": "ok", "last_tick_age_seconds": 0.0})
    path = unix_server.server_address

    result = healthcheck(enabled="true", unix_socket=path, port="1")

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"healthy: unix:{path}:/healthz answered 200 (last tick 0.0 s ago)\n"


def test_disabled_api_is_unhealthy() -> None:
    result = healthcheck(enabled="false")

    assert result.returncode == 1
    assert result.stderr == (
        "backupjobd: error: unhealthy: the HTTP API is disabled (api.enabled = false)\n"
    )


def test_bad_config_is_a_usage_error() -> None:
    result = healthcheck(enabled="true", port="http")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "api.port" in result.stderr, result.stderr
