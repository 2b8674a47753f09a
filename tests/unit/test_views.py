"""The JSON views are declared once (`core.views`): what a record prints and what the OpenAPI
document says about it are the same fields, and each printed value fits its schema."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd.core.azure import ErrorDetail
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import SnapshotRecord, TransitionRecord
from backupjobd.core.registration import Endpoint
from backupjobd.core.views import JOB_VIEW, SNAPSHOT_VIEW, TRANSITION_VIEW, object_schema
from backupjobd.http import openapi_document
from tests.unit.test_events import record

WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
_TYPES: dict[str, Any] = {
    "string": str,
    "boolean": bool,
    "integer": int,
    "object": dict,
    "array": list,
    "number": (int, float),
    "null": type(None),
}


def fits(value: Any, schema: dict[str, Any]) -> bool:
    """The part of JSON Schema the views use: type (or a list of types), enum, pattern,
    minimum, format date-time, array items and object properties."""
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if not any(
        isinstance(value, _TYPES[k]) and not (k == "integer" and isinstance(value, bool))
        for k in kinds
    ):
        return False
    if value is None:
        return True
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "pattern" in schema and not re.search(schema["pattern"], value):
        return False
    if "minimum" in schema and value < schema["minimum"]:
        return False
    if schema.get("format") == "date-time":
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, list) and "items" in schema:
        return all(fits(item, schema["items"]) for item in value)
    if isinstance(value, dict) and "properties" in schema:
        if schema.get("additionalProperties") is False and set(value) - set(schema["properties"]):
            return False
        if set(schema.get("required", ())) - set(value):
            return False
        return all(fits(v, schema["properties"][k]) for k, v in value.items())
    return True


JOBS = [
    record(),
    record(
        status="Failed",
        tracking=Tracking.FINISHED,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity_friendly_name="vm-1",
        start_time=WHEN,
        end_time=WHEN + timedelta(minutes=5),
        last_polled_at=WHEN,
        finished_at=WHEN,
        poll_count=4,
        error_count=1,
        last_error="HTTP 500",
        last_error_at=WHEN,
        stuck_since=WHEN,
        error_details=(
            ErrorDetail("400230", "Snapshot failed", ("Retry", "Check the VM agent")),
            ErrorDetail(None, "DPM error"),
        ),
    ),
]


@pytest.mark.parametrize("job", JOBS)
def test_a_job_prints_exactly_its_documented_fields(job: Any) -> None:
    printed = job.to_json()
    schema = object_schema(JOB_VIEW)
    assert list(printed) == schema["required"] == list(schema["properties"])
    for name, value in printed.items():
        assert fits(value, schema["properties"][name]), (name, value)


def test_transitions_and_snapshots_fit_their_schemas() -> None:
    for view, item in (
        (TRANSITION_VIEW, TransitionRecord(1, None, "InProgress", WHEN)),
        (SNAPSHOT_VIEW, SnapshotRecord(WHEN, "InProgress", {"extendedInfo": {}})),
    ):
        printed = item.to_json()
        schema = object_schema(view)
        assert list(printed) == schema["required"]
        assert all(fits(v, schema["properties"][k]) for k, v in printed.items())


def test_the_openapi_document_publishes_the_views() -> None:
    document = openapi_document(Endpoint.from_url("https://management.azure.com"), secured=True)
    schemas = document["components"]["schemas"]
    assert schemas["Job"] == object_schema(JOB_VIEW)
    history = schemas["History"]["properties"]
    assert history["transitions"]["items"] == object_schema(TRANSITION_VIEW)
    assert history["snapshots"]["items"] == object_schema(SNAPSHOT_VIEW)
