"""Acceptance fixtures: the real `backupjobd` executable (serve, register, jobs …) as
subprocesses against the bundled emulator, also a subprocess, over loopback HTTP."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from backupjobd.emulator import EmulatorProcess
from backupjobd.emulator import client as emulator_client

BIN = Path(sys.executable).parent / "backupjobd"
TOKEN = "acceptance-token"
VAULT = (
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg-accept"
    "/providers/Microsoft.RecoveryServices/vaults/vault-accept"
)
TERMINAL = {"Completed", "CompletedWithWarnings", "Failed", "Cancelled"}
# The fields of `jobs list/show --json` that the contract in design.md promises.
CONTRACT_FIELDS = {
    "job_id",
    "vault_id",
    "status",
    "job_type",
    "operation",
    "entity_friendly_name",
    "start_time",
    "end_time",
    "finished",
    "registered_at",
    "last_polled_at",
    "poll_count",
}
T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    """Poll a condition until it holds; fail the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# The shared emulator client, under the names the acceptance tests use.
free_port = emulator_client.free_port
_listening = emulator_client.listening
http = emulator_client.request
#: The emulator subprocess: its jobs and operations default to VAULT, ARM calls carry TOKEN.
Emulator = EmulatorProcess


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "emulator.log", token=TOKEN, vault_id=VAULT, executable=BIN) as emu:
        yield emu


@dataclass
class Daemon:
    """The configured daemon and its CLI, sharing one config file and SQLite database."""

    config_path: Path
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    cpu_seconds: float = 0.0
    starts: int = 0
    _logs: list[Any] = field(default_factory=list)

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._logs.append(log)
        self.process = subprocess.Popen(
            [str(BIN), "--config", str(self.config_path), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        self.starts += 1

    def _account_cpu(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.cpu_seconds += process_cpu_seconds(self.process.pid)

    def kill9(self) -> None:
        assert self.process is not None
        self._account_cpu()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20) -> int:
        assert self.process is not None
        self._account_cpu()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN), "--config", str(self.config_path), *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ok(self, *args: str, stdin: str | None = None) -> str:
        out = self.cli(*args, stdin=stdin)
        assert out.returncode == 0, f"backupjobd {' '.join(args)}: {out.stderr}"
        return out.stdout

    def jobs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("jobs", "list", "--json")))

    def operations(self) -> list[dict[str, Any]]:
        return list(json.loads(self.ok("operations", "list", "--json")))

    def history(self, job_id: str) -> dict[str, Any]:
        return dict(json.loads(self.ok("jobs", "history", job_id, "--json")))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        for log in self._logs:
            log.close()


@pytest.fixture
def daemon(tmp_path: Path, emulator: Emulator) -> Iterator[Daemon]:
    config_path = tmp_path / "backupjobd.toml"
    config_path.write_text(
        f"""
[azure]
management_endpoint = "{emulator.base}"
credential = "static-token"

[database]
url = "sqlite+aiosqlite:///{tmp_path}/backupjobd.db"

[polling]
interval_seconds = 1
min_interval_seconds = 0.5
operation_interval_seconds = 0.5
tick_seconds = 0.25
not_found_grace_seconds = 20
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}
    env["BACKUPJOBD_STATIC_TOKEN"] = TOKEN
    d = Daemon(config_path, env, tmp_path / "daemon.log")
    try:
        yield d
    finally:
        d.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def assert_clean_chain(history: dict[str, Any], final: str) -> list[str]:
    """Transitions form one chain from null to `final`, with no repeats; returns the statuses."""
    transitions = history["transitions"]
    assert transitions, f"no transitions for {history['job']['job_id']}"
    assert transitions[0]["from_status"] is None
    for prev, nxt in itertools.pairwise(transitions):
        assert nxt["from_status"] == prev["to_status"], transitions
        assert nxt["to_status"] != nxt["from_status"], transitions
    statuses = [t["to_status"] for t in transitions]
    assert statuses[-1] == final, (history["job"]["job_id"], statuses)
    assert len(set(statuses)) == len(statuses), f"repeated status in {statuses}"
    return statuses
