"""redact_secrets: what a server may echo of our bearer token (whole, clipped, base64, in
a JWT-shaped blob, after "Bearer") never survives into error text, and ordinary Azure error
text is left as it was. Then the same through ArmClient's error paths."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import TokenProvider
from backupjobd.core.redact import REDACTED, redact_secrets
from backupjobd.errors import PermanentError, TransientError
from tests.unit.test_arm_client import (
    ANY_URL,
    API,
    ENDPOINT,
    JOB,
    SUB,
    VAULT,
    VAULT_ID,
    ArmMock,
    arm_error,
    job_body,
)


def _b64url(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


JWT = ".".join(
    [
        _b64url({"typ": "JWT", "alg": "RS256", "kid": "abc"}),
        _b64url({"aud": "https://management.azure.com/", "tid": SUB, "exp": 1800000000}),
        _b64url(bytes(range(256))),
    ]
)
OPAQUE = "opaque-Token-0123456789-abcdefghijklmnop"
REFRESHED_OPAQUE = "refreshed-Token-9876543210-qrstuvwxyz"
OTHER_JWT = ".".join([_b64url({"alg": "none"}), _b64url({"sub": "someone"}), ""])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def assert_clean(out: str, token: str) -> None:
    assert REDACTED in out
    assert token not in out
    assert token[:16] not in out and token[-16:] not in out
    for piece in (token, f"Bearer {token}"):
        assert b64(piece)[4:-4] not in out and b64url(piece)[4:-4] not in out


# --------------------------------------------------------------------------- the function


@pytest.mark.parametrize("token", [JWT, OPAQUE])
@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda t: t, id="exact"),
        pytest.param(lambda t: f"Bearer {t}", id="bearer"),
        pytest.param(lambda t: t[:24] + "...", id="prefix"),
        pytest.param(lambda t: t[:16], id="shortest-prefix"),
        pytest.param(lambda t: t[-20:], id="suffix"),
        pytest.param(lambda t: t[3:40], id="middle"),
        pytest.param(b64, id="base64"),
        pytest.param(b64url, id="base64url"),
        pytest.param(lambda t: b64(f"Bearer {t}"), id="base64-bearer"),
        pytest.param(lambda t: b64url(f"Bearer {t}"), id="base64url-bearer"),
        pytest.param(lambda t: b64(f"Authorization: Bearer {t}"), id="base64-header-line"),
        pytest.param(lambda t: b64(f"x{t}y"), id="base64-offset-1"),
        pytest.param(lambda t: b64(f"xy{t}"), id="base64-offset-2"),
    ],
)
def test_every_echo_of_the_token_is_redacted(token: str, echo: Any) -> None:
    text = f"HTTP 401 InvalidAuthenticationToken: The token '{echo(token)}' is not valid."
    out = redact_secrets(text, token)
    assert_clean(out, token)
    assert out.startswith("HTTP 401 InvalidAuthenticationToken: The token '")
    assert out.endswith("' is not valid.")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"got {OTHER_JWT} back", f"got {REDACTED} back"),
        (f"id_token={JWT}&state=1", f"id_token={REDACTED}&state=1"),
        ("Authorization: Bearer xyz123abc", f"Authorization: Bearer {REDACTED}"),
        ("authorization: bearer AbCdEf.GhI-jk~l+m/n==", f"authorization: bearer {REDACTED}"),
        ("Bearer xyz... was refused", f"Bearer {REDACTED}... was refused"),
        (
            f"headers {{'Authorization': 'Bearer {OPAQUE}'}}",
            f"headers {{'Authorization': 'Bearer {REDACTED}'}}",
        ),
    ],
)
def test_bearer_tokens_and_jwts_are_redacted_without_knowing_the_token(
    text: str, expected: str
) -> None:
    assert redact_secrets(text) == expected
    assert redact_secrets(text, "an-unrelated-token-value") == expected


@pytest.mark.parametrize(
    "text",
    [
        f"HTTP 404 ResourceNotFound: The Resource '{VAULT_ID}' was not found.",
        f"HTTP 404 JobNotFound: job {JOB} is not in vault {VAULT_ID}/backupJobs/{JOB}",
        f"asked for job {JOB}, Azure answered with {JOB.upper()}",
        "HTTP 403 AuthorizationFailed: The client 'c0ffee00-0000-4000-8000-000000000001' "
        "with object id 'c0ffee00-0000-4000-8000-000000000001' does not have authorization "
        "to perform action 'Microsoft.RecoveryServices/vaults/backupJobs/read' over scope "
        f"'/subscriptions/{SUB}/resourceGroups/rg1' or the scope is invalid.",
        "HTTP 429 ResourceRequestsThrottled: Number of read requests for subscription "
        f"'{SUB}' exceeded the limit of '12000' for time interval '01:00:00'.",
        "HTTP 401 InvalidAuthenticationToken: The access token is invalid. Bearer token is "
        "missing.",
        'WWW-Authenticate: Bearer authorization_uri="https://login.microsoftonline.com/'
        f'{SUB}", error="invalid_token"',
        "unexpected job body: bad timestamp: '2024-03-01T12:00:00.1234567Z+99'",
        "request failed: ClientConnectorError",
        "",
    ],
)
def test_ordinary_azure_error_text_is_left_alone(text: str) -> None:
    assert redact_secrets(text, JWT) == text
    assert redact_secrets(text, OPAQUE) == text
    assert redact_secrets(text) == text


def test_redaction_is_idempotent_and_keeps_the_rest() -> None:
    text = f"a {JWT} b {b64('Bearer ' + OPAQUE)} c {OPAQUE[:20]} d"
    once = redact_secrets(text, OPAQUE)
    assert once == f"a {REDACTED} b {REDACTED} c {REDACTED} d"
    assert redact_secrets(once, OPAQUE) == once


def test_a_short_token_is_still_redacted_exactly() -> None:
    assert redact_secrets("echo: s3cr3t!", "s3cr3t") == f"echo: {REDACTED}!"


# --------------------------------------------------------------------------- ArmClient


class LongTokens(TokenProvider):
    """Tokens as long as real ones, so that a clipped echo is still a long piece of one."""

    async def token(self, *, force_refresh: bool = False) -> str:
        return REFRESHED_OPAQUE if force_refresh else OPAQUE


@pytest.fixture
async def client() -> AsyncIterator[ArmClient]:
    async with aiohttp.ClientSession() as session:
        yield ArmClient(session, LongTokens(), ENDPOINT, API)


@pytest.mark.parametrize(
    ("status", "error_cls"), [(400, PermanentError), (401, PermanentError), (503, TransientError)]
)
@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda t: t[:16], id="prefix"),
        pytest.param(lambda t: t[-20:], id="suffix"),
        pytest.param(lambda t: b64(f"Bearer {t}"), id="base64-bearer"),
        pytest.param(b64url, id="base64url"),
        pytest.param(lambda t: JWT, id="jwt"),
    ],
)
async def test_arm_errors_carry_no_echo_of_the_token(
    client: ArmClient, status: int, error_cls: type[Exception], echo: Any
) -> None:
    with ArmMock() as m:
        # A 401 is asked again once, with a refreshed token; each answer echoes its own.
        for token in (OPAQUE, REFRESHED_OPAQUE):
            m.get(ANY_URL, status=status, payload=arm_error("Echo", f"you sent {echo(token)}."))
        with pytest.raises(error_cls) as info:
            await client.get_job(VAULT, JOB)
    message = str(info.value)
    prefix = f"HTTP {status} Echo: you sent {REDACTED}"
    assert message.startswith(prefix)
    assert message.removeprefix(prefix) in (".", "…")  # long messages are clipped


async def test_an_error_code_echoing_the_token_is_redacted(client: ArmClient) -> None:
    with ArmMock() as m:
        m.get(ANY_URL, status=400, payload=arm_error(b64(OPAQUE), "bad"))
        with pytest.raises(PermanentError) as info:
            await client.get_job(VAULT, JOB)
    assert info.value.code == REDACTED
    assert str(info.value) == f"HTTP 400 {REDACTED}: bad"


async def test_a_garbled_body_echoing_the_token_is_redacted(client: ArmClient) -> None:
    body = job_body()
    body["properties"]["startTime"] = OPAQUE[:30]
    with ArmMock() as m:
        m.get(ANY_URL, payload=body)
        with pytest.raises(TransientError) as info:
            await client.get_job(VAULT, JOB)
    message = str(info.value)
    assert message.startswith("unexpected job body: ")
    assert OPAQUE[:16] not in message and REDACTED in message
