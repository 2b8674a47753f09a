"""The real daemon process against the emulator: jobs registered in every form reach their
true final status, and a `kill -9` mid-run loses nothing and duplicates nothing."""

from __future__ import annotations

import json
from typing import Any

from tests.acceptance.conftest import (
    CONTRACT_FIELDS,
    TERMINAL,
    VAULT,
    Daemon,
    Emulator,
    assert_clean_chain,
    wait_until,
)

FINALS = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]


def _specs(n: int, offset: int, base_duration: float, **extra: Any) -> list[dict[str, Any]]:
    return [
        {
            "final_status": FINALS[(offset + i) % len(FINALS)],
            "duration_seconds": base_duration + (offset + i) % 5,
            **extra,
        }
        for i in range(n)
    ]


def _register_fifty(emulator: Emulator, daemon: Daemon) -> set[str]:
    """50 jobs, every registration form of the brief; returns their ids."""
    ids: set[str] = set()
    # 10 by job ARM id, in one call
    jobs = emulator.create_jobs(_specs(10, 0, 3))
    daemon.ok("register", *[arg for j in jobs for arg in ("--job", j["id"])])
    ids |= {j["job_id"] for j in jobs}
    # 10 by job id + vault (two of them answer 404 for a while)
    jobs = emulator.create_jobs(_specs(8, 1, 3) + _specs(2, 2, 3, not_found_seconds=2))
    daemon.ok("register", "--vault", VAULT, *[a for j in jobs for a in ("--job-id", j["job_id"])])
    ids |= {j["job_id"] for j in jobs}
    # 8 by Azure-AsyncOperation URL: the daemon resolves each operation itself
    for i in range(8):
        op = emulator.create_operation(delay_seconds=1, job_count=1, jobs=_specs(1, i, 3)[0])
        daemon.ok("register", "--operation-url", op["azure_async_operation"])
        ids |= set(op["job_ids"])
    # 4 from final operation-status bodies (jobId and jobIds) on stdin, vault from --vault
    for count in (1, 1, 2):
        op = emulator.create_operation(
            delay_seconds=0, job_count=count, jobs=_specs(1, count, 3)[0]
        )
        path = op["azure_async_operation"].removeprefix(emulator.base)
        body = wait_until(
            "the operation to succeed",
            lambda path=path: (b := emulator.arm_get(path)[2]) and b["status"] == "Succeeded" and b,
            10,
        )
        daemon.ok("register", "-", "--vault", VAULT, stdin=json.dumps(body))
        ids |= set(op["job_ids"])
    # 6 from JobResource bodies, one JSON array on stdin
    jobs = emulator.create_jobs(_specs(6, 3, 3))
    bodies = [emulator.arm_get(f"{j['id']}?api-version=2025-08-01")[2] for j in jobs]
    daemon.ok("register", "-", stdin=json.dumps(bodies))
    ids |= {j["job_id"] for j in jobs}
    # 6 from 202 trigger-backup response headers
    for i in range(6):
        item = (
            f"{VAULT}/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;"
            f"rg;vm{i}/protectedItems/VM;iaasvmcontainerv2;rg;vm{i}/backup?api-version=2025-08-01"
        )
        _, headers, _ = emulator.arm_post(item)
        daemon.ok("register", "-", stdin=json.dumps({"headers": headers}))
    # 6 from {"job_id", "vault_id"} documents
    jobs = emulator.create_jobs(_specs(6, 0, 3))
    docs = [{"job_id": j["job_id"].upper(), "vault_id": VAULT.lower()} for j in jobs]
    daemon.ok("register", "-", stdin=json.dumps(docs))
    ids |= {j["job_id"] for j in jobs}
    return ids


def test_fifty_jobs_registered_in_every_form_reach_their_true_final_status(
    emulator: Emulator, daemon: Daemon
) -> None:
    daemon.start()
    expected_ids = _register_fifty(emulator, daemon)

    def all_done() -> list[dict[str, Any]] | None:
        jobs = daemon.jobs()
        ops_pending = any(o["tracking"] == "active" for o in daemon.operations())
        return (
            jobs
            if len(jobs) == 50 and not ops_pending and all(j["finished"] for j in jobs)
            else None
        )

    jobs = wait_until("50 jobs to finish", all_done, 120, every=0.5)
    assert daemon.stop() == 0

    assert expected_ids <= {j["job_id"] for j in jobs}
    polls = 0
    for job in jobs:
        assert job.keys() >= CONTRACT_FIELDS
        truth = emulator.truth(job["job_id"])
        assert job["status"] == truth["final_status"] == truth["status"], job
        assert job["status"] in TERMINAL
        assert job["end_time"] is not None
        statuses = assert_clean_chain(daemon.history(job["job_id"]), job["status"])
        assert statuses in (["InProgress", job["status"]], [job["status"]]), statuses
        polls += job["poll_count"]
    sources = {j["source"] for j in jobs}
    assert sources == {
        "job-arm-id",
        "job-id",
        "operation",
        "operation-status",
        "job-resource",
    }, sources
    print(
        f"\n50 jobs: {polls} job polls ({polls / 50:.1f} per job), "
        f"daemon CPU {daemon.cpu_seconds:.2f} s"
    )


def test_kill_9_mid_run_then_restart_loses_and_duplicates_nothing(
    emulator: Emulator, daemon: Daemon
) -> None:
    # Long enough to be seen running even when the machine is busy (registering and
    # starting take a few seconds there).
    jobs = emulator.create_jobs(_specs(30, 0, 15))
    daemon.ok("register", *[arg for j in jobs for arg in ("--job", j["id"])])
    ops = [
        emulator.create_operation(delay_seconds=3, job_count=2, jobs=_specs(1, i, 15)[0])
        for i in range(3)
    ]
    for op in ops:
        daemon.ok("register", "--operation-url", op["azure_async_operation"])
    daemon.start()
    wait_until(
        "a first wave of transitions",
        lambda: sum(1 for j in daemon.jobs() if j["status"] == "InProgress") >= 20,
        30,
    )
    daemon.kill9()
    before = {j["job_id"]: j for j in daemon.jobs()}
    assert any(not j["finished"] for j in before.values())

    daemon.start()
    wait_until(
        "every job to finish after the restart",
        lambda: (js := daemon.jobs()) and len(js) == 36 and all(j["finished"] for j in js),
        90,
        every=0.5,
    )
    assert daemon.stop() == 0
    for job in daemon.jobs():
        truth = emulator.truth(job["job_id"])
        assert job["status"] == truth["final_status"]
        statuses = assert_clean_chain(daemon.history(job["job_id"]), job["status"])
        assert statuses == ["InProgress", job["status"]], (job["job_id"], statuses)
        if job["job_id"] in before:
            assert job["poll_count"] >= before[job["job_id"]]["poll_count"]
    assert "resuming" in daemon.log_text()


def test_bad_input_is_refused_with_one_line_and_exit_2_and_stores_nothing(
    emulator: Emulator, daemon: Daemon
) -> None:
    daemon.ok("migrate")  # read commands refuse a database that does not exist (exit 1)
    foreign = "https://attacker.example.com" + VAULT + "/backupOperations/abc?api-version=1"
    cases: list[tuple[list[str], str | None]] = [
        (["register", "-"], "{not json"),
        (["register", "-"], "[]"),
        (["register", "-"], '{"hello": "world"}'),
        (["register", "--job-id", "not-a-guid", "--vault", VAULT], None),
        (["register", "--job-id", "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"], None),
        (["register", "--job", VAULT + "/backupJobs/../../x"], None),
        (
            [
                "register",
                "--vault",
                VAULT.replace("vault-accept", "v/../x"),
                "--job-id",
                "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e",
            ],
            None,
        ),
        (["register", "--operation-url", foreign], None),
        (
            [
                "register",
                "--operation-url",
                emulator.base.replace("127.0.0.1", "localhost") + VAULT + "/backupOperations/abc",
            ],
            None,
        ),
        (
            ["register", "-"],
            json.dumps(
                {
                    "status": "Failed",
                    "error": {"code": "X", "message": "m"},
                    "properties": {"objectType": "OperationStatusJobExtendedInfo"},
                }
            ),
        ),
        (
            ["register", "-"],
            json.dumps(
                [
                    {"job_id": "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e", "vault_id": VAULT},
                    {"job_id": "nope", "vault_id": VAULT},
                ]
            ),
        ),
        (["register"], None),
        (["jobs", "show", "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"], None),
        (["no-such-command"], None),
    ]
    for args, stdin in cases:
        out = daemon.cli(*args, stdin=stdin)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        lines = [line for line in out.stderr.splitlines() if line.strip()]
        assert lines and "error" in lines[-1], (args, out.stderr)
        assert "Traceback" not in out.stderr
        if args[0] == "register":
            assert len(lines) == 1, (args, out.stderr)
    assert daemon.jobs() == []
    assert daemon.operations() == []


def test_sigterm_drains_and_exits_0(emulator: Emulator, daemon: Daemon) -> None:
    jobs = emulator.create_jobs(_specs(5, 0, 30))
    daemon.ok("register", *[arg for j in jobs for arg in ("--job", j["id"])])
    daemon.start()
    wait_until(
        "the jobs to be seen in progress",
        lambda: all(j["status"] == "InProgress" for j in daemon.jobs()),
        30,
    )
    assert daemon.stop() == 0
    assert "stopped cleanly" in daemon.log_text()
    show = json.loads(daemon.ok("jobs", "show", jobs[0]["job_id"], "--json"))
    assert show["status"] == "InProgress" and show["finished"] is False
    assert show.keys() >= CONTRACT_FIELDS
