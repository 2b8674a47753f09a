"""The checks of single config values, apart from the config's types: number ranges, host
names, endpoints, tokens, database URLs and id lists. `config` builds and validates the
whole; these are also what `serve` calls on values that are not in the file (the API token).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from backupjobd.core import azure
from backupjobd.errors import ConfigError, InvalidInput

_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

WEEK = 7 * 24 * 3600
DAYS_30 = 30 * 24 * 3600
# Every number the config holds, with the inclusive range `config` enforces. Generous, but
# finite: a value past them is a typo, and would otherwise crash `serve` later (a timedelta
# or datetime overflow on every poll) or exhaust it (a billion pollers). Webhook timeouts and
# stuck thresholds apply to each entry of `[[notify.webhook]]` and `[stuck.thresholds]`.
# A numeric key missing here is refused as soon as a value of it is validated.
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "azure.request_timeout_seconds": (0.1, 3600),
    "database.busy_timeout_ms": (0, 600_000),
    "polling.interval_seconds": (0.01, WEEK),
    "polling.min_interval_seconds": (0.01, WEEK),
    "polling.early_polls": (0, 1000),
    "polling.tick_seconds": (0.01, 3600),
    "polling.concurrency": (1, 1024),
    "polling.batch_size": (1, 10_000),
    "polling.not_found_grace_seconds": (0, WEEK),
    "polling.max_backoff_seconds": (0.01, WEEK),
    "polling.operation_interval_seconds": (0.01, WEEK),
    "polling.shutdown_timeout_seconds": (0.1, 3600),
    "polling.sweep_min_jobs": (0, 10_000),
    "polling.detail_interval_seconds": (0, WEEK),
    "polling.max_detection_lag_seconds": (0, WEEK),
    "throttle.reads_burst": (1, 100_000),
    "throttle.reads_per_second": (0.01, 100_000),
    "throttle.reserve_reads": (0, 100_000),
    "throttle.writes_burst": (1, 100_000),
    "throttle.writes_per_second": (0.01, 100_000),
    "throttle.max_share": (0.05, 1),
    "stuck.after_seconds": (1, DAYS_30),
    "stuck.thresholds": (1, DAYS_30),
    "api.port": (1, 65535),
    "api.max_body_bytes": (1024, 64 * 1024 * 1024),
    "api.healthy_tick_age_seconds": (0.1, WEEK),
    "api.idle_timeout_seconds": (0.1, 3600),
    "api.body_timeout_seconds": (0.1, 3600),
    "api.max_connections": (4, 100_000),
    "api.page_refresh_seconds": (1, 3600),
    "notify.max_attempts": (1, 10_000),
    "notify.max_backoff_seconds": (0.01, WEEK),
    "notify.webhook.timeout_seconds": (0.1, 3600),
    "discovery.interval_seconds": (1, WEEK),
    "discovery.lookback_hours": (0.01, 2160),
    "discovery.overlap_seconds": (0, WEEK),
    "discovery.vault_refresh_seconds": (1, WEEK),
}
# sun_path holds 108 bytes on Linux, the terminating NUL included.
MAX_UNIX_SOCKET_BYTES = 107
MIN_API_TOKEN_LENGTH = 16


def finite_float(value: Any, from_env: bool) -> float | None:
    """A finite float, or None: NaN, infinities and integers too big for a float (TOML's are
    unbounded) are no duration, and `float()` would raise OverflowError on the last."""
    if isinstance(value, bool) or not (isinstance(value, int | float) or from_env):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def shown(value: Any) -> str:
    """A value for a one-line error: repr escapes newlines, and a huge value is cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def host_names(key: str, value: Any, from_env: bool) -> tuple[str, ...]:
    """`api.allowed_hosts`: an array of host names (from the environment, a JSON array or a
    comma-separated list), lower-cased; each a valid name or address, no port."""
    if from_env:
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ConfigError(f"config key {key} must be a JSON array of host names") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key {key} must be an array of host names")
    for name in value:
        if not is_host(name):
            raise ConfigError(f"config key {key}: {name[:80]!r} is not a host name (no port)")
    return tuple(dict.fromkeys(v.lower() for v in value))


def discovery_list(key: str, value: Any, from_env: bool) -> tuple[str, ...]:
    """`discovery.operations` / `backup_management_types` (arrays of strings) and
    `[[discovery.vault]]` / `[[discovery.subscription]]` (arrays of `{id = …}` tables); from
    the environment, the same as a JSON array. Ids are validated and canonicalised here."""
    if from_env:
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"config key {key} must be a JSON array") from None
    if key in ("discovery.vault", "discovery.subscription"):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"config key {key} must be an array of tables ([[{key}]])")
        ids: dict[str, str] = {}
        for index, table in enumerate(value):
            where = f"{key}[{index}]"
            unknown = set(table) - {"id"}
            if unknown:
                raise ConfigError(f"unknown config key {where}.{sorted(unknown)[0]}")
            try:
                if key == "discovery.vault":
                    canonical = azure.vault_from_id(table.get("id")).id
                else:
                    canonical = azure.validate_subscription_id(table.get("id"))
            except InvalidInput as exc:
                raise ConfigError(f"config key {where}.id: {exc}") from None
            ids.setdefault(canonical.lower(), canonical)
        return tuple(ids.values())
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"config key {key} must be an array of non-empty strings")
    return tuple(dict.fromkeys(v.strip() for v in value))


def number_text(value: float) -> str:
    """1024 rather than 1024.0, 1e+18 rather than eighteen zeros, and never a thousand digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 30 else f"{text[:30]}… ({len(text)} digits)"


def is_host(host: str) -> bool:
    """An IP address or an RFC 1123 host name, with no whitespace or control character."""
    if not host or not host.isprintable() or any(ch.isspace() for ch in host):
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    return (
        len(host) <= 253
        and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def check_api_token(token: str, env_name: str) -> None:
    """A short API token can be guessed, and whitespace or control characters do not survive
    an Authorization header. The error names the variable, never the token (nor its length)."""
    if len(token) < MIN_API_TOKEN_LENGTH:
        raise ConfigError(
            f"${env_name}: the API token must be at least {MIN_API_TOKEN_LENGTH} characters long"
        )
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in token):
        raise ConfigError(
            f"${env_name}: the API token must not contain whitespace or control characters"
        )


def check_serve_database(url: str) -> None:
    """`serve` keeps every job in the database: an in-memory SQLite one (`:memory:`, an empty
    path, `mode=memory`) loses them all on exit, and each connection sees its own, empty."""
    if not url.startswith("sqlite"):
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError("config key database.url is not a valid database URL") from None
    database = (parsed.database or "").lower()
    mode = parsed.query.get("mode", ())
    modes = {m.lower() for m in ((mode,) if isinstance(mode, str) else mode)}
    if database in ("", ":memory:") or database.startswith("file::memory:") or "memory" in modes:
        raise ConfigError(
            "config key database.url names an in-memory SQLite database, which serve would"
            " lose on exit: use a file path"
        )


def check_endpoint(url: str) -> None:
    """The token goes over https only; plain http only to a loopback host (an emulator)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("config key azure.management_endpoint is not an http(s) URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            "config key azure.management_endpoint must be a bare scheme://host[:port]"
        )
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ConfigError("config key azure.management_endpoint has an invalid port") from None
    if parts.path not in ("", "/"):
        raise ConfigError("config key azure.management_endpoint must not have a path")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError(
            "config key azure.management_endpoint: plain http is allowed only for a loopback host"
        )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
