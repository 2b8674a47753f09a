"""Configuration: TOML file, then `BACKUPJOBD_<SECTION>__<KEY>` environment overrides,
validated once at start with a one-line error that names the bad key.

The environment is passed in as a mapping; nothing here reads `os.environ`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import tomllib
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backupjobd.core import azure
from backupjobd.errors import ConfigError, InvalidInput

ENV_PREFIX = "BACKUPJOBD_"
DEFAULT_CONFIG_PATH = Path("/etc/backupjobd/backupjobd.toml")

CLOUDS: dict[str, tuple[str, str]] = {
    "AzureCloud": ("https://management.azure.com", "https://management.azure.com/.default"),
    "AzureUSGovernment": (
        "https://management.usgovcloudapi.net",
        "https://management.core.usgovcloudapi.net/.default",
    ),
    "AzureChinaCloud": (
        "https://management.chinacloudapi.cn",
        "https://management.chinacloudapi.cn/.default",
    ),
}
AUTHORITIES = {
    "AzureCloud": "login.microsoftonline.com",
    "AzureUSGovernment": "login.microsoftonline.us",
    "AzureChinaCloud": "login.chinacloudapi.cn",
}
CREDENTIALS = (
    "default",
    "managed-identity",
    "workload-identity",
    "client-secret",
    "azure-cli",
    "static-token",
)
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

WEEK = 7 * 24 * 3600
DAYS_30 = 30 * 24 * 3600
# Every number the config holds, with the inclusive range `_validate` enforces. Generous, but
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
    "stuck.after_seconds": (1, DAYS_30),
    "stuck.thresholds": (1, DAYS_30),
    "api.port": (1, 65535),
    "api.max_body_bytes": (1024, 64 * 1024 * 1024),
    "api.healthy_tick_age_seconds": (0.1, WEEK),
    "api.idle_timeout_seconds": (0.1, 3600),
    "api.body_timeout_seconds": (0.1, 3600),
    "api.max_connections": (4, 100_000),
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


@dataclass(frozen=True)
class AzureConfig:
    cloud: str = "AzureCloud"
    management_endpoint: str = ""
    credential: str = "default"
    static_token_env: str = "BACKUPJOBD_STATIC_TOKEN"
    api_version: str = "2025-08-01"
    tenant_id: str = ""
    client_id: str = ""
    client_secret_env: str = "AZURE_CLIENT_SECRET"
    request_timeout_seconds: float = 30.0

    @property
    def endpoint(self) -> str:
        """The management endpoint, without a trailing slash."""
        return (self.management_endpoint or CLOUDS[self.cloud][0]).rstrip("/")

    @property
    def token_scope(self) -> str:
        return CLOUDS[self.cloud][1]


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite+aiosqlite:///./backupjobd.db"
    busy_timeout_ms: int = 5000


@dataclass(frozen=True)
class PollingConfig:
    interval_seconds: float = 30.0
    min_interval_seconds: float = 5.0
    early_polls: int = 3
    tick_seconds: float = 1.0
    concurrency: int = 16
    batch_size: int = 500
    not_found_grace_seconds: float = 300.0
    max_backoff_seconds: float = 300.0
    operation_interval_seconds: float = 5.0
    shutdown_timeout_seconds: float = 10.0
    sweep_min_jobs: int = 3
    detail_interval_seconds: float = 300.0
    max_detection_lag_seconds: float = 120.0


@dataclass(frozen=True)
class ThrottleConfig:
    """The ARM read budget we keep to, per subscription (Azure: 250 burst, 25 per second)."""

    enabled: bool = True
    reads_burst: int = 250
    reads_per_second: float = 25.0
    reserve_reads: int = 10


@dataclass(frozen=True)
class StuckConfig:
    after_seconds: float = 21600.0
    thresholds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API served by `serve` (loopback by default; elsewhere a token is required)."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8080
    unix_socket: str = ""
    token_env: str = "BACKUPJOBD_API_TOKEN"
    max_body_bytes: int = 1_048_576
    healthy_tick_age_seconds: float = 30.0
    # Host names a token-less API answers besides loopback ones (DNS rebinding guard).
    allowed_hosts: tuple[str, ...] = ()
    # Idle and slow-header clients are dropped after this; a request body gets its own.
    idle_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 30.0
    # Open client connections at most (and at most half of the descriptor limit).
    max_connections: int = 256


WEBHOOK_EVENTS = ("all", "terminal", "failures", "stuck")


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    name: str = ""
    events: tuple[str, ...] = ("all",)
    secret_env: str = ""
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class NotifyConfig:
    webhook: tuple[WebhookConfig, ...] = ()
    max_attempts: int = 12
    max_backoff_seconds: float = 600.0


@dataclass(frozen=True)
class DiscoveryConfig:
    """Finding the jobs nobody registers (those backup policies start on schedule) by listing
    the jobs of configured vaults, or of every vault of configured subscriptions."""

    enabled: bool = False
    interval_seconds: float = 300.0
    lookback_hours: float = 24.0
    overlap_seconds: float = 120.0
    operations: tuple[str, ...] = ()
    backup_management_types: tuple[str, ...] = ()
    vault: tuple[str, ...] = ()
    subscription: tuple[str, ...] = ()
    vault_refresh_seconds: float = 3600.0


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"


@dataclass(frozen=True)
class Config:
    azure: AzureConfig = field(default_factory=AzureConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    polling: PollingConfig = field(default_factory=PollingConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    stuck: StuckConfig = field(default_factory=StuckConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "built-in defaults"


_SECTIONS: dict[str, type[Any]] = {
    "azure": AzureConfig,
    "database": DatabaseConfig,
    "polling": PollingConfig,
    "throttle": ThrottleConfig,
    "stuck": StuckConfig,
    "api": ApiConfig,
    "notify": NotifyConfig,
    "discovery": DiscoveryConfig,
    "log": LogConfig,
}


def resolve_path(explicit: str | None, env: Mapping[str, str]) -> Path | None:
    """`--config`, then `$BACKUPJOBD_CONFIG`, then /etc/backupjobd/backupjobd.toml if present."""
    if explicit:
        return Path(explicit)
    if env.get("BACKUPJOBD_CONFIG"):
        return Path(env["BACKUPJOBD_CONFIG"])
    return DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None


def load(path: Path | None, env: Mapping[str, str]) -> Config:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return build(raw, env, source=str(path) if path else "built-in defaults")


def build(raw: Mapping[str, Any], env: Mapping[str, str], source: str = "<memory>") -> Config:
    sections: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"config section [{name}] must be a table")
        sections[name] = dict(value)
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX) :]:
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(f"{var}: unknown config section [{section}]")
        sections.setdefault(section, {})[key] = _EnvValue(value)
    built: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        built[name] = _build_section(name, cls, sections.get(name, {}))
    config = Config(**built, source=source)
    _validate(config)
    return config


class _EnvValue(str):
    """A string from the environment, converted to the key's type when the section is built."""

    __slots__ = ()


def _build_section(name: str, cls: type[Any], values: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown config key {name}.{key}")
        kwargs[key] = _coerce(f"{name}.{key}", value, _field_type(fields[key]))
    return cls(**kwargs)


def _field_type(spec: dataclasses.Field[Any]) -> type[Any]:
    if spec.default is not dataclasses.MISSING:
        return type(spec.default)
    assert spec.default_factory is not dataclasses.MISSING
    return type(spec.default_factory())


def _coerce(key: str, value: Any, kind: type[Any]) -> Any:
    from_env = isinstance(value, _EnvValue)
    if kind is tuple and key == "notify.webhook":
        return _webhooks(key, value, from_env)
    if kind is tuple and key.startswith("discovery."):
        return _discovery_list(key, value, from_env)
    if kind is tuple and key == "api.allowed_hosts":
        return _host_names(key, value, from_env)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env:
            try:
                return int(value)
            except ValueError:
                pass
    elif kind is float:
        number = _finite_float(value, from_env)
        if number is not None:
            return number
        raise ConfigError(f"config key {key} must be a finite number, got {_shown(value)}")
    elif kind is str and isinstance(value, str):
        return str(value)
    elif kind is dict:
        table = value
        if from_env:
            try:
                table = json.loads(value)
            except ValueError:
                raise ConfigError(f"config key {key} must be a JSON object") from None
        if not isinstance(table, dict):
            raise ConfigError(f"config key {key} must be a table of numbers")
        numbers: dict[str, float] = {}
        for name, item in table.items():
            number = _finite_float(item, False)
            if number is None:
                where = f"{key}[{json.dumps(str(name))}]"
                raise ConfigError(f"config key {where} must be a number, got {_shown(item)}")
            numbers[str(name)] = number
        return numbers
    raise ConfigError(f"config key {key} must be {kind.__name__}, got {_shown(value)}")


def _finite_float(value: Any, from_env: bool) -> float | None:
    """A finite float, or None: NaN, infinities and integers too big for a float (TOML's are
    unbounded) are no duration, and `float()` would raise OverflowError on the last."""
    if isinstance(value, bool) or not (isinstance(value, int | float) or from_env):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _shown(value: Any) -> str:
    """A value for a one-line error: repr escapes newlines, and a huge value is cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _webhooks(key: str, value: Any, from_env: bool) -> tuple[WebhookConfig, ...]:
    """`[[notify.webhook]]` tables (or a JSON array of objects from the environment)."""
    if from_env:
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"config key {key} must be a JSON array of objects") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"config key {key} must be an array of tables ([[notify.webhook]])")
    fields = {f.name for f in dataclasses.fields(WebhookConfig)}
    hooks = []
    for index, table in enumerate(value):
        where = f"{key}[{index}]"
        unknown = set(table) - fields
        if unknown:
            raise ConfigError(f"unknown config key {where}.{sorted(unknown)[0]}")
        url = table.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"config key {where}.url must be an http(s) URL")
        events = table.get("events", ["all"])
        if isinstance(events, str):
            events = [events]
        if (
            not isinstance(events, list)
            or not events
            or any(e not in WEBHOOK_EVENTS for e in events)
        ):
            raise ConfigError(f"config key {where}.events must list some of {WEBHOOK_EVENTS}")
        for name in ("name", "secret_env"):
            if not isinstance(table.get(name, ""), str):
                raise ConfigError(f"config key {where}.{name} must be a string")
        timeout = _finite_float(table.get("timeout_seconds", 10.0), False)
        if timeout is None:
            raise ConfigError(f"config key {where}.timeout_seconds must be a number")
        hooks.append(
            WebhookConfig(
                url=url,
                name=table.get("name") or f"webhook-{index + 1}",
                events=tuple(events),
                secret_env=table.get("secret_env", ""),
                timeout_seconds=timeout,
            )
        )
    if any(len(h.name) > 100 for h in hooks):
        raise ConfigError(f"config key {key}: webhook names are at most 100 characters")
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key {key}: webhook names must be unique")
    return tuple(hooks)


def _host_names(key: str, value: Any, from_env: bool) -> tuple[str, ...]:
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
        if not _is_host(name):
            raise ConfigError(f"config key {key}: {name[:80]!r} is not a host name (no port)")
    return tuple(dict.fromkeys(v.lower() for v in value))


def _discovery_list(key: str, value: Any, from_env: bool) -> tuple[str, ...]:
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


def _validate(config: Config) -> None:
    az = config.azure
    if az.cloud not in CLOUDS:
        raise ConfigError(f"config key azure.cloud must be one of {', '.join(CLOUDS)}")
    if az.credential not in CREDENTIALS:
        raise ConfigError(f"config key azure.credential must be one of {', '.join(CREDENTIALS)}")
    if not _API_VERSION_RE.match(az.api_version):
        raise ConfigError("config key azure.api_version must look like YYYY-MM-DD[-preview]")
    check_endpoint(az.endpoint)
    _validate_ranges(config)
    if not config.database.url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ConfigError(
            "config key database.url must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
        )
    poll = config.polling
    if poll.min_interval_seconds > poll.interval_seconds:
        raise ConfigError("config key polling.min_interval_seconds must be <= interval_seconds")
    _validate_api(config.api)
    if config.discovery.enabled and not (config.discovery.vault or config.discovery.subscription):
        raise ConfigError(
            "config key discovery.enabled: discovery needs a [[discovery.vault]] or a "
            "[[discovery.subscription]]"
        )
    if config.log.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("config key log.level must be DEBUG, INFO, WARNING or ERROR")
    if config.log.format not in ("text", "json"):
        raise ConfigError("config key log.format must be text or json")


def _validate_ranges(config: Config) -> None:
    for range_key, key, value in _numbers(config):
        if range_key not in NUMBER_RANGES:
            # Fails closed: a number without bounds is the bug this check exists for.
            raise ConfigError(f"config key {key} has no range (add it to NUMBER_RANGES)")
        low, high = NUMBER_RANGES[range_key]
        if not low <= value <= high:
            raise ConfigError(
                f"config key {key} must be between {_number(low)} and {_number(high)},"
                f" got {_number(value)}"
            )


def _numbers(config: Config) -> Iterator[tuple[str, str, float]]:
    """(key in NUMBER_RANGES, key as the error names it, value) for every number in the
    config: plain keys, the values of tables, and the keys of arrays of tables."""
    for section in _SECTIONS:
        values = getattr(config, section)
        for spec in dataclasses.fields(values):
            key = f"{section}.{spec.name}"
            value = getattr(values, spec.name)
            if isinstance(value, dict):
                for name, number in value.items():
                    yield key, f"{key}[{json.dumps(name)}]", number
            elif isinstance(value, tuple):
                for index, item in enumerate(value):
                    if dataclasses.is_dataclass(item):
                        for inner in dataclasses.fields(item):
                            number = getattr(item, inner.name)
                            if _is_number(number):
                                yield f"{key}.{inner.name}", f"{key}[{index}].{inner.name}", number
            elif _is_number(value):
                yield key, key, value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value: float) -> str:
    """1024 rather than 1024.0, 1e+18 rather than eighteen zeros, and never a thousand digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    text = repr(value)
    return text if len(text) <= 30 else f"{text[:30]}… ({len(text)} digits)"


def _validate_api(api: ApiConfig) -> None:
    """A bind with a stray space, or a socket path the kernel cuts short, would otherwise
    fail in `serve` with a traceback (or listen somewhere else)."""
    if not _is_host(api.bind):
        raise ConfigError(
            "config key api.bind must be an IP address (IPv6 without brackets) or a host name,"
            f" got {_shown(api.bind)}"
        )
    if api.unix_socket:
        if not api.unix_socket.startswith("/") or "\x00" in api.unix_socket:
            raise ConfigError(
                "config key api.unix_socket must be an absolute path,"
                f" got {_shown(api.unix_socket)}"
            )
        size = len(os.fsencode(api.unix_socket))
        if size > MAX_UNIX_SOCKET_BYTES:
            raise ConfigError(
                f"config key api.unix_socket must be at most {MAX_UNIX_SOCKET_BYTES} bytes long"
                f" (a unix socket's limit), got {size}"
            )


def _is_host(host: str) -> bool:
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
