"""The real ArmClient over real HTTP against the in-process emulator, on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import StaticTokenProvider, TokenProvider
from backupjobd.core import azure
from backupjobd.emulator import (
    DEFAULT_VAULT_ID,
    EmulatedJob,
    EmulatorState,
    JobSpec,
    build_emulator_app,
)
from backupjobd.errors import NotFound, PermanentError, TransientError
from backupjobd.testing import FakeClock

API = "2025-08-01"
TOKEN = "emulator-token-SECRET"
VAULT = azure.vault_from_id(DEFAULT_VAULT_ID)
OTHER_VAULT_ID = DEFAULT_VAULT_ID.replace("vault-emulator", "vault-other")


class RefreshingTokens(TokenProvider):
    """A stale token first; the right one only after a forced refresh."""

    def __init__(self, stale: str, fresh: str) -> None:
        self.stale, self.fresh = stale, fresh
        self.calls: list[bool] = []

    async def token(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        return self.fresh if force_refresh else self.stale


@dataclass
class Emu:
    state: EmulatorState
    clock: FakeClock
    endpoint: str
    session: aiohttp.ClientSession

    def client(self, tokens: TokenProvider | None = None, api_version: str = API) -> ArmClient:
        return ArmClient(
            self.session,
            tokens or StaticTokenProvider(TOKEN),
            self.endpoint,
            api_version,
            timeout_seconds=5,
        )


async def start_emulator(state: EmulatorState) -> TestServer:
    server = TestServer(build_emulator_app(state), host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def emu() -> AsyncIterator[Emu]:
    clock = FakeClock(5000.0)
    state = EmulatorState(clock=clock, required_token=TOKEN)
    server = await start_emulator(state)
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            yield Emu(state, clock, str(server.make_url("")).rstrip("/"), session)
    finally:
        await server.close()


@pytest.fixture
def arm(emu: Emu) -> ArmClient:
    return emu.client()


async def test_job_lifecycle_in_progress_then_completed(emu: Emu, arm: ArmClient) -> None:
    job = emu.state.add_job(JobSpec(duration_seconds=60, entity_friendly_name="vm-a"))
    seen = await arm.get_job(VAULT, job.job_id)
    assert seen.job_id == job.job_id.lower()
    assert seen.status == "InProgress"
    assert seen.vault == VAULT
    assert seen.entity_friendly_name == "vm-a"
    assert seen.end_time is None
    assert seen.start_time is not None
    assert "extendedInfo" in seen.properties

    emu.clock.t += 30
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"

    emu.clock.t += 30
    done = await arm.get_job(VAULT, job.job_id)
    assert done.status == "Completed"
    assert done.is_terminal
    assert done.end_time is not None
    assert (done.end_time - done.start_time).total_seconds() == pytest.approx(60, abs=0.01)
    assert done.properties["extendedInfo"]["progressPercentage"] == 100
    assert emu.state.stats()["job_gets"][job.job_id] == 3


@pytest.mark.parametrize("final", ["CompletedWithWarnings", "Failed"])
async def test_job_with_errors_keeps_error_details(emu: Emu, arm: ArmClient, final: str) -> None:
    job = emu.state.add_job(JobSpec(duration_seconds=1, final_status=final))
    emu.clock.t += 1
    done = await arm.get_job(VAULT, job.job_id)
    assert done.status == final
    assert done.properties["errorDetails"]


async def test_job_is_not_found_during_its_window_then_visible(emu: Emu, arm: ArmClient) -> None:
    job = emu.state.add_job(JobSpec(not_found_seconds=10, duration_seconds=60))
    with pytest.raises(NotFound) as info:
        await arm.get_job(VAULT, job.job_id)
    assert info.value.status == 404
    assert info.value.code == "ResourceNotFound"
    assert TOKEN not in str(info.value)

    emu.clock.t += 9.5
    with pytest.raises(NotFound):
        await arm.get_job(VAULT, job.job_id)

    emu.clock.t += 0.5
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"


async def test_job_in_another_vault_is_not_found(emu: Emu, arm: ArmClient) -> None:
    job = emu.state.add_job(JobSpec(), vault_id=OTHER_VAULT_ID)
    with pytest.raises(NotFound):
        await arm.get_job(VAULT, job.job_id)
    other = azure.vault_from_id(OTHER_VAULT_ID)
    assert (await arm.get_job(other, job.job_id)).vault == other


async def test_operation_in_progress_then_names_its_job(emu: Emu, arm: ArmClient) -> None:
    op = emu.state.add_operation(delay_seconds=3, job_spec=JobSpec(duration_seconds=30))
    first = await arm.get_operation(VAULT, op.operation_id)
    assert first.status == "InProgress"
    assert first.job_ids == ()

    emu.clock.t += 3
    done = await arm.get_operation(VAULT, op.operation_id)
    assert done.status == "Succeeded"
    assert done.job_ids == (op.job_ids[0].lower(),)
    # The job exists once the operation says so.
    assert (await arm.get_job(VAULT, done.job_ids[0])).status == "InProgress"


async def test_operation_with_two_jobs_names_both(emu: Emu, arm: ArmClient) -> None:
    op = emu.state.add_operation(delay_seconds=0, job_count=2)
    done = await arm.get_operation(VAULT, op.operation_id)
    assert done.status == "Succeeded"
    assert done.job_ids == tuple(j.lower() for j in op.job_ids)
    assert len(done.job_ids) == 2
    for job_id in done.job_ids:
        assert (await arm.get_job(VAULT, job_id)).job_id == job_id


async def test_failed_operation_reports_its_error(emu: Emu, arm: ArmClient) -> None:
    op = emu.state.add_operation(delay_seconds=1, result="Failed")
    emu.clock.t += 1
    done = await arm.get_operation(VAULT, op.operation_id)
    assert done.status == "Failed"
    assert done.job_ids == ()
    assert done.error_code == "UserErrorBackupOperationInProgress"
    assert done.error_message


async def test_unknown_operation_is_not_found(emu: Emu, arm: ArmClient) -> None:
    with pytest.raises(NotFound):
        await arm.get_operation(VAULT, "3fa85f64-5717-4562-b3fc-2c963f66afa6")


@pytest.mark.parametrize(
    ("kind", "retry_after"),
    [
        ("429", 7.0),
        ("500", None),
        ("502", None),
        ("503", None),
        ("504", None),
        ("garbled", None),
        ("truncated", None),
    ],
)
async def test_each_fault_is_transient_and_the_next_poll_succeeds(
    emu: Emu, arm: ArmClient, kind: str, retry_after: float | None
) -> None:
    job = emu.state.add_job(JobSpec(duration_seconds=60))
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"  # connection reused
    emu.state.add_fault(kind, count=1, retry_after=7, path_contains=job.job_id)
    with pytest.raises(TransientError) as info:
        await arm.get_job(VAULT, job.job_id)
    assert info.value.retry_after == retry_after
    assert TOKEN not in str(info.value)
    assert emu.state.stats()["faults_served"] == 1
    # The fault was used up; the next poll sees the job again.
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"


async def test_connection_reset_is_transient(emu: Emu, arm: ArmClient) -> None:
    job = emu.state.add_job(JobSpec(duration_seconds=60))
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"
    # aiohttp repeats an idempotent request once when a reused keep-alive connection drops,
    # so the reset has to hit that repeat too before the client sees it.
    emu.state.add_fault("reset", count=2, path_contains=job.job_id)
    with pytest.raises(TransientError, match="request failed") as info:
        await arm.get_job(VAULT, job.job_id)
    assert info.value.retry_after is None
    assert emu.state.stats()["faults_served"] == 2
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"


async def test_one_reset_on_a_reused_connection_is_repeated_by_aiohttp(
    emu: Emu, arm: ArmClient
) -> None:
    job = emu.state.add_job(JobSpec(duration_seconds=60))
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"
    emu.state.add_fault("reset", count=1, path_contains=job.job_id)
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"
    assert emu.state.stats()["faults_served"] == 1


async def test_faults_on_operation_polls_are_transient(emu: Emu, arm: ArmClient) -> None:
    op = emu.state.add_operation(delay_seconds=0)
    emu.state.add_fault("garbled", count=1, path_contains="backupOperations")
    emu.state.add_fault("429", count=1, retry_after=3, path_contains="backupOperations")
    with pytest.raises(TransientError):
        await arm.get_operation(VAULT, op.operation_id)
    with pytest.raises(TransientError) as info:
        await arm.get_operation(VAULT, op.operation_id)
    assert info.value.retry_after == 3.0
    assert (await arm.get_operation(VAULT, op.operation_id)).status == "Succeeded"


async def test_wrong_token_is_permanent_after_one_refresh(emu: Emu) -> None:
    tokens = RefreshingTokens("wrong-SECRET-1", "wrong-SECRET-2")
    arm = emu.client(tokens)
    job = emu.state.add_job(JobSpec())
    before = emu.state.stats()["requests"]
    with pytest.raises(PermanentError) as info:
        await arm.get_job(VAULT, job.job_id)
    assert not isinstance(info.value, NotFound)
    assert info.value.status == 401
    assert info.value.code == "AuthenticationFailed"
    assert tokens.calls == [False, True]
    assert emu.state.stats()["requests"] - before == 2
    assert "SECRET" not in str(info.value)


async def test_stale_token_is_refreshed_once_and_the_poll_succeeds(emu: Emu) -> None:
    tokens = RefreshingTokens("expired-SECRET", TOKEN)
    arm = emu.client(tokens)
    job = emu.state.add_job(JobSpec())
    assert (await arm.get_job(VAULT, job.job_id)).status == "InProgress"
    assert tokens.calls == [False, True]


async def test_bad_api_version_is_permanent_with_the_arm_code(emu: Emu) -> None:
    arm = emu.client(api_version="latest")
    job = emu.state.add_job(JobSpec())
    with pytest.raises(PermanentError) as info:
        await arm.get_job(VAULT, job.job_id)
    assert info.value.status == 400
    assert info.value.code == "InvalidApiVersionParameter"


class BigBodyState(EmulatorState):
    """Job bodies with a large `extendedInfo.propertyBag` entry (well under the 16 MiB cap)."""

    padding = 1_000_000

    def render_job(self, job: EmulatedJob, *, extended: bool = True) -> dict[str, Any]:
        body = super().render_job(job, extended=extended)
        if extended:
            body["properties"]["extendedInfo"]["propertyBag"]["Details"] = "x" * self.padding
        return body


async def test_large_job_body_is_read_whole() -> None:
    clock = FakeClock(5000.0)
    state = BigBodyState(clock=clock)
    server = await start_emulator(state)
    try:
        async with aiohttp.ClientSession(trust_env=False) as session:
            endpoint = str(server.make_url("")).rstrip("/")
            arm = ArmClient(session, StaticTokenProvider(TOKEN), endpoint, API, timeout_seconds=5)
            job = state.add_job(JobSpec())
            seen = await arm.get_job(VAULT, job.job_id)
    finally:
        await server.close()
    details = seen.properties["extendedInfo"]["propertyBag"]["Details"]
    assert len(details) == BigBodyState.padding


async def test_unreachable_endpoint_is_transient() -> None:
    server = await start_emulator(EmulatorState())
    endpoint = str(server.make_url("")).rstrip("/")
    await server.close()  # nothing listens there any more
    async with aiohttp.ClientSession(trust_env=False) as session:
        arm = ArmClient(session, StaticTokenProvider(TOKEN), endpoint, API, timeout_seconds=5)
        with pytest.raises(TransientError, match="request failed"):
            await arm.get_job(VAULT, "0bda1a53-73fa-427e-9a1c-72a2016adee3")
