"""The component schemas of the OpenAPI document: the JSON views the API answers with
(`Job` is what `JobRecord.to_json` prints, also the CLI's `--json`) and the registration forms
it accepts. Kept apart from the paths so each can be read on its own; the schemathesis suite
checks every answer against them."""

from __future__ import annotations

from typing import Any

from backupjobd.core import azure, registration
from backupjobd.core.registration import Endpoint
from backupjobd.core.views import (
    JOB_VIEW,
    OPERATION_VIEW,
    REPLICA_VIEW,
    SNAPSHOT_VIEW,
    TRANSITION_VIEW,
    object_schema,
)
from backupjobd.http.params import (
    GUID_PATTERN,
    JOB_ARM_ID_PATTERN,
    VAULT_CHILD_ID_PATTERN,
    VAULT_ID_PATTERN,
    operation_url_pattern,
)

__all__ = [
    "component_schemas",
    "json_content",
    "ref",
    "registration_schemas",
    "view_schemas",
]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def component_schemas(endpoint: Endpoint) -> dict[str, Any]:
    """Every schema the paths refer to; operation URLs name `endpoint`."""
    return {**view_schemas(), **registration_schemas(endpoint)}


def view_schemas() -> dict[str, Any]:
    """What the API answers with; the jobs, transitions and snapshots from the views that
    print them (`core.views`)."""
    nullable_str = {"type": ["string", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "Job": object_schema(JOB_VIEW),
        "Operation": object_schema(OPERATION_VIEW),
        "Operations": {
            "type": "object",
            "required": ["operations"],
            "additionalProperties": False,
            "properties": {"operations": {"type": "array", "items": ref("Operation")}},
        },
        "OperationWait": {
            "type": "object",
            "required": ["operation", "jobs"],
            "additionalProperties": False,
            "properties": {
                "operation": ref("Operation"),
                "jobs": {"type": "array", "items": ref("Job")},
            },
        },
        "Replicas": {
            "type": "object",
            "required": ["replicas"],
            "additionalProperties": False,
            "properties": {"replicas": {"type": "array", "items": object_schema(REPLICA_VIEW)}},
        },
        "JobPage": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "additionalProperties": False,
            "properties": {
                "jobs": {"type": "array", "items": ref("Job")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as ?cursor= for the next page; null on the last page",
                },
            },
        },
        "History": {
            "type": "object",
            "required": ["job", "transitions", "snapshots"],
            "additionalProperties": False,
            "properties": {
                "job": ref("Job"),
                "transitions": {"type": "array", "items": object_schema(TRANSITION_VIEW)},
                "snapshots": {"type": "array", "items": object_schema(SNAPSHOT_VIEW)},
            },
        },
        "RegisterResults": {
            "type": "object",
            "required": ["results"],
            "additionalProperties": False,
            "properties": {
                "results": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["kind", "id", "vault_id", "new", "created"],
                        "additionalProperties": False,
                        "properties": {
                            "kind": {"type": "string", "enum": ["job", "operation"]},
                            "vault_id": {"type": "string"},
                            "id": {"type": "string"},
                            "new": {"type": "boolean", "description": "not tracked before"},
                            "created": {"type": "boolean", "description": "the same as new"},
                        },
                    },
                }
            },
        },
        "Cancel": {
            "type": "object",
            "required": ["job_id", "cancel"],
            "additionalProperties": False,
            "properties": {
                "job_id": {"type": "string"},
                "cancel": {"type": "string", "enum": ["completed", "accepted"]},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "last_tick_age_seconds"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "last_tick_age_seconds": {"type": ["number", "null"]},
            },
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks", "failing"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "required": ["database", "credential"],
                    "additionalProperties": False,
                    "properties": {
                        name: {
                            "type": "object",
                            "required": ["ok", "error"],
                            "additionalProperties": False,
                            "properties": {"ok": {"type": "boolean"}, "error": nullable_str},
                        }
                        for name in ("database", "credential")
                    },
                },
                "failing": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["database", "credential"]},
                },
            },
        },
    }


def registration_schemas(endpoint: Endpoint) -> dict[str, Any]:
    """What `POST /v1/jobs` accepts: the forms `registration.parse_documents` reads."""
    op_url = {"type": "string", "pattern": operation_url_pattern(endpoint)}
    vault_id = {"type": "string", "pattern": VAULT_ID_PATTERN}
    guid = {"type": "string", "pattern": GUID_PATTERN}
    return {
        "JobArmId": {
            "type": "string",
            "pattern": JOB_ARM_ID_PATTERN,
            "description": "A job ARM id: /subscriptions/…/vaults/{v}/backupJobs/{guid}",
        },
        "OperationUrl": {
            **op_url,
            "description": "An Azure-AsyncOperation or Location URL on the configured "
            "management endpoint (URLs on other hosts are refused: the daemon would send its "
            "token there)",
        },
        "JobIdWithVault": {
            "type": "object",
            "required": ["job_id", "vault_id"],
            "properties": {"job_id": guid, "vault_id": vault_id},
        },
        "JobResource": {
            "type": "object",
            "description": "A JobResource body (what `az backup protection backup-now` prints) "
            "or any object whose id is a job ARM id",
            "required": ["id"],
            "properties": {
                "id": ref("JobArmId"),
                "properties": {"description": "The job's properties (not read)"},
            },
        },
        "OperationStatus": {
            "type": "object",
            "description": "An operation-status body that names its job(s); the vault comes "
            "from its id",
            "required": ["status", "id", "properties"],
            "properties": {
                "status": {
                    "type": "string",
                    "minLength": 1,
                    "not": {"enum": sorted(azure.OPERATION_FAILED_STATUSES)},
                    "examples": ["Succeeded"],
                },
                "id": {"type": "string", "pattern": VAULT_CHILD_ID_PATTERN},
                "properties": {
                    "type": "object",
                    "properties": {
                        "objectType": {
                            "examples": [
                                "OperationStatusJobExtendedInfo",
                                "OperationStatusJobsExtendedInfo",
                            ]
                        },
                        "jobId": {"type": ["string", "null"], "pattern": GUID_PATTERN},
                        "jobIds": {"type": ["array", "null"], "items": guid},
                    },
                    "anyOf": [
                        {"required": ["jobId"], "properties": {"jobId": {"type": "string"}}},
                        {
                            "required": ["jobIds"],
                            "properties": {"jobIds": {"type": "array", "minItems": 1}},
                        },
                    ],
                },
            },
        },
        "AcceptedHeaders": {
            "type": "object",
            "description": "The headers of a trigger call's 202 answer",
            "required": ["headers"],
            "properties": {
                "headers": {
                    "type": "object",
                    "anyOf": [{"required": ["Azure-AsyncOperation"]}, {"required": ["Location"]}],
                    "properties": {
                        "Azure-AsyncOperation": ref("OperationUrl"),
                        "Location": ref("OperationUrl"),
                    },
                }
            },
        },
        "OperationUrlObject": {
            "type": "object",
            "required": ["operation_url"],
            "properties": {"operation_url": ref("OperationUrl")},
        },
        "RegistrationDocument": {
            "anyOf": [
                ref("JobArmId"),
                ref("OperationUrl"),
                ref("JobIdWithVault"),
                ref("JobResource"),
                ref("OperationStatus"),
                ref("AcceptedHeaders"),
                ref("OperationUrlObject"),
            ]
        },
        "Registration": {
            "anyOf": [
                ref("RegistrationDocument"),
                {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": registration.MAX_DOCUMENTS,
                    "items": ref("RegistrationDocument"),
                },
            ]
        },
    }
