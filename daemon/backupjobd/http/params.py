"""Query and path parameters of the API: the patterns the handlers enforce and the OpenAPI
document publishes (one definition each, so the two cannot drift), their parsing, and the
error answer a bad one becomes."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

from aiohttp import web

from backupjobd.core import azure
from backupjobd.core.registration import Endpoint
from backupjobd.errors import InvalidInput

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_LIMIT",
    "GUID",
    "GUID_PATTERN",
    "JOB_ARM_ID_PATTERN",
    "MAX_LIMIT",
    "MAX_STATUS_LENGTH",
    "OPERATION_ID_PATTERN",
    "VAULT_CHILD_ID_PATTERN",
    "VAULT_ID_PATTERN",
    "ApiError",
    "bad_param",
    "bool_param",
    "cursor_param",
    "datetime_param",
    "job_id_param",
    "limit_param",
    "one_line",
    "operation_url_pattern",
    "single",
    "status_param",
    "vault_param",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_STATUS_LENGTH = 64
# GET /v1/jobs/{id}/wait: how long a request may hold on (a proxy's read timeout is the
# usual limit; a caller wanting longer asks again).
DEFAULT_WAIT_SECONDS = 60.0
MAX_WAIT_SECONDS = 3600.0

# Patterns shared by the handlers and the OpenAPI document (ECMA- and Python-compatible).
GUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# 1 to 90 characters, no "..", not ending in "." (the Unicode letters Azure also allows are
# accepted but not described).
_RESOURCE_GROUP = r"(?:[-A-Za-z0-9_()]|\.(?=[-A-Za-z0-9_()])){1,90}"
_VAULT = (
    f"/subscriptions/{GUID}/resourceGroups/{_RESOURCE_GROUP}"
    # A vault name never holds "..", as `azure.vault_from_id` checks (no path tricks).
    r"/providers/Microsoft\.RecoveryServices/vaults/[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.)){0,49}"
)
GUID_PATTERN = f"^{GUID}$"
VAULT_ID_PATTERN = f"^{_VAULT}/?$"
JOB_ARM_ID_PATTERN = f"^{_VAULT}/backupJobs/{GUID}/?$"
VAULT_CHILD_ID_PATTERN = f"^{_VAULT}(/[\\s\\S]*)?$"
CURSOR_PATTERN = "^[0-9]{1,18}$"
_SEGMENT = "[A-Za-z0-9;_-][A-Za-z0-9;_.-]{0,63}"
_OPERATION_ID = "[A-Za-z0-9][A-Za-z0-9_=-]{0,199}"
OPERATION_ID_PATTERN = f"^{_OPERATION_ID}$"
_OPERATION_PATH = (
    f"{_VAULT}(?:/backupFabrics/{_SEGMENT}/protectionContainers/{_SEGMENT}"
    f"/protectedItems/{_SEGMENT}/(?:operationsStatus|operationResults)"
    f"|/backupOperations|/backupOperationResults|/backupJobs/{GUID}/operationResults)"
    f"/{_OPERATION_ID}/?(?:[?][A-Za-z0-9=&._-]*)?"
)
_GUID_RE = re.compile(GUID_PATTERN.replace("$", r"\Z"))
_CURSOR_RE = re.compile(CURSOR_PATTERN.replace("$", r"\Z"))
_INT_RE = re.compile(r"^[0-9]{1,9}\Z")
_DATETIME_RE = re.compile(
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})[Tt](?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?P<frac>\.[0-9]+)?(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})?\Z"
)
_BOOLEANS = {"true": True, "false": False}


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and one line for humans."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def operation_url_pattern(endpoint: Endpoint) -> str:
    """Operation URLs the API accepts: on the configured management endpoint only."""
    default = 443 if endpoint.scheme == "https" else 80
    port = f"(?::{endpoint.port})?" if endpoint.port == default else f":{endpoint.port}"
    return f"^{endpoint.scheme}://{_escape_host(endpoint.host)}{port}{_OPERATION_PATH}$"


def _escape_host(host: str) -> str:
    escaped = host.replace(".", r"\.")
    return rf"\[{escaped}\]" if ":" in host else escaped


def single(request: web.Request, name: str) -> str | None:
    """A query parameter given at most once (twice is ambiguous, so an error)."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise bad_param(name, "is given more than once")
    return values[0] if values else None


def job_id_param(request: web.Request) -> str:
    """The path's job GUID, lower-cased as the store keeps it."""
    job_id = request.match_info["job_id"]
    if not _GUID_RE.match(job_id):
        raise bad_param("job_id", "must be a GUID")
    return job_id.lower()


def vault_param(request: web.Request) -> azure.VaultRef | None:
    value = single(request, "vault")
    if value is None:
        return None
    if value != value.strip():
        raise bad_param("vault", "must be a Recovery Services vault ARM id")
    try:
        return azure.vault_from_id(value)
    except InvalidInput:
        raise bad_param("vault", "must be a Recovery Services vault ARM id") from None


def status_param(request: web.Request) -> str | None:
    status = single(request, "status")
    if status is not None and not 0 < len(status) <= MAX_STATUS_LENGTH:
        raise bad_param("status", f"must be 1 to {MAX_STATUS_LENGTH} characters")
    return status


def limit_param(request: web.Request) -> int:
    raw = single(request, "limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not _INT_RE.match(raw) or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_param("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def timeout_param(request: web.Request) -> float:
    """`?timeout=` seconds for a wait: 0 to MAX_WAIT_SECONDS, DEFAULT_WAIT_SECONDS if absent."""
    raw = single(request, "timeout")
    if raw is None:
        return DEFAULT_WAIT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT_SECONDS:
        raise bad_param("timeout", f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}")
    return value


def cursor_param(request: web.Request) -> int | None:
    """The last pk of the previous page, as `next_cursor` gave it."""
    cursor = single(request, "cursor")
    if cursor is None:
        return None
    if not _CURSOR_RE.match(cursor):
        raise bad_param("cursor", "is not a cursor this API returned")
    return int(cursor)


def bool_param(request: web.Request, name: str) -> bool | None:
    value = single(request, name)
    if value is None:
        return None
    if value not in _BOOLEANS:
        raise bad_param(name, "must be true or false")
    return _BOOLEANS[value]


def datetime_param(request: web.Request, name: str) -> datetime | None:
    """RFC 3339 date-time (a missing offset means UTC; a leap second counts as :59)."""
    value = single(request, name)
    if value is None:
        return None
    match = _DATETIME_RE.match(value)
    if match is None:
        raise bad_param(name, "must be an RFC 3339 date-time, e.g. 2026-03-01T12:00:00Z")
    try:
        zone = match["zone"]
        tz = UTC
        if zone and zone not in ("Z", "z"):
            sign = 1 if zone[0] == "+" else -1
            hours, minutes = int(zone[1:3]), int(zone[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        year, month, day = (int(p) for p in match["date"].split("-"))
        hour, minute, second = int(match["h"]), int(match["m"]), min(int(match["s"]), 59)
        if second == 59 and int(match["s"]) == 60 and not (hour == 23 and minute == 59):
            raise ValueError("a leap second only ends a day")
        micro = int((match["frac"] or ".0")[1:7].ljust(6, "0"))
        if year == 0:  # RFC 3339 allows year 0000; Python does not: nothing is earlier
            return datetime.min.replace(tzinfo=UTC)
        parsed = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        raise bad_param(name, "is not a valid date-time") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return (datetime.min if parsed.year == 1 else datetime.max).replace(tzinfo=UTC)


def bad_param(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_parameter", f"parameter {name} {problem}")


def one_line(text: str) -> str:
    """The first line, clipped: error answers are one line for humans."""
    line = text.splitlines()[0] if text else ""
    return azure._clip(line, 500) if len(line) > 500 else line
