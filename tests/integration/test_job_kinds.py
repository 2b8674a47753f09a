"""Backup vault (Microsoft.DataProtection) and cross-region-restore jobs, end to end in one
process: the emulator over loopback HTTP, the real ArmClient, a SqlStore on SQLite and the
tracker, on one fake clock. Every kind goes through the same poll loop and store."""

from __future__ import annotations

import pytest

from backupjobd.adapters.budget import ReadBudget
from backupjobd.core import azure
from backupjobd.core.azure import JobKind, VaultKind
from backupjobd.core.decisions import Tracking
from backupjobd.core.registration import (
    Endpoint,
    JobRegistration,
    parse_document,
)
from backupjobd.errors import InvalidInput
from tests.integration.rig import TOKEN, VAULT, MakeRig, Rig

SUB = VAULT.subscription_id
BACKUP_VAULT = azure.vault_from_id(
    f"/subscriptions/{SUB}/resourceGroups/rg-emulator/providers/Microsoft.DataProtection"
    "/backupVaults/bv-emulator"
)
REGION = "northeurope"


async def post_admin(rig: Rig, path: str, body: object) -> dict[str, object]:
    async with rig.session.post(f"{rig.endpoint}{path}", json=body) as resp:
        data = await resp.json()
        assert resp.status == 201, data
        assert isinstance(data, dict)
        return data


async def register_docs(rig: Rig, doc: object, vault: azure.VaultRef | None) -> list[object]:
    regs = parse_document(doc, Endpoint.from_url(rig.endpoint), vault)
    return list(await rig.store.register(regs, rig.clock.now()))


async def finished(rig: Rig, job_id: str) -> bool:
    found = await rig.store.find_jobs(job_id)
    return bool(found) and found[0].tracking is Tracking.FINISHED


async def test_backup_vault_job_by_arm_id_is_polled_to_succeeded(make_rig: MakeRig) -> None:
    rig = await make_rig()
    created = await post_admin(
        rig, "/admin/jobs", {"vault_id": BACKUP_VAULT.id, "duration_seconds": 3}
    )
    [job] = created["jobs"]  # type: ignore[misc]
    await register_docs(rig, job["id"], None)
    await rig.run_until(lambda: finished(rig, job["job_id"]))
    record = await rig.job(job["job_id"])
    assert record.vault_kind is VaultKind.DATA_PROTECTION
    assert record.kind is JobKind.DATA_PROTECTION
    assert record.status == "Succeeded"
    assert record.region is None
    assert record.job_type == "Microsoft.Compute/disks"
    assert await rig.transitions(job["job_id"]) == [(None, "Started"), ("Started", "Succeeded")]
    _, snapshots = await rig.store.history(record.pk)
    assert snapshots[-1].properties["extendedInfo"]["subTasks"][0]["taskId"] == 1
    assert "dataTransferredInBytes" in snapshots[-1].properties["extendedInfo"]
    assert record.to_json()["vault_kind"] == "DataProtection"
    assert record.progress_percent == 100.0


async def test_failed_backup_vault_job_keeps_its_errors(make_rig: MakeRig) -> None:
    rig = await make_rig()
    created = await post_admin(
        rig,
        "/admin/jobs",
        {"vault_id": BACKUP_VAULT.id, "duration_seconds": 2, "final_status": "Failed"},
    )
    [job] = created["jobs"]  # type: ignore[misc]
    await rig.store.register(
        [JobRegistration(BACKUP_VAULT, job["job_id"], "job-id")], rig.clock.now()
    )
    await rig.run_until(lambda: finished(rig, job["job_id"]))
    record = await rig.job(job["job_id"])
    assert record.status == "Failed"
    assert [d.code for d in record.error_details] == ["UserErrorDiskSnapshotFailed"]


async def test_backup_vault_trigger_headers_yield_the_job(make_rig: MakeRig) -> None:
    """The 202 of a Backup vault trigger: operationStatus until it ends, then
    operationResults names the job (as an ARM id), which is then tracked."""
    rig = await make_rig()
    op = await post_admin(
        rig,
        "/admin/operations",
        {"vault_id": BACKUP_VAULT.id, "delay_seconds": 2, "jobs": {"duration_seconds": 2}},
    )
    headers = {"Azure-AsyncOperation": op["azure_async_operation"], "Location": op["location"]}
    await register_docs(rig, {"headers": headers}, None)
    [stored_op] = await rig.store.list_operations()
    assert stored_op.region == "westeurope"  # the Location's location, for operationResults
    [job_id] = op["job_ids"]  # type: ignore[misc]
    await rig.run_until(lambda: finished(rig, job_id))
    record = await rig.job(job_id)
    assert record.vault_id == BACKUP_VAULT.id
    assert record.operation_id == op["operation_id"]
    assert record.status == "Succeeded"
    assert rig.kinds().get("operation_result", 0) >= 1


async def test_backup_vault_job_info_body_with_vault(make_rig: MakeRig) -> None:
    rig = await make_rig()
    created = await post_admin(rig, "/admin/jobs", {"vault_id": BACKUP_VAULT.id})
    [job] = created["jobs"]  # type: ignore[misc]
    doc = {"objectType": "OperationJobExtendedInfo", "jobId": job["job_id"]}
    await register_docs(rig, doc, BACKUP_VAULT)
    await rig.run_until(lambda: finished(rig, job["job_id"]))
    assert (await rig.job(job["job_id"])).status == "Succeeded"


async def test_crr_job_is_read_by_post_on_the_write_budget(make_rig: MakeRig) -> None:
    rig = await make_rig(
        budget=lambda clock: ReadBudget(100, 100, clock=clock),
        write_budget=lambda clock: ReadBudget(50, 5, clock=clock),
    )
    async with rig.session.post(
        f"{rig.endpoint}/admin/config", json={"write_burst": 40, "write_refill_per_second": 1}
    ) as resp:
        assert resp.status == 200
    created = await post_admin(
        rig, "/admin/jobs", {"vault_id": VAULT.id, "region": REGION, "duration_seconds": 3}
    )
    [job] = created["jobs"]  # type: ignore[misc]
    assert f"/locations/{REGION}/backupJobs/" in job["id"]
    await register_docs(rig, job["id"], VAULT)
    record = await rig.job(job["job_id"])
    assert record.kind is JobKind.CROSS_REGION_RESTORE
    assert record.region == REGION
    await rig.run_until(lambda: finished(rig, job["job_id"]))
    record = await rig.job(job["job_id"])
    assert record.status == "Completed"
    assert record.operation == "CrossRegionRestore"
    assert await rig.transitions(job["job_id"]) == [
        (None, "InProgress"),
        ("InProgress", "Completed"),
    ]
    stats = rig.state.stats()
    assert stats["by_kind"].get("crr_job_get", 0) == record.poll_count
    # The POSTs drew on the write bucket (it learned Azure's remainder), not the reads.
    assert rig.arm.write_budget is not None
    [writes] = rig.arm.write_budget.snapshot()
    assert writes.reads == record.poll_count
    assert writes.remaining is not None and writes.remaining < 40
    assert rig.arm.budget is not None
    assert sum(b.reads for b in rig.arm.budget.snapshot()) == 0


async def test_crr_operation_with_vault_registers_a_crr_job(make_rig: MakeRig) -> None:
    rig = await make_rig()
    op = await post_admin(
        rig,
        "/admin/operations",
        {
            "vault_id": VAULT.id,
            "region": REGION,
            "delay_seconds": 1,
            "jobs": {"duration_seconds": 2},
        },
    )
    assert "backupCrrOperationsStatus" in str(op["azure_async_operation"])
    headers = {"azure-asyncoperation": op["azure_async_operation"], "location": op["location"]}
    await register_docs(rig, {"headers": headers}, VAULT)
    [job_id] = op["job_ids"]  # type: ignore[misc]
    await rig.run_until(lambda: finished(rig, job_id))
    record = await rig.job(job_id)
    assert (record.region, record.vault_id, record.status) == (REGION, VAULT.id, "Completed")


async def test_crr_job_read_without_write_budget_room_is_throttled(make_rig: MakeRig) -> None:
    """The emulator's write bucket answers 429 with the writes header once spent."""
    rig = await make_rig()
    async with rig.session.post(
        f"{rig.endpoint}/admin/config", json={"write_burst": 1, "write_refill_per_second": 0.01}
    ) as resp:
        assert resp.status == 200
    created = await post_admin(rig, "/admin/jobs", {"vault_id": VAULT.id, "region": REGION})
    [job] = created["jobs"]  # type: ignore[misc]
    first = await rig.arm.get_crr_job(VAULT, REGION, job["job_id"])
    assert first.region == REGION and first.status == "InProgress"
    url = (
        f"{rig.endpoint}/subscriptions/{SUB}/providers/Microsoft.RecoveryServices"
        f"/locations/{REGION}/backupCrrJob"
    )
    async with rig.session.post(
        url,
        params={"api-version": "2021-11-15"},
        json={"resourceId": VAULT.id, "jobName": job["job_id"]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 429
        assert resp.headers["x-ms-ratelimit-remaining-subscription-writes"] == "0"


async def test_backup_vault_list_pages_without_filter(make_rig: MakeRig) -> None:
    rig = await make_rig(emulator={"page_size": 2})
    await post_admin(rig, "/admin/jobs", [{"vault_id": BACKUP_VAULT.id} for _ in range(5)])
    pages = [page async for page in rig.arm.list_jobs(BACKUP_VAULT)]
    assert [len(p) for p in pages] == [2, 2, 1]
    assert all(obs.vault == BACKUP_VAULT for p in pages for obs in p)
    with pytest.raises(InvalidInput, match="no \\$filter"):
        async for _ in rig.arm.list_jobs(BACKUP_VAULT, "status eq 'InProgress'"):
            pass
    # And the emulator refuses one, as a reminder that Azure offers none.
    async with rig.session.get(
        f"{rig.endpoint}{BACKUP_VAULT.id}/backupJobs",
        params={"api-version": "2025-07-01", "$filter": "status eq 'Started'"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as resp:
        assert resp.status == 400


async def test_cancel_is_refused_for_crr_and_backup_vault_jobs() -> None:
    assert azure.cancel_refusal(JobKind.CROSS_REGION_RESTORE) is not None
    assert "cross-region" in str(azure.cancel_refusal(JobKind.CROSS_REGION_RESTORE))
    assert azure.cancel_refusal(JobKind.RECOVERY_SERVICES) is None
