"""The HTTP face of the daemon: the API app and its listener (`app`), the /v1/jobs handlers
and probes (`handlers`), parameter parsing (`params`), the OpenAPI document (`openapi`,
`schemas`) and the connection and browser guard (`guard`). Import from here; the modules
behind it may move."""

from __future__ import annotations

from backupjobd.http.app import (
    api_token_required,
    build_api_app,
    connection_guard,
    start_api,
)
from backupjobd.http.guard import AcceptFailureLog, ApiStartError
from backupjobd.http.openapi import openapi_document
from backupjobd.http.params import operation_url_pattern

__all__ = [
    "AcceptFailureLog",
    "ApiStartError",
    "api_token_required",
    "build_api_app",
    "connection_guard",
    "openapi_document",
    "operation_url_pattern",
    "start_api",
]
