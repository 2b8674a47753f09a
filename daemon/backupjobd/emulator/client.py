"""Drive the emulator from plain synchronous code: `backupjobd emulator` as a subprocess on
a free port, and a small client of its admin and ARM APIs.

The acceptance tests, bench and the demo all start the same executable and set the same
scenes; one copy keeps their start-up bounded and their failures readable. The client uses
the standard library only (urllib), so no event loop is needed to call it.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, NoReturn, Self
from urllib.parse import quote

logger = logging.getLogger(__name__)

#: The `backupjobd` console script next to the running interpreter (the virtualenv's).
DEFAULT_EXECUTABLE: Final = Path(sys.executable).parent / "backupjobd"
LOOPBACK: Final = "127.0.0.1"
#: Jobs per admin request; the admin API takes up to 10,000, smaller keeps each call short.
JOBS_PER_REQUEST: Final = 1_000

#: (HTTP status, response headers, JSON body or None when the body is empty).
Answer = tuple[int, dict[str, str], Any]


class EmulatorStartError(RuntimeError):
    """The emulator exited or did not listen in time; the message ends with its log."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on right now, for a process started next."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening(port: int, host: str = LOOPBACK) -> bool:
    """Whether something accepts connections on the port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def request(
    method: str, url: str, body: Any = None, token: str | None = None, *, timeout: float = 30.0
) -> Answer:
    """One HTTP call with a JSON body. A 4xx or 5xx raises ``urllib.error.HTTPError``: the
    callers set up scenes, and a refused one should stop them at once."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
        return int(resp.status), dict(resp.headers), json.loads(raw) if raw else None


class EmulatorClient:
    """The admin API (/admin/*) and ARM calls of one emulator at ``base``.

    ``token`` goes with ARM calls; ``vault_id``, when set, is the vault of jobs and operations
    whose spec names none.
    """

    def __init__(
        self,
        base: str,
        *,
        token: str | None = None,
        vault_id: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.vault_id = vault_id
        self.timeout = timeout

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of an admin call."""
        return request(method, self.base + path, body, timeout=self.timeout)[2]

    def arm(self, method: str, target: str, body: Any = None) -> Answer:
        """An ARM call with the bearer token; ``target`` is a path or a URL the emulator gave."""
        url = target if target.startswith(("http://", "https://")) else self.base + target
        return request(method, url, body, self.token, timeout=self.timeout)

    def arm_get(self, target: str) -> Answer:
        return self.arm("GET", target)

    def arm_post(self, target: str, body: Any = None) -> Answer:
        """ARM's POST actions (cancel, backup) take a JSON object, empty by default."""
        return self.arm("POST", target, {} if body is None else body)

    def create_jobs(
        self, specs: Iterable[Mapping[str, Any]], *, chunk: int = JOBS_PER_REQUEST
    ) -> list[dict[str, Any]]:
        """Create jobs from admin specs; their ``job_id``, ``vault_id`` and ``id`` in order."""
        items = [self._in_vault(spec) for spec in specs]
        created: list[dict[str, Any]] = []
        for start in range(0, len(items), chunk):
            created.extend(self.admin("POST", "/admin/jobs", items[start : start + chunk])["jobs"])
        return created

    def create_operation(self, **spec: Any) -> dict[str, Any]:
        """An async operation: its URLs (``azure_async_operation``, ``location``), job ids."""
        return dict(self.admin("POST", "/admin/operations", self._in_vault(spec)))

    def add_fault(self, **fault: Any) -> dict[str, Any]:
        """Queue a fault (``kind``, ``count``, ...) or, with ``kind="random"``, set a rate."""
        return dict(self.admin("POST", "/admin/faults", fault))

    def stats(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/admin/stats"))

    def config(self) -> dict[str, Any]:
        return dict(self.admin("GET", "/admin/config"))

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change ``read_burst``, ``read_refill_per_second``, ``read_others_per_second`` (reads
        other clients take from every subscription's budget) or ``page_size`` at run time."""
        return dict(self.admin("POST", "/admin/config", settings))

    def truth(self, job_id: str, vault_id: str | None = None) -> dict[str, Any]:
        """What the emulator knows of a job (``final_status``, ``status``), seen or not."""
        query = f"?vault_id={quote(vault_id, safe='')}" if vault_id else ""
        return dict(self.admin("GET", f"/admin/jobs/{quote(job_id, safe='')}{query}"))

    def reset(self) -> None:
        self.admin("POST", "/admin/reset")

    def _in_vault(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        return {"vault_id": self.vault_id, **spec} if self.vault_id else dict(spec)


class EmulatorProcess(EmulatorClient):
    """`backupjobd emulator` in its own process on a free loopback port; a context manager.

    Starting waits (at most ``start_timeout`` seconds) until the port accepts connections,
    so a caller never races the emulator's start; its output goes to ``log_path``.
    """

    def __init__(
        self,
        log_path: Path,
        *,
        token: str | None = None,
        vault_id: str | None = None,
        replay_files: Iterable[str | Path] = (),
        executable: str | Path = DEFAULT_EXECUTABLE,
        start_timeout: float = 20.0,
        timeout: float = 30.0,
    ) -> None:
        self.port = free_port()
        super().__init__(
            f"http://{LOOPBACK}:{self.port}", token=token, vault_id=vault_id, timeout=timeout
        )
        self.log_path = Path(log_path)
        self.replay_files = tuple(replay_files)
        self.executable = Path(executable)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the emulator is not started")
        return self.process.pid

    def command(self) -> list[str]:
        cmd = [str(self.executable), "emulator", "--host", LOOPBACK, "--port", str(self.port)]
        if self.token is not None:
            cmd += ["--token", self.token]
        for path in self.replay_files:
            cmd += ["--replay", str(path)]
        return cmd

    def start(self) -> Self:
        """Start the process and wait until it listens; on failure it is stopped again."""
        if self.process is not None:
            return self
        self._log = self.log_path.open("wb")
        self.process = proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.start_timeout
        while not listening(self.port) and proc.poll() is None:
            if time.monotonic() > deadline:
                self._fail(f"did not listen on port {self.port} in {self.start_timeout:g} s")
            time.sleep(0.1)
        if proc.poll() is not None:
            self._fail(f"exited with code {proc.returncode}")
        logger.debug("emulator pid %d listening on %s", proc.pid, self.base)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it is still running after ``timeout`` seconds."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def _fail(self, what: str) -> NoReturn:
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2_000:]
        raise EmulatorStartError(f"backupjobd emulator {what}; its log:\n{tail}")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
