"""Backup vault (Microsoft.DataProtection) and cross-region-restore (CRR) jobs in the core:
parsing every body of theirs in `../shared` and the spec examples (written here from the
facts page where none is recorded: `shared/docs/backup-vaults-and-crr.md`), the one status
table, the registration forms and their bad inputs, through the CLI too (exit 2, nothing
stored)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest

from backupjobd.core import azure
from backupjobd.core.azure import JobKind, Phase, VaultKind
from backupjobd.core.registration import (
    Endpoint,
    JobRegistration,
    OperationRegistration,
    job_from_arm_id,
    operation_from_url,
    parse_document,
)
from backupjobd.errors import InvalidInput
from tests.unit.test_cli_bad_input import Cli, cli  # noqa: F401 (the fixture)
from tests.unit.test_recorded_bodies import RECORDING_FILES, _need

SUB = "11111111-2222-3333-4444-555555555555"
JOB = "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
OP = "4f2d0a7c-6b1e-4c8d-9e3f-a1b2c3d4e5f6"
BV = (
    f"/subscriptions/{SUB}/resourceGroups/rg-bv/providers/Microsoft.DataProtection/backupVaults/bv1"
)
RSV = f"/subscriptions/{SUB}/resourceGroups/rg-rsv/providers/Microsoft.RecoveryServices/vaults/v1"
CRR_JOB = (
    f"/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/eastus2/backupJobs/{JOB}"
)
ENDPOINT = Endpoint.from_url("http://127.0.0.1:8443")
BASE = "http://127.0.0.1:8443"

# --------------------------------------------------------------------- spec-shaped bodies
# Written from the facts page (GetJob.json, ListJobs.json, TriggerBackup.json,
# GetOperationStatus(.VaultContext).json, GetOperationResult.json of the 2025-09-01 examples;
# GetCrrJob_Post.json, GetCrrOperationStatus_Get.json of 2018-12-20): no Backup vault body is
# recorded in ../shared.

DPP_JOB_STARTED: dict[str, Any] = {
    "id": f"{BV}/backupJobs/{JOB}",
    "name": JOB,
    "type": "Microsoft.DataProtection/Backupvaults/backupJobs",
    "properties": {
        "activityID": "3a8a9c13-7c56-4f3a-9c5f-1b2c3d4e5f60",
        "backupInstanceFriendlyName": "harshitbi2",
        "backupInstanceId": f"{BV}/backupInstances/harshitbi2",
        "dataSourceId": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
        "/disks/disk1",
        "dataSourceLocation": "westus",
        "dataSourceName": "disk1",
        "dataSourceSetName": "disk1",
        "dataSourceType": "Microsoft.Compute/disks",
        "duration": "00:02:11.9724387",
        "isUserTriggered": False,
        "operation": "Backup",
        "operationCategory": "Backup",
        "policyId": f"{BV}/backupPolicies/pol1",
        "policyName": "pol1",
        "progressEnabled": False,
        "sourceResourceGroup": "rg",
        "sourceSubscriptionID": SUB,
        "startTime": "2020-09-10T10:51:12.4443339Z",
        "status": "Started",
        "subscriptionId": SUB,
        "supportedActions": [""],
        "vaultName": "bv1",
        "extendedInfo": {
            "additionalDetails": {},
            "dataTransferredInBytes": 0,
            "subTasks": [
                {"taskId": 1, "taskName": "Take snapshot", "taskStatus": "Succeeded"},
                {"taskId": 2, "taskName": "Transfer data", "taskStatus": "Started"},
            ],
        },
    },
}


def dpp_job(status: str, **props: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(DPP_JOB_STARTED))
    body["properties"].update(status=status, **props)
    return body


DPP_FAILED = dpp_job(
    "Failed",
    endTime="2020-09-10T10:53:24.4169812Z",
    errorDetails=[
        {
            "code": "UserErrorDiskBackupSnapshotLimitReached",
            "message": "Snapshot limit reached for the disk.",
            "isRetryable": False,
        }
    ],
)
TRIGGER_200 = {"jobId": JOB, "objectType": "OperationJobExtendedInfo"}
OPERATION_RESULT_200 = {
    "objectType": "OperationJobExtendedInfo",
    "jobId": f"{BV}/backupJobs/{JOB}",
}
OPERATION_STATUS = {
    "id": f"/subscriptions/{SUB}/providers/Microsoft.DataProtection/locations/westus"
    f"/operationStatus/{OP}",
    "name": OP,
    "status": "Succeeded",
    "startTime": "2020-09-10T10:51:12Z",
    "endTime": "2020-09-10T10:53:12Z",
}
CRR_JOB_BODY = {
    "id": CRR_JOB,
    "name": JOB,
    "type": "Microsoft.RecoveryServices/vaults/backupJobs",
    "properties": {
        "jobType": "AzureIaaSVMJob",
        "duration": "PT12.1S",
        "operation": "CrossRegionRestore",
        "status": "InProgress",
        "startTime": "2023-05-20T13:49:34Z",
        "entityFriendlyName": "vm1",
        "backupManagementType": "AzureIaasVM",
        "extendedInfo": {
            "tasksList": [{"taskId": "Transfer data from vault", "status": "InProgress"}]
        },
    },
}


def test_backup_vault_job_body_parses_into_the_common_model() -> None:
    job = azure.parse_job_resource(DPP_JOB_STARTED)
    assert job.vault == azure.vault_from_id(BV)
    assert job.vault is not None and job.vault.kind is VaultKind.DATA_PROTECTION
    assert (job.job_id, job.status, job.phase) == (JOB, "Started", Phase.RUNNING)
    assert job.job_type == "Microsoft.Compute/disks"  # dataSourceType stands in for jobType
    assert job.entity_friendly_name == "harshitbi2"
    assert job.duration is not None and round(job.duration.total_seconds()) == 132
    assert job.progress == 50.0  # one subTask of two Succeeded
    assert job.region is None and not job.is_terminal


def test_failed_backup_vault_job_keeps_its_user_facing_errors() -> None:
    job = azure.parse_job_resource(DPP_FAILED)
    assert job.is_terminal and job.phase is Phase.FAILED
    assert job.end_time is not None
    assert [(d.code, d.message) for d in job.error_details] == [
        ("UserErrorDiskBackupSnapshotLimitReached", "Snapshot limit reached for the disk.")
    ]


def test_backup_vault_job_snapshot_hash_ignores_duration_only() -> None:
    later = dpp_job("Started", duration="00:03:00.0000000")
    assert azure.snapshot_hash(later["properties"]) == azure.snapshot_hash(
        DPP_JOB_STARTED["properties"]
    )
    moved = dpp_job("Started", extendedInfo={"dataTransferredInBytes": 1024, "subTasks": []})
    assert azure.snapshot_hash(moved["properties"]) != azure.snapshot_hash(
        DPP_JOB_STARTED["properties"]
    )


@pytest.mark.parametrize(
    ("body", "vault"),
    [(TRIGGER_200, None), (OPERATION_RESULT_200, azure.vault_from_id(BV))],
    ids=["guid", "arm-id"],
)
def test_operation_job_extended_info_names_the_job(
    body: dict[str, Any], vault: azure.VaultRef | None
) -> None:
    assert azure.parse_operation_job_info(body) == (JOB, vault)


def test_backup_vault_operation_status_has_no_job_until_operation_results() -> None:
    op = azure.parse_operation_status(OPERATION_STATUS)
    assert (op.status, op.job_ids) == ("Succeeded", ())
    with_job = {**OPERATION_STATUS, "properties": OPERATION_RESULT_200}
    assert azure.parse_operation_status(with_job).job_ids == (JOB,)


def test_crr_job_body_is_location_scoped() -> None:
    job = azure.parse_job_resource(CRR_JOB_BODY)
    assert (job.job_id, job.vault, job.region) == (JOB, None, "eastus2")
    assert job.operation == "CrossRegionRestore"


@pytest.mark.parametrize("path", RECORDING_FILES)
def test_every_recorded_crr_body_parses(path: Any) -> None:
    """Each recorded answer of POST backupCrrJob and GET backupCrrOperationsStatus."""
    doc = json.loads(_need(path).read_text(encoding="utf-8"))
    seen = 0
    for item in doc["interactions"]:
        url = str(item["url"]).lower().split("?")[0]
        if item["status"] != 200 or not isinstance(item.get("body"), dict):
            continue
        if url.endswith("/backupcrrjob"):
            job = azure.parse_job_resource(item["body"])
            assert job.region == "eastus2euap" and job.vault is None
            assert azure.job_phase(job.status) is not Phase.UNKNOWN
            seen += 1
        elif "/backupcrroperationsstatus/" in url:
            op = azure.parse_operation_status(item["body"])
            assert op.status == "Succeeded" and len(op.job_ids) == 1
            target = azure.parse_operation_target(unquote(str(item["url"]).split("?")[0]))
            assert target.crr and target.region == "eastus2euap" and target.vault is None
            seen += 1
    if "crr" in path.name:
        assert seen > 0
    else:
        assert seen == 0


# --------------------------------------------------------------------- the status table


@pytest.mark.parametrize(
    ("status", "phase", "terminal"),
    [
        ("InProgress", Phase.RUNNING, False),
        ("Cancelling", Phase.RUNNING, False),
        ("Started", Phase.RUNNING, False),
        ("started", Phase.RUNNING, False),
        ("Paused", Phase.RUNNING, False),
        ("Completed", Phase.SUCCEEDED, True),
        ("Succeeded", Phase.SUCCEEDED, True),
        ("CompletedWithWarnings", Phase.WARNINGS, True),
        ("Failed", Phase.FAILED, True),
        ("Cancelled", Phase.CANCELLED, True),
        ("Canceled", Phase.CANCELLED, True),
        ("SomethingNew", Phase.UNKNOWN, False),
        (None, Phase.UNKNOWN, False),
    ],
)
def test_one_status_table_for_every_kind(status: str | None, phase: Phase, terminal: bool) -> None:
    assert azure.job_phase(status) is phase
    assert azure.is_terminal_status(status) is terminal


@pytest.mark.parametrize(
    ("vault_id", "region", "kind"),
    [
        (RSV, None, JobKind.RECOVERY_SERVICES),
        (RSV, "eastus2", JobKind.CROSS_REGION_RESTORE),
        (BV, None, JobKind.DATA_PROTECTION),
    ],
)
def test_job_kind(vault_id: str, region: str | None, kind: JobKind) -> None:
    assert azure.job_kind(azure.vault_kind_of(vault_id), region) is kind


# --------------------------------------------------------------------- registration forms


def test_every_backup_vault_form() -> None:
    bv = azure.vault_from_id(BV)
    want = JobRegistration(bv, JOB, "job-arm-id")
    assert job_from_arm_id(f"{BV}/backupJobs/{JOB.upper()}") == want
    assert parse_document({"job_id": JOB, "vault_id": BV}, ENDPOINT, None) == [
        JobRegistration(bv, JOB, "job-id")
    ]
    info = JobRegistration(bv, JOB, "operation-job-info")
    assert parse_document(TRIGGER_200, ENDPOINT, bv) == [info]
    assert parse_document(OPERATION_RESULT_200, ENDPOINT, None) == [info]
    headers = {
        "Azure-AsyncOperation": f"{BASE}{BV}/operationStatus/{OP}?api-version=2025-07-01",
        "Location": f"{BASE}/subscriptions/{SUB}/providers/Microsoft.DataProtection/locations/"
        f"westus/operationResults/{OP}?api-version=2025-07-01",
        "Retry-After": "60",
    }
    [op] = parse_document({"headers": headers}, ENDPOINT, None)
    assert isinstance(op, OperationRegistration)
    assert (op.vault, op.operation_id, op.region, op.crr) == (bv, OP, "westus", False)
    # The Location alone needs the Backup vault.
    [alone] = parse_document({"Location": headers["Location"]}, ENDPOINT, bv)
    assert isinstance(alone, OperationRegistration) and alone.region == "westus"


def test_every_crr_form() -> None:
    rsv = azure.vault_from_id(RSV)
    assert job_from_arm_id(CRR_JOB, rsv) == JobRegistration(rsv, JOB, "job-arm-id", "eastus2")
    [from_body] = parse_document(CRR_JOB_BODY, ENDPOINT, rsv)
    assert from_body == JobRegistration(rsv, JOB, "job-resource", "eastus2")
    op_id = "MjYzMDc4MTY0NzYwMzI2Njk0OTs5YjIyOGQwZS01OGMzLTRhZmYtYTI4ZC0wNTkyNmE5YzEzODM="
    url = (
        f"{BASE}/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/eastus2"
        f"/backupCrrOperationsStatus/{op_id}?api-version=2021-11-15"
    )
    op = operation_from_url(url, ENDPOINT, "cli", rsv)
    assert (op.vault, op.operation_id, op.region, op.crr) == (rsv, op_id, "eastus2", True)
    # The stored 202 example even starts its header values with the header's name.
    [headers] = parse_document(
        {"headers": {"azure-asyncoperation": url, "location": url.replace("sStatus", "Results")}},
        ENDPOINT,
        rsv,
    )
    assert headers == OperationRegistration(rsv, op_id, url, "operation-headers", "eastus2")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: job_from_arm_id(CRR_JOB), "names no vault"),
        (lambda: job_from_arm_id(CRR_JOB, azure.vault_from_id(BV)), "Recovery Services vault"),
        (
            lambda: job_from_arm_id(
                CRR_JOB.replace(SUB, "99999999-2222-3333-4444-555555555555"),
                azure.vault_from_id(RSV),
            ),
            "different subscriptions",
        ),
        (
            lambda: job_from_arm_id(f"{BV}/backupJobs/{JOB}", azure.vault_from_id(RSV)),
            "Backup vault, but --vault is a Recovery Services vault",
        ),
        (
            lambda: parse_document(TRIGGER_200, ENDPOINT, azure.vault_from_id(RSV)),
            "--vault must be a Backup vault",
        ),
        (lambda: parse_document(TRIGGER_200, ENDPOINT, None), "needs --vault"),
        (
            lambda: parse_document({**TRIGGER_200, "jobId": "not-a-job"}, ENDPOINT, None),
            "neither a GUID nor a job ARM id",
        ),
        (
            lambda: operation_from_url(
                f"{BASE}/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/"
                f"eastus2/backupCrrOperationsStatus/{OP}",
                ENDPOINT,
                "cli",
            ),
            "give --vault SOURCE_RECOVERY_SERVICES_VAULT_ID",
        ),
        (
            lambda: operation_from_url(
                f"{BASE}/subscriptions/{SUB}/providers/Microsoft.DataProtection/locations/"
                f"westus/operationResults/{OP}",
                ENDPOINT,
                "cli",
                azure.vault_from_id(RSV),
            ),
            "give --vault BACKUP_VAULT_ID",
        ),
        (lambda: azure.vault_from_id(BV.replace("backupVaults", "vaults2")), "not a Recovery"),
        (lambda: azure.validate_region("east us"), "not an Azure region"),
    ],
    ids=[
        "crr-without-vault",
        "crr-with-backup-vault",
        "crr-other-subscription",
        "backup-vault-job-with-rsv-vault",
        "job-info-with-rsv-vault",
        "job-info-without-vault",
        "job-info-bad-job-id",
        "crr-operation-without-vault",
        "dpp-location-operation-with-rsv-vault",
        "bad-backup-vault-id",
        "bad-region",
    ],
)
def test_bad_inputs_are_refused(make: Any, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        make()


# --------------------------------------------------------------------- through the CLI


def test_cli_registers_the_new_forms_with_kind_and_region(cli: Cli) -> None:  # noqa: F811
    cli.expect_empty = False
    cli.registered(["register", "--job", f"{BV}/backupJobs/{JOB}"])
    other = "1b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
    cli.registered(["register", "--job", CRR_JOB.replace(JOB, other), "--vault", RSV])
    third = "2b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
    cli.registered(
        ["register", "-", "--vault", BV],
        json.dumps({"objectType": "OperationJobExtendedInfo", "jobId": third}),
    )
    jobs = {j["job_id"]: j for j in cli.listed("jobs", "list")}
    assert (jobs[JOB]["vault_kind"], jobs[JOB]["region"]) == ("DataProtection", None)
    assert (jobs[other]["vault_kind"], jobs[other]["region"]) == ("RecoveryServices", "eastus2")
    assert jobs[other]["vault_id"] == RSV
    assert jobs[third]["vault_id"] == BV
    only = cli.listed("jobs", "list", "--kind", "crossregionrestore")
    assert [j["job_id"] for j in only] == [other]
    backup_vault_jobs = cli.listed("jobs", "list", "--kind", "DataProtection")
    assert sorted(j["job_id"] for j in backup_vault_jobs) == sorted([JOB, third])
    assert cli.listed("jobs", "list", "--kind", "RecoveryServices") == []
    refused = cli.run(["jobs", "list", "--kind", "Tape"])
    assert refused.rc == 2 and "unknown kind" in refused.err
    cancel = cli.run(["cancel", other])
    assert cancel.rc == 2 and "cross-region-restore" in cancel.err


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["register", "--job", CRR_JOB], ""),
        (["register", "--job", CRR_JOB, "--vault", BV], ""),
        (["register", "--job", f"{BV}/backupJobs/{JOB}", "--vault", RSV], ""),
        (["register", "-", "--vault", RSV], json.dumps(TRIGGER_200)),
        (["register", "-"], json.dumps(TRIGGER_200)),
        (
            [
                "register",
                "--operation-url",
                f"{BASE}/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/"
                f"eastus2/backupCrrOperationsStatus/{OP}",
            ],
            "",
        ),
    ],
    ids=[
        "crr-id-without-vault",
        "crr-id-with-backup-vault",
        "backup-vault-job-with-rsv-vault",
        "job-info-with-rsv-vault",
        "job-info-without-vault",
        "crr-operation-without-vault",
    ],
)
def test_cli_refuses_bad_new_forms(cli: Cli, argv: list[str], stdin: str) -> None:  # noqa: F811
    cli.refused(argv, stdin)


@pytest.mark.parametrize(
    ("status", "jobs", "region", "needed"),
    [
        ("Succeeded", (), "westus", True),
        ("Succeeded", (JOB,), "westus", False),
        ("Succeeded", (), None, False),
        ("InProgress", (), "westus", False),
        ("Failed", (), "westus", False),
    ],
)
def test_operation_results_are_read_once_the_status_succeeded_without_a_job(
    status: str, jobs: tuple[str, ...], region: str | None, needed: bool
) -> None:
    op = azure.OperationObservation(status, jobs, None, None)
    assert azure.needs_operation_result(op, region) is needed
