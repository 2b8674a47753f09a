"""The CLI's read and write commands against awkward storage: a read-only mount, a database
that does not exist, and many registrations at once on one SQLite file."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from tests.acceptance.conftest import BIN, VAULT, Daemon
from tests.acceptance.test_serve_hardening import small_disk

__all__ = ["small_disk"]  # the fixture, used by name below


def test_read_commands_work_on_a_read_only_mount(daemon: Daemon, small_disk: Path) -> None:
    daemon.env["BACKUPJOBD_DATABASE__URL"] = f"sqlite+aiosqlite:///{small_disk}/backupjobd.db"
    job_id = str(uuid.uuid4())
    daemon.ok("register", "--job", f"{VAULT}/backupJobs/{job_id}")
    remount = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_disk)], capture_output=True, text=True, check=False
    )
    assert remount.returncode == 0, remount.stderr
    assert [j["job_id"] for j in daemon.jobs()] == [job_id]
    assert json.loads(daemon.ok("jobs", "show", job_id, "--json"))["job_id"] == job_id
    assert daemon.history(job_id)["job"]["job_id"] == job_id
    assert daemon.operations() == []
    daemon.ok("notify", "failed")
    # A write says why it cannot, in one line.
    out = daemon.cli("register", "--job", f"{VAULT}/backupJobs/{uuid.uuid4()}")
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_read_command_never_creates_a_database(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.db"
    daemon.env["BACKUPJOBD_DATABASE__URL"] = f"sqlite+aiosqlite:///{path}"
    for command in (["jobs", "list"], ["jobs", "show", str(uuid.uuid4())], ["operations", "list"]):
        out = daemon.cli(*command)
        assert out.returncode == 1, out
        assert out.stderr.strip() == (
            f"backupjobd: error: database {path} does not exist "
            "(check database.url; serve or register creates it); database.url: env"
            f" BACKUPJOBD_DATABASE__URL; config file {daemon.config_path}"
        )
    assert not path.exists()


def test_parallel_registrations_wait_for_each_other(daemon: Daemon) -> None:
    """Ten `register -` of 1,000 jobs each at once with a 200 ms busy timeout: the SQLite
    write lock is taken in turn (each waits within a bound) instead of failing with
    "database is locked" (the audit's 10 x 3,000 jobs against the 5 s default, cheaper)."""
    daemon.env["BACKUPJOBD_DATABASE__BUSY_TIMEOUT_MS"] = "200"
    daemon.ok("migrate")
    batches = [
        json.dumps([f"{VAULT}/backupJobs/{uuid.uuid4()}" for _ in range(1000)])
        for _ in range(10)
    ]
    procs = [
        subprocess.Popen(
            [str(BIN), "--config", str(daemon.config_path), "register", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=daemon.env,
            text=True,
        )
        for _ in batches
    ]
    for proc, batch in zip(procs, batches, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(batch)
        proc.stdin.close()
    failures = []
    for proc in procs:
        assert proc.stderr is not None
        code = proc.wait(timeout=120)
        error = proc.stderr.read()
        if code != 0:
            failures.append(error.strip())
    assert failures == []
    assert len(daemon.jobs()) == 10_000
