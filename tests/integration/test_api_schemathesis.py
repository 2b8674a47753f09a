"""Schemathesis drives the live API from its own `/openapi.json`: every generated request
(valid and invalid) must get an answer whose status code, content type, headers and body the
document describes, and never a 5xx. A disagreement between document and code fails here.

aiohttp is not ASGI, so the server (API, SQLite store, emulator) runs in a background thread
with its own event loop; schemathesis talks to it over loopback with `requests`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import StaticTokenProvider
from backupjobd.adapters.metrics import Metrics
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.config import ApiConfig
from backupjobd.core import azure
from backupjobd.core.registration import Endpoint, JobRegistration
from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorState, JobSpec, build_emulator_app
from backupjobd.http import build_api_app, openapi_document, start_api

API_TOKEN = "schemathesis-api-token"
API_VERSION = "2025-08-01"
OTHER_VAULT = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-two"
    "/providers/Microsoft.RecoveryServices/vaults/vault-two"
)
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
# 25 per operation and mode keeps the file well under a minute; raise it for a deeper run.
MAX_EXAMPLES = int(os.environ.get("BACKUPJOBD_SCHEMATHESIS_EXAMPLES", "25"))
START_TIMEOUT_S = 30.0
REJECTED = [400, 401, 403, 404, 405, 406, 409, 415, 422, 428, 429, "5xx"]


@dataclass
class LiveApi:
    base_url: str
    seeded: list[str]
    ambiguous: str


class _ServerThread:
    """An event loop in a thread that owns the store, the emulator and the API server."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = AsyncExitStack()

    def __enter__(self) -> LiveApi:
        self._thread.start()
        return self._run(self._start())

    def __exit__(self, *exc: object) -> None:
        self._run(self._stack.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=START_TIMEOUT_S)
        self._loop.close()

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=START_TIMEOUT_S)

    async def _start(self) -> LiveApi:
        emulator = EmulatorState()
        emu_runner = web.AppRunner(build_emulator_app(emulator), access_log=None)
        await emu_runner.setup()
        self._stack.push_async_callback(emu_runner.cleanup)
        await web.TCPSite(emu_runner, "127.0.0.1", 0).start()
        host, port = emu_runner.addresses[0][:2]
        emulator_url = f"http://{host}:{port}"

        store = SqlStore.from_url(f"sqlite+aiosqlite:///{self._tmp}/schemathesis.db")
        self._stack.push_async_callback(store.close)
        await store.migrate()
        session = await self._stack.enter_async_context(aiohttp.ClientSession())
        tokens = StaticTokenProvider("arm-token")
        arm = ArmClient(session, tokens, emulator_url, API_VERSION)

        vault = azure.vault_from_id(DEFAULT_VAULT_ID)
        seeded = []
        for i in range(6):
            job = emulator.add_job(JobSpec(duration_seconds=0.0 if i % 2 else 3600.0))
            seeded.append(job.job_id)
        ambiguous = str(uuid.uuid4())
        regs = [JobRegistration(vault, j, "job-id") for j in seeded] + [
            JobRegistration(vault, ambiguous, "job-id"),
            JobRegistration(azure.vault_from_id(OTHER_VAULT), ambiguous, "job-id"),
        ]
        await store.register(regs, datetime.now(UTC))

        app = build_api_app(
            store=store,
            arm=arm,
            tokens=tokens,
            endpoint=Endpoint.from_url(emulator_url),
            metrics=Metrics(),
            config=ApiConfig(),
            api_token=API_TOKEN,
            last_tick_age=lambda: 1.0,
            clock=lambda: datetime.now(UTC),
            cancel_follow_seconds=0.0,
        )
        runner = await start_api(app, ApiConfig(bind="127.0.0.1", port=0))
        self._stack.push_async_callback(runner.cleanup)
        api_host, api_port = runner.addresses[0][:2]
        return LiveApi(f"http://{api_host}:{api_port}", seeded, ambiguous)


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    with _ServerThread(tmp_path_factory.mktemp("schemathesis")) as live:
        yield live


@pytest.fixture(scope="module")
def api_schema(live_api: LiveApi) -> Any:
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": API_TOKEN}}}})
    return schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json", config=config)


# The operations, from the document itself (its shape does not depend on the endpoint).
OPERATIONS = [
    (method.upper(), path)
    for path, item in openapi_document(Endpoint.from_url("http://127.0.0.1:1"), secured=True)[
        "paths"
    ].items()
    for method in item
]


def _with_inputs(method: str, path: str) -> bool:
    return path.startswith("/v1/") or path == "/metrics"  # parameters, a body or the token


def _short_wait(timeout: object) -> bool:
    try:
        return float(str(timeout)) <= 1.0 if timeout is not None else False
    except ValueError:
        return True  # refused at once (400)


CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or _with_inputs(method, path)
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_api_conforms_to_its_openapi_document(
    api_schema: Any, live_api: LiveApi, method: str, path: str, mode: GenerationMode
) -> None:
    """schemathesis's Python API (its lazy pytest fixture does not run under pytest 9)."""
    operation = api_schema[path][method]

    strategy = operation.as_strategy(generation_mode=mode)
    if (method, path) == ("POST", "/v1/jobs"):
        # Whether a body needs ?vault= depends on the body: OpenAPI cannot say so, so the
        # generated bodies carry their vault (test_api.py covers the hint).
        strategy = strategy.filter(lambda case: "vault" not in (case.query or {}))
    if path.endswith("/wait"):
        # A seeded job runs for an hour: a generated timeout must not hold the test that long.
        strategy = strategy.filter(lambda case: _short_wait((case.query or {}).get("timeout")))

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        response = case.call(base_url=live_api.base_url)
        statuses.append(response.status_code)
        if mode is GenerationMode.NEGATIVE and response.status_code == 413:
            # Too large is a rejection too (schemathesis's list does not include 413): an
            # array over maxItems is also over max_body_bytes.
            assert response.json()["error"]["code"] == "payload_too_large"
            return
        if (method, path) == ("POST", "/v1/jobs"):
            # A registration can be schema-valid and still refused on meaning: a vault name
            # with "..", an operation URL on another host, a Failed operation. The document
            # cannot express all of that, so a 400 for a schema-valid body is not a failure
            # here (test_api.py checks each refusal); every other check still applies.
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
            return
        case.validate_response(response)

    statuses: list[int] = []
    run()
    seen = sorted(collections.Counter(statuses).items())
    if mode is GenerationMode.POSITIVE:
        assert any(s != 401 for s in statuses), f"the token was never accepted: {seen}"
    if (method, path, mode) == ("POST", "/v1/jobs", GenerationMode.POSITIVE):
        assert 201 in statuses, f"no generated registration was accepted: {seen}"


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/v1/jobs/{job_id}", {}),
        ("GET", "/v1/jobs/{job_id}/history", {}),
        ("POST", "/v1/jobs/{job_id}/cancel", {}),
        ("DELETE", "/v1/jobs/{job_id}", {}),
        ("DELETE", "/v1/jobs/{job_id}", {}),  # the second time: 409 not active
        ("GET", "/v1/jobs/{ambiguous}", {}),
        ("GET", "/v1/jobs/{ambiguous}", {"vault": OTHER_VAULT}),
        ("GET", "/v1/jobs", {"limit": 2}),
        ("GET", "/metrics", {}),
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
    ],
)
def test_answers_about_existing_jobs_conform(
    api_schema: Any, live_api: LiveApi, method: str, path: str, query: dict[str, Any]
) -> None:
    """Generated GUIDs are almost never tracked; these cases hit the 200/202/409 answers."""
    template = path.replace("{ambiguous}", "{job_id}")
    job_id = live_api.ambiguous if "{ambiguous}" in path else live_api.seeded[0]
    params = {"job_id": job_id} if "{job_id}" in template else None
    body: dict[str, Any] = {}
    if method in ("POST", "DELETE"):  # state-changing calls need a JSON content type
        body = {"body": {}, "media_type": "application/json"}
    case = api_schema[template][method].Case(path_parameters=params, query=query or None, **body)
    response = case.call_and_validate(base_url=live_api.base_url, headers=AUTH)
    assert response.status_code < 500
    assert response.status_code != 415


def test_registration_answers_conform(api_schema: Any, live_api: LiveApi) -> None:
    """Both success codes of POST /v1/jobs, with a real registration form."""
    operation = api_schema["/v1/jobs"]["POST"]
    body = [f"{DEFAULT_VAULT_ID}/backupJobs/{uuid.uuid4()}"]
    statuses = []
    for _ in range(2):
        case = operation.Case(body=body, media_type="application/json")
        statuses.append(
            case.call_and_validate(base_url=live_api.base_url, headers=AUTH).status_code
        )
    assert statuses == [201, 200]


def test_the_document_disagreeing_with_the_code_fails(live_api: LiveApi) -> None:
    """Guard against a vacuous suite: a document missing a status code must fail validation."""
    raw = requests.get(f"{live_api.base_url}/openapi.json", timeout=10).json()
    del raw["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["404"]
    broken = schemathesis.openapi.from_dict(raw)
    case = broken["/v1/jobs/{job_id}"]["GET"].Case(path_parameters={"job_id": str(uuid.uuid4())})
    with pytest.raises(FailureGroup) as failed:
        case.call_and_validate(base_url=live_api.base_url, headers=AUTH)
    assert "Undocumented status code" in str(failed.value.args)
