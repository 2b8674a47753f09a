"""The bodies Azure would send: JobResource, OperationStatus and the ARM error envelope.

Kept apart from the state so the wire shapes (timestamps with 7 fractional digits, .NET
TimeSpan durations, per-job-type fields) can be read and changed in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

if TYPE_CHECKING:
    from backupjobd.emulator.state import EmulatedJob, EmulatedOperation, EmulatorState

JSONDict = dict[str, Any]

JOB_RESOURCE_TYPE: Final = "Microsoft.RecoveryServices/vaults/backupJobs"
OPERATION_PENDING_END: Final = "0001-01-01T00:00:00"
#: Fraction of a job's duration after which the snapshot task is done.
SNAPSHOT_FRACTION: Final = 0.4
RUNNING_STATUSES: Final = frozenset({"inprogress", "cancelling", "started"})
BACKUP_VAULT_JOB_TYPE: Final = "Microsoft.DataProtection/backupVaults/backupJobs"
#: The data source a Backup vault job protects when the admin call names none.
DEFAULT_DATA_SOURCE_TYPE: Final = "Microsoft.Compute/disks"
MANAGEMENT_TYPES: Final[Mapping[str, str]] = {
    # Azure spells the enum value ``AzureIaasVM`` (lower-case "as") on the wire.
    "azureiaasvmjob": "AzureIaasVM",
    "azureiaasvmjobv2": "AzureIaasVM",
    "azureworkloadjob": "AzureWorkload",
    "azurestoragejob": "AzureStorage",
    "dpmjob": "DPM",
    "mabjob": "MAB",
}


def _iso(ts: float) -> str:
    """ARM timestamps carry 7 fractional digits and a Z; clients must cope with that."""
    ticks = round(ts * 10_000_000)
    secs, frac = divmod(ticks, 10_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:07d}Z"


def _timespan(seconds: float) -> str:
    """Raw REST job durations are .NET TimeSpans (``[d.]hh:mm:ss.fffffff``), not ISO 8601."""
    ticks = max(0, round(seconds * 10_000_000))
    whole, frac = divmod(ticks, 10_000_000)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}.{frac:07d}"
    return f"{days}.{text}" if days else text


def arm_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """Every ARM failure uses the ``{"error": {"code", "message"}}`` envelope."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def render_job(state: EmulatorState, job: EmulatedJob, *, extended: bool = True) -> JSONDict:
    """JobResource as ARM returns it for the job's current state."""
    if job.backup_vault:
        return render_backup_vault_job(state, job, extended=extended)
    now = state.now()
    status = state.job_status(job, now)
    spec = job.spec
    running = status.lower() in RUNNING_STATUSES or (
        status == spec.final_status and state.job_end(job) is None
    )
    end = None if running else state.job_end(job)
    duration = (end if end is not None else now) - job.created_at
    job_type_key = spec.job_type.lower()
    operation = spec.operation
    if job_type_key == "azureworkloadjob" and operation == "Backup" and not running:
        operation = "Backup (Full)"
    props: JSONDict = {
        "jobType": spec.job_type,
        "entityFriendlyName": job.entity,
        "backupManagementType": MANAGEMENT_TYPES.get(job_type_key, "Invalid"),
        "operation": operation,
        "status": status,
        "startTime": _iso(state.wall(job.created_at)),
        "activityId": job.activity_id,
        "duration": _timespan(duration),
        "actionsInfo": ["Cancellable"] if status == "InProgress" else [],
    }
    if end is not None:
        props["endTime"] = _iso(state.wall(end))
    if job_type_key.startswith("azureiaasvmjob"):
        props["virtualMachineVersion"] = "Compute"
        props["containerName"] = f"iaasvmcontainerv2;rg-emulator;{job.entity}"
    if job_type_key in {"azureiaasvmjob", "azurestoragejob"}:
        props["isUserTriggered"] = True
    if job_type_key == "azureworkloadjob":
        props["workloadType"] = "SQLDataBase"
    errors = _error_details(status)
    if errors:
        props["errorDetails"] = errors
    if extended:
        props["extendedInfo"] = _extended_info(state, job, status, now, end)
    return {
        "id": job.arm_id,
        "name": job.job_id,
        "type": JOB_RESOURCE_TYPE,
        "properties": props,
    }


def render_backup_vault_job(
    state: EmulatorState, job: EmulatedJob, *, extended: bool = True
) -> JSONDict:
    """An AzureBackupJobResource (Microsoft.DataProtection) in the job's current state:
    `Started` while running, `subTasks` with int task ids, `dataTransferredInBytes`."""
    now = state.now()
    status = state.job_status(job, now)
    spec = job.spec
    end = state.job_end(job)
    running = status.lower() in RUNNING_STATUSES or end is None or now < end
    end_at = None if running else end
    duration = (end_at if end_at is not None else now) - job.created_at
    vault_id = job.vault_id
    parts = vault_id.split("/")
    sub, rg, vault = parts[2], parts[4], parts[-1]
    data_source_type = (
        DEFAULT_DATA_SOURCE_TYPE if spec.job_type == "AzureIaaSVMJob" else spec.job_type
    )
    data_source_id = (
        f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{data_source_type}/{job.entity}"
    )
    props: JSONDict = {
        "activityID": job.activity_id,
        "backupInstanceFriendlyName": job.entity,
        "backupInstanceId": f"{vault_id}/backupInstances/{job.entity}-{job.entity}",
        "dataSourceId": data_source_id,
        "dataSourceLocation": "westeurope",
        "dataSourceName": job.entity,
        "dataSourceSetName": job.entity,
        "dataSourceType": data_source_type,
        "duration": _timespan(duration),
        "isUserTriggered": True,
        "operation": spec.operation,
        "operationCategory": spec.operation.split(":", 1)[0].split(" ", 1)[0],
        "policyId": f"{vault_id}/backupPolicies/policy-emulator",
        "policyName": "policy-emulator",
        "progressEnabled": False,
        "sourceResourceGroup": rg,
        "sourceSubscriptionID": sub,
        "startTime": _iso(state.wall(job.created_at)),
        "status": status,
        "subscriptionId": sub,
        "supportedActions": [""],
        "vaultName": vault,
    }
    if end_at is not None:
        props["endTime"] = _iso(state.wall(end_at))
    if status.lower() == "failed":
        props["errorDetails"] = [
            {
                "code": "UserErrorDiskSnapshotFailed",
                "message": "The snapshot of the disk could not be taken.",
                "isRetryable": False,
            }
        ]
    if extended:
        span = max(spec.duration_seconds, 1e-9)
        fraction = 1.0 if end_at is not None else min(0.99, (now - job.created_at) / span)
        size = int(hashlib.sha256(job.job_id.encode()).hexdigest()[:6], 16) * 1024
        failed = status.lower() == "failed"

        def task(task_id: int, name: str, done_at: float) -> JSONDict:
            if fraction >= done_at and not (failed and done_at >= 1.0):
                task_status = "Succeeded"
            elif failed and end_at is not None:
                task_status = "Failed"
            else:
                task_status = "Started" if fraction >= done_at - 0.5 else "NotStarted"
            return {"taskId": task_id, "taskName": name, "taskStatus": task_status}

        props["extendedInfo"] = {
            "additionalDetails": {},
            "dataTransferredInBytes": float(int(size * min(fraction, 1.0))),
            "subTasks": [task(1, "Take snapshot", 0.4), task(2, "Transfer data", 1.0)],
        }
    return {
        "id": job.arm_id,
        "name": job.job_id,
        "type": BACKUP_VAULT_JOB_TYPE,
        "properties": props,
    }


def render_backup_vault_operation(state: EmulatorState, op: EmulatedOperation) -> JSONDict:
    """A Backup vault's OperationResource (`operationStatus/{op}`): id, name, status and
    times; the job it started is named by `operationResults/{op}`, not here."""
    now = state.now()
    done = now >= op.done_at
    body: JSONDict = {
        "id": f"{op.vault_id}/operationStatus/{op.operation_id}",
        "name": op.operation_id,
        "status": op.result if done else "InProgress",
        "startTime": _iso(state.wall(op.created_at)),
    }
    if done:
        body["endTime"] = _iso(state.wall(op.done_at))
        if op.result != "Succeeded":
            body["error"] = {
                "code": "UserErrorBackupInstanceBusy",
                "message": "Another operation is in progress on this backup instance.",
            }
    return body


def render_job_info(op: EmulatedOperation) -> JSONDict:
    """The 200 of a Backup vault's `operationResults/{op}`: `OperationJobExtendedInfo`
    whose `jobId` is the job's ARM id (Azure: "Name or Arm Id of the job")."""
    return {
        "objectType": "OperationJobExtendedInfo",
        "jobId": f"{op.vault_id}/backupJobs/{op.job_ids[0]}" if op.job_ids else None,
    }


def _extended_info(
    state: EmulatorState, job: EmulatedJob, status: str, now: float, end: float | None
) -> JSONDict:
    duration = job.spec.duration_seconds
    reference = min(now, end) if end is not None else now
    elapsed = max(0.0, reference - job.created_at)
    if end is not None and job.cancel_requested_at is None:
        fraction = 1.0
    elif duration <= 0:
        fraction = 0.99
    else:
        fraction = min(elapsed / duration, 0.99 if end is None else 1.0)
    if job.cancel_requested_at is not None:
        fraction = min(fraction, 0.99)
    split = job.created_at + duration * SNAPSHOT_FRACTION
    lower_status = status.lower()
    failed = lower_status == "failed"
    cancelled = lower_status in {"cancelled", "cancelling"}

    def task_status(started: bool, done: bool) -> str:
        if done:
            return "Completed"
        if not started:
            return "NotStarted"
        if failed:
            return "Failed"
        if cancelled:
            return "Cancelled"
        return "InProgress"

    snap_done = fraction >= SNAPSHOT_FRACTION
    transfer_done = fraction >= 1.0
    transfer_pct = max(0.0, (fraction - SNAPSHOT_FRACTION) / (1 - SNAPSHOT_FRACTION)) * 100
    if failed and end is not None:
        # A failed job fails in its transfer step, after the snapshot was taken.
        snap_done, transfer_done = True, False
    snapshot: JSONDict = {
        "taskId": "Take Snapshot",
        "status": task_status(True, snap_done),
        "startTime": _iso(state.wall(job.created_at)),
        "duration": _timespan(min(elapsed, duration * SNAPSHOT_FRACTION)),
    }
    if snap_done:
        snapshot["endTime"] = _iso(state.wall(split))
    transfer: JSONDict = {
        "taskId": "Transfer data to vault",
        "status": task_status(snap_done, transfer_done),
        "progressPercentage": round(100.0 if transfer_done else transfer_pct, 2),
        "duration": _timespan(max(0.0, reference - split)) if snap_done else "00:00:00",
    }
    if snap_done:
        transfer["startTime"] = _iso(state.wall(split))
    if transfer_done and end is not None:
        transfer["endTime"] = _iso(state.wall(end))
    size_mb = int(hashlib.sha256(job.job_id.encode()).hexdigest()[:6], 16) % 4000 + 100
    return {
        "tasksList": [snapshot, transfer],
        "propertyBag": {
            "VM Name": job.entity,
            "Backup Size": f"{int(size_mb * min(fraction, 1.0))} MB",
        },
        "progressPercentage": round(fraction * 100, 2),
    }


def render_operation(state: EmulatorState, op: EmulatedOperation) -> JSONDict:
    """OperationStatus body; jobs are only announced once the operation is done."""
    now = state.now()
    op_path = op.operation_id
    if op.crr:
        sub = op.vault_id.split("/")[2]
        op_path = (
            f"/subscriptions/{sub}/providers/Microsoft.RecoveryServices/locations/{op.region}"
            f"/backupCrrOperationsStatus/{op.operation_id}"
        )
    body: JSONDict = {
        "id": op_path,
        "name": op.operation_id,
        "status": "InProgress",
        "startTime": _iso(state.wall(op.created_at)),
        "endTime": OPERATION_PENDING_END,
    }
    if now < op.done_at:
        return body
    body["status"] = op.result
    body["endTime"] = _iso(state.wall(op.done_at))
    if op.result != "Succeeded":
        body["error"] = {
            "code": "UserErrorBackupOperationInProgress",
            "message": "Taking backup is not allowed as another backup operation is "
            "already in progress on this item.",
        }
    elif len(op.job_ids) == 1:
        body["properties"] = {
            "objectType": "OperationStatusJobExtendedInfo",
            "jobId": op.job_ids[0],
        }
    elif op.job_ids:
        body["properties"] = {
            "objectType": "OperationStatusJobsExtendedInfo",
            "jobIds": list(op.job_ids),
            "failedJobsError": {},
        }
    return body


def _error_details(status: str) -> list[JSONDict]:
    lower = status.lower()
    if lower == "failed":
        return [
            {
                "errorCode": 400239,
                "errorString": "Backup failed as the snapshot transfer to the vault timed out.",
                "errorTitle": "UserErrorSnapshotTransferTimedOut",
                "recommendations": ["Retry the backup operation after some time."],
            }
        ]
    if lower == "completedwithwarnings":
        return [
            {
                "errorCode": 400218,
                "errorString": "Backup completed but some disks were skipped.",
                "errorTitle": "UserErrorSomeDisksSkipped",
                "recommendations": ["Check the disk exclusion settings of the policy."],
            }
        ]
    return []
