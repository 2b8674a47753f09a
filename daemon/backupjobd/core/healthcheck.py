"""What `backupjobd healthcheck` probes and how it reads the answer (pure: no I/O).

The container HEALTHCHECK and the Kubernetes/compose probes run inside the daemon's own
container, so they must find the API where the effective config puts it, not at a port
written into the image: a wildcard bind is probed on loopback, a unix socket through the
socket.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"


@dataclass(frozen=True)
class ProbeTarget:
    """Where to send the probe: a TCP host and port, or a unix socket path."""

    path: str
    host: str = ""
    port: int = 0
    unix_socket: str = ""

    def describe(self) -> str:
        if self.unix_socket:
            return f"unix:{self.unix_socket}:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


def probe_target(bind: str, port: int, unix_socket: str, *, ready: bool) -> ProbeTarget:
    """The address `serve` answers on for this API config (`api.enabled` is checked first)."""
    path = READY_PATH if ready else HEALTH_PATH
    if unix_socket:
        return ProbeTarget(path=path, unix_socket=unix_socket)
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:  # a host name: ask it as `serve` resolved it
        return ProbeTarget(path=path, host=bind, port=port)
    if address.is_unspecified:  # 0.0.0.0 or ::, every address: ask the loopback one
        return ProbeTarget(
            path=path, host="::1" if address.version == 6 else "127.0.0.1", port=port
        )
    return ProbeTarget(path=path, host=bind, port=port)


def read_answer(target: ProbeTarget, status: int, body: bytes) -> Verdict:
    """200 is healthy; anything else is not, with what the daemon said about it."""
    where = target.describe()
    if status == 200:
        return Verdict(True, f"{where} answered 200{_detail(body)}")
    return Verdict(False, f"{where} answered {status}{_detail(body)}")


def _detail(body: bytes) -> str:
    """The useful part of /healthz or /readyz's JSON, on the same line."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return ""
    if not isinstance(document, dict):
        return ""
    age = document.get("last_tick_age_seconds")
    if isinstance(age, int | float) and not isinstance(age, bool):
        return f" (last tick {age:.1f} s ago)"
    checks = document.get("checks")
    if isinstance(checks, dict):
        failed = [
            f"{name}: {check.get('error')}"
            for name, check in checks.items()
            if isinstance(check, dict) and not check.get("ok")
        ]
        if failed:
            return " (" + "; ".join(failed) + ")"
    return ""
