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
RUNNING_STATUSES: Final = frozenset({"inprogress", "cancelling"})
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
        "id": f"{job.vault_id}/backupJobs/{job.job_id}",
        "name": job.job_id,
        "type": JOB_RESOURCE_TYPE,
        "properties": props,
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
    body: JSONDict = {
        "id": op.operation_id,
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
