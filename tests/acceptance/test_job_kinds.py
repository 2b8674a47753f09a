"""The real daemon follows a mix of all three kinds of Azure Backup job through a kill -9:
Recovery Services vault jobs, Backup vault (Microsoft.DataProtection) jobs and
cross-region-restore jobs, each registered in every form of the contract, from the bundled
emulator over loopback HTTP. After the restart every job ends with its true final status and
one clean chain of statuses, and `wait` gives each kind's exit code."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

from tests.acceptance.conftest import (
    BIN,
    VAULT,
    Daemon,
    Emulator,
    assert_clean_chain,
    wait_until,
)

SUB = VAULT.split("/")[2]
BACKUP_VAULT = (
    f"/subscriptions/{SUB}/resourceGroups/rg-accept/providers/Microsoft.DataProtection"
    "/backupVaults/bv-accept"
)
REGION = "northeurope"


def _planned(n: int, vault: str, seconds: float, **extra: str) -> list[dict[str, Any]]:
    """Admin specs of `n` jobs with their ids chosen here, and (`id`) their ARM ids: under
    the vault, or location-scoped for a cross-region restore's (`region`)."""
    out = []
    for i in range(n):
        job_id = str(uuid.uuid4())
        region = extra.get("region")
        arm_id = (
            f"/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/{region}"
            f"/backupJobs/{job_id}"
            if region
            else f"{vault}/backupJobs/{job_id}"
        )
        spec = {"vault_id": vault, "job_id": job_id, "duration_seconds": seconds + i % 3}
        out.append({**spec, **extra, "id": arm_id})
    return out


def registering(calls: list[tuple[list[str], str | None]], daemon: Daemon) -> None:
    procs = [
        (
            subprocess.Popen(
                [str(BIN), "--config", str(daemon.config_path), *argv],
                env=daemon.env,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            ),
            stdin,
        )
        for argv, stdin in calls
    ]
    for proc, stdin in procs:
        _, err = proc.communicate(stdin or "", timeout=60)
        assert proc.returncode == 0, err


def test_a_mix_of_every_kind_survives_kill_9(emulator: Emulator, daemon: Daemon) -> None:
    # The jobs are registered first (by ids chosen here) and created in the emulator just
    # before the daemon starts, so a busy machine cannot let them end unseen.
    rsv = _planned(4, VAULT, 8)
    bv = _planned(5, BACKUP_VAULT, 8)
    bv_failed = _planned(1, BACKUP_VAULT, 8, final_status="Failed")
    crr = _planned(2, VAULT, 8, region=REGION)
    crr_failed = _planned(1, VAULT, 8, region=REGION, final_status="Failed")
    # Operations still running when the daemon is killed: it must follow them after it.
    bv_op = emulator.create_operation(
        vault_id=BACKUP_VAULT, delay_seconds=4, jobs={"duration_seconds": 3}
    )
    crr_op = emulator.create_operation(
        vault_id=VAULT, region=REGION, delay_seconds=4, jobs={"duration_seconds": 3}
    )
    rsv_op = emulator.create_operation(delay_seconds=4, jobs={"duration_seconds": 3})

    # Every registration form of the new kinds, registered side by side (the store
    # serialises the writes) so that the jobs are still young when the daemon starts.
    info = {"objectType": "OperationJobExtendedInfo", "jobId": bv[4]["job_id"]}
    bv_headers = {
        "Azure-AsyncOperation": bv_op["azure_async_operation"],
        "Location": bv_op["location"],
        "Retry-After": "1",
    }
    crr_headers = {
        "azure-asyncoperation": crr_op["azure_async_operation"],
        "location": crr_op["location"],
    }
    crr_ids = [a for j in crr + crr_failed for a in ("--job", j["id"])]
    registering(
        [
            (["register", *[a for j in rsv for a in ("--job", j["id"])]], None),
            (
                [
                    "register",
                    "--job",
                    bv[0]["id"],
                    "--job",
                    bv[1]["id"],
                    "--job",
                    bv_failed[0]["id"],
                ],
                None,
            ),
            (
                [
                    "register",
                    "--vault",
                    BACKUP_VAULT,
                    "--job-id",
                    bv[2]["job_id"],
                    "--job-id",
                    bv[3]["job_id"],
                ],
                None,
            ),
            (["register", "-", "--vault", BACKUP_VAULT], json.dumps(info)),
            (["register", "-"], json.dumps({"headers": bv_headers})),
            (["register", "--vault", VAULT, *crr_ids], None),
            (["register", "-", "--vault", VAULT], json.dumps({"headers": crr_headers})),
            (["register", "--operation-url", rsv_op["azure_async_operation"]], None),
        ],
        daemon,
    )
    total = 4 + 6 + 3 + 3  # the jobs plus one per operation
    emulator.create_jobs(
        [{k: v for k, v in j.items() if k != "id"} for j in rsv + bv + bv_failed + crr + crr_failed]
    )

    daemon.start()
    wait_until(
        "every kind to be seen running",
        lambda: (
            {(j["vault_kind"], j["region"], j["status"]) for j in daemon.jobs()}
            >= {
                ("RecoveryServices", None, "InProgress"),
                ("DataProtection", None, "Started"),
                ("RecoveryServices", REGION, "InProgress"),
            }
        ),
        30,
    )
    daemon.kill9()
    before = {j["job_id"]: j for j in daemon.jobs()}
    assert any(not j["finished"] for j in before.values())

    daemon.start()
    wait_until(
        "every job of every kind to finish after the restart",
        lambda: (js := daemon.jobs()) and len(js) == total and all(j["finished"] for j in js),
        90,
        every=0.5,
    )
    assert daemon.stop() == 0

    jobs = {j["job_id"]: j for j in daemon.jobs()}
    assert set(bv_op["job_ids"]) | set(crr_op["job_ids"]) | set(rsv_op["job_ids"]) <= set(jobs)
    for job in jobs.values():
        truth = emulator.truth(job["job_id"], job["vault_id"])
        assert job["status"] == truth["final_status"], job
        running = "Started" if job["vault_kind"] == "DataProtection" else "InProgress"
        statuses = assert_clean_chain(daemon.history(job["job_id"]), job["status"])
        if job["operation_id"] is None:
            assert statuses == [running, job["status"]], (job["job_id"], statuses)
        else:  # a short job its operation named late may be first seen finished
            assert statuses in ([running, job["status"]], [job["status"]]), statuses
        if job["job_id"] in before:
            assert job["poll_count"] >= before[job["job_id"]]["poll_count"]
    by_kind = {
        kind: {j["job_id"] for j in json.loads(daemon.ok("jobs", "list", "--kind", kind, "--json"))}
        for kind in ("RecoveryServices", "DataProtection", "CrossRegionRestore")
    }
    assert len(by_kind["RecoveryServices"]) == 5
    assert len(by_kind["DataProtection"]) == 7
    assert len(by_kind["CrossRegionRestore"]) == 4
    assert all(jobs[j]["region"] == REGION for j in by_kind["CrossRegionRestore"])
    assert jobs[bv_op["job_ids"][0]]["operation_id"] == bv_op["operation_id"]
    assert jobs[bv_failed[0]["job_id"]]["error_details"][0]["code"] == "UserErrorDiskSnapshotFailed"
    # `wait` maps each kind's terminal words to the same exit codes.
    assert daemon.cli("wait", bv[0]["id"]).returncode == 0
    assert daemon.cli("wait", bv_failed[0]["id"]).returncode == 4
    assert daemon.cli("wait", "--vault", VAULT, crr[0]["id"]).returncode == 0
    assert daemon.cli("wait", "--vault", VAULT, crr_failed[0]["id"]).returncode == 4
    refused = daemon.cli("cancel", crr[0]["job_id"])
    assert refused.returncode == 2 and "cross-region-restore" in refused.stderr
    # The cross-region reads were POSTs to backupCrrJob, counted by the emulator.
    stats = emulator.stats()
    assert stats["by_kind"].get("crr_job_get", 0) >= 4
    assert "resuming" in daemon.log_text()
