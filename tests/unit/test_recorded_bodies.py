from __future__ import annotations

# Every real body parses: recorded Azure traffic and the spec's example files.
#
# The data lives outside the repository (../shared). Its location can be overridden with
# BACKUPJOBD_SHARED_DIR; when it is absent the tests skip with a reason, never pass silently.
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from backupjobd.core import azure
from backupjobd.core.registration import (
    Endpoint,
    JobRegistration,
    operation_from_url,
    parse_documents,
)
from backupjobd.errors import InvalidInput

pytestmark = pytest.mark.recordings

KNOWN_JOB_STATUSES = {
    "InProgress",
    "Cancelling",
    "Completed",
    "CompletedWithWarnings",
    "Failed",
    "Cancelled",
    "Invalid",
}
TERMINAL = {"Completed", "CompletedWithWarnings", "Failed", "Cancelled"}
HINT_VAULT = azure.vault_from_id(
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/hint"
    "/providers/Microsoft.RecoveryServices/vaults/hintvault"
)

_GUID = r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}"
JOB_GET_RE = re.compile(rf"/backupJobs/{_GUID}$", re.IGNORECASE)
JOB_LIST_RE = re.compile(r"/backupJobs$", re.IGNORECASE)
CRR_JOB_RE = re.compile(r"/backupCrrJob$", re.IGNORECASE)
OPERATION_GET_RE = re.compile(
    r"/(?:backupOperations|operationsStatus|backupCrrOperationsStatus)/[^/]+$", re.IGNORECASE
)
# The operation URL kinds registration accepts (an independent, simpler description).
SUPPORTED_OPERATION_URL_RE = re.compile(
    r"/providers/Microsoft\.RecoveryServices/vaults/[^/]+"
    r"(?:/backupFabrics/[^/]+/protectionContainers/[^/]+/protectedItems/[^/]+"
    r"/(?:operationsStatus|operationResults)"
    rf"|/backupOperations|/backupOperationResults|/backupJobs/{_GUID}/operationResults)"
    r"/(?P<op>[^/]+)$",
    re.IGNORECASE,
)


def _shared_dir() -> Path | None:
    override = os.environ.get("BACKUPJOBD_SHARED_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "shared"
    return path if path.is_dir() else None


SHARED = _shared_dir()
MISSING_REASON = (
    "shared data not found: set BACKUPJOBD_SHARED_DIR to the directory holding recordings/ "
    "and azure-examples/ (default: ../shared next to the repository)"
)


# CI sets BACKUPJOBD_REQUIRE_SHARED=1: there a missing directory fails instead of skipping.
REQUIRED = os.environ.get("BACKUPJOBD_REQUIRE_SHARED") == "1"
_MISSING_MARKS = () if REQUIRED else (pytest.mark.skip(MISSING_REASON),)


def _files(sub: str) -> list[Any]:
    if SHARED is None or not (SHARED / sub).is_dir():
        return [pytest.param(None, id=f"{sub}-missing", marks=_MISSING_MARKS)]
    paths = sorted((SHARED / sub).glob("*.json"))
    if not paths:
        return [pytest.param(None, id=f"{sub}-empty", marks=_MISSING_MARKS)]
    return [pytest.param(p, id=p.name) for p in paths]


RECORDING_FILES = _files("recordings")
EXAMPLE_FILES = _files("azure-examples")


def _need(path: Path | None) -> Path:
    if path is None:
        if REQUIRED:
            pytest.fail(MISSING_REASON)
        pytest.skip(MISSING_REASON)
    return path


# --------------------------------------------------------------------------- extraction


@dataclass
class Extracted:
    """Bodies found in one file, classified by the request they answer."""

    job_bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    operation_bodies: list[dict[str, Any]] = field(default_factory=list)
    operation_urls: list[str] = field(default_factory=list)
    list_pages: int = 0


def _header_urls(headers: Any) -> Iterator[str]:
    if not isinstance(headers, dict):
        return
    for name, value in headers.items():
        if name.lower() not in ("location", "azure-asyncoperation"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                yield item


def _job_kind(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("properties"), dict)
        and "jobType" in value["properties"]
    )


def extract_recording(path: Path) -> Extracted:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = Extracted()
    for it in data["interactions"]:
        out.operation_urls.extend(_header_urls(it.get("headers")))
        body = it.get("body")
        if it["status"] != 200 or body is None:
            continue
        url_path = it["url"].split("?", 1)[0]
        if it["method"] == "GET" and JOB_GET_RE.search(url_path):
            out.job_bodies.append(("get", body))
        elif it["method"] == "POST" and CRR_JOB_RE.search(url_path):
            out.job_bodies.append(("crr", body))
        elif it["method"] == "GET" and JOB_LIST_RE.search(url_path):
            assert isinstance(body["value"], list)
            out.list_pages += 1
            out.job_bodies.extend(("list", item) for item in body["value"])
        elif (
            it["method"] == "GET"
            and OPERATION_GET_RE.search(url_path)
            and isinstance(body, dict)
            and "status" in body
        ):
            out.operation_bodies.append(body)
    return out


def extract_example(path: Path) -> Extracted:
    data = json.loads(path.read_text(encoding="utf-8"))
    out = Extracted()
    if "samples" in data:  # docs-samples_JobResponses.json
        for sample in data["samples"]:
            out.job_bodies.append(("get", sample["body"]))
        return out
    for response in data["responses"].values():
        response = response or {}
        out.operation_urls.extend(_header_urls(response.get("headers")))
        body = response.get("body")
        if not isinstance(body, dict):
            continue
        if _job_kind(body):
            out.job_bodies.append(("get", body))
        elif isinstance(body.get("value"), list):
            out.job_bodies.extend(("list", item) for item in body["value"] if _job_kind(item))
        elif "status" in body and "type" not in body:
            out.operation_bodies.append(body)
    return out


@cache
def _cached_recording(path: Path) -> Extracted:
    return extract_recording(path)


# --------------------------------------------------------------------------- checks


def check_job_bodies(bodies: list[tuple[str, dict[str, Any]]]) -> list[azure.JobObservation]:
    observed = []
    for kind, body in bodies:
        obs = azure.parse_job_resource(body)
        expected_status = body["properties"]["status"]
        assert obs.status == expected_status, (kind, body.get("id"))
        assert obs.status in KNOWN_JOB_STATUSES
        assert obs.is_terminal == (obs.status in TERMINAL)
        assert obs.job_id == body["name"].lower()
        if obs.is_terminal and obs.status != "Cancelled":
            assert obs.end_time is not None or "endTime" not in body["properties"]
        if obs.start_time is not None and obs.end_time is not None:
            assert obs.end_time >= obs.start_time
        azure.actions_info(obs.properties)
        assert obs.progress is None or 0 <= obs.progress <= 100, (kind, obs.progress)
        assert len(azure.snapshot_hash(obs.properties)) == 64
        observed.append(obs)
    return observed


def check_operation_bodies(bodies: list[dict[str, Any]]) -> list[azure.OperationObservation]:
    observed = []
    for body in bodies:
        obs = azure.parse_operation_status(body)
        assert obs.status == body["status"]
        props = body.get("properties") or {}
        expected = [props["jobId"]] if "jobId" in props else []
        expected += props.get("jobIds") or []
        assert obs.job_ids == tuple(dict.fromkeys(j.lower() for j in expected))
        if obs.status == "Succeeded" and props:
            assert obs.job_ids
        observed.append(obs)
    return observed


def check_registrations(bodies: list[dict[str, Any]], ops: list[azure.OperationObservation]) -> int:
    """A finished operation-status body is a registration form; a running one is refused."""
    endpoint = Endpoint.from_url("https://management.azure.com")
    registered = 0
    for body, obs in zip(bodies, ops, strict=True):
        if obs.job_ids:
            regs = parse_documents([body], endpoint, HINT_VAULT)
            assert all(isinstance(r, JobRegistration) for r in regs)
            assert tuple(r.job_id for r in regs if isinstance(r, JobRegistration)) == obs.job_ids
            registered += 1
        elif obs.status == "InProgress":
            with pytest.raises(InvalidInput):
                parse_documents([body], endpoint, HINT_VAULT)
    return registered


def check_operation_urls(urls: list[str]) -> int:
    accepted = 0
    for url in urls:
        parts = urlsplit(url)
        match = SUPPORTED_OPERATION_URL_RE.search(parts.path)
        endpoint = Endpoint.from_url(f"{parts.scheme}://{parts.netloc}")
        if match is None:
            with pytest.raises(InvalidInput):
                operation_from_url(url, endpoint, "test")
            continue
        reg = operation_from_url(url, endpoint, "test")
        assert reg.operation_id == match.group("op")
        assert reg.url == url
        assert reg.vault.key in parts.path.lower()
        # The same URL is refused for any other endpoint.
        with pytest.raises(InvalidInput):
            operation_from_url(url, Endpoint.from_url("https://management.example.org"), "test")
        accepted += 1
    return accepted


# --------------------------------------------------------------------------- per-file tests


@pytest.mark.parametrize("path", RECORDING_FILES)
def test_recording_bodies_parse(path: Path | None) -> None:
    extracted = _cached_recording(_need(path))
    jobs = check_job_bodies(extracted.job_bodies)
    ops = check_operation_bodies(extracted.operation_bodies)
    check_registrations(extracted.operation_bodies, ops)
    check_operation_urls(extracted.operation_urls)
    # Every recording holds job traffic; finding none means the extraction is broken.
    # (One PowerShell record only holds a filtered list that came back empty.)
    assert jobs or extracted.list_pages, "no job body and no job list found"


@pytest.mark.parametrize("path", EXAMPLE_FILES)
def test_example_bodies_parse(path: Path | None) -> None:
    path = _need(path)
    extracted = extract_example(path)
    jobs = check_job_bodies(extracted.job_bodies)
    ops = check_operation_bodies(extracted.operation_bodies)
    check_registrations(extracted.operation_bodies, ops)
    accepted = check_operation_urls(extracted.operation_urls)
    # Only the export-jobs examples carry nothing a job tracker reads.
    nothing_expected = {"ExportJobsOperationResult.json", "TriggerExportJobs.json"}
    found = len(jobs) + len(ops) + accepted
    assert (found == 0) == (path.name in nothing_expected), found


# --------------------------------------------------------------------------- aggregate facts


def _all_recordings() -> list[Extracted]:
    paths = [p.values[0] for p in RECORDING_FILES]
    if any(p is None for p in paths):
        _need(None)
    return [_cached_recording(p) for p in paths]


def test_recordings_aggregate_job_facts() -> None:
    extracted = _all_recordings()
    assert len(extracted) == 28  # STATS.md: 19 CLI cassettes + 9 PowerShell records
    polled_ids: set[str] = set()
    all_ids: set[str] = set()
    statuses: Counter[str] = Counter()
    operations: set[str] = set()
    duration_forms: set[str] = set()
    action_forms: set[type] = set()
    capital_ids = 0
    total = 0
    for ex in extracted:
        for (kind, body), obs in zip(ex.job_bodies, check_job_bodies(ex.job_bodies), strict=True):
            total += 1
            all_ids.add(obs.job_id)
            if kind in ("get", "crr"):
                polled_ids.add(obs.job_id)
            statuses[obs.status] += 1
            if obs.operation:
                operations.add(obs.operation)
            raw_duration = obs.properties.get("duration")
            if raw_duration:
                assert obs.duration is not None
                duration_forms.add("iso" if raw_duration.startswith("P") else "timespan")
            for item in obs.properties.get("actionsInfo") or []:
                action_forms.add(type(item))
                assert azure.actions_info(obs.properties)[0] == "Cancellable"
            if body["id"].startswith("/Subscriptions/"):
                capital_ids += 1
            if "/providers/Microsoft.RecoveryServices/vaults/" in body["id"]:
                assert obs.vault is not None
                assert obs.vault.key in body["id"].lower()
    # STATS.md: 110 distinct job ids read through GET backupJobs/{id} or POST backupCrrJob,
    # 2,002 job bodies in all.
    assert len(polled_ids) == 110
    assert len(all_ids) >= len(polled_ids)
    assert total == 2002
    assert set(statuses) == {
        "InProgress",
        "Completed",
        "CompletedWithWarnings",
        "Failed",
        "Cancelling",
        "Cancelled",
    }
    assert duration_forms == {"iso", "timespan"}
    assert action_forms == {int, str}
    assert {"Backup (Full)", "Restore (Full)", "Restore (Invalid)", "Backup"} <= operations
    assert capital_ids > 0


def test_recordings_aggregate_operation_facts() -> None:
    extracted = _all_recordings()
    statuses: Counter[str] = Counter()
    with_jobs = 0
    registered = 0
    for ex in extracted:
        ops = check_operation_bodies(ex.operation_bodies)
        registered += check_registrations(ex.operation_bodies, ops)
        for obs in ops:
            statuses[obs.status] += 1
            with_jobs += bool(obs.job_ids)
    # STATS.md: "22 of 98 Succeeded responses"; no Failed operation status was recorded.
    assert statuses["Succeeded"] == 98
    assert with_jobs == 98
    assert registered == 98
    assert statuses["InProgress"] > 0
    assert set(statuses) == {"InProgress", "Succeeded"}


def test_recordings_aggregate_operation_urls() -> None:
    extracted = _all_recordings()
    urls = [url for ex in extracted for url in ex.operation_urls]
    accepted = check_operation_urls(urls)
    assert accepted > 50
    assert accepted < len(urls)  # container/fabric operations are not job operations
