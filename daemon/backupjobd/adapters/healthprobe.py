"""One GET of the daemon's own /healthz or /readyz, over TCP or its unix socket.

The standard library's http.client, not aiohttp: a probe runs every few seconds in a fresh
process, so it must start in a fraction of the time `serve`'s HTTP stack takes to import.
"""

from __future__ import annotations

import http.client
import socket

from backupjobd.core.healthcheck import ProbeTarget, Verdict, read_answer

MAX_BODY_BYTES = 65_536


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket (the API's `api.unix_socket`)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def probe(target: ProbeTarget, timeout: float) -> Verdict:
    """GET the target once; connection failures and timeouts are unhealthy, never raised."""
    connection: http.client.HTTPConnection
    if target.unix_socket:
        connection = _UnixConnection(target.unix_socket, timeout)
    else:
        connection = http.client.HTTPConnection(target.host, target.port, timeout=timeout)
    try:
        connection.request("GET", target.path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_BODY_BYTES)
    except TimeoutError:
        return Verdict(False, f"{target.describe()}: no answer within {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Verdict(False, f"{target.describe()}: {reason or type(exc).__name__}")
    finally:
        connection.close()
    return read_answer(target, response.status, body)
