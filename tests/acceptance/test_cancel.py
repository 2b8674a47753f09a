"""`backupjobd cancel` asks Azure to cancel, follows the 202, and the daemon records the end."""

from __future__ import annotations

from tests.acceptance.conftest import Daemon, Emulator, wait_until


def test_cancel_a_running_job_then_the_daemon_records_cancelled(
    emulator: Emulator, daemon: Daemon
) -> None:
    job = emulator.create_jobs([{"duration_seconds": 120}])[0]
    daemon.ok("register", "--job", job["id"])
    daemon.start()
    wait_until(
        "the job to be seen in progress",
        lambda: daemon.jobs()[0]["status"] == "InProgress",
        30,
    )
    out = daemon.ok("cancel", job["job_id"])
    assert "cancel of job" in out and job["job_id"] in out
    wait_until("the job to be finished", lambda: daemon.jobs()[0]["finished"], 30)
    assert daemon.stop() == 0
    history = daemon.history(job["job_id"])
    statuses = [t["to_status"] for t in history["transitions"]]
    assert statuses[0] == "InProgress" and statuses[-1] == "Cancelled", statuses
    assert emulator.stats()["by_kind"].get("cancel") == 1


def test_cancel_of_an_untracked_job_is_refused(daemon: Daemon) -> None:
    daemon.ok("migrate")
    out = daemon.cli("cancel", "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e")
    assert out.returncode == 2 and "not tracked" in out.stderr
