"""Pure parsing of Azure Backup identifiers and bodies: no I/O, no clock.

Azure is inconsistent on the wire (two duration formats, `actionsInfo` as ints or
strings, sentinel end times, ids in varying case), so everything the daemon reads
from Azure goes through here and comes out in one shape.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from backupjobd.errors import InvalidInput

TERMINAL_STATUSES = frozenset({"Completed", "CompletedWithWarnings", "Failed", "Cancelled"})
RUNNING_STATUSES = frozenset({"InProgress", "Cancelling"})
KNOWN_STATUSES = TERMINAL_STATUSES | RUNNING_STATUSES | {"Invalid"}

OPERATION_RUNNING = "InProgress"
OPERATION_SUCCEEDED = "Succeeded"
OPERATION_FAILED_STATUSES = frozenset({"Failed", "Canceled", "Cancelled", "Invalid"})

_GUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GUID_RE = re.compile(rf"^{_GUID}\Z", re.ASCII)
# Ids are ASCII: only ASCII blanks around one are forgiven (a no-break space is a look-alike
# that `str.strip()` would silently remove, turning "vault-x\xa0" into another name).
ASCII_SPACE = " \t\r\n"
# Azure allows Unicode letters in resource group names; everything else is ASCII (re.ASCII
# also keeps IGNORECASE from matching look-alikes such as the Kelvin sign for "k").
_RG = r"(?u:[-\w.()]){1,90}"
_VAULT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,49}"
_VAULT_PREFIX = (
    rf"/subscriptions/(?P<sub>{_GUID})/resourceGroups/(?P<rg>{_RG})"
    rf"/providers/Microsoft\.RecoveryServices/vaults/(?P<vault>{_VAULT})"
)
_FLAGS = re.IGNORECASE | re.ASCII
VAULT_ID_RE = re.compile(rf"^{_VAULT_PREFIX}/?\Z", _FLAGS)
VAULT_PREFIX_RE = re.compile(rf"^{_VAULT_PREFIX}(?=/|\Z)", _FLAGS)
JOB_ID_RE = re.compile(rf"^{_VAULT_PREFIX}/backupJobs/(?P<job>{_GUID})/?\Z", _FLAGS)
OPERATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_=-]{0,199}\Z", re.ASCII)
_ITEM_SEGMENT = r"[^/?#]+"
OPERATION_PATH_RE = re.compile(
    rf"^{_VAULT_PREFIX}"
    rf"(?:/backupFabrics/{_ITEM_SEGMENT}/protectionContainers/{_ITEM_SEGMENT}"
    rf"/protectedItems/{_ITEM_SEGMENT}/(?:operationsStatus|operationResults)"
    r"|/backupOperations|/backupOperationResults"
    r"|/backupJobs/" + _GUID + r"/operationResults"
    r")/(?P<op>[^/?#]+)/?\Z",
    _FLAGS,
)

# Timestamps Azure uses to mean "not set" (operation endTime while running; PowerShell's EndTime).
_SENTINEL_YEARS = frozenset({1, 2001})
_ISO_DURATION_RE = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?"
    r"(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_TIMESPAN_RE = re.compile(r"^(?:(?P<d>\d+)\.)?(?P<h>\d+):(?P<m>\d{2}):(?P<s>\d{2}(?:\.\d+)?)$")
# Fields Azure recomputes on every read (of the job and of each task); they do not make a
# snapshot distinct.
VOLATILE_PROPERTIES = frozenset({"duration"})


@dataclass(frozen=True, slots=True)
class VaultRef:
    """A Recovery Services vault; names keep Azure's case, `key` compares case-insensitively."""

    subscription_id: str
    resource_group: str
    name: str

    @property
    def id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.RecoveryServices/vaults/{self.name}"
        )

    @property
    def key(self) -> str:
        return self.id.lower()


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    """One item of a job's `errorDetails`, the same shape for every job type: Azure's code
    (an int in most types, none in DPM/MAB ones), its message and its recommendations."""

    code: str | None
    message: str
    recommendations: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "recommendations": list(self.recommendations),
        }


def parse_error_details(props: dict[str, Any]) -> tuple[ErrorDetail, ...]:
    """`properties.errorDetails` as ErrorDetails; items that are not objects are skipped,
    and a message falls back to the title (then to the code) when Azure gives no string."""
    items = props.get("errorDetails")
    if not isinstance(items, list):
        return ()
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        raw_code = item.get("errorCode")
        code = None if raw_code is None or isinstance(raw_code, bool) else str(raw_code)
        message = _opt_str(item.get("errorString")) or _opt_str(item.get("errorTitle")) or ""
        recs = item.get("recommendations")
        recommendations = tuple(
            r.strip() for r in (recs if isinstance(recs, list) else []) if isinstance(r, str)
        )
        if code or message or recommendations:
            fallback = f"error {code}" if code else "see the recommendations"
            out.append(ErrorDetail(code, message or fallback, recommendations))
    return tuple(out)


def parse_progress(props: dict[str, Any]) -> float | None:
    """How far a job is, 0 to 100: `extendedInfo.progressPercentage` when Azure gives it,
    else the share of its task list that is done; None when neither says."""
    ext = props.get("extendedInfo")
    if not isinstance(ext, dict):
        return None
    value = ext.get("progressPercentage")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
        return float(value)
    tasks = [t for t in ext.get("tasksList") or [] if isinstance(t, dict)]
    if not tasks:
        return None
    done = sum(1 for t in tasks if str(t.get("status", "")).lower() in _TASK_DONE)
    return round(100.0 * done / len(tasks), 1)


_TASK_DONE = {"completed", "completedwithwarnings", "succeeded"}


@dataclass(frozen=True, slots=True)
class JobObservation:
    """One job as Azure reported it, normalised."""

    job_id: str
    vault: VaultRef | None
    status: str
    job_type: str | None
    operation: str | None
    entity_friendly_name: str | None
    backup_management_type: str | None
    start_time: datetime | None
    end_time: datetime | None
    duration: timedelta | None
    properties: dict[str, Any]
    error_details: tuple[ErrorDetail, ...] = ()
    progress: float | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class OperationObservation:
    """An OperationStatus body: its status and, once it succeeded, the jobs it started."""

    status: str
    job_ids: tuple[str, ...]
    error_code: str | None
    error_message: str | None


class BodyError(ValueError):
    """A body from Azure does not have the shape we need (treated as a garbled answer)."""


def vault_from_id(value: str) -> VaultRef:
    """Parse a vault ARM id; raises InvalidInput with a one-line reason."""
    match = VAULT_ID_RE.match(value.strip(ASCII_SPACE)) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput(f"not a Recovery Services vault id: {_clip(value)}")
    return _vault_from_match(match)


def vault_prefix(value: str) -> VaultRef | None:
    """The vault an ARM id (job, operation…) lives in, or None when it is not under a vault."""
    match = VAULT_PREFIX_RE.match(value)
    return _vault_from_match(match) if match else None


def parse_job_arm_id(value: str) -> tuple[VaultRef, str]:
    """Split `/subscriptions/…/vaults/{v}/backupJobs/{guid}` into vault and job id."""
    match = JOB_ID_RE.match(value.strip(ASCII_SPACE))
    if match is None:
        raise InvalidInput(f"not a backup job ARM id: {_clip(value)}")
    return _vault_from_match(match), match.group("job").lower()


def validate_job_id(value: object) -> str:
    if not isinstance(value, str) or not GUID_RE.match(value.strip(ASCII_SPACE)):
        raise InvalidInput(f"job id must be a GUID: {_clip(value)}")
    return value.strip(ASCII_SPACE).lower()


def validate_subscription_id(value: object) -> str:
    if not isinstance(value, str) or not GUID_RE.match(value.strip(ASCII_SPACE)):
        raise InvalidInput(f"subscription id must be a GUID: {_clip(value)}")
    return value.strip(ASCII_SPACE).lower()


def validate_operation_id(value: str) -> str:
    """GUID ids are compared case-insensitively (lower-cased); others (base64) kept exact."""
    if not OPERATION_ID_RE.match(value):
        raise InvalidInput(f"not a valid operation id: {_clip(value)}")
    return value.lower() if GUID_RE.match(value) else value


def parse_operation_path(path: str) -> tuple[VaultRef, str]:
    """Vault and operation id from an `Azure-AsyncOperation`/`Location` URL path."""
    match = OPERATION_PATH_RE.match(path)
    if match is None:
        raise InvalidInput(f"not a Recovery Services backup operation URL: {_clip(path)}")
    return _vault_from_match(match), validate_operation_id(match.group("op"))


def parse_time(value: object) -> datetime | None:
    """ISO-8601 with or without `Z`, up to 7 fractional digits; sentinels become None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BodyError(f"timestamp is not a string: {_clip(value)}")
    return _parse_time_text(value)


@functools.lru_cache(maxsize=1 << 16)
def _parse_time_text(value: str) -> datetime | None:
    """Cached: every sweep lists a running job's same `startTime` again."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    main, _, zone = _split_zone(text)
    if "." in main:
        head, frac = main.split(".", 1)
        main = f"{head}.{frac[:6]}"
    try:
        parsed = datetime.fromisoformat(main + zone)
    except ValueError as exc:
        raise BodyError(f"bad timestamp: {_clip(value)}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError:
        raise BodyError(f"timestamp out of range: {_clip(value)}") from None
    if parsed.year in _SENTINEL_YEARS and parsed.month == 1 and parsed.day == 1:
        return None
    return parsed


def parse_duration(value: object) -> timedelta | None:
    """Both `00:20:23.0896697` (.NET TimeSpan, optionally `d.`) and ISO `PT9.87S`."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BodyError(f"duration is not a string: {_clip(value)}")
    text = value.strip()
    span = _TIMESPAN_RE.match(text)
    if span:
        return timedelta(
            days=int(span.group("d") or 0),
            hours=int(span.group("h")),
            minutes=int(span.group("m")),
            seconds=float(span.group("s")),
        )
    iso = _ISO_DURATION_RE.match(text)
    if iso and text not in ("P", "PT"):
        return timedelta(
            days=float(iso.group("d") or 0),
            hours=float(iso.group("h") or 0),
            minutes=float(iso.group("m") or 0),
            seconds=float(iso.group("s") or 0),
        )
    raise BodyError(f"bad duration: {_clip(value)}")


def parse_job_resource(body: object) -> JobObservation:
    """A JobResource (single GET or a list item) into a JobObservation."""
    if not isinstance(body, dict):
        raise BodyError("job body is not a JSON object")
    props = body.get("properties")
    if not isinstance(props, dict):
        raise BodyError("job body has no properties object")
    status = props.get("status")
    if not isinstance(status, str) or not status.strip():
        raise BodyError("job body has no status")
    raw_id = body.get("id")
    vault: VaultRef | None = None
    job_id: str | None = None
    if isinstance(raw_id, str):
        vault, job_id = _job_arm_id(raw_id)
    if job_id is None:
        name = body.get("name")
        if isinstance(name, str) and GUID_RE.match(name):
            job_id = name.lower()
    if job_id is None:
        raise BodyError("job body has neither a job ARM id nor a GUID name")
    return JobObservation(
        job_id=job_id,
        vault=vault,
        status=status.strip(),
        job_type=_opt_str(props.get("jobType")),
        operation=_opt_str(props.get("operation")),
        entity_friendly_name=_opt_str(props.get("entityFriendlyName")),
        backup_management_type=_opt_str(props.get("backupManagementType")),
        start_time=parse_time(props.get("startTime")),
        end_time=parse_time(props.get("endTime")),
        duration=parse_duration(props.get("duration")),
        properties=props,
        error_details=parse_error_details(props),
        progress=parse_progress(props),
    )


@functools.lru_cache(maxsize=1 << 16)
def _job_arm_id(raw_id: str) -> tuple[VaultRef | None, str | None]:
    """Cached: every sweep lists a running job's same ARM id again."""
    match = JOB_ID_RE.match(raw_id)
    if match is None:
        return None, None
    return _vault_from_match(match), match.group("job").lower()


def parse_operation_status(body: object) -> OperationObservation:
    """An OperationStatus body (`backupOperations/{id}`, `operationsStatus/{id}`)."""
    if not isinstance(body, dict):
        raise BodyError("operation body is not a JSON object")
    status = body.get("status")
    if not isinstance(status, str) or not status:
        raise BodyError("operation body has no status")
    job_ids: list[str] = []
    props = body.get("properties")
    if isinstance(props, dict):
        single = props.get("jobId")
        if single is not None:
            job_ids.append(_body_guid(single))
        many = props.get("jobIds")
        if many is not None:
            if not isinstance(many, list):
                raise BodyError("jobIds is not a list")
            job_ids.extend(_body_guid(item) for item in many)
    error = body.get("error")
    code = message = None
    if isinstance(error, dict):
        code = _opt_str(error.get("code"))
        message = _opt_str(error.get("message"))
    return OperationObservation(
        status=status,
        job_ids=tuple(dict.fromkeys(job_ids)),
        error_code=code,
        error_message=message,
    )


def snapshot_hash(properties: dict[str, Any]) -> str:
    """Content hash of a job's properties, ignoring fields Azure recomputes on every read."""
    stable = {k: v for k, v in properties.items() if k not in VOLATILE_PROPERTIES}
    ext = stable.get("extendedInfo")
    if isinstance(ext, dict) and isinstance(ext.get("tasksList"), list):
        tasks = [
            {k: v for k, v in t.items() if k not in VOLATILE_PROPERTIES}
            if isinstance(t, dict)
            else t
            for t in ext["tasksList"]
        ]
        stable["extendedInfo"] = {**ext, "tasksList": tasks}
    # Sorted, compact, UTF-8 JSON (as json.dumps with sort_keys, compact separators and
    # ensure_ascii=False, but for the spelling of some floats), several times faster.
    return hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()


def actions_info(properties: dict[str, Any]) -> list[str]:
    """`actionsInfo` as names whether Azure sent `[1]` or `["Cancellable"]`."""
    names = {0: "Invalid", 1: "Cancellable", 2: "Retriable"}
    raw = properties.get("actionsInfo") or []
    if not isinstance(raw, list):
        return []
    return [names.get(item, str(item)) if isinstance(item, int) else str(item) for item in raw]


def _vault_from_match(match: re.Match[str]) -> VaultRef:
    rg = match.group("rg")
    if ".." in rg or rg.endswith("."):
        raise InvalidInput(f"not a valid resource group name: {_clip(rg)}")
    name = match.group("vault")
    if ".." in name:
        raise InvalidInput(f"not a valid vault name: {_clip(name)}")
    return VaultRef(match.group("sub").lower(), rg, name)


def _split_zone(text: str) -> tuple[str, str, str]:
    for sign in ("+", "-"):
        idx = text.rfind(sign)
        if idx > 10:
            return text[:idx], sign, text[idx:]
    return text, "", ""


def _body_guid(value: object) -> str:
    if not isinstance(value, str) or not GUID_RE.match(value):
        raise BodyError(f"operation names a job id that is not a GUID: {_clip(value)}")
    return value.lower()


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value != "" else None


def _clip(value: object, limit: int = 80) -> str:
    """A printable, bounded rendering of user input for one-line error messages."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
