"""The OpenAPI 3.1 document of the API, built from the same constants the handlers enforce
(limits, patterns, the operation-URL host) and the same middleware rules, so the two cannot
drift apart silently: the app even reads each operation's query parameters from it, and a
schemathesis suite checks the answers against it."""

from __future__ import annotations

from typing import Any

from backupjobd.config import ApiConfig
from backupjobd.core.registration import Endpoint
from backupjobd.http import guard as apiguard
from backupjobd.http.params import (
    CURSOR_PATTERN,
    DEFAULT_LIMIT,
    DEFAULT_WAIT_SECONDS,
    GUID_PATTERN,
    MAX_LIMIT,
    MAX_STATUS_LENGTH,
    MAX_WAIT_SECONDS,
    OPERATION_ID_PATTERN,
    VAULT_ID_PATTERN,
)
from backupjobd.http.schemas import component_schemas, json_content, ref

__all__ = ["API_VERSION", "openapi_document"]

API_VERSION = "1.0.0"


def openapi_document(
    endpoint: Endpoint, *, secured: bool, config: ApiConfig | None = None
) -> dict[str, Any]:
    """The OpenAPI 3.1 description of exactly this app (operation URLs name its endpoint)."""
    max_body = (config or ApiConfig()).max_body_bytes
    vault_id = {"type": "string", "pattern": VAULT_ID_PATTERN}
    guid = {"type": "string", "pattern": GUID_PATTERN}
    schemas = component_schemas(endpoint)
    error = _error_response
    unauthorized = (
        {
            "401": {
                "description": "Missing or wrong bearer token",
                "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
                "content": json_content(ref("Error")),
            }
        }
        if secured
        else {}
    )
    unavailable = {
        "503": {
            "description": "The database (or Azure) is unavailable; retry later",
            "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
            "content": json_content(ref("Error")),
        }
    }
    job_param = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": guid,
        "description": "The job GUID",
    }
    vault_param = {
        "name": "vault",
        "in": "query",
        "required": False,
        "schema": vault_id,
        "description": "The vault ARM id, when the GUID is tracked in several vaults",
    }
    operation_param = {
        "name": "operation_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": OPERATION_ID_PATTERN},
    }
    timeout_param = {
        "name": "timeout",
        "in": "query",
        "schema": {
            "type": "number",
            "minimum": 0,
            "maximum": MAX_WAIT_SECONDS,
            "default": DEFAULT_WAIT_SECONDS,
        },
    }
    security: list[dict[str, list[str]]] = [{"bearer": []}] if secured else []

    def v1(op: dict[str, Any], *codes: str) -> dict[str, Any]:
        responses = dict(op.pop("responses"))
        for code in codes:
            responses[code] = error(code)
        responses.update(unauthorized)
        responses.update(unavailable)
        return {**op, "security": security, "responses": responses}

    job_ops = {
        "get": v1(
            {
                "operationId": "showJob",
                "summary": "One job's current state",
                "parameters": [job_param, vault_param],
                "responses": {
                    "200": {"description": "The job", "content": json_content(ref("Job"))}
                },
            },
            "400",
            "404",
            "409",
        ),
        "delete": v1(
            {
                "operationId": "stopTracking",
                "summary": "Stop polling the job (its history is kept)",
                "parameters": [job_param, vault_param],
                "responses": {
                    "200": {"description": "The stopped job", "content": json_content(ref("Job"))}
                },
            },
            "400",
            "404",
            "409",
        ),
    }
    paths: dict[str, Any] = {
        "/v1/jobs": {
            "post": v1(
                {
                    "operationId": "registerJobs",
                    "summary": "Start tracking jobs or operations (any registration form)",
                    "description": "One document or an array; every document must be valid "
                    "or nothing is stored. A job id without a vault_id, or an operation-status "
                    "body without a vault id, takes the vault from ?vault=.",
                    "parameters": [
                        {
                            **vault_param,
                            "description": "Vault ARM id for documents that do not name one",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("Registration")}},
                    },
                    "responses": {
                        "200": {
                            "description": "Everything was already tracked",
                            "content": json_content(ref("RegisterResults")),
                        },
                        "201": {
                            "description": "At least one job or operation is newly tracked",
                            "content": json_content(ref("RegisterResults")),
                        },
                        "413": {
                            "description": f"The body is larger than {max_body} bytes",
                            "content": json_content(ref("Error")),
                        },
                    },
                },
                "400",
                "415",
            ),
            "get": v1(
                {
                    "operationId": "listJobs",
                    "summary": "Tracked jobs in registration order, a page at a time",
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": MAX_STATUS_LENGTH,
                            },
                            "description": "An Azure status (case-insensitive) or a tracking "
                            "state: active, finished, lost, stopped",
                        },
                        vault_param | {"description": "Only jobs of this vault"},
                        {"name": "finished", "in": "query", "schema": {"type": "boolean"}},
                        {
                            "name": "stuck",
                            "in": "query",
                            "schema": {"type": "boolean"},
                            "description": "true: only jobs flagged stuck",
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "schema": {"type": "string", "format": "date-time"},
                            "description": "Registered at or after this time",
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_LIMIT,
                                "default": DEFAULT_LIMIT,
                            },
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                            "description": "next_cursor of the previous page (opaque)",
                        },
                    ],
                    "responses": {
                        "200": {"description": "One page", "content": json_content(ref("JobPage"))}
                    },
                },
                "400",
            ),
        },
        "/v1/jobs/{job_id}": job_ops,
        "/v1/jobs/{job_id}/history": {
            "get": v1(
                {
                    "operationId": "jobHistory",
                    "summary": "Transitions and distinct snapshots, oldest first",
                    "parameters": [job_param, vault_param],
                    "responses": {
                        "200": {
                            "description": "The history",
                            "content": json_content(ref("History")),
                        }
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/v1/jobs/{job_id}/wait": {
            "get": v1(
                {
                    "operationId": "waitJob",
                    "summary": "Wait until the job is no longer tracked actively, or a timeout",
                    "description": "Answers 200 once the job is finished or lost, 202 with the"
                    " job as it stands when `timeout` seconds passed first.",
                    "parameters": [job_param, vault_param, timeout_param],
                    "responses": {
                        "200": {
                            "description": "The job, no longer active",
                            "content": json_content(ref("Job")),
                        },
                        "202": {
                            "description": "The timeout passed; the job, still active",
                            "content": json_content(ref("Job")),
                        },
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/v1/jobs/{job_id}/cancel": {
            "post": v1(
                {
                    "operationId": "cancelJob",
                    "summary": "Ask Azure to cancel the job",
                    "description": "Azure's 400 answers 400 and its other 4xx answer 409, "
                    "with Azure's error code; Azure unreachable or throttling answers 503. "
                    "A cross-region-restore or Backup vault job answers 409 "
                    "CancelNotSupported: Azure cannot cancel those.",
                    "parameters": [job_param, vault_param],
                    "responses": {
                        "202": {
                            "description": "Azure accepted (or completed) the cancellation",
                            "content": json_content(ref("Cancel")),
                        },
                        "502": {
                            "description": "Azure gave an answer the daemon cannot use",
                            "content": json_content(ref("Error")),
                        },
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/v1/operations": {
            "get": v1(
                {
                    "operationId": "listOperations",
                    "summary": "Registered operations (triggers) and the jobs they started",
                    "responses": {
                        "200": {
                            "description": "The operations",
                            "content": json_content(ref("Operations")),
                        }
                    },
                },
            )
        },
        "/v1/operations/{operation_id}": {
            "get": v1(
                {
                    "operationId": "showOperation",
                    "summary": "One operation: status, the jobs it started, or Azure's error",
                    "parameters": [operation_param],
                    "responses": {
                        "200": {
                            "description": "The operation",
                            "content": json_content(ref("Operation")),
                        }
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/v1/operations/{operation_id}/wait": {
            "get": v1(
                {
                    "operationId": "waitOperation",
                    "summary": "Wait until the operation's jobs are no longer tracked actively"
                    " (or Azure rejected the trigger), or a timeout",
                    "description": "Answers 200 once the operation ended and every job it named"
                    " is finished or lost (no jobs: Azure rejected the trigger, see"
                    " `last_error`), 202 as things stand when `timeout` seconds passed first.",
                    "parameters": [operation_param, timeout_param],
                    "responses": {
                        "200": {
                            "description": "The operation and its jobs, done",
                            "content": json_content(ref("OperationWait")),
                        },
                        "202": {
                            "description": "The timeout passed; the operation and its jobs",
                            "content": json_content(ref("OperationWait")),
                        },
                    },
                },
                "400",
                "404",
                "409",
            )
        },
        "/v1/replicas": {
            "get": v1(
                {
                    "operationId": "listReplicas",
                    "summary": "Live `serve` replicas, the subscriptions each polls and the"
                    " read budgets each learned",
                    "responses": {
                        "200": {
                            "description": "The replicas",
                            "content": json_content(ref("Replicas")),
                        }
                    },
                },
            )
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the dispatcher ticked recently",
                "security": [],
                "responses": {
                    "200": {"description": "Alive", "content": json_content(ref("Health"))},
                    "503": {
                        "description": "No recent tick",
                        "content": json_content(ref("Health")),
                    },
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: database at the schema head and a token obtainable",
                "security": [],
                "responses": {
                    "200": {"description": "Ready", "content": json_content(ref("Ready"))},
                    "503": {"description": "Not ready", "content": json_content(ref("Ready"))},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "security": security,
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **unauthorized,
                    **unavailable,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": json_content({"type": "object"}),
                    }
                },
            }
        },
    }
    _browser_rules(paths, host_checked=not secured and not (config and config.unix_socket))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "backupjobd",
            "version": API_VERSION,
            "description": "Tracks Azure Backup jobs until they finish. Errors are "
            '{"error": {"code", "message"}}.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The full token ([api] token_env) may do everything; the "
                    "read-only one ([api] read_token_env) may only GET (403 read_only).",
                }
            },
        },
        "security": security,
    }


_ERROR_DESCRIPTIONS = {
    "400": "Bad input or parameters; nothing was stored",
    "404": "The job is not tracked",
    "409": "Conflict: the GUID is in several vaults (give ?vault=), the job is not active, "
    "or Azure refused",
    "403": "A foreign Origin (cross-site request from a web page), or the read-only token "
    "(code read_only: it may only GET)",
    "415": "The body is not JSON (state-changing calls need Content-Type: application/json)",
    "421": "The Host is not a loopback name (nor in api.allowed_hosts); the API has no token",
}


def _browser_rules(paths: dict[str, Any], *, host_checked: bool) -> None:
    """The answers of the app's browser middleware, on every operation they can come from; the
    state-changing calls without a body of their own take an (ignored) JSON body, since
    they need its content type."""
    for item in paths.values():
        for method, operation in item.items():
            responses = operation["responses"]
            if host_checked:
                responses["421"] = _error_response("421")
            if method.upper() in apiguard.STATE_CHANGING_METHODS:
                responses["403"] = _error_response("403")
                responses["415"] = _error_response("415")
                operation.setdefault(
                    "requestBody",
                    {
                        "required": True,
                        "description": "Ignored; the call needs Content-Type: application/json "
                        "(which a browser cannot send cross-site without a preflight)",
                        "content": {"application/json": {"schema": {}}},
                    },
                )


def _error_response(code: str) -> dict[str, Any]:
    return {"description": _ERROR_DESCRIPTIONS[code], "content": json_content(ref("Error"))}
