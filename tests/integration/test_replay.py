"""Replay mode of the emulator over real HTTP: recorded answers come back per resource in
order, the last one repeats, and URLs in headers point at the emulator. Also what
`Recording.expected_jobs()` reads out of the shared recordings (checked against STATS.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from backupjobd.emulator import (
    EmulatorState,
    ReplayError,
    build_emulator_app,
    load_recording,
    load_replay,
)

TOKEN = "replay-token"
SUB = "00000000-0000-0000-0000-000000000000"
VAULT = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.RecoveryServices/vaults/v1"
ITEM = (
    "/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Brg1%3Bvm1"
    "/protectedItems/VM%3Biaasvmcontainerv2%3Brg1%3Bvm1"
)
JOB = "11111111-2222-3333-4444-555555555555"
OP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
OP2 = "99999999-8888-7777-6666-555555555555"
HOST = "https://management.azure.com"


def _job(status: str) -> dict[str, Any]:
    return {
        "id": f"{VAULT}/backupJobs/{JOB}",
        "name": JOB,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": {"jobType": "AzureIaaSVMJob", "operation": "Backup", "status": status},
    }


def _op(status: str, job_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"id": OP, "name": OP, "status": status}
    if job_id:
        body["properties"] = {"objectType": "OperationStatusJobExtendedInfo", "jobId": job_id}
    return body


def _get(url: str, status: int, body: Any, **headers: str) -> dict[str, Any]:
    return {"method": "GET", "url": url, "status": status, "headers": headers, "body": body}


def _synthetic() -> dict[str, Any]:
    """A CLI-style recording: trigger, operation polling, job polling with a 500 and a 404."""
    job_url = f"{VAULT}/backupJobs/{JOB}?api-version=2023-04-01"
    return {
        "source": "synthetic",
        "interactions": [
            {
                "method": "POST",
                "url": f"{VAULT}{ITEM}/backup?api-version=2023-04-01",
                "status": 202,
                "headers": {
                    "azure-asyncoperation": f"{HOST}{VAULT}{ITEM.replace('%3B', ';')}"
                    f"/operationsStatus/{OP}?api-version=2023-04-01",
                    "location": f"{HOST}{VAULT}{ITEM.replace('%3B', ';')}"
                    f"/operationResults/{OP}?api-version=2023-04-01",
                    "retry-after": "60",
                    "date": "Thu, 21 Dec 2023 04:56:33 GMT",
                },
                "body": None,
            },
            _get(f"{VAULT}/backupOperations/{OP}?api-version=2023-04-01", 200, _op("InProgress")),
            _get(
                f"{VAULT}/backupOperations/{OP}?api-version=2023-04-01",
                200,
                _op("Succeeded", JOB),
            ),
            _get(job_url, 404, {"error": {"code": "ResourceNotFound", "message": "x"}}),
            _get(job_url, 200, _job("InProgress")),
            _get(job_url, 500, {"error": {"code": "CloudStorageUnexpectedError", "message": ""}}),
            _get(job_url, 200, _job("InProgress")),
            _get(f"{VAULT}/backupJobs?api-version=2023-04-01&$filter=x", 200, {"value": []}),
            _get(job_url, 200, _job("Completed")),
        ],
    }


async def _request(
    client: TestClient[Any, Any], path: str, method: str = "GET"
) -> tuple[int, Any, aiohttp.ClientResponse]:
    sep = "&" if "?" in path else "?"
    resp = await client.request(
        method,
        f"{path}{sep}api-version=2031-01-01",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    text = await resp.text()
    return resp.status, json.loads(text) if text else None, resp


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "azure-cli-synthetic.json"
    path.write_text(json.dumps(_synthetic()))
    return path


@pytest.fixture
async def client(recording: Path) -> AsyncIterator[TestClient[Any, Any]]:
    state = EmulatorState(required_token=TOKEN)
    state.load_replay([recording])
    async with TestClient(TestServer(build_emulator_app(state))) as test_client:
        yield test_client


async def test_answers_in_order_then_the_last_repeats(client: TestClient[Any, Any]) -> None:
    job = f"{VAULT}/backupJobs/{JOB}"
    seen = []
    for _ in range(7):
        status, body, _ = await _request(client, job)
        seen.append((status, body["properties"]["status"] if status == 200 else None))
    assert seen == [
        (404, None),
        (200, "InProgress"),
        (500, None),
        (200, "InProgress"),
        (200, "Completed"),
        (200, "Completed"),
        (200, "Completed"),
    ]
    # Keys are case-insensitive paths; each resource has its own cursor.
    status, body, _ = await _request(client, f"{VAULT}/BACKUPOPERATIONS/{OP}".upper())
    assert (status, body["status"]) == (200, "InProgress")
    replay = await (await client.get("/admin/replay")).json()
    progress = {r["path"]: r for r in replay["resources"]}
    assert progress[job.lower()] == {
        "method": "GET",
        "path": job.lower(),
        "recording": "azure-cli-synthetic",
        "recorded": 5,
        "served": 7,
    }
    assert replay["keys_exhausted"] == 1


async def test_unknown_keys_404_and_auth_still_checked(client: TestClient[Any, Any]) -> None:
    status, body, _ = await _request(client, f"{VAULT}/backupJobs/{OP2}")
    assert status == 404 and body["error"]["code"] == "ResourceNotFound"
    # Lists are not replayed: one path, many $filter answers.
    status, _, _ = await _request(client, f"{VAULT}/backupJobs")
    assert status == 404
    resp = await client.get(f"{VAULT}/backupJobs/{JOB}", params={"api-version": "2023-04-01"})
    assert resp.status == 401
    resp = await client.get(
        f"{VAULT}/backupJobs/{JOB}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 400  # api-version is still required, any valid one is accepted


async def test_header_urls_point_at_the_emulator_and_retry_after_is_capped(
    client: TestClient[Any, Any],
) -> None:
    status, _, resp = await _request(client, f"{VAULT}{ITEM}/backup", "POST")
    assert status == 202
    base = str(client.make_url("")).rstrip("/")
    aao = resp.headers["Azure-AsyncOperation"]
    assert aao.startswith(f"{base}{VAULT}/backupFabrics/Azure/")
    assert aao.endswith(f"/operationsStatus/{OP}?api-version=2023-04-01")
    assert resp.headers["Location"].startswith(base)
    assert "management.azure.com" not in aao
    assert resp.headers["Retry-After"] == "1"
    # The per-item operationsStatus URL the trigger handed out answers like backupOperations.
    follow = await client.session.get(aao, headers={"Authorization": f"Bearer {TOKEN}"})
    assert (await follow.json())["status"] == "InProgress"
    status, body, _ = await _request(client, f"{VAULT}/backupOperations/{OP}")
    assert body["properties"]["jobId"] == JOB


def test_expected_jobs_of_the_synthetic_recording(recording: Path) -> None:
    rec = load_recording(recording)
    [job] = rec.expected_jobs()
    assert job.job_id == JOB
    assert job.vault_id == VAULT
    assert job.registered_by == "operation"
    assert job.operation_path is not None
    assert job.operation_path.endswith(f"/operationsStatus/{OP}?api-version=2023-04-01")
    assert job.operation_url("http://127.0.0.1:1/") == "http://127.0.0.1:1" + job.operation_path
    assert job.statuses == ("InProgress", "Completed")
    assert job.final_status == "Completed"
    assert (job.answers, job.answers_to_final) == (5, 5)


def test_powershell_job_gets_are_sorted_by_date(tmp_path: Path) -> None:
    doc = {
        "source": "Azure/azure-powershell:synthetic",
        "interactions": [
            _get(
                f"{VAULT}/backupJobs/{JOB}",
                200,
                _job("Cancelling"),
                Date="Fri, 20 Oct 2017 12:11:16 GMT",
            ),
            _get(
                f"{VAULT}/backupJobs/{JOB}",
                200,
                _job("InProgress"),
                Date="Fri, 20 Oct 2017 12:11:12 GMT",
            ),
        ],
    }
    path = tmp_path / "ps.json"
    path.write_text(json.dumps(doc))
    rec = load_recording(path)
    assert rec.powershell
    [job] = rec.expected_jobs()
    assert job.registered_by == "job-id" and job.operation_path is None
    assert job.statuses == ("InProgress", "Cancelling")
    assert job.answers_to_final == 2  # Cancelling is not terminal: every answer counts


def test_shared_keys_first_file_wins(tmp_path: Path, recording: Path) -> None:
    second = tmp_path / "second.json"
    doc = _synthetic()
    doc["interactions"] = doc["interactions"][-1:]
    second.write_text(json.dumps(doc))
    server = load_replay([recording, second])
    assert [s[0] for s in server.shadowed] == ["second"]
    first = server.next_answer("GET", f"{VAULT}/backupJobs/{JOB}")
    assert first is not None and first.status == 404


def test_bad_recordings_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"interactions": 3}', '{"interactions": [{"url": "/x"}]}'):
        bad.write_text(text)
        with pytest.raises(ReplayError):
            load_recording(bad)
    with pytest.raises(ReplayError):
        load_recording(tmp_path / "missing.json")


# --------------------------------------------------------------------------- shared recordings


def _shared_dir() -> Path | None:
    override = os.environ.get("BACKUPJOBD_SHARED_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "shared"
    return path if path.is_dir() else None


SHARED = _shared_dir()


def _recording(name: str) -> Path:
    path = SHARED / "recordings" / f"{name}.json" if SHARED else None
    if path is None or not path.is_file():
        reason = f"recording {name} not found: set BACKUPJOBD_SHARED_DIR (default ../shared)"
        if os.environ.get("BACKUPJOBD_REQUIRE_SHARED") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _by_prefix(name: str) -> dict[str, Any]:
    return {j.job_id[:8]: j for j in load_recording(_recording(name)).expected_jobs()}


@pytest.mark.recordings
def test_expected_jobs_cli_2023_12_backup_with_a_500() -> None:
    jobs = _by_prefix("azure-cli-test_backup_job-2023-12")
    assert set(jobs) == {"7e561d25", "544e29b4", "120a8c6f", "98f3b14f"}
    backup = jobs["544e29b4"]
    assert backup.statuses == ("InProgress", "Completed")
    assert backup.registered_by == "operation"
    assert "/operationsStatus/" in backup.operation_path
    rec = load_recording(_recording("azure-cli-test_backup_job-2023-12"))
    key = ("GET", f"{backup.vault_id}/backupJobs/{backup.job_id}".lower())
    codes = [a.status for a in rec.sequences[key]]
    assert codes.count(500) == 1 and codes[0] == 200 and codes[-1] == 200
    assert jobs["120a8c6f"].statuses == ("InProgress",)  # restore still running at the end
    assert jobs["120a8c6f"].answers_to_final == jobs["120a8c6f"].answers
    # DeleteBackupData: learnt from backupOperations (the DELETE's own async URL).
    assert "/backupOperations/" in jobs["98f3b14f"].operation_path


@pytest.mark.recordings
def test_expected_jobs_powershell_cancel_and_dogfood() -> None:
    jobs = _by_prefix("azure-powershell-TestAzureVMCancelJob-2017-10")
    assert jobs["34d3ccd5"].statuses == ("InProgress", "Cancelling")
    assert jobs["f76a088d"].statuses == ("Completed",)
    cancel = _by_prefix("azure-powershell-TestCancelJobScenario-2016-04")
    assert cancel["18dbb276"].registered_by == "job-id"
    assert cancel["18dbb276"].statuses == ("Cancelling",)
    # The 2016 dogfood record: request paths say Microsoft.RecoveryServices (so the job is
    # kept), only the bodies say Microsoft.RecoveryServicesBVTD.
    bvtd = _by_prefix("azure-powershell-TestBackupItemScenario-2016-06")
    assert bvtd["35af244b"].statuses == ("InProgress", "Completed")
    assert bvtd["35af244b"].answers == 51


@pytest.mark.recordings
def test_expected_jobs_take_crr_jobs_and_leave_out_list_only_files() -> None:
    """Cross-region restores' jobs (POST backupCrrJob, told apart by the job each answer
    names) are expected too, registered by their backupCrrOperationsStatus URL with the
    recording's vault; list-only files name no job."""
    sql_crr = _by_prefix("azure-cli-test_backup_wl_sql_crr-2022-02")
    assert set(sql_crr) == {"36f0d2ed", "01ff2d4d"}
    assert sql_crr["36f0d2ed"].statuses == ("InProgress", "Failed")
    assert sql_crr["01ff2d4d"].statuses == ("InProgress", "Completed")
    assert all(j.region == "eastus2euap" for j in sql_crr.values())
    assert all(j.registered_by == "operation" for j in sql_crr.values())
    assert all(
        "backupcrroperationsstatus" in str(j.operation_path).lower() for j in sql_crr.values()
    )
    assert _by_prefix("azure-powershell-TestGetJobsTimeFilter-2016-04") == {}
    hana = _by_prefix("azure-cli-test_backup_wl_hana_restore-2023-05")
    assert hana["8dff9017"].statuses == ("InProgress", "Failed")
    assert hana["96f97381"].statuses == ("InProgress", "Completed")
    crr = _by_prefix("azure-cli-test_backup_crr-2023-05")
    assert len(crr) == 4  # three vault jobs and the CrossRegionRestore job
    assert crr["52c14310"].statuses == ("InProgress", "Completed")
    assert crr["52c14310"].answers == 41
    assert crr["52c14310"].resource_path.endswith(
        "/backupcrrjob#52c14310-2252-4b19-a4d6-d54b92ab5963"
    )
