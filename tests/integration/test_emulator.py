"""Integration tests of the ARM Azure Backup emulator over real HTTP, with a fake clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from backupjobd.emulator import (
    DEFAULT_VAULT_ID,
    EmulatorState,
    build_emulator_app,
    run_emulator,
)
from backupjobd.testing import FakeClock

API = "2026-11-01"
TOKEN = "test-token"
EPOCH = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
ITEM = (
    "/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;rg;vm1"
    "/protectedItems/VM;iaasvmcontainerv2;rg;vm1"
)


@dataclass
class Emu:
    client: TestClient[Any, Any]
    state: EmulatorState
    clock: FakeClock

    async def arm(
        self,
        method: str,
        path: str,
        *,
        token: str | None = TOKEN,
        api_version: str | None = API,
        params: dict[str, str] | None = None,
    ) -> aiohttp.ClientResponse:
        query = dict(params or {})
        if api_version is not None:
            query["api-version"] = api_version
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return await self.client.request(method, path, params=query, headers=headers)

    async def arm_json(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        resp = await self.arm(method, path, **kw)
        text = await resp.text()
        return resp.status, (json.loads(text) if text else None)

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        resp = await self.client.request(method, path, json=body)
        return resp.status, await resp.json()

    async def add_job(self, **fields: Any) -> str:
        status, body = await self.admin("POST", "/admin/jobs", fields)
        assert status == 201, body
        job_id: str = body["jobs"][0]["job_id"]
        return job_id

    async def follow(self, url: str) -> aiohttp.ClientResponse:
        """GET an absolute URL handed out by the emulator, verbatim."""
        return await self.client.session.get(url, headers={"Authorization": f"Bearer {TOKEN}"})


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    clock = FakeClock(1000.0)
    state = EmulatorState(clock=clock, page_size=3, required_token=TOKEN, epoch=EPOCH)
    async with TestClient(TestServer(build_emulator_app(state))) as client:
        yield Emu(client, state, clock)


def job_path(job_id: str, vault: str = DEFAULT_VAULT_ID) -> str:
    return f"{vault}/backupJobs/{job_id}"


async def test_job_lifecycle_in_progress_then_final_with_tasks(emu: Emu) -> None:
    job_id = await emu.add_job(
        final_status="Completed", duration_seconds=10, entity_friendly_name="vm1"
    )
    status, body = await emu.arm_json("GET", job_path(job_id))
    assert status == 200
    assert body["id"] == f"{DEFAULT_VAULT_ID}/backupJobs/{job_id}"
    assert body["name"] == job_id
    assert body["type"] == "Microsoft.RecoveryServices/vaults/backupJobs"
    props = body["properties"]
    assert props["status"] == "InProgress"
    assert props["jobType"] == "AzureIaaSVMJob"
    assert props["backupManagementType"] == "AzureIaasVM"
    assert props["entityFriendlyName"] == "vm1"
    assert props["actionsInfo"] == ["Cancellable"]
    assert "endTime" not in props
    assert props["startTime"] == "2026-03-01T12:00:00.0000000Z"
    tasks = props["extendedInfo"]["tasksList"]
    assert [t["status"] for t in tasks] == ["InProgress", "NotStarted"]
    assert props["extendedInfo"]["propertyBag"]["VM Name"] == "vm1"

    emu.clock.t += 5
    _, body = await emu.arm_json("GET", job_path(job_id))
    tasks = body["properties"]["extendedInfo"]["tasksList"]
    assert [t["status"] for t in tasks] == ["Completed", "InProgress"]
    assert 0 < tasks[1]["progressPercentage"] < 100
    assert body["properties"]["duration"] == "00:00:05.0000000"

    emu.clock.t += 5.5
    _, body = await emu.arm_json("GET", job_path(job_id))
    props = body["properties"]
    assert props["status"] == "Completed"
    assert props["actionsInfo"] == []
    assert props["endTime"] == "2026-03-01T12:00:10.0000000Z"
    assert props["duration"] == "00:00:10.0000000"
    assert [t["status"] for t in props["extendedInfo"]["tasksList"]] == ["Completed"] * 2
    assert props["extendedInfo"]["propertyBag"]["Backup Size"].endswith(" MB")
    assert "errorDetails" not in props
    _, truth = await emu.admin("GET", f"/admin/jobs/{job_id}")
    assert truth == {
        "job_id": job_id,
        "vault_id": DEFAULT_VAULT_ID,
        "final_status": "Completed",
        "status": "Completed",
    }


@pytest.mark.parametrize(
    ("final", "has_errors"),
    [("Failed", True), ("CompletedWithWarnings", True), ("Paused", False)],
)
async def test_other_final_statuses(emu: Emu, final: str, has_errors: bool) -> None:
    job_id = await emu.add_job(final_status=final, duration_seconds=1)
    emu.clock.t += 2
    _, body = await emu.arm_json("GET", job_path(job_id))
    props = body["properties"]
    assert props["status"] == final
    assert ("errorDetails" in props) is has_errors
    if has_errors:
        assert isinstance(props["errorDetails"][0]["errorCode"], int)


async def test_workload_backup_reports_full_once_finished(emu: Emu) -> None:
    job_id = await emu.add_job(job_type="AzureWorkloadJob", duration_seconds=1)
    _, body = await emu.arm_json("GET", job_path(job_id))
    assert body["properties"]["operation"] == "Backup"
    assert body["properties"]["backupManagementType"] == "AzureWorkload"
    emu.clock.t += 1
    _, body = await emu.arm_json("GET", job_path(job_id))
    assert body["properties"]["operation"] == "Backup (Full)"


async def test_not_found_window_then_visible(emu: Emu) -> None:
    job_id = await emu.add_job(not_found_seconds=3, duration_seconds=10)
    status, body = await emu.arm_json("GET", job_path(job_id))
    assert status == 404
    assert body["error"]["code"] == "ResourceNotFound"
    emu.clock.t += 3
    status, body = await emu.arm_json(
        "GET", job_path(job_id).upper().replace("BACKUPJOBS", "backupjobs")
    )
    assert status == 200
    assert body["name"] == job_id
    status, _ = await emu.arm_json("GET", job_path("5d0c7a4e-0000-0000-0000-000000000000"))
    assert status == 404
    stats = emu.state.stats()
    assert stats["job_gets"][job_id] == 2
    assert stats["job_gets_running"] == 1  # 404s are no reads of a running job


async def test_stats_tell_reads_of_running_jobs_from_reads_of_ended_ones(emu: Emu) -> None:
    job_id = await emu.add_job(duration_seconds=10)
    for _ in range(3):  # at 0 s and 6 s running, at 12 s ended
        await emu.arm_json("GET", job_path(job_id))
        emu.clock.t += 6
    stats = emu.state.stats()
    assert stats["job_gets"][job_id] == 3
    assert stats["job_gets_running"] == 2


async def test_auth_required(emu: Emu) -> None:
    job_id = await emu.add_job()
    for token in (None, "", "wrong-token"):
        status, body = await emu.arm_json("GET", job_path(job_id), token=token)
        assert status == 401
        assert body["error"]["code"] == "AuthenticationFailed"
        assert body["error"]["message"]


async def test_any_bearer_accepted_without_required_token() -> None:
    state = EmulatorState(clock=FakeClock(1000.0))
    async with TestClient(TestServer(build_emulator_app(state))) as client:
        job = state.add_job()
        resp = await client.get(
            job_path(job.job_id),
            params={"api-version": API},
            headers={"Authorization": "Bearer anything"},
        )
        assert resp.status == 200


@pytest.mark.parametrize("version", [None, "2026-11", "latest", "2026-11-01-beta"])
async def test_bad_api_version(emu: Emu, version: str | None) -> None:
    job_id = await emu.add_job()
    status, body = await emu.arm_json("GET", job_path(job_id), api_version=version)
    assert status == 400
    assert set(body["error"]) >= {"code", "message"}


async def test_preview_api_version_accepted(emu: Emu) -> None:
    job_id = await emu.add_job()
    status, _ = await emu.arm_json("GET", job_path(job_id), api_version="2026-08-31-preview")
    assert status == 200


async def test_operation_yields_single_job_id(emu: Emu) -> None:
    status, op = await emu.admin(
        "POST", "/admin/operations", {"delay_seconds": 2, "jobs": {"duration_seconds": 4}}
    )
    assert status == 201
    assert len(op["job_ids"]) == 1
    resp = await emu.follow(op["azure_async_operation"])
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "InProgress"
    assert body["endTime"] == "0001-01-01T00:00:00"
    assert "properties" not in body
    # The job does not exist before the operation completes.
    status, _ = await emu.arm_json("GET", job_path(op["job_ids"][0]))
    assert status == 404
    loc = await emu.follow(op["location"])
    assert loc.status == 404  # vault-level operationResults is not emulated

    emu.clock.t += 2
    body = await (await emu.follow(op["azure_async_operation"])).json()
    assert body["status"] == "Succeeded"
    assert body["id"] == body["name"] == op["operation_id"]
    assert body["properties"] == {
        "objectType": "OperationStatusJobExtendedInfo",
        "jobId": op["job_ids"][0],
    }
    status, job = await emu.arm_json("GET", job_path(op["job_ids"][0]))
    assert status == 200
    assert job["properties"]["status"] == "InProgress"
    assert job["properties"]["startTime"] == "2026-03-01T12:00:02.0000000Z"


async def test_operation_yields_several_job_ids_item_level(emu: Emu) -> None:
    _, op = await emu.admin(
        "POST", "/admin/operations", {"delay_seconds": 0, "job_count": 3, "item_level": True}
    )
    assert "/operationsStatus/" in op["azure_async_operation"]
    body = await (await emu.follow(op["azure_async_operation"])).json()
    assert body["status"] == "Succeeded"
    assert body["properties"]["objectType"] == "OperationStatusJobsExtendedInfo"
    assert body["properties"]["jobIds"] == op["job_ids"]
    # The same opId works against the vault-level backupOperations endpoint.
    status, vault_level = await emu.arm_json(
        "GET", f"{DEFAULT_VAULT_ID}/backupOperations/{op['operation_id']}"
    )
    assert status == 200
    assert vault_level["properties"]["jobIds"] == op["job_ids"]
    assert (await emu.follow(op["location"])).status == 204
    assert emu.state.stats()["jobs"] == 3


async def test_failed_operation(emu: Emu) -> None:
    _, op = await emu.admin("POST", "/admin/operations", {"delay_seconds": 1, "result": "Failed"})
    assert op["job_ids"] == []
    emu.clock.t += 1
    body = await (await emu.follow(op["azure_async_operation"])).json()
    assert body["status"] == "Failed"
    assert body["error"]["code"] == "UserErrorBackupOperationInProgress"
    assert "properties" not in body
    status, _ = await emu.arm_json("GET", f"{DEFAULT_VAULT_ID}/backupOperations/nope")
    assert status == 404


async def test_list_paging_follows_next_link_verbatim(emu: Emu) -> None:
    created = [await emu.add_job(duration_seconds=100) for _ in range(7)]
    other = await emu.add_job(operation="Restore", duration_seconds=100)
    flt = "operation eq 'Backup' and status eq 'InProgress'"
    status, page = await emu.arm_json(
        "GET", f"{DEFAULT_VAULT_ID}/backupJobs", params={"$filter": flt}
    )
    assert status == 200
    seen = [item["name"] for item in page["value"]]
    assert all("extendedInfo" not in item["properties"] for item in page["value"])
    pages = 1
    while "nextLink" in page:
        link = page["nextLink"]
        query = parse_qs(urlsplit(link).query)
        assert query["$filter"] == [flt]
        assert query["api-version"] == [API]
        assert "$skiptoken" in query
        resp = await emu.follow(link)
        assert resp.status == 200
        page = await resp.json()
        seen += [item["name"] for item in page["value"]]
        pages += 1
    assert seen == created
    assert other not in seen
    assert pages == 3
    assert emu.state.stats()["by_kind"]["job_list"] == 3


async def test_list_filters(emu: Emu) -> None:
    first = await emu.add_job(duration_seconds=1, final_status="Failed")
    emu.clock.t += 3600
    second = await emu.add_job(duration_seconds=100, job_type="AzureStorageJob")
    hidden = await emu.add_job(not_found_seconds=50)
    vault = f"{DEFAULT_VAULT_ID}/backupJobs"

    async def names(flt: str) -> list[str]:
        status, body = await emu.arm_json("GET", vault, params={"$filter": flt})
        assert status == 200, body
        return [item["name"] for item in body["value"]]

    assert await names("status eq 'Failed'") == [first]
    assert await names("backupManagementType eq 'AzureStorage'") == [second]
    assert await names("backupManagementType eq 'AzureIaasVM'") == [first]
    assert await names(f"jobId eq '{second}'") == [second]
    window = "startTime eq '2026-03-01 12:30:00 PM' and endTime eq '2026-03-01 01:30:00 PM'"
    assert await names(window) == [second]
    assert await names("startTime eq '2026-03-01 12:00:00 AM'") == [first, second]
    assert hidden not in await names("")
    # $skipToken spelling is accepted as well.
    status, body = await emu.arm_json("GET", vault, params={"$skipToken": "0"})
    assert status == 200 and len(body["value"]) == 2
    for bad in ("foo eq 'x'", "status ne 'Failed'", "startTime eq '2026-03-01T12:00:00Z'"):
        status, body = await emu.arm_json("GET", vault, params={"$filter": bad})
        assert status == 400, bad
        assert body["error"]["code"]


@pytest.mark.parametrize("kind", ["429", "500", "502", "503", "504"])
async def test_http_error_faults(emu: Emu, kind: str) -> None:
    job_id = await emu.add_job()
    status, _ = await emu.admin(
        "POST",
        "/admin/faults",
        {"kind": kind, "count": 2, "retry_after": 7, "path_contains": "BACKUPJOBS"},
    )
    assert status == 201
    for _ in range(2):
        resp = await emu.arm("GET", job_path(job_id))
        assert resp.status == int(kind)
        body = await resp.json()
        assert body["error"]["code"]
        if kind == "429":
            assert resp.headers["Retry-After"] == "7"
    assert (await emu.arm("GET", job_path(job_id))).status == 200
    stats = emu.state.stats()
    assert stats["faults_served"] == 2
    assert stats["requests"] == 3


async def test_fault_path_filter_and_fifo(emu: Emu) -> None:
    job_id = await emu.add_job()
    await emu.admin("POST", "/admin/faults", {"kind": "500", "path_contains": "backupOperations"})
    await emu.admin("POST", "/admin/faults", {"kind": "503"})
    await emu.admin("POST", "/admin/faults", {"kind": "429"})
    assert (await emu.arm("GET", job_path(job_id))).status == 503
    assert (await emu.arm("GET", job_path(job_id))).status == 429
    assert (await emu.arm("GET", job_path(job_id))).status == 200
    assert (await emu.arm("GET", f"{DEFAULT_VAULT_ID}/backupOperations/x")).status == 500


async def test_garbled_and_truncated_faults(emu: Emu) -> None:
    job_id = await emu.add_job()
    await emu.admin("POST", "/admin/faults", {"kind": "garbled"})
    await emu.admin("POST", "/admin/faults", {"kind": "truncated"})
    for _ in range(2):
        resp = await emu.arm("GET", job_path(job_id))
        assert resp.status == 200
        raw = await resp.read()
        with pytest.raises(ValueError):
            json.loads(raw)
    assert (await emu.arm("GET", job_path(job_id))).status == 200


async def test_reset_fault_drops_connection(emu: Emu) -> None:
    job_id = await emu.add_job()
    await emu.admin("POST", "/admin/faults", {"kind": "reset"})
    with pytest.raises(aiohttp.ClientError):
        resp = await emu.arm("GET", job_path(job_id))
        await resp.read()
    assert (await emu.arm("GET", job_path(job_id))).status == 200
    assert emu.state.stats()["faults_served"] == 1


async def test_cancel_flow(emu: Emu) -> None:
    job_id = await emu.add_job(duration_seconds=60)
    resp = await emu.arm("POST", f"{job_path(job_id)}/cancel")
    assert resp.status == 202
    assert resp.headers["Retry-After"] == "1"
    location = resp.headers["Location"]
    assert "/operationResults/" in location and f"api-version={API}" in location
    _, body = await emu.arm_json("GET", job_path(job_id))
    assert body["properties"]["status"] == "Cancelling"
    assert body["properties"]["actionsInfo"] == []
    assert (await emu.follow(location)).status == 204
    emu.clock.t += 1
    _, body = await emu.arm_json("GET", job_path(job_id))
    assert body["properties"]["status"] == "Cancelled"
    assert body["properties"]["endTime"] == "2026-03-01T12:00:01.0000000Z"
    _, truth = await emu.admin("GET", f"/admin/jobs/{job_id}")
    assert truth["status"] == "Cancelled"
    assert truth["final_status"] == "Completed"
    assert emu.state.stats()["by_kind"]["cancel"] == 1
    status, _ = await emu.arm_json("POST", f"{job_path('unknown-job')}/cancel")
    assert status == 404


async def test_trigger_backup_202_and_polling(emu: Emu) -> None:
    resp = await emu.arm("POST", f"{DEFAULT_VAULT_ID}{ITEM}/backup")
    assert resp.status == 202
    assert await resp.read() == b""
    assert resp.headers["Retry-After"] == "1"
    status_url = resp.headers["Azure-AsyncOperation"]
    result_url = resp.headers["Location"]
    base = str(emu.client.make_url("/"))
    assert status_url.startswith(base.rstrip("/") + DEFAULT_VAULT_ID)
    assert "/operationsStatus/" in status_url and "/operationResults/" in result_url
    assert status_url.endswith(f"?api-version={API}")
    assert (await emu.follow(result_url)).status == 202
    assert (await (await emu.follow(status_url)).json())["status"] == "InProgress"
    emu.clock.t += 1
    assert (await emu.follow(result_url)).status == 204
    op = await (await emu.follow(status_url)).json()
    job_id = op["properties"]["jobId"]
    _, job = await emu.arm_json("GET", job_path(job_id))
    assert job["properties"]["entityFriendlyName"] == "vm1"
    assert job["properties"]["operation"] == "Backup"
    emu.clock.t += 5
    _, job = await emu.arm_json("GET", job_path(job_id))
    assert job["properties"]["status"] == "Completed"
    assert emu.state.stats()["by_kind"]["trigger"] == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/jobs", {"duration_seconds": "5"}),
        ("/admin/jobs", {"duration_seconds": -1}),
        ("/admin/jobs", {"final_status": 3}),
        ("/admin/jobs", {"vault_id": "/subscriptions/x/resourceGroups/y"}),
        ("/admin/jobs", {"job_id": "a/b"}),
        ("/admin/jobs", {"bogus": 1}),
        ("/admin/jobs", [{"final_status": "Completed"}, "nope"]),
        ("/admin/jobs", [{"job_id": "dup-1"}, {"job_id": "dup-1"}]),
        ("/admin/operations", {"result": "Maybe"}),
        ("/admin/operations", {"job_count": 0}),
        ("/admin/operations", {"item_level": "yes"}),
        ("/admin/operations", {"jobs": {"duration_seconds": True}}),
        ("/admin/faults", {"kind": "418"}),
        ("/admin/faults", {"kind": "429", "count": 0}),
        ("/admin/faults", {"kind": "500", "path_contains": 5}),
    ],
)
async def test_admin_validation(emu: Emu, path: str, body: Any) -> None:
    status, answer = await emu.admin("POST", path, body)
    assert status == 400
    assert answer["error"]
    assert emu.state.stats()["jobs"] == 0


async def test_admin_rejects_non_json_and_unknown_job(emu: Emu) -> None:
    resp = await emu.client.post("/admin/jobs", data=b"{not json")
    assert resp.status == 400
    status, _ = await emu.admin("GET", "/admin/jobs/nope")
    assert status == 404


async def test_admin_bulk_create_stats_and_reset(emu: Emu) -> None:
    vault = DEFAULT_VAULT_ID.replace("vault-emulator", "other-vault")
    status, body = await emu.admin(
        "POST", "/admin/jobs", [{"job_id": "job-a"}, {"vault_id": vault, "job_id": "job-b"}]
    )
    assert status == 201
    assert [j["id"] for j in body["jobs"]] == [
        f"{DEFAULT_VAULT_ID}/backupJobs/job-a",
        f"{vault}/backupJobs/job-b",
    ]
    assert (await emu.arm("GET", job_path("job-b"))).status == 404
    assert (await emu.arm("GET", job_path("job-b", vault))).status == 200
    assert (await emu.arm("GET", f"{DEFAULT_VAULT_ID}/nothingHere")).status == 404
    _, stats = await emu.admin("GET", "/admin/stats")
    assert stats["requests"] == 3
    assert stats["by_kind"]["job_get"] == 2
    assert stats["jobs"] == 2
    assert stats["job_gets"] == {"job-b": 2}
    status, _ = await emu.admin("POST", "/admin/reset")
    assert status == 200
    _, stats = await emu.admin("GET", "/admin/stats")
    assert stats == {
        "requests": 0,
        "by_kind": {},
        "faults_served": 0,
        "faults_by_kind": {},
        "job_gets": {},
        "job_gets_running": 0,
        "window_list_pages": 0,
        "jobs": 0,
        "throttled": 0,
        "reads_by_subscription": {},
    }


async def test_run_emulator_serves_on_ephemeral_port() -> None:
    loop = asyncio.get_running_loop()
    port_future: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(run_emulator(port=0, ready=port_future.set_result))
    try:
        port = await asyncio.wait_for(port_future, 5)
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            async with session.post(f"{base}/admin/jobs", json={"job_id": "j1"}) as resp:
                assert resp.status == 201
            async with session.get(
                f"{base}{job_path('j1')}",
                params={"api-version": API},
                headers={"Authorization": "Bearer t"},
            ) as resp:
                assert resp.status == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- read budget

SUB = "00000000-0000-0000-0000-000000000000"
OTHER_VAULT = DEFAULT_VAULT_ID.replace(SUB, "11111111-1111-1111-1111-111111111111")


def _remaining(resp: aiohttp.ClientResponse) -> int:
    return int(resp.headers["x-ms-ratelimit-remaining-subscription-reads"])


async def test_read_budget_burst_then_429_with_retry_after(emu: Emu) -> None:
    status, config = await emu.admin(
        "POST", "/admin/config", {"read_burst": 3, "read_refill_per_second": 0.5}
    )
    assert status == 200
    assert config == {
        "read_burst": 3,
        "read_refill_per_second": 0.5,
        "read_others_per_second": 0.0,
        "page_size": 3,
        "write_burst": None,
        "write_refill_per_second": None,
    }
    job_id = await emu.add_job()
    remaining = []
    for _ in range(3):
        resp = await emu.arm("GET", job_path(job_id))
        assert resp.status == 200
        remaining.append(_remaining(resp))
    assert remaining == [2, 1, 0]
    resp = await emu.arm("GET", job_path(job_id))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "2"  # one token at 0.5/s
    assert _remaining(resp) == 0
    assert (await resp.json())["error"]["code"] == "SubscriptionRequestsThrottled"
    # Another subscription has its own bucket; writes are not reads.
    other = emu.state.add_job(vault_id=OTHER_VAULT)
    assert (await emu.arm("GET", job_path(other.job_id, OTHER_VAULT))).status == 200
    assert (await emu.arm("POST", f"{job_path(job_id)}/cancel")).status == 202
    stats = emu.state.stats()
    assert stats["throttled"] == 1
    assert stats["reads_by_subscription"] == {SUB: 4, "11111111-1111-1111-1111-111111111111": 1}


async def test_read_budget_refills_on_the_clock(emu: Emu) -> None:
    await emu.admin("POST", "/admin/config", {"read_burst": 2, "read_refill_per_second": 4})
    job_id = await emu.add_job()
    for _ in range(2):
        assert (await emu.arm("GET", job_path(job_id))).status == 200
    resp = await emu.arm("GET", job_path(job_id))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"  # 0.25 s rounds up to the 1 s minimum
    emu.clock.t += 0.25
    resp = await emu.arm("GET", job_path(job_id))
    assert resp.status == 200 and _remaining(resp) == 0
    emu.clock.t += 100  # refill stops at the burst
    resp = await emu.arm("GET", job_path(job_id))
    assert _remaining(resp) == 1
    # null disables the budget and the header with it
    status, config = await emu.admin("POST", "/admin/config", {"read_burst": None})
    assert status == 200 and config["read_burst"] is None
    resp = await emu.arm("GET", job_path(job_id))
    assert resp.status == 200
    assert "x-ms-ratelimit-remaining-subscription-reads" not in resp.headers


async def test_other_clients_take_their_reads_out_of_the_budget(emu: Emu) -> None:
    """`read_others_per_second` stands for the portal, scripts and other daemons sharing a
    subscription's budget: the bucket refills at the difference, and never goes negative."""
    status, config = await emu.admin(
        "POST",
        "/admin/config",
        {"read_burst": 100, "read_refill_per_second": 25, "read_others_per_second": 15},
    )
    assert status == 200 and config["read_others_per_second"] == 15
    job_id = await emu.add_job()
    assert _remaining(await emu.arm("GET", job_path(job_id))) == 99
    emu.clock.t += 1.0  # 25 back, 15 taken by the others: 10 net, up to the burst
    assert _remaining(await emu.arm("GET", job_path(job_id))) == 99
    for _ in range(50):
        await emu.arm("GET", job_path(job_id))
    emu.clock.t += 2.0  # 49 left, 20 net back, one for this read
    assert _remaining(await emu.arm("GET", job_path(job_id))) == 68
    # Others taking more than the refill drain the bucket, and a read then gets a 429.
    await emu.admin("POST", "/admin/config", {"read_others_per_second": 40})
    emu.clock.t += 10.0
    resp = await emu.arm("GET", job_path(job_id))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1


async def test_read_budget_from_constructor_and_admin_validation(emu: Emu) -> None:
    state = EmulatorState(clock=FakeClock(1000.0), read_burst=1, read_refill_per_second=1)
    async with TestClient(TestServer(build_emulator_app(state))) as client:
        job = state.add_job()
        headers = {"Authorization": "Bearer t"}
        codes = [
            (
                await client.get(job_path(job.job_id), params={"api-version": API}, headers=headers)
            ).status
            for _ in range(2)
        ]
        assert codes == [200, 429]
        config = await (await client.get("/admin/config")).json()
        assert config == {
            "read_burst": 1,
            "read_refill_per_second": 1,
            "read_others_per_second": 0.0,
            "page_size": 200,
            "write_burst": None,
            "write_refill_per_second": None,
        }
    for bad in (
        {"read_burst": 0},
        {"read_burst": "many"},
        {"read_refill_per_second": 0},
        {"read_others_per_second": -1},
        {"read_others_per_second": "busy"},
        {"page_size": 0},
        {"budget": 1},
    ):
        status, _ = await emu.admin("POST", "/admin/config", bad)
        assert status == 400, bad
    status, _ = await emu.admin("POST", "/admin/config", {"page_size": 50})
    assert status == 200 and emu.state.page_size == 50
    with pytest.raises(ValueError):
        EmulatorState(read_burst=0)


# --------------------------------------------------------------------------- random faults


async def _codes(emu: Emu, job_id: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        resp = await emu.arm("GET", job_path(job_id))
        await resp.read()
        out.append(resp.status)
    return out


async def test_random_faults_rate_one_and_zero(emu: Emu) -> None:
    job_id = await emu.add_job()
    status, body = await emu.admin(
        "POST", "/admin/faults", {"kind": "random", "rate": 1.0, "kinds": ["500", 503], "seed": 1}
    )
    assert status == 201
    assert body == {
        "kind": "random",
        "rate": 1.0,
        "kinds": ["500", "503"],
        "retry_after": 1,
        "seed": 1,
    }
    codes = await _codes(emu, job_id, 20)
    assert set(codes) == {500, 503}
    stats = emu.state.stats()
    assert stats["faults_served"] == 20
    assert sum(stats["faults_by_kind"].values()) == 20
    assert set(stats["faults_by_kind"]) == {"500", "503"}
    status, _ = await emu.admin("POST", "/admin/faults", {"kind": "random", "rate": 0})
    assert status == 201
    assert await _codes(emu, job_id, 20) == [200] * 20
    assert emu.state.stats()["faults_served"] == 20


async def test_random_faults_are_reproducible_with_a_seed(emu: Emu) -> None:
    job_id = await emu.add_job()
    spec = {"kind": "random", "rate": 0.3, "seed": 7, "retry_after": 3}
    runs = []
    for _ in range(2):
        await emu.admin("POST", "/admin/faults", spec)
        runs.append(await _codes(emu, job_id, 60))
    assert runs[0] == runs[1]
    assert 200 in runs[0] and any(c != 200 for c in runs[0])
    # Default kinds: 500, 503, garbled and truncated (both 200 with a broken body), 429.
    assert set(runs[0]) <= {200, 500, 503, 429}
    by_kind = emu.state.stats()["faults_by_kind"]
    assert set(by_kind) <= {"500", "503", "garbled", "truncated", "429"}


async def test_queued_faults_come_before_random_ones(emu: Emu) -> None:
    job_id = await emu.add_job()
    await emu.admin("POST", "/admin/faults", {"kind": "random", "rate": 1, "kinds": ["503"]})
    await emu.admin("POST", "/admin/faults", {"kind": "429", "retry_after": 9})
    resp = await emu.arm("GET", job_path(job_id))
    assert resp.status == 429 and resp.headers["Retry-After"] == "9"
    assert await _codes(emu, job_id, 2) == [503, 503]
    assert emu.state.stats()["faults_by_kind"] == {"429": 1, "503": 2}
    await emu.admin("POST", "/admin/reset")
    job_id = await emu.add_job()
    assert await _codes(emu, job_id, 2) == [200, 200]


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "random"},
        {"kind": "random", "rate": 1.5},
        {"kind": "random", "rate": 0.5, "kinds": []},
        {"kind": "random", "rate": 0.5, "kinds": ["teapot"]},
        {"kind": "random", "rate": 0.5, "seed": "x"},
        {"kind": "random", "rate": 0.5, "count": 2},
    ],
)
async def test_random_fault_validation(emu: Emu, body: dict[str, Any]) -> None:
    status, _ = await emu.admin("POST", "/admin/faults", body)
    assert status == 400
