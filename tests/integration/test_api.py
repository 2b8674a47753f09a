"""The HTTP API over real loopback sockets: a real SqlStore (SQLite), a real ArmClient with a
static token against the in-process emulator, and the aiohttp app from `build_api_app`."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import stat
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from backupjobd import __version__
from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import StaticTokenProvider, TokenProvider
from backupjobd.adapters.metrics import Metrics
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.config import ApiConfig
from backupjobd.core import azure
from backupjobd.core.decisions import (
    OperationSeen,
    PollPolicy,
    Seen,
    decide_job,
    decide_operation,
)
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import Endpoint
from backupjobd.emulator import DEFAULT_VAULT_ID, EmulatorState, JobSpec, build_emulator_app
from backupjobd.errors import CredentialError
from backupjobd.http import api_token_required, build_api_app, openapi_document, start_api
from backupjobd.testing import BASE, FakeClock

API_VERSION = "2025-08-01"
ARM_TOKEN = "arm-token-NEVER-LOGGED"
API_TOKEN = "api-token-s3cret-NEVER-LOGGED"
VAULT = DEFAULT_VAULT_ID
OTHER_VAULT = (
    "/subscriptions/11111111-1111-1111-1111-111111111111/resourceGroups/rg-two"
    "/providers/Microsoft.RecoveryServices/vaults/vault-two"
)
MAX_BODY = 4096
# State-changing calls need a JSON content type (a browser cannot send one cross-site).
JSON_TYPE = {"Content-Type": "application/json"}


class FailingTokens(TokenProvider):
    async def token(self, *, force_refresh: bool = False) -> str:
        raise CredentialError("could not get an Azure token: no identity configured")


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    store: SqlStore
    arm: ArmClient
    emulator: EmulatorState
    emulator_url: str
    clock: FakeClock
    tick_age: list[float | None] = field(default_factory=lambda: [1.0])

    async def post_json(self, body: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.client.post("/v1/jobs", json=body, **kwargs)

    def op_url(self, op_id: str, vault: str = VAULT) -> str:
        return f"{self.emulator_url}{vault}/backupOperations/{op_id}?api-version={API_VERSION}"

    async def observe(self, job_id: str, vault: str = VAULT) -> JobRecord:
        """One real poll (emulator → ArmClient → decide_job → store) without the tracker."""
        [record] = [j for j in await self.store.find_jobs(job_id) if j.vault_id == vault]
        obs = await self.arm.get_job(azure.vault_from_id(vault), job_id)
        now = self.clock.now()
        decision = decide_job(record.state(), Seen(obs), now, PollPolicy(), 0.5)
        assert await self.store.apply_job(record, decision, now)
        [after] = [j for j in await self.store.find_jobs(job_id) if j.pk == record.pk]
        return after


HarnessFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(
        *,
        api_token: str | None = None,
        tokens: TokenProvider | None = None,
        store: SqlStore | None = None,
        arm_app: web.Application | None = None,
        cancel_follow_seconds: float = 0.0,
    ) -> Harness:
        clock = FakeClock()
        emulator = EmulatorState(clock=clock)
        arm_server = TestServer(arm_app or build_emulator_app(emulator))
        await arm_server.start_server()
        cleanups.append(arm_server.close)
        emulator_url = str(arm_server.make_url(""))
        if store is None:
            store = SqlStore.from_url(f"sqlite+aiosqlite:///{tmp_path}/api-{uuid.uuid4().hex}.db")
            await store.migrate()
        cleanups.append(store.close)
        session = aiohttp.ClientSession()
        cleanups.append(session.close)
        arm = ArmClient(session, StaticTokenProvider(ARM_TOKEN), emulator_url, API_VERSION)
        harness_ref: list[Harness] = []
        app = build_api_app(
            store=store,
            arm=arm,
            tokens=tokens or StaticTokenProvider(ARM_TOKEN),
            endpoint=Endpoint.from_url(emulator_url),
            metrics=Metrics(),
            config=ApiConfig(max_body_bytes=MAX_BODY, healthy_tick_age_seconds=30.0),
            api_token=api_token,
            last_tick_age=lambda: harness_ref[0].tick_age[0],
            clock=clock.now,
            cancel_follow_seconds=cancel_follow_seconds,
        )
        client: TestClient[web.Request, web.Application] = TestClient(TestServer(app))
        await client.start_server()
        cleanups.append(client.close)
        harness = Harness(client, store, arm, emulator, emulator_url, clock)
        harness_ref.append(harness)
        return harness

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


@pytest.fixture
async def h(make_harness: HarnessFactory) -> Harness:
    return await make_harness()


def job_arm_id(job_id: str, vault: str = VAULT) -> str:
    return f"{vault}/backupJobs/{job_id}"


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, str]:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "\n" not in body["error"]["message"]
    return dict(body["error"])


async def nothing_stored(h: Harness) -> None:
    assert await h.store.list_jobs() == []
    assert await h.store.list_operations() == []


# ---- POST /v1/jobs ---------------------------------------------------------------------

G1 = "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
G2 = "1c6c3d2f-0b2e-4e54-9e4f-3a1c2b3d4e5f"

FORMS: list[tuple[str, Callable[[Harness], tuple[Any, dict[str, str]]], str, str]] = [
    ("job ARM id string", lambda h: (job_arm_id(G1), {}), "job", G1),
    ("job_id with vault_id", lambda h: ({"job_id": G1, "vault_id": VAULT}, {}), "job", G1),
    ("job_id with ?vault=", lambda h: ({"job_id": G1}, {"vault": VAULT}), "job", G1),
    (
        "JobResource body",
        lambda h: (
            {
                "id": job_arm_id(G1.upper()),
                "name": G1,
                "type": "Microsoft.RecoveryServices/vaults/backupJobs",
                "properties": {"jobType": "AzureIaaSVMJob", "status": "InProgress"},
            },
            {},
        ),
        "job",
        G1,
    ),
    (
        "operation status (one job)",
        lambda h: (
            {
                "id": f"{VAULT}/backupOperations/op-1",
                "status": "Succeeded",
                "properties": {"objectType": "OperationStatusJobExtendedInfo", "jobId": G1},
            },
            {},
        ),
        "job",
        G1,
    ),
    (
        "operation status without vault, ?vault=",
        lambda h: (
            {
                "status": "Succeeded",
                "properties": {"objectType": "OperationStatusJobsExtendedInfo", "jobIds": [G1]},
            },
            {"vault": VAULT},
        ),
        "job",
        G1,
    ),
    (
        "202 headers",
        lambda h: ({"headers": {"Azure-AsyncOperation": h.op_url("op-7")}}, {}),
        "operation",
        "op-7",
    ),
    (
        "202 Location header",
        lambda h: ({"headers": {"Location": h.op_url("op-8")}}, {}),
        "operation",
        "op-8",
    ),
    ("operation URL string", lambda h: (h.op_url("op-9"), {}), "operation", "op-9"),
    (
        "operation_url field",
        lambda h: ({"operation_url": h.op_url("op-10")}, {}),
        "operation",
        "op-10",
    ),
]


@pytest.mark.parametrize(("name", "make", "kind", "ident"), FORMS, ids=[f[0] for f in FORMS])
async def test_every_registration_form_registers_then_reports_already_tracked(
    h: Harness,
    name: str,
    make: Callable[[Harness], tuple[Any, dict[str, str]]],
    kind: str,
    ident: str,
) -> None:
    body, params = make(h)
    first = await h.post_json(body, params=params)
    assert first.status == 201, await first.text()
    assert await first.json() == {
        "results": [{"kind": kind, "id": ident, "vault_id": VAULT, "new": True, "created": True}]
    }
    again = await h.post_json(body, params=params)
    assert again.status == 200
    assert (await again.json())["results"][0]["created"] is False
    if kind == "job":
        [job] = await h.store.find_jobs(ident)
        assert job.vault_id == VAULT
    else:
        [op] = await h.store.list_operations()
        assert op.operation_id == ident


async def test_an_array_registers_each_document_and_201_if_any_is_new(h: Harness) -> None:
    assert (await h.post_json(job_arm_id(G1))).status == 201
    resp = await h.post_json([job_arm_id(G1), {"job_id": G2, "vault_id": OTHER_VAULT}])
    assert resp.status == 201
    assert (await resp.json())["results"] == [
        {"kind": "job", "id": G1, "vault_id": VAULT, "new": False, "created": False},
        {"kind": "job", "id": G2, "vault_id": OTHER_VAULT, "new": True, "created": True},
    ]


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed JSON", b'{"job_id": ', "malformed JSON"),
    ("empty body", b"", "no JSON document"),
    ("empty array", b"[]", "empty JSON array"),
    ("not UTF-8", b'"\xff\xfe"', "UTF-8"),
    ("non-GUID job id", json.dumps({"job_id": "123", "vault_id": VAULT}).encode(), "GUID"),
    ("job id without a vault", json.dumps({"job_id": G1}).encode(), "vault"),
    ("bad vault id", json.dumps({"job_id": G1, "vault_id": "/subscriptions/x"}).encode(), "vault"),
    (
        "failed operation",
        json.dumps(
            {
                "id": f"{VAULT}/backupOperations/op-1",
                "status": "Failed",
                "error": {"code": "UserErrorVmNotFound", "message": "gone"},
                "properties": {"objectType": "OperationStatusJobExtendedInfo"},
            }
        ).encode(),
        "failed",
    ),
    (
        "one bad document rejects the batch",
        json.dumps([job_arm_id(G1), {"job_id": "nope", "vault_id": VAULT}]).encode(),
        "document 2",
    ),
    ("a number", b"42", "expected a JSON object or string"),
]


@pytest.mark.parametrize(("name", "raw", "fragment"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_input_is_400_and_stores_nothing(
    h: Harness, name: str, raw: bytes, fragment: str
) -> None:
    resp = await h.client.post("/v1/jobs", data=raw, headers={"Content-Type": "application/json"})
    err = await error_of(resp, 400)
    assert err["code"] == "invalid_input"
    assert fragment.lower() in err["message"].lower()
    await nothing_stored(h)


async def test_a_bad_vault_hint_is_400(h: Harness) -> None:
    resp = await h.post_json({"job_id": G1}, params={"vault": "not-a-vault"})
    assert (await error_of(resp, 400))["code"] == "invalid_parameter"
    await nothing_stored(h)


async def test_operation_url_on_another_host_is_refused_and_that_host_never_called(
    h: Harness,
) -> None:
    calls: list[str] = []

    async def record(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"status": "Succeeded"})

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", record)
    async with TestServer(other) as attacker:
        url = f"{attacker.make_url('')}{VAULT}/backupOperations/op-1"
        assert Endpoint.from_url(url) != Endpoint.from_url(h.emulator_url)
        for body in (url, {"headers": {"Azure-AsyncOperation": url}}, {"operation_url": url}):
            resp = await h.post_json(body)
            err = await error_of(resp, 400)
            assert "not the configured management endpoint" in err["message"]
        https_twin = h.emulator_url.replace("http://", "https://") + VAULT
        resp = await h.post_json(f"{https_twin}/backupOperations/op-2")
        await error_of(resp, 400)
    await nothing_stored(h)
    assert calls == []
    assert h.emulator.stats()["requests"] == 0


async def test_body_over_the_limit_is_413_json_with_and_without_content_length(
    h: Harness,
) -> None:
    big = json.dumps([job_arm_id(str(uuid.uuid4())) for _ in range(100)]).encode()
    assert len(big) > MAX_BODY
    resp = await h.client.post("/v1/jobs", data=big, headers={"Content-Type": "application/json"})
    assert (await error_of(resp, 413))["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    resp = await h.client.post(
        "/v1/jobs", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert (await error_of(resp, 413))["code"] == "payload_too_large"
    await nothing_stored(h)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_body_that_is_not_declared_json_is_415(h: Harness, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await h.client.post(
        "/v1/jobs", data=json.dumps(job_arm_id(G1)).encode(), headers=headers
    )
    assert (await error_of(resp, 415))["code"] == "unsupported_media_type"
    await nothing_stored(h)


async def test_json_with_a_charset_or_a_vendor_suffix_is_accepted(h: Harness) -> None:
    for ctype in ("application/json; charset=utf-8", "application/vnd.api+json"):
        resp = await h.client.post(
            "/v1/jobs", data=json.dumps(job_arm_id(G1)), headers={"Content-Type": ctype}
        )
        assert resp.status in (200, 201)


# ---- GET /v1/jobs ----------------------------------------------------------------------


async def register_many(h: Harness, n: int, vault: str = VAULT) -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    resp = await h.post_json([job_arm_id(i, vault) for i in ids])
    assert resp.status == 201
    return ids


async def walk(h: Harness, limit: int, **params: str) -> tuple[list[str], int]:
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        resp = await h.client.get("/v1/jobs", params=query)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert set(body) == {"jobs", "next_cursor"}
        assert len(body["jobs"]) <= limit
        seen += [j["job_id"] for j in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert isinstance(cursor, str)


async def test_paging_with_the_cursor_returns_every_job_exactly_once_in_order(h: Harness) -> None:
    ids = await register_many(h, 17) + await register_many(h, 6, OTHER_VAULT)
    seen, pages = await walk(h, 5)
    assert seen == ids
    assert pages == 5
    exact, pages = await walk(h, 23)
    assert exact == ids and pages == 1  # a full last page has no next_cursor
    default = await (await h.client.get("/v1/jobs")).json()
    assert [j["job_id"] for j in default["jobs"]] == ids and default["next_cursor"] is None


async def test_list_filters(h: Harness) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=0.0), job_id=G1)
    h.emulator.add_job(JobSpec(duration_seconds=3600.0), job_id=G2)
    await register_many(h, 1)
    await h.post_json([job_arm_id(G1), job_arm_id(G2)])
    h.clock.advance(60)
    late = await register_many(h, 2, OTHER_VAULT)
    assert (await h.observe(G1)).status == "Completed"
    assert (await h.observe(G2)).status == "InProgress"

    async def ids(**params: str) -> list[str]:
        resp = await h.client.get("/v1/jobs", params=params)
        assert resp.status == 200, await resp.text()
        return [j["job_id"] for j in (await resp.json())["jobs"]]

    assert await ids(status="completed") == [G1]
    assert await ids(status="InProgress") == [G2]
    assert await ids(status="finished") == [G1]
    assert len(await ids(status="active")) == 4
    assert await ids(finished="true") == [G1]
    assert G1 not in await ids(finished="false") and len(await ids(finished="false")) == 4
    assert await ids(vault=OTHER_VAULT) == late
    assert await ids(vault=OTHER_VAULT.upper().replace("/PROVIDERS/", "/providers/")) == late
    since = (BASE + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    assert await ids(since=since) == late
    assert await ids(since="2026-03-01T13:00:30+01:00") == late
    assert await ids(since="2026-03-01T12:01:00") == late  # no offset: UTC
    assert await ids(stuck="true") == []
    assert len(await ids(stuck="false")) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "5.0"},
        {"limit": "5", "cursor": "x"},
        {"cursor": "-1"},
        {"finished": "yes"},
        {"stuck": "1"},
        {"since": "yesterday"},
        {"since": "2026-02-30T00:00:00Z"},
        {"vault": "/subscriptions/nope"},
        {"status": ""},
        {"status": "x" * 65},
    ],
)
async def test_bad_list_parameters_are_400(h: Harness, params: dict[str, str]) -> None:
    resp = await h.client.get("/v1/jobs", params=params)
    assert (await error_of(resp, 400))["code"] == "invalid_parameter"


async def test_a_parameter_given_twice_is_400(h: Harness) -> None:
    resp = await h.client.get("/v1/jobs?limit=1&limit=2")
    assert "more than once" in (await error_of(resp, 400))["message"]


# ---- one job ---------------------------------------------------------------------------


async def test_show_and_history_match_the_cli_json(h: Harness) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=0.0, entity_friendly_name="vm-1"), job_id=G1)
    await h.post_json(job_arm_id(G1))
    await h.observe(G1)
    resp = await h.client.get(f"/v1/jobs/{G1.upper()}")
    assert resp.status == 200
    job = await resp.json()
    [record] = await h.store.find_jobs(G1)
    assert job == record.to_json()
    assert job["status"] == "Completed" and job["finished"] is True

    hist = await (await h.client.get(f"/v1/jobs/{G1}/history")).json()
    transitions, snapshots = await h.store.history(record.pk)
    assert hist == {
        "job": record.to_json(),
        "transitions": [t.to_json() for t in transitions],
        "snapshots": [s.to_json() for s in snapshots],
    }
    assert hist["transitions"][0]["from_status"] is None
    assert hist["transitions"][-1]["to_status"] == "Completed"
    assert len(hist["snapshots"]) >= 1


@pytest.mark.parametrize("suffix", ["", "/history"])
async def test_unknown_job_is_404_and_a_bad_guid_400(h: Harness, suffix: str) -> None:
    assert (await error_of(await h.client.get(f"/v1/jobs/{G1}{suffix}"), 404))["code"] == (
        "not_found"
    )
    await error_of(await h.client.get(f"/v1/jobs/not-a-guid{suffix}"), 400)
    await error_of(await h.client.get(f"/v1/jobs/%20{G1}{suffix}"), 400)


async def test_a_guid_in_two_vaults_is_409_until_the_vault_is_given(h: Harness) -> None:
    await h.post_json([job_arm_id(G1), job_arm_id(G1, OTHER_VAULT)])
    for path in (f"/v1/jobs/{G1}", f"/v1/jobs/{G1}/history"):
        assert (await error_of(await h.client.get(path), 409))["code"] == "ambiguous"
        resp = await h.client.get(path, params={"vault": OTHER_VAULT})
        assert resp.status == 200
    resp = await h.client.delete(f"/v1/jobs/{G1}", headers=JSON_TYPE)
    await error_of(resp, 409)
    resp = await h.client.get(
        f"/v1/jobs/{G1}",
        params={"vault": OTHER_VAULT.replace("vault-two", "vault-three")},
    )
    await error_of(resp, 404)


async def test_delete_stops_polling_and_keeps_history(h: Harness) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=3600.0), job_id=G1)
    await h.post_json(job_arm_id(G1))
    await h.observe(G1)
    far = BASE + timedelta(days=30)
    assert [j.job_id for j in await h.store.due_jobs(far, 10)] == [G1]

    resp = await h.client.delete(f"/v1/jobs/{G1}", headers=JSON_TYPE)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["tracking"] == "stopped" and body["next_poll_at"] is None
    assert body["status"] == "InProgress"
    assert await h.store.due_jobs(far, 10) == []
    hist = await (await h.client.get(f"/v1/jobs/{G1}/history")).json()
    assert [t["to_status"] for t in hist["transitions"]] == ["InProgress"]

    again = await h.client.delete(f"/v1/jobs/{G1}", headers=JSON_TYPE)
    assert (await error_of(again, 409))["code"] == "not_active"
    await error_of(await h.client.delete(f"/v1/jobs/{G2}", headers=JSON_TYPE), 404)
    await error_of(await h.client.delete("/v1/jobs/zzz", headers=JSON_TYPE), 400)


async def test_delete_of_a_finished_job_is_409(h: Harness) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=0.0), job_id=G1)
    await h.post_json(job_arm_id(G1))
    assert (await h.observe(G1)).finished
    stopped_again = await h.client.delete(f"/v1/jobs/{G1}", headers=JSON_TYPE)
    assert (await error_of(stopped_again, 409))["code"] == "not_active"


# ---- cancel ----------------------------------------------------------------------------


async def test_cancel_goes_to_azure_and_the_job_then_reads_cancelling_then_cancelled(
    h: Harness,
) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=3600.0), job_id=G1)
    await h.post_json(job_arm_id(G1))
    resp = await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE)
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"job_id": G1, "cancel": "accepted"}
    vault = azure.vault_from_id(VAULT)
    assert (await h.arm.get_job(vault, G1)).status == "Cancelling"
    h.clock.advance(5)
    assert (await h.arm.get_job(vault, G1)).status == "Cancelled"
    assert (await h.observe(G1)).status == "Cancelled"


async def test_cancel_follows_azures_location_until_completed(
    make_harness: HarnessFactory,
) -> None:
    h = await make_harness(cancel_follow_seconds=10.0)
    h.emulator.add_job(JobSpec(duration_seconds=3600.0), job_id=G1)
    await h.post_json(job_arm_id(G1))
    resp = await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE)
    assert resp.status == 202
    assert await resp.json() == {"job_id": G1, "cancel": "completed"}


async def test_cancel_of_a_cross_region_restore_job_is_refused_without_calling_azure(
    h: Harness,
) -> None:
    """Azure cannot cancel a secondary region's job: 409, and Azure is not asked."""
    sub = VAULT.split("/")[2]
    crr_id = azure.job_arm_id(VAULT, G1, "eastus2")
    assert f"/subscriptions/{sub}/providers/" in crr_id
    resp = await h.client.post(f"/v1/jobs?vault={VAULT}", json=crr_id)
    assert resp.status == 201, await resp.text()
    [job] = (await (await h.client.get("/v1/jobs")).json())["jobs"]
    assert (job["vault_kind"], job["region"]) == ("RecoveryServices", "eastus2")
    err = await error_of(await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE), 409)
    assert err["code"] == "CancelNotSupported" and "cross-region" in err["message"]
    assert h.emulator.stats()["by_kind"].get("cancel", 0) == 0


async def test_cancel_of_an_untracked_job_is_404_without_calling_azure(h: Harness) -> None:
    await error_of(await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE), 404)
    assert h.emulator.stats()["requests"] == 0


async def test_cancel_when_azure_does_not_know_the_job_is_404_with_azures_code(
    h: Harness,
) -> None:
    await h.post_json(job_arm_id(G1))
    err = await error_of(await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE), 404)
    assert err["code"] != "not_found"  # Azure's own code, not ours


async def test_cancel_while_azure_throttles_is_503_with_retry_after(h: Harness) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=3600.0), job_id=G1)
    await h.post_json(job_arm_id(G1))
    h.emulator.add_fault("429", retry_after=7, path_contains="/cancel")
    resp = await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE)
    assert (await error_of(resp, 503))["code"] == "azure_unavailable"
    assert resp.headers["Retry-After"] == "7"


@pytest.mark.parametrize(
    ("azure_status", "api_status"), [(400, 400), (409, 409), (403, 409), (412, 409)]
)
async def test_cancel_refused_by_azure_keeps_azures_code(
    make_harness: HarnessFactory, azure_status: int, api_status: int
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "BMSUserErrorJobNotCancellable", "message": "not now"}},
            status=azure_status,
        )

    arm_app = web.Application()
    arm_app.router.add_route("*", "/{tail:.*}", refuse)
    h = await make_harness(arm_app=arm_app)
    await h.post_json(job_arm_id(G1))
    resp = await h.client.post(f"/v1/jobs/{G1}/cancel", headers=JSON_TYPE)
    err = await error_of(resp, api_status)
    assert err["code"] == "BMSUserErrorJobNotCancellable"
    assert ARM_TOKEN not in err["message"]


# ---- auth ------------------------------------------------------------------------------


async def test_token_is_required_and_compared_in_constant_time(
    make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = await make_harness(api_token=API_TOKEN)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        assert isinstance(a, bytes) and isinstance(b, bytes)
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    guarded = [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{G1}"),
        ("DELETE", f"/v1/jobs/{G1}"),
        ("GET", f"/v1/jobs/{G1}/history"),
        ("POST", f"/v1/jobs/{G1}/cancel"),
        ("GET", "/metrics"),
        ("GET", "/v1/nothing-here"),
    ]
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {API_TOKEN}"},
        {"Authorization": f"Bearer {API_TOKEN}x"},
        {"Authorization": "Bearer"},
    ]
    for method, path in guarded:
        for headers in wrong:
            resp = await h.client.request(method, path, headers=headers)
            assert (await error_of(resp, 401))["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert compared and all(b == API_TOKEN.encode() for _, b in compared)
    await nothing_stored(h)

    good = {"Authorization": f"Bearer {API_TOKEN}"}
    assert (await h.client.get("/v1/jobs", headers=good)).status == 200
    assert (await h.client.get("/metrics", headers=good)).status == 200
    assert (await h.client.post("/v1/jobs", json=job_arm_id(G1), headers=good)).status == 201
    assert (await h.client.get(f"/v1/jobs/{G1}", headers=good)).status == 200
    for open_path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await h.client.get(open_path)).status == 200
    assert API_TOKEN not in caplog.text and ARM_TOKEN not in caplog.text


async def test_without_an_api_token_v1_is_open(h: Harness) -> None:
    assert (await h.client.get("/v1/jobs")).status == 200


# ---- probes ----------------------------------------------------------------------------


async def test_healthz_follows_the_dispatcher_tick(h: Harness) -> None:
    h.tick_age[0] = 2.5
    resp = await h.client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "last_tick_age_seconds": 2.5}
    h.tick_age[0] = 31.0
    resp = await h.client.get("/healthz")
    assert resp.status == 503
    assert await resp.json() == {"status": "unhealthy", "last_tick_age_seconds": 31.0}
    h.tick_age[0] = None
    resp = await h.client.get("/healthz")
    assert resp.status == 503
    assert (await resp.json())["last_tick_age_seconds"] is None


async def test_readyz_ok(h: Harness) -> None:
    resp = await h.client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready" and body["failing"] == []
    assert ARM_TOKEN not in json.dumps(body)


async def test_readyz_503_when_no_token_can_be_obtained(make_harness: HarnessFactory) -> None:
    h = await make_harness(tokens=FailingTokens())
    resp = await h.client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failing"] == ["credential"]
    assert "no identity configured" in body["checks"]["credential"]["error"]
    assert body["checks"]["database"] == {"ok": True, "error": None}


async def test_readyz_503_when_the_schema_is_not_at_head(
    make_harness: HarnessFactory, tmp_path: Path
) -> None:
    unmigrated = SqlStore.from_url(f"sqlite+aiosqlite:///{tmp_path}/empty.db")
    h = await make_harness(store=unmigrated)
    resp = await h.client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["failing"] == ["database"]
    assert "migrate" in body["checks"]["database"]["error"]
    assert ARM_TOKEN not in json.dumps(body)


async def test_store_failures_are_503_with_retry_after(
    make_harness: HarnessFactory, tmp_path: Path
) -> None:
    h = await make_harness(store=SqlStore.from_url(f"sqlite+aiosqlite:///{tmp_path}/none.db"))
    resp = await h.client.get("/v1/jobs")
    assert (await error_of(resp, 503))["code"] == "store_unavailable"
    assert resp.headers["Retry-After"].isdigit()


async def test_metrics_parse_and_count_jobs(h: Harness) -> None:
    await register_many(h, 3)
    resp = await h.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    assert "backupjobd_jobs" in families
    samples = {
        (s.labels["status"], s.labels["tracking"]): s.value
        for s in families["backupjobd_jobs"].samples
    }
    assert samples == {("unseen", "active"): 3.0}
    # The last tick as a Unix time (the harness's tick age is 1 s), the build and the process.
    [tick] = families["backupjobd_last_tick_timestamp_seconds"].samples
    assert abs(tick.value - (time.time() - 1.0)) < 60
    [build] = families["backupjobd_build_info"].samples
    assert build.labels["version"] == __version__ and build.value == 1.0
    assert families["process_cpu_seconds"].samples[0].value > 0
    assert "process_open_fds" in families and "python_info" in families


async def test_openapi_document_is_served_and_names_the_endpoint(h: Harness) -> None:
    resp = await h.client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    assert doc == openapi_document(
        Endpoint.from_url(h.emulator_url), secured=False, config=ApiConfig(max_body_bytes=MAX_BODY)
    )
    port = Endpoint.from_url(h.emulator_url).port
    assert f":{port}" in doc["components"]["schemas"]["OperationUrl"]["pattern"]
    assert doc["security"] == []


async def test_unknown_paths_and_methods_answer_json(h: Harness) -> None:
    assert (await error_of(await h.client.get("/nope"), 404))["code"] == "not_found"
    resp = await h.client.put("/v1/jobs")
    assert (await error_of(resp, 405))["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"] and "POST" in resp.headers["Allow"]
    resp = await h.client.head("/healthz")
    assert resp.status == 405


# ---- listening -------------------------------------------------------------------------


async def test_start_api_on_a_unix_socket(h: Harness, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    config = ApiConfig(unix_socket=str(path))
    runner = await start_api(h.client.app, config)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        connector = aiohttp.UnixConnector(path=str(path))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://localhost/healthz") as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
    finally:
        await runner.cleanup()


async def test_start_api_on_loopback_tcp_logs_where(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backupjobd.http.app")
    runner = await start_api(h.client.app, ApiConfig(bind="127.0.0.1", port=0))
    try:
        [(host, port, *_)] = runner.addresses
        assert f"127.0.0.1:{port}" in caplog.text
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://{host}:{port}/healthz") as resp,
        ):
            assert resp.status == 200
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("config", "required"),
    [
        (ApiConfig(bind="127.0.0.1"), False),
        (ApiConfig(bind="127.3.4.5"), False),
        (ApiConfig(bind="::1"), False),
        (ApiConfig(bind="[::1]"), False),
        (ApiConfig(bind="localhost"), False),
        (ApiConfig(bind="LOCALHOST"), False),
        (ApiConfig(bind="0.0.0.0"), True),
        (ApiConfig(bind="::"), True),
        (ApiConfig(bind="10.0.0.4"), True),
        (ApiConfig(bind="example.com"), True),
        (ApiConfig(bind=""), True),
        (ApiConfig(bind="0.0.0.0", unix_socket="/run/backupjobd/api.sock"), False),
    ],
)
def test_api_token_required(config: ApiConfig, required: bool) -> None:
    assert api_token_required(config) is required


async def test_wait_answers_200_once_the_job_ends_and_202_at_the_timeout(h: Harness) -> None:
    h.emulator.add_job(JobSpec(duration_seconds=60.0), job_id=G1)
    await h.post_json(job_arm_id(G1))
    await h.observe(G1)
    # Still running: held for the timeout, then 202 with the job as it stands.
    resp = await h.client.get(f"/v1/jobs/{G1}/wait", params={"timeout": "0.3"})
    assert resp.status == 202
    assert (await resp.json())["status"] == "InProgress"
    # Ends while a caller waits: 200 with the finished job.
    waiting = asyncio.create_task(h.client.get(f"/v1/jobs/{G1}/wait", params={"timeout": "30"}))
    h.clock.advance(120)
    await h.observe(G1)
    async with asyncio.timeout(10):
        resp = await waiting
    assert resp.status == 200
    body = await resp.json()
    assert body["finished"] is True and body["status"] == "Completed"
    # Finished already: at once.
    resp = await h.client.get(f"/v1/jobs/{G1}/wait")
    assert resp.status == 200


@pytest.mark.parametrize("seconds", ["-1", "3601", "soon", "nan", "inf", ""])
async def test_wait_refuses_a_bad_timeout(h: Harness, seconds: str) -> None:
    await h.post_json(job_arm_id(G1))
    resp = await h.client.get(f"/v1/jobs/{G1}/wait", params={"timeout": seconds})
    assert (await error_of(resp, 400))["message"] == (
        "parameter timeout must be a number of seconds from 0 to 3600"
    )
    await error_of(await h.client.get(f"/v1/jobs/{G2}/wait"), 404)


async def test_operations_are_listed_and_shown_with_their_jobs(h: Harness) -> None:
    op = h.emulator.add_operation(delay_seconds=0.0, job_count=1)
    resp = await h.post_json(h.op_url(op.operation_id))
    [result] = (await resp.json())["results"]
    assert result["kind"] == "operation" and result["new"] is True
    listed = await (await h.client.get("/v1/operations")).json()
    assert [o["operation_id"] for o in listed["operations"]] == [result["id"]]
    shown = await h.client.get(f"/v1/operations/{result['id'].upper()}")
    assert shown.status == 200
    body = await shown.json()
    assert body["operation_id"] == result["id"] and body["tracking"] == "active"
    assert body["job_ids"] == []
    await error_of(await h.client.get(f"/v1/operations/{G2}"), 404)
    await error_of(await h.client.get("/v1/operations/not%20an%20id"), 400)


async def observe_operation(h: Harness, operation_id: str) -> None:
    """One real poll of an operation (emulator → ArmClient → decide_operation → store)."""
    [record] = await h.store.list_operations(operation_id)
    obs = await h.arm.get_operation(azure.vault_from_id(VAULT), operation_id)
    now = h.clock.now()
    decision = decide_operation(record.state(), OperationSeen(obs), now, PollPolicy(), 0.5)
    await h.store.apply_operation(record, decision, now)


async def test_wait_on_an_operation_answers_once_its_jobs_end(h: Harness) -> None:
    op = h.emulator.add_operation(
        delay_seconds=0.0, job_count=1, job_spec=JobSpec(duration_seconds=60.0)
    )
    [result] = (await (await h.post_json(h.op_url(op.operation_id))).json())["results"]
    url = f"/v1/operations/{result['id']}/wait"
    # Not resolved yet: 202 at the timeout, no jobs.
    resp = await h.client.get(url, params={"timeout": "0.2"})
    assert resp.status == 202
    body = await resp.json()
    assert body["operation"]["tracking"] == "active" and body["jobs"] == []
    # It names its job; the job runs: still 202, with the job.
    h.clock.advance(1)
    await observe_operation(h, result["id"])
    [job_id] = op.job_ids
    await h.observe(job_id)
    resp = await h.client.get(url, params={"timeout": "0.2"})
    assert resp.status == 202
    body = await resp.json()
    assert [j["job_id"] for j in body["jobs"]] == [job_id]
    assert body["jobs"][0]["status"] == "InProgress"
    # The job ends while a caller waits: 200 with the operation and the finished job.
    waiting = asyncio.create_task(h.client.get(url, params={"timeout": "30"}))
    h.clock.advance(120)
    await h.observe(job_id)
    async with asyncio.timeout(10):
        resp = await waiting
    assert resp.status == 200
    body = await resp.json()
    assert body["operation"]["job_ids"] == [job_id]
    assert body["jobs"][0]["finished"] is True and body["jobs"][0]["status"] == "Completed"
    await error_of(await h.client.get(f"/v1/operations/{G2}/wait"), 404)
    await error_of(await h.client.get(url, params={"timeout": "-1"}), 400)


async def test_wait_on_a_rejected_trigger_answers_200_with_the_error(h: Harness) -> None:
    op = h.emulator.add_operation(delay_seconds=0.0, result="Failed", job_count=0)
    [result] = (await (await h.post_json(h.op_url(op.operation_id))).json())["results"]
    h.clock.advance(1)
    await observe_operation(h, result["id"])
    resp = await h.client.get(f"/v1/operations/{result['id']}/wait", params={"timeout": "5"})
    assert resp.status == 200
    body = await resp.json()
    assert body["jobs"] == [] and body["operation"]["status"] == "Failed"
    assert body["operation"]["last_error"]
