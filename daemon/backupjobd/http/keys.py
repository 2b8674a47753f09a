"""The typed application keys: what `build_api_app` hands the handlers and middlewares (kept
apart so that both can import them without importing each other)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from backupjobd.adapters.arm import ArmClient
from backupjobd.adapters.credentials import TokenProvider
from backupjobd.adapters.durations import Durations
from backupjobd.adapters.metrics import Metrics
from backupjobd.config import ApiConfig
from backupjobd.core.registration import Endpoint
from backupjobd.http.auth import ApiTokens
from backupjobd.http.guard import ConnectionGuard
from backupjobd.store import Store

STORE: web.AppKey[Store] = web.AppKey("store", Store)
ARM: web.AppKey[ArmClient] = web.AppKey("arm", ArmClient)
TOKENS: web.AppKey[TokenProvider] = web.AppKey("tokens", TokenProvider)
ENDPOINT: web.AppKey[Endpoint] = web.AppKey("endpoint", Endpoint)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
CONFIG: web.AppKey[ApiConfig] = web.AppKey("config", ApiConfig)
TICK_AGE: web.AppKey[Callable[[], float | None]] = web.AppKey("last_tick_age")
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
DOCUMENT: web.AppKey[bytes] = web.AppKey("openapi", bytes)
CANCEL_FOLLOW: web.AppKey[float] = web.AppKey("cancel_follow_seconds", float)
GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard", ConnectionGuard)
DURATIONS: web.AppKey[Durations] = web.AppKey("durations", Durations)
API_TOKENS: web.AppKey[ApiTokens] = web.AppKey("api_tokens", ApiTokens)
