"""The JSON views the CLI (`--json`) and the API print, declared once: each field's name, its
JSON Schema and how it is read off a record. `render` prints a record through a view and
`object_schema` gives the view's schema, which the OpenAPI document uses, so what is printed
and what is documented cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "JOB_VIEW",
    "OPERATION_VIEW",
    "REPLICA_VIEW",
    "SNAPSHOT_VIEW",
    "TRANSITION_VIEW",
    "ViewField",
    "iso",
    "object_schema",
    "render",
]


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@dataclass(frozen=True, slots=True)
class ViewField:
    name: str
    schema: Mapping[str, Any]
    read: Callable[[Any], Any]


def render(view: Sequence[ViewField], record: Any) -> dict[str, Any]:
    return {field.name: field.read(record) for field in view}


def object_schema(view: Sequence[ViewField]) -> dict[str, Any]:
    """The JSON Schema of what `render(view, …)` prints: every field present, no others."""
    return {
        "type": "object",
        "required": [field.name for field in view],
        "additionalProperties": False,
        "properties": {field.name: dict(field.schema) for field in view},
    }


_STRING: Mapping[str, Any] = {"type": "string"}
_NULLABLE_STRING: Mapping[str, Any] = {"type": ["string", "null"]}
_TIME: Mapping[str, Any] = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Mapping[str, Any] = {"type": ["string", "null"], "format": "date-time"}
_BOOLEAN: Mapping[str, Any] = {"type": "boolean"}
_COUNT: Mapping[str, Any] = {"type": "integer", "minimum": 0}
_TRACKING = ("active", "finished", "lost", "stopped")
VAULT_KINDS = ("RecoveryServices", "DataProtection")


def _attr(name: str) -> Callable[[Any], Any]:
    return lambda record: getattr(record, name)


def _time(name: str) -> Callable[[Any], Any]:
    return lambda record: iso(getattr(record, name))


def _field(name: str, schema: Mapping[str, Any]) -> ViewField:
    """A field printed as the record's attribute of the same name (times as ISO strings)."""
    is_time = schema.get("format") == "date-time"
    return ViewField(name, schema, _time(name) if is_time else _attr(name))


JOB_VIEW: tuple[ViewField, ...] = (
    _field("job_id", {"type": "string", "pattern": "^[0-9a-f-]{36}$"}),
    _field("vault_id", _STRING),
    _field(
        "status", {**_NULLABLE_STRING, "description": "Azure job status; null until first seen"}
    ),
    _field("job_type", _NULLABLE_STRING),
    _field("operation", _NULLABLE_STRING),
    _field("entity_friendly_name", _NULLABLE_STRING),
    _field("backup_management_type", _NULLABLE_STRING),
    _field("start_time", _NULLABLE_TIME),
    _field("end_time", _NULLABLE_TIME),
    _field("finished", _BOOLEAN),
    ViewField("tracking", {"type": "string", "enum": list(_TRACKING)}, lambda r: r.tracking.value),
    _field("source", _STRING),
    _field("registered_at", _TIME),
    _field("last_polled_at", _NULLABLE_TIME),
    _field("next_poll_at", _NULLABLE_TIME),
    _field("finished_at", _NULLABLE_TIME),
    _field("poll_count", _COUNT),
    _field("error_count", _COUNT),
    _field("last_error", _NULLABLE_STRING),
    _field("last_error_at", _NULLABLE_TIME),
    ViewField("stuck", _BOOLEAN, lambda r: r.stuck_since is not None),
    _field("stuck_since", _NULLABLE_TIME),
    ViewField(
        "error_details",
        {
            "type": "array",
            "description": "Azure's errorDetails as last read ([] when none)",
            "items": {
                "type": "object",
                "required": ["code", "message", "recommendations"],
                "additionalProperties": False,
                "properties": {
                    "code": _NULLABLE_STRING,
                    "message": _STRING,
                    "recommendations": {"type": "array", "items": _STRING},
                },
            },
        },
        lambda r: [d.to_json() for d in r.error_details],
    ),
    _field("not_found_since", _NULLABLE_TIME),
    _field(
        "progress_percent",
        {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 100,
            "description": "How far the job is, from Azure's progress or its task list",
        },
    ),
    _field(
        "operation_id",
        {**_NULLABLE_STRING, "description": "The operation (trigger) the job came from"},
    ),
    _field(
        "expected_end_at",
        {
            **_NULLABLE_TIME,
            "description": "When the job should end, from how long similar finished jobs took"
            " (median per operation, job type and entity); null when finished or when"
            " nothing similar has finished yet",
        },
    ),
    ViewField(
        "vault_kind",
        {
            "type": "string",
            "enum": list(VAULT_KINDS),
            "description": "RecoveryServices (vaults) or DataProtection (Backup vaults)",
        },
        lambda r: r.vault_kind.value,
    ),
    _field(
        "region",
        {
            **_NULLABLE_STRING,
            "description": "The secondary region of a cross-region-restore job, else null",
        },
    ),
)

TRANSITION_VIEW: tuple[ViewField, ...] = (
    _field("from_status", _NULLABLE_STRING),
    _field("to_status", _STRING),
    _field("observed_at", _TIME),
)

SNAPSHOT_VIEW: tuple[ViewField, ...] = (
    _field("observed_at", _TIME),
    _field("status", _STRING),
    _field("properties", {"type": "object"}),
)

OPERATION_VIEW: tuple[ViewField, ...] = (
    _field("operation_id", _STRING),
    _field("vault_id", _STRING),
    _field("status", {**_NULLABLE_STRING, "description": "Azure's operation status"}),
    ViewField("tracking", {"type": "string", "enum": list(_TRACKING)}, lambda r: r.tracking.value),
    _field("registered_at", _TIME),
    _field("last_polled_at", _NULLABLE_TIME),
    _field("poll_count", _COUNT),
    ViewField(
        "job_ids",
        {"type": "array", "items": _STRING, "description": "The jobs it started"},
        lambda r: list(r.job_ids),
    ),
    _field(
        "last_error",
        {**_NULLABLE_STRING, "description": "Why Azure rejected the trigger, or a read error"},
    ),
    ViewField(
        "vault_kind", {"type": "string", "enum": list(VAULT_KINDS)}, lambda r: r.vault_kind.value
    ),
    _field("region", _NULLABLE_STRING),
)

_BUDGET: Mapping[str, Any] = {
    "type": "object",
    "description": "The read budget a replica learned for one subscription",
    "required": ["subscription_id", "rate"],
    "properties": {
        "subscription_id": _STRING,
        "rate": {"type": "number", "description": "reads/s it paces itself to"},
        "burst": {"type": "number"},
        "remaining": {"type": ["integer", "null"], "description": "Azure's last count"},
        "reads": _COUNT,
        "throttled": _COUNT,
    },
}

REPLICA_VIEW: tuple[ViewField, ...] = (
    _field("instance_id", _STRING),
    _field("hostname", _STRING),
    _field("pid", _COUNT),
    _field("started_at", _TIME),
    _field("last_seen_at", _TIME),
    ViewField(
        "owns",
        {"type": "array", "items": _STRING, "description": "Subscriptions it polls (leases)"},
        lambda replica: list(replica.owns),
    ),
    ViewField(
        "budgets",
        {"type": "array", "items": _BUDGET},
        lambda replica: [dict(b) for b in replica.budgets],
    ),
)
