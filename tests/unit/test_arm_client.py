"""ArmClient over a mocked aiohttp (aioresponses) and the azure-identity token cache.

Narrow tests: URL building, status → error translation, Retry-After, the one 401 refresh,
the endpoint guard, and AzureIdentityTokenProvider's cache and refresh margin.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import (
    REFRESH_MARGIN_SECONDS,
    AzureIdentityTokenProvider,
    TokenProvider,
)
from backupjobd.core.azure import VaultRef, vault_from_id
from backupjobd.errors import (
    CredentialError,
    InvalidInput,
    NotFound,
    PermanentError,
    TransientError,
)

ENDPOINT = "https://management.azure.com"
API = "2025-08-01"
TOKEN = "tok-SECRET-first"
REFRESHED = "tok-SECRET-refreshed"
SUB = "00000000-0000-0000-0000-000000000001"
VAULT_ID = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.RecoveryServices/vaults/v1"
VAULT = vault_from_id(VAULT_ID)
JOB = "0bda1a53-73fa-427e-9a1c-72a2016adee3"
JOB_URL = f"{ENDPOINT}{VAULT_ID}/backupJobs/{JOB}"
ANY_URL = re.compile(r"^https://management\.azure\.com/.*$")
WALL = 1_800_000_000.0


class RecordingTokens(TokenProvider):
    """Hands out TOKEN, then REFRESHED after a forced refresh; records every call."""

    def __init__(self) -> None:
        self.calls: list[bool] = []
        self._current = TOKEN

    async def token(self, *, force_refresh: bool = False) -> str:
        self.calls.append(force_refresh)
        if force_refresh:
            self._current = REFRESHED
        return self._current


def job_body(job_id: str = JOB, status: str = "InProgress") -> dict[str, Any]:
    return {
        "id": f"{VAULT_ID}/backupJobs/{job_id}",
        "name": job_id,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": {
            "jobType": "AzureIaaSVMJob",
            "operation": "Backup",
            "status": status,
            "startTime": "2024-03-01T12:00:00.1234567Z",
            "duration": "00:00:10.0000000",
            "entityFriendlyName": "vm1",
        },
    }


def arm_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp's required `stream_writer` argument."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class ArmMock(aioresponses):
    """aioresponses whose canned answers work with the installed aiohttp."""

    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(url, method, **kwargs)


def sent(m: aioresponses) -> list[tuple[URL, dict[str, Any]]]:
    """Every request aioresponses saw, in order: (full URL, request kwargs)."""
    out: list[tuple[URL, dict[str, Any]]] = []
    for (_method, url), calls in m.requests.items():
        out.extend((url, call.kwargs) for call in calls)
    return out


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def tokens() -> RecordingTokens:
    return RecordingTokens()


@pytest.fixture
def client(session: aiohttp.ClientSession, tokens: RecordingTokens) -> ArmClient:
    return ArmClient(session, tokens, ENDPOINT + "/", API, wall_clock=lambda: WALL)


# --------------------------------------------------------------------------- URLs


def test_job_url_is_under_the_vault_and_endpoint(client: ArmClient) -> None:
    assert client.job_url(VAULT, JOB) == JOB_URL
    # Upper-case GUIDs are normalised to the lower-case job id.
    assert client.job_url(VAULT, JOB.upper()) == JOB_URL


def test_url_segments_are_quoted(client: ArmClient) -> None:
    odd = VaultRef(SUB, "rg (prod)/x", "v?1#")
    url = client.job_url(odd, JOB)
    assert url == (
        f"{ENDPOINT}/subscriptions/{SUB}/resourceGroups/rg%20%28prod%29%2Fx"
        f"/providers/Microsoft.RecoveryServices/vaults/v%3F1%23/backupJobs/{JOB}"
    )
    op_url = client.operation_url(VAULT, "MjYz_b-A==")
    assert op_url == f"{ENDPOINT}{VAULT_ID}/backupOperations/MjYz_b-A%3D%3D"


@pytest.mark.parametrize("bad", ["../x", "not-a-guid", f"{JOB}/../../y", ""])
def test_job_url_rejects_non_guid_job_ids(client: ArmClient, bad: str) -> None:
    with pytest.raises(InvalidInput):
        client.job_url(VAULT, bad)


@pytest.mark.parametrize("bad", ["a/b", "../x", "a?b", "", "a b"])
def test_operation_url_rejects_bad_operation_ids(client: ArmClient, bad: str) -> None:
    with pytest.raises(InvalidInput):
        client.operation_url(VAULT, bad)


async def test_get_job_sends_api_version_bearer_and_no_redirects(
    client: ArmClient, tokens: RecordingTokens
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, payload=job_body())
        job = await client.get_job(VAULT, JOB)
        [(url, kwargs)] = sent(m)
    assert job.job_id == JOB and job.status == "InProgress"
    assert url.with_query(None) == URL(JOB_URL)
    assert parse_qs(url.query_string) == {"api-version": [API]}
    assert kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert kwargs["headers"]["Accept"] == "application/json"
    assert kwargs["allow_redirects"] is False
    assert tokens.calls == [False]


async def test_get_operation_url_and_job_ids(client: ArmClient) -> None:
    other = "1bda1a53-73fa-427e-9a1c-72a2016adee3"
    body = {
        "id": "op1",
        "name": "op1",
        "status": "Succeeded",
        "properties": {"objectType": "OperationStatusJobsExtendedInfo", "jobIds": [JOB, other]},
    }
    with ArmMock() as m:
        m.get(ANY_URL, payload=body)
        op = await client.get_operation(VAULT, "op1")
        [(url, _)] = sent(m)
    assert url.with_query(None) == URL(f"{ENDPOINT}{VAULT_ID}/backupOperations/op1")
    assert url.query["api-version"] == API
    assert op.status == "Succeeded"
    assert op.job_ids == (JOB, other)


# --------------------------------------------------------------------------- error translation


@pytest.mark.parametrize(
    ("status", "error_cls", "code"),
    [
        (404, NotFound, "ResourceNotFound"),
        (400, PermanentError, "BMSUserErrorInvalidInput"),
        (403, PermanentError, "AuthorizationFailed"),
        (408, TransientError, "RequestTimeout"),
        (429, TransientError, "ResourceRequestsThrottled"),
        (500, TransientError, "InternalServerError"),
        (502, TransientError, "BadGateway"),
        (503, TransientError, "ServiceUnavailable"),
        (504, TransientError, "GatewayTimeout"),
    ],
)
async def test_status_maps_to_error_class(
    client: ArmClient, status: int, error_cls: type[Exception], code: str
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=status, payload=arm_error(code, "Something went wrong.\nline 2"))
        with pytest.raises(error_cls) as info:
            await client.get_job(VAULT, JOB)
    exc = info.value
    assert type(exc) is error_cls
    message = str(exc)
    assert message == f"HTTP {status} {code}: Something went wrong."
    assert TOKEN not in message and "Bearer" not in message
    if isinstance(exc, PermanentError):
        assert exc.status == status
        assert exc.code == code


async def test_error_without_arm_envelope_still_names_the_status(client: ArmClient) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=403, body=b"<html>forbidden</html>")
        with pytest.raises(PermanentError) as info:
            await client.get_job(VAULT, JOB)
    assert str(info.value) == "HTTP 403"
    assert info.value.code is None


async def test_long_arm_messages_are_clipped(client: ArmClient) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=400, payload=arm_error("Bad", "x" * 5000))
        with pytest.raises(PermanentError) as info:
            await client.get_job(VAULT, JOB)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize(
    "exception",
    [
        aiohttp.ClientConnectionError("connection refused"),
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientPayloadError("payload"),
        TimeoutError(),
        ConnectionResetError("reset"),
    ],
    ids=["connection", "disconnected", "payload", "timeout", "reset"],
)
async def test_connection_failures_are_transient(
    client: ArmClient, exception: BaseException
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, exception=exception)
        with pytest.raises(TransientError) as info:
            await client.get_job(VAULT, JOB)
    assert info.value.retry_after is None
    assert str(info.value) == f"request failed: {type(exception).__name__}"


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway \x00\xff</body></html>",
        b'{"id": "/subscriptions/x", "properties": {"stat',
        b"",
        b"[" * 100_000,
    ],
    ids=["garbled", "truncated", "empty", "deeply-nested"],
)
async def test_garbled_or_truncated_200_is_transient(client: ArmClient, body: bytes) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=200, body=body)
        with pytest.raises(TransientError) as info:
            await client.get_job(VAULT, JOB)
    assert "not JSON" in str(info.value)


async def test_json_of_the_wrong_shape_is_transient(client: ArmClient) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, payload={"value": []})
        m.get(ANY_URL, payload=job_body(job_id="1bda1a53-73fa-427e-9a1c-72a2016adee3"))
        m.get(ANY_URL, payload=["not", "an", "operation"])
        with pytest.raises(TransientError, match="unexpected job body"):
            await client.get_job(VAULT, JOB)
        with pytest.raises(TransientError, match="Azure answered with"):
            await client.get_job(VAULT, JOB)
        with pytest.raises(TransientError, match="unexpected operation body"):
            await client.get_operation(VAULT, "op1")


async def test_other_statuses_are_permanent(client: ArmClient) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=302, headers={"Location": "https://evil.example.com/"})
        with pytest.raises(PermanentError) as info:
            await client.get_job(VAULT, JOB)
        assert len(sent(m)) == 1  # the redirect was not followed
    assert info.value.status == 302


# --------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("-5", None),
        (email.utils.formatdate(WALL + 120, usegmt=True), 120.0),
        (email.utils.formatdate(WALL - 3600, usegmt=True), 0.0),
        ("soon", None),
        ("", None),
    ],
    ids=["seconds", "zero", "negative", "http-date", "past-date", "garbage", "empty"],
)
async def test_retry_after_seconds_or_http_date(
    client: ArmClient, header: str, expected: float | None
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=429, headers={"Retry-After": header})
        with pytest.raises(TransientError) as info:
            await client.get_job(VAULT, JOB)
    assert info.value.retry_after == expected


async def test_retry_after_is_kept_on_503(client: ArmClient) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=503, headers={"Retry-After": "30"})
        with pytest.raises(TransientError) as info:
            await client.get_job(VAULT, JOB)
    assert info.value.retry_after == 30.0


@pytest.mark.parametrize("header", ["inf", "1e400"])
async def test_retry_after_that_is_not_delay_seconds_is_not_infinite(
    client: ArmClient, header: str
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=429, headers={"Retry-After": header})
        with pytest.raises(TransientError) as info:
            await client.get_job(VAULT, JOB)
    retry_after = info.value.retry_after
    assert retry_after is None or math.isfinite(retry_after)
    # Whatever the client reports must be usable as a poll delay.
    datetime.now(UTC) + timedelta(seconds=retry_after or 0)


# --------------------------------------------------------------------------- 401 and the token


async def test_401_refreshes_the_token_once_then_succeeds(
    client: ArmClient, tokens: RecordingTokens
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=401, payload=arm_error("ExpiredAuthenticationToken", "expired"))
        m.get(ANY_URL, payload=job_body())
        job = await client.get_job(VAULT, JOB)
        auth = [kwargs["headers"]["Authorization"] for _, kwargs in sent(m)]
    assert job.status == "InProgress"
    assert tokens.calls == [False, True]
    assert auth == [f"Bearer {TOKEN}", f"Bearer {REFRESHED}"]


async def test_401_twice_is_permanent_after_one_refresh(
    client: ArmClient, tokens: RecordingTokens
) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=401, payload=arm_error("InvalidAuthenticationToken", "bad token"))
        m.get(ANY_URL, status=401, payload=arm_error("InvalidAuthenticationToken", "bad token"))
        m.get(ANY_URL, payload=job_body())  # must never be asked for
        with pytest.raises(PermanentError) as info:
            await client.get_job(VAULT, JOB)
        assert len(sent(m)) == 2
    assert tokens.calls == [False, True]
    assert info.value.status == 401
    assert info.value.code == "InvalidAuthenticationToken"
    assert TOKEN not in str(info.value) and REFRESHED not in str(info.value)


async def test_credential_error_propagates_without_a_request(
    session: aiohttp.ClientSession,
) -> None:
    class Broken(TokenProvider):
        async def token(self, *, force_refresh: bool = False) -> str:
            raise CredentialError("could not get an Azure token: no identity")

    arm = ArmClient(session, Broken(), ENDPOINT, API)
    with ArmMock() as m:
        with pytest.raises(CredentialError):
            await arm.get_job(VAULT, JOB)
        assert sent(m) == []


@pytest.mark.parametrize(
    "url",
    [
        f"https://evil.example.com{VAULT_ID}/backupJobs/{JOB}",
        f"http://management.azure.com{VAULT_ID}/backupJobs/{JOB}",
        f"https://management.azure.com:8443{VAULT_ID}/backupJobs/{JOB}",
        f"https://management.azure.com.evil.example.com{VAULT_ID}",
        f"https://user@evil.example.com{VAULT_ID}",
        "ftp://management.azure.com/x",
        "not a url",
    ],
)
async def test_a_foreign_url_is_refused_without_any_request(
    client: ArmClient, tokens: RecordingTokens, url: str
) -> None:
    with ArmMock() as m:
        m.get(re.compile(".*"), payload=job_body())
        with pytest.raises(PermanentError, match="refusing"):
            await client._send("GET", url, VAULT.subscription_id)
        assert sent(m) == []
    assert tokens.calls == []  # no token was even fetched


async def test_endpoint_host_case_and_default_port_are_the_same_endpoint(
    session: aiohttp.ClientSession, tokens: RecordingTokens
) -> None:
    arm = ArmClient(session, tokens, "https://Management.Azure.com:443", API)
    with ArmMock() as m:
        m.get(ANY_URL, payload=job_body())
        answer = await arm._send("GET", JOB_URL, VAULT.subscription_id)
        assert answer.status == 200 and sent(m)


# ------------------------------------------------------------------ AzureIdentityTokenProvider


class FakeCredential:
    """An azure-identity style async credential."""

    def __init__(self, lifetime: float = 3600.0) -> None:
        self.now = 1000.0
        self.lifetime = lifetime
        self.scopes: list[str] = []
        self.fail: BaseException | None = None
        self.closed = False
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def get_token(self, *scopes: str, **_: Any) -> SimpleNamespace:
        self.scopes.extend(scopes)
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        n = len(self.scopes)
        return SimpleNamespace(token=f"secret-token-{n}", expires_on=int(self.now + self.lifetime))

    async def close(self) -> None:
        self.closed = True


SCOPE = "https://management.azure.com/.default"


@pytest.fixture
def cred() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def provider(cred: FakeCredential) -> AzureIdentityTokenProvider:
    return AzureIdentityTokenProvider(cred, SCOPE, clock=lambda: cred.now)


async def test_token_is_cached(cred: FakeCredential, provider: AzureIdentityTokenProvider) -> None:
    first = await provider.token()
    cred.now += 60
    assert await provider.token() == first == "secret-token-1"
    assert cred.scopes == [SCOPE]


async def test_token_is_refreshed_within_the_margin_of_expiry(
    cred: FakeCredential, provider: AzureIdentityTokenProvider
) -> None:
    assert REFRESH_MARGIN_SECONDS == 300
    await provider.token()
    expires = 1000.0 + 3600.0
    cred.now = expires - REFRESH_MARGIN_SECONDS - 1
    assert await provider.token() == "secret-token-1"
    cred.now = expires - REFRESH_MARGIN_SECONDS
    assert await provider.token() == "secret-token-2"
    assert len(cred.scopes) == 2
    # The new token carries its own expiry; it is cached again.
    cred.now += 10
    assert await provider.token() == "secret-token-2"


async def test_expired_token_is_refreshed(
    cred: FakeCredential, provider: AzureIdentityTokenProvider
) -> None:
    await provider.token()
    cred.now += 10_000
    assert await provider.token() == "secret-token-2"


async def test_short_lived_token_is_never_served_from_cache(cred: FakeCredential) -> None:
    cred.lifetime = 200.0  # already inside the refresh margin when issued
    provider = AzureIdentityTokenProvider(cred, SCOPE, clock=lambda: cred.now)
    assert await provider.token() == "secret-token-1"
    assert await provider.token() == "secret-token-2"


async def test_force_refresh_refreshes(
    cred: FakeCredential, provider: AzureIdentityTokenProvider
) -> None:
    await provider.token()
    assert await provider.token(force_refresh=True) == "secret-token-2"
    assert await provider.token() == "secret-token-2"
    assert cred.scopes == [SCOPE, SCOPE]


async def test_concurrent_callers_share_one_refresh(
    cred: FakeCredential, provider: AzureIdentityTokenProvider
) -> None:
    cred.gate = asyncio.Event()
    tasks = [asyncio.create_task(provider.token()) for _ in range(5)]
    async with asyncio.timeout(5):
        await cred.entered.wait()
    cred.gate.set()
    async with asyncio.timeout(5):
        results = await asyncio.gather(*tasks)
    assert results == ["secret-token-1"] * 5
    assert cred.scopes == [SCOPE]


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError(
            "ClientSecretCredential.get_token failed: AADSTS7000215\n"
            "client_secret=hunter2-SECRET token=eyJ0eXAi.SECRET"
        ),
        ValueError(""),
    ],
    ids=["multiline", "empty"],
)
async def test_credential_failure_is_a_credential_error_without_secrets(
    cred: FakeCredential, provider: AzureIdentityTokenProvider, error: Exception
) -> None:
    cred.fail = error
    with pytest.raises(CredentialError) as info:
        await provider.token()
    message = str(info.value)
    assert message.startswith("could not get an Azure token: ")
    assert "SECRET" not in message and "hunter2" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    if not str(error):
        assert message.endswith(type(error).__name__)


async def test_failed_refresh_keeps_nothing_and_recovers(
    cred: FakeCredential, provider: AzureIdentityTokenProvider
) -> None:
    await provider.token()
    cred.fail = RuntimeError("IMDS unreachable")
    with pytest.raises(CredentialError):
        await provider.token(force_refresh=True)
    cred.fail = None
    assert await provider.token(force_refresh=True) == "secret-token-3"


async def test_close_closes_the_credential(
    cred: FakeCredential, provider: AzureIdentityTokenProvider
) -> None:
    await provider.close()
    assert cred.closed
