"""Configuration: TOML file, then `BACKUPJOBD_<SECTION>__<KEY>` environment overrides,
validated once at start with a one-line error that names the bad key.

The environment is passed in as a mapping; nothing here reads `os.environ`. The checks of
single values (ranges, host names, endpoints, tokens) are in `config_rules`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backupjobd.config_rules import (
    MAX_UNIX_SOCKET_BYTES,
    discovery_list,
    finite_float,
    host_names,
    is_host,
    number_text,
    shown,
)
from backupjobd.config_rules import MIN_API_TOKEN_LENGTH as MIN_API_TOKEN_LENGTH
from backupjobd.config_rules import NUMBER_RANGES as NUMBER_RANGES
from backupjobd.config_rules import check_api_token as check_api_token
from backupjobd.config_rules import check_endpoint as check_endpoint
from backupjobd.config_rules import check_serve_database as check_serve_database
from backupjobd.config_rules import is_loopback as is_loopback
from backupjobd.errors import ConfigError

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
        return discovery_list(key, value, from_env)
    if kind is tuple and key == "api.allowed_hosts":
        return host_names(key, value, from_env)
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
        number = finite_float(value, from_env)
        if number is not None:
            return number
        raise ConfigError(f"config key {key} must be a finite number, got {shown(value)}")
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
            number = finite_float(item, False)
            if number is None:
                where = f"{key}[{json.dumps(str(name))}]"
                raise ConfigError(f"config key {where} must be a number, got {shown(item)}")
            numbers[str(name)] = number
        return numbers
    raise ConfigError(f"config key {key} must be {kind.__name__}, got {shown(value)}")


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
        timeout = finite_float(table.get("timeout_seconds", 10.0), False)
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
                f"config key {key} must be between {number_text(low)} and {number_text(high)},"
                f" got {number_text(value)}"
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


def _validate_api(api: ApiConfig) -> None:
    """A bind with a stray space, or a socket path the kernel cuts short, would otherwise
    fail in `serve` with a traceback (or listen somewhere else)."""
    if not is_host(api.bind):
        raise ConfigError(
            "config key api.bind must be an IP address (IPv6 without brackets) or a host name,"
            f" got {shown(api.bind)}"
        )
    if api.unix_socket:
        if not api.unix_socket.startswith("/") or "\x00" in api.unix_socket:
            raise ConfigError(
                f"config key api.unix_socket must be an absolute path, got {shown(api.unix_socket)}"
            )
        size = len(os.fsencode(api.unix_socket))
        if size > MAX_UNIX_SOCKET_BYTES:
            raise ConfigError(
                f"config key api.unix_socket must be at most {MAX_UNIX_SOCKET_BYTES} bytes long"
                f" (a unix socket's limit), got {size}"
            )
