"""Access tokens for Azure Resource Manager, from azure-identity or a static token.

Tokens are cached and refreshed ahead of expiry; they are never logged or stored.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from backupjobd.config import AUTHORITIES, AzureConfig
from backupjobd.errors import ConfigError, CredentialError

logger = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 300.0


class TokenProvider(abc.ABC):
    @abc.abstractmethod
    async def token(self, *, force_refresh: bool = False) -> str:
        """A bearer token for the management endpoint."""

    async def close(self) -> None:  # noqa: B027 - most providers hold nothing
        """Release the underlying credential."""


class StaticTokenProvider(TokenProvider):
    """For emulators and sidecars that are handed a token."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self, *, force_refresh: bool = False) -> str:
        return self._token


class AzureIdentityTokenProvider(TokenProvider):
    """Wraps an azure-identity async credential with a cache and early refresh."""

    def __init__(self, credential: Any, scope: str, clock: Callable[[], float] = time.time) -> None:
        self._credential = credential
        self._scope = scope
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    async def token(self, *, force_refresh: bool = False) -> str:
        async with self._lock:
            fresh = self._token is not None and self._clock() < (
                self._expires_on - REFRESH_MARGIN_SECONDS
            )
            if fresh and not force_refresh:
                assert self._token is not None
                return self._token
            try:
                access = await self._credential.get_token(self._scope)
            except Exception as exc:
                # azure-identity messages name the credential chain, never the secret.
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CredentialError(f"could not get an Azure token: {first_line}") from None
            token: str = access.token
            self._token = token
            self._expires_on = float(access.expires_on)
            logger.debug("obtained a new ARM token", extra={"action": "token_refresh"})
            return token

    async def close(self) -> None:
        await self._credential.close()


def build_token_provider(config: AzureConfig, env: Mapping[str, str]) -> TokenProvider:
    """The credential named in config; `env` is the process environment, passed in."""
    kind = config.credential
    if kind == "static-token":
        token = env.get(config.static_token_env, "")
        if not token.strip():
            raise ConfigError(
                f"azure.credential is static-token but ${config.static_token_env} is empty"
            )
        return StaticTokenProvider(token.strip())
    from azure.identity.aio import (
        AzureCliCredential,
        ClientSecretCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    )

    authority = AUTHORITIES[config.cloud]
    client_id = config.client_id or None
    tenant_id = config.tenant_id or None
    credential: Any
    if kind == "default":
        credential = DefaultAzureCredential(
            authority=authority, managed_identity_client_id=client_id
        )
    elif kind == "managed-identity":
        credential = ManagedIdentityCredential(client_id=client_id)
    elif kind == "workload-identity":
        kwargs: dict[str, Any] = {"authority": authority}
        if tenant_id:
            kwargs["tenant_id"] = tenant_id
        if client_id:
            kwargs["client_id"] = client_id
        credential = WorkloadIdentityCredential(**kwargs)
    elif kind == "client-secret":
        secret = env.get(config.client_secret_env, "")
        if not (tenant_id and client_id and secret):
            raise ConfigError(
                "azure.credential client-secret needs azure.tenant_id, azure.client_id and "
                f"${config.client_secret_env}"
            )
        credential = ClientSecretCredential(tenant_id, client_id, secret, authority=authority)
    elif kind == "azure-cli":
        credential = AzureCliCredential(tenant_id=tenant_id or "")
    else:  # pragma: no cover - config validation rejects other values
        raise ConfigError(f"unknown credential {kind}")
    return AzureIdentityTokenProvider(credential, config.token_scope)
