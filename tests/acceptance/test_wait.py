"""`backupjobd wait` as a real process against the emulator process: exit codes by final
status, the worst of several, --json, --timeout, lost jobs, bad input, and with a daemon
running (then it only reads the database the daemon writes)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.acceptance.conftest import (
    BIN,
    CONTRACT_FIELDS,
    VAULT,
    Daemon,
    Emulator,
    assert_clean_chain,
    wait_until,
)

EXIT_BY_STATUS = {"Completed": 0, "CompletedWithWarnings": 3, "Failed": 4, "Cancelled": 5}
SELF_POLLING = "polling the jobs myself"
WAIT_LIMIT_S = 45


def start_wait(daemon: Daemon, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN), "--config", str(daemon.config_path), "wait", *args],
        env=daemon.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT_LIMIT_S)
    return proc.returncode, out, err


def run_wait(daemon: Daemon, *args: str) -> tuple[int, str, str]:
    return finish(start_wait(daemon, *args))


def job_by_id(daemon: Daemon, job_id: str) -> dict[str, Any]:
    return dict(json.loads(daemon.ok("jobs", "show", job_id, "--json")))


def set_polling_key(daemon: Daemon, key: str, value: str) -> None:
    text = daemon.config_path.read_text()
    text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    assert count == 1, f"{key} is not in {daemon.config_path}"
    daemon.config_path.write_text(text)


def live_instances(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM instances WHERE stopped_at IS NULL").fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return 0
    return int(row[0])


# --------------------------------------------------------------------------- no daemon


def test_each_final_status_has_its_exit_code(emulator: Emulator, daemon: Daemon) -> None:
    finals = list(EXIT_BY_STATUS)
    jobs = emulator.create_jobs([{"final_status": s, "duration_seconds": 2} for s in finals])
    procs = [start_wait(daemon, job["job_id"], "--vault", VAULT) for job in jobs]
    results = [finish(p) for p in procs]
    for job, final, (code, out, err) in zip(jobs, finals, results, strict=True):
        assert code == EXIT_BY_STATUS[final], (final, out, err)
        assert SELF_POLLING in err
        assert f"job {job['job_id']}: {final}" in out
        # Four processes starting at once may first see the job already finished.
        assert_clean_chain(daemon.history(job["job_id"]), final)
        shown = job_by_id(daemon, job["job_id"])
        assert shown["finished"] is True
        assert shown["status"] == final == emulator.truth(job["job_id"])["status"]
        assert shown["end_time"] is not None
    # Waiting again on finished jobs answers at once with the worst: Failed.
    code, out, err = run_wait(daemon, *(job["job_id"] for job in jobs))
    assert code == EXIT_BY_STATUS["Failed"], (out, err)
    assert len([line for line in out.splitlines() if line.startswith("job ")]) == len(jobs)


def test_a_failed_job_says_why_in_wait_and_show(emulator: Emulator, daemon: Daemon) -> None:
    """Azure's errorDetails: printed by `wait` under the job, in `jobs show`, in `--json`."""
    [job] = emulator.create_jobs([{"final_status": "Failed", "duration_seconds": 2}])
    code, out, err = run_wait(daemon, job["job_id"], "--vault", VAULT)
    assert code == EXIT_BY_STATUS["Failed"], (out, err)
    lines = out.splitlines()
    assert lines[0] == f"job {job['job_id']}: Failed"
    assert lines[1] == (
        "  error: 400239: Backup failed as the snapshot transfer to the vault timed out."
    )
    assert lines[2] == "  recommendation: Retry the backup operation after some time."
    shown = daemon.ok("jobs", "show", job["job_id"])
    assert "error:                  400239: Backup failed as the snapshot" in shown
    [details] = [job_by_id(daemon, job["job_id"])["error_details"]]
    assert details == [
        {
            "code": "400239",
            "message": "Backup failed as the snapshot transfer to the vault timed out.",
            "recommendations": ["Retry the backup operation after some time."],
        }
    ]


def test_several_jobs_give_the_worst_code_and_json(emulator: Emulator, daemon: Daemon) -> None:
    specs = [
        {"final_status": "Completed", "duration_seconds": 1},
        {"final_status": "Cancelled", "duration_seconds": 3},
        {"final_status": "CompletedWithWarnings", "duration_seconds": 2},
    ]
    jobs = emulator.create_jobs(specs)
    code, out, err = run_wait(daemon, *(job["id"] for job in jobs), "--json")  # ARM ids
    assert code == EXIT_BY_STATUS["Cancelled"], (out, err)
    printed = json.loads(out)
    assert [p["job_id"] for p in printed] == [job["job_id"] for job in jobs]
    for item, spec in zip(printed, specs, strict=True):
        assert set(item) >= CONTRACT_FIELDS, CONTRACT_FIELDS - set(item)
        assert item["status"] == spec["final_status"]
        assert item["finished"] is True
        assert item["vault_id"].lower() == VAULT.lower()
        assert item["operation"] == "Backup" and item["job_type"] == "AzureIaaSVMJob"
        assert item["end_time"] is not None and item["poll_count"] >= 1
        assert_clean_chain(daemon.history(item["job_id"]), spec["final_status"])


def test_timeout_exits_124_and_the_job_stays_tracked(emulator: Emulator, daemon: Daemon) -> None:
    [job] = emulator.create_jobs([{"final_status": "Completed", "duration_seconds": 6}])
    started = time.monotonic()
    code, out, err = run_wait(daemon, job["job_id"], "--vault", VAULT, "--timeout", "1")
    assert code == 124, (out, err)
    assert time.monotonic() - started < 5.5
    assert "timed out after 1 s waiting for 1 job(s)" in err
    assert f"job {job['job_id']}: InProgress (still running: timed out waiting)" in out
    shown = job_by_id(daemon, job["job_id"])
    assert shown["finished"] is False
    assert shown["tracking"] == "active"
    assert shown["status"] == "InProgress"
    # A later wait (the job is tracked now: no --vault needed) sees it through.
    code, out, err = run_wait(daemon, job["job_id"])
    assert code == 0, (out, err)
    statuses = assert_clean_chain(daemon.history(job["job_id"]), "Completed")
    assert statuses == ["InProgress", "Completed"]


def test_a_job_azure_never_knows_is_lost(emulator: Emulator, daemon: Daemon) -> None:
    set_polling_key(daemon, "not_found_grace_seconds", "1")
    ghost = str(uuid.uuid4())
    code, out, err = run_wait(daemon, ghost, "--vault", VAULT)
    assert code == 6, (out, err)
    assert f"job {ghost}: lost" in out
    shown = job_by_id(daemon, ghost)
    assert shown["tracking"] == "lost"
    assert shown["finished"] is False
    assert shown["last_error"]
    assert daemon.history(ghost)["transitions"] == []
    # A lost job among finished ones is the worst outcome but a timeout.
    [done] = emulator.create_jobs([{"final_status": "Failed", "duration_seconds": 0}])
    code, out, err = run_wait(daemon, done["job_id"], ghost, "--vault", VAULT)
    assert code == 6, (out, err)


def test_an_untracked_guid_without_a_vault_is_refused(emulator: Emulator, daemon: Daemon) -> None:
    [job] = emulator.create_jobs([{"final_status": "Completed", "duration_seconds": 1}])
    code, out, err = run_wait(daemon, job["job_id"])
    assert code == 2, (out, err)
    assert "not tracked" in err and "--vault" in err
    assert len(err.strip().splitlines()) == 1
    assert daemon.jobs() == []
    code, out, err = run_wait(daemon, "not-a-guid/../x", "--vault", VAULT)
    assert code == 2, (out, err)
    assert daemon.jobs() == []


# --------------------------------------------------------------------------- with a daemon


def test_with_a_daemon_running_wait_only_watches(
    emulator: Emulator, daemon: Daemon, tmp_path: Path
) -> None:
    daemon.start()
    wait_until("the daemon's heartbeat", lambda: live_instances(tmp_path / "backupjobd.db"), 20)
    [job] = emulator.create_jobs([{"final_status": "CompletedWithWarnings", "duration_seconds": 2}])
    code, out, err = run_wait(daemon, job["job_id"], "--vault", VAULT, "--timeout", "30")
    assert code == 3, (out, err)
    assert SELF_POLLING not in err
    assert f"job {job['job_id']}: CompletedWithWarnings" in out
    assert_clean_chain(daemon.history(job["job_id"]), "CompletedWithWarnings")
    # Its last state change says it finished (the first may already be the final one).
    finished = rf"job {job['job_id']} Backup: \S+ -> CompletedWithWarnings \(finished\)"
    assert re.search(finished, daemon.log_text())
    assert daemon.stop() == 0
    assert live_instances(tmp_path / "backupjobd.db") == 0


def test_wait_on_an_operation_waits_for_the_jobs_it_names(
    emulator: Emulator, daemon: Daemon
) -> None:
    """`wait OP_ID` with the id `register` printed: no daemon runs, so wait polls the
    operation until it names its job, then the job to its end."""
    op = emulator.create_operation(
        delay_seconds=1, job_count=1, jobs={"final_status": "Failed", "duration_seconds": 2}
    )
    [registered] = json.loads(
        daemon.ok("register", "--operation-url", op["azure_async_operation"], "--json")
    )
    assert registered["kind"] == "operation" and registered["new"] is True
    code, out, err = run_wait(daemon, registered["id"], "--timeout", "60")
    assert code == EXIT_BY_STATUS["Failed"], (out, err)
    [job_id] = op["job_ids"]
    assert out.splitlines()[0] == f"job {job_id}: Failed"
    assert job_by_id(daemon, job_id)["operation_id"] == registered["id"]


def test_wait_on_a_rejected_trigger_fails_with_the_operation_s_error(
    emulator: Emulator, daemon: Daemon
) -> None:
    op = emulator.create_operation(delay_seconds=1, result="Failed")
    [registered] = json.loads(
        daemon.ok("register", "--operation-url", op["azure_async_operation"], "--json")
    )
    code, out, err = run_wait(daemon, registered["id"], "--timeout", "60")
    assert code == EXIT_BY_STATUS["Failed"], (out, err)
    lines = out.splitlines()
    assert lines[0] == f"operation {registered['id']}: Failed"
    assert lines[1].startswith("  error: ")


def test_register_wait_registers_and_waits_in_one_call(emulator: Emulator, daemon: Daemon) -> None:
    """For scripts: the 202's operation URL in, the job's exit code out."""
    op = emulator.create_operation(
        delay_seconds=1, job_count=1, jobs={"final_status": "Cancelled", "duration_seconds": 2}
    )
    out = daemon.cli(
        "register", "--operation-url", op["azure_async_operation"], "--wait", "--timeout", "60"
    )
    assert out.returncode == EXIT_BY_STATUS["Cancelled"], out
    [job_id] = op["job_ids"]
    assert out.stdout.splitlines()[0] == f"job {job_id}: Cancelled"
    [job] = emulator.create_jobs([{"final_status": "Completed", "duration_seconds": 1}])
    out = daemon.cli("register", "--job", job["id"], "--wait", "--json")
    assert out.returncode == 0, out
    assert [j["status"] for j in json.loads(out.stdout)] == ["Completed"]
