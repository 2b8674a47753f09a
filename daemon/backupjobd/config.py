"""Configuration: TOML file, then `BACKUPJOBD_<SECTION>__<KEY>` environment overrides,
validated once at start with a one-line error that names the bad key.

The sections are typed structs (msgspec): msgspec checks the types, refuses unknown keys and
converts environment strings; its errors are re-worded here to name the key as the file
spells it. What types cannot say (ranges, host names, endpoints, ids) is checked after.

The environment is passed in as a mapping; nothing here reads `os.environ`. The checks of
single values (ranges, host names, endpoints, tokens) are in `config_rules`, re-exported here.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

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


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A config table: immutable, and a key it does not know is an error, not ignored."""


class AzureConfig(_Section, frozen=True):
    cloud: str = "AzureCloud"
    management_endpoint: str = ""
    credential: str = "default"
    static_token_env: str = "BACKUPJOBD_STATIC_TOKEN"
    api_version: str = "2025-08-01"
    # Backup vaults (Microsoft.DataProtection) have their own api-versions.
    data_protection_api_version: str = "2025-07-01"
    # Cross-region-restore reads (backupCrrJob, backupCrrOperationsStatus) exist in 2018-12-20
    # and 2021-11-15 (newer versions are not known to carry them).
    crr_api_version: str = "2021-11-15"
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


class DatabaseConfig(_Section, frozen=True):
    url: str = "sqlite+aiosqlite:///./backupjobd.db"
    busy_timeout_ms: int = 5000


class PollingConfig(_Section, frozen=True):
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


class ThrottleConfig(_Section, frozen=True):
    """The ARM read budget we keep to, per subscription (Azure: 250 burst, 25 per second)."""

    enabled: bool = True
    reads_burst: int = 250
    reads_per_second: float = 25.0
    # The most of the budget we take (rate and bucket); the rest is for people and tools.
    max_share: float = 0.7
    reserve_reads: int = 10
    # Cross-region-restore job reads are POSTs: they draw on the subscription's *write*
    # budget (Azure: 200 burst, 10 per second), a bucket of their own.
    writes_burst: int = 200
    writes_per_second: float = 10.0


class StuckConfig(_Section, frozen=True):
    after_seconds: float = 21600.0
    thresholds: dict[str, float] = msgspec.field(default_factory=dict)


class ApiConfig(_Section, frozen=True):
    """The HTTP API served by `serve` (loopback by default; elsewhere a token is required)."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8080
    unix_socket: str = ""
    token_env: str = "BACKUPJOBD_API_TOKEN"
    # A second bearer token that reads (GET) only: dashboards, the web page, scrapers.
    read_token_env: str = "BACKUPJOBD_API_READ_TOKEN"
    max_body_bytes: int = 1_048_576
    healthy_tick_age_seconds: float = 30.0
    # Host names a token-less API answers besides loopback ones (DNS rebinding guard).
    allowed_hosts: tuple[str, ...] = ()
    # Idle and slow-header clients are dropped after this; a request body gets its own.
    idle_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 30.0
    # Open client connections at most (and at most half of the descriptor limit).
    max_connections: int = 256
    # How often the web page (GET /) reloads its content.
    page_refresh_seconds: float = 10.0


WEBHOOK_EVENTS = ("all", "terminal", "failures", "stuck")


class WebhookConfig(_Section, frozen=True):
    url: str
    name: str = ""
    events: tuple[str, ...] = ("all",)
    secret_env: str = ""
    timeout_seconds: float = 10.0


class NotifyConfig(_Section, frozen=True):
    webhook: tuple[WebhookConfig, ...] = ()
    max_attempts: int = 12
    max_backoff_seconds: float = 600.0


class DiscoveryConfig(_Section, frozen=True):
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


class LogConfig(_Section, frozen=True):
    level: str = "INFO"
    format: str = "text"


class Config(_Section, frozen=True):
    azure: AzureConfig = msgspec.field(default_factory=AzureConfig)
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    polling: PollingConfig = msgspec.field(default_factory=PollingConfig)
    throttle: ThrottleConfig = msgspec.field(default_factory=ThrottleConfig)
    stuck: StuckConfig = msgspec.field(default_factory=StuckConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    notify: NotifyConfig = msgspec.field(default_factory=NotifyConfig)
    discovery: DiscoveryConfig = msgspec.field(default_factory=DiscoveryConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    source: str = "built-in defaults"
    #: Where each key set in the file or the environment came from ("section.key" → "file
    #: PATH" or "env VAR"); a key not in it has its built-in default.
    origins: dict[str, str] = msgspec.field(default_factory=dict)

    def origin(self, key: str) -> str:
        return self.origins.get(key, "default")


_SECTIONS: dict[str, type[_Section]] = {
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


_T = TypeVar("_T", bound=_Section)


def replace(struct: _T, **changes: Any) -> _T:
    """A copy of a config struct with some values changed (tests and `serve` overrides)."""
    return msgspec.structs.replace(struct, **changes)


def effective(config: Config, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Every key's value and origin (`backupjobd config show`). A key naming an environment
    variable that holds a secret (`*_env`) says whether that variable is set, never its
    value; webhook tables are listed by their keys."""
    out: dict[str, dict[str, Any]] = {}
    for section in _SECTIONS:
        values = getattr(config, section)
        for spec in msgspec.structs.fields(values):
            key = f"{section}.{spec.name}"
            value = msgspec.to_builtins(getattr(values, spec.name))
            if key == "database.url":
                value = _without_password(value)
            item: dict[str, Any] = {"value": value, "from": config.origin(key)}
            if spec.name.endswith("_env") and isinstance(value, str) and value:
                item["secret"] = "set" if env.get(value) else "unset"
            out[key] = item
    for index, hook in enumerate(config.notify.webhook):
        if hook.secret_env:
            state = "set" if env.get(hook.secret_env) else "unset"
            out[f"notify.webhook[{index}].secret_env"] = {
                "value": hook.secret_env,
                "from": config.origin("notify.webhook"),
                "secret": state,
            }
    return out


def _without_password(url: str) -> str:
    """A database URL with its password (if any) replaced: config show never prints one."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


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
    origins: dict[str, str] = {}
    for name, value in raw.items():
        if name not in _SECTIONS:
            raise ConfigError(f"unknown config section [{name}]")
        if not isinstance(value, dict):
            raise ConfigError(f"config section [{name}] must be a table")
        sections[name] = {
            key: _normalised(f"{name}.{key}", item, False) for key, item in value.items()
        }
        origins.update((f"{name}.{key}", f"file {source}") for key in value)
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX) :]:
            continue
        section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
        if section not in _SECTIONS:
            raise ConfigError(f"{var}: unknown config section [{section}]")
        sections.setdefault(section, {})[key] = _from_env(section, key, value)
        origins[f"{section}.{key}"] = f"env {var}"
    try:
        config = msgspec.convert({**sections, "source": source, "origins": origins}, Config)
    except msgspec.ValidationError as exc:
        raise _reworded(exc, sections) from None
    config = replace(config, notify=replace(config.notify, webhook=_webhooks(config.notify)))
    _validate(config)
    return config


# Keys whose values are normalised before the types are checked: ids canonicalised, host
# names lower-cased, and the environment's comma-separated or JSON forms read.
def _webhook_tables(key: str, value: Any, from_env: bool) -> Any:
    """`[[notify.webhook]]` as written: from the environment a JSON array of objects; an
    `events` given as one string is a list of one."""
    if from_env:
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"config key {key} must be a JSON array of objects") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"config key {key} must be an array of tables ([[notify.webhook]])")
    return [
        {**table, "events": [table["events"]]} if isinstance(table.get("events"), str) else table
        for table in value
    ]


_NORMALISERS: dict[str, Callable[[str, Any, bool], Any]] = {
    "notify.webhook": _webhook_tables,
    "api.allowed_hosts": host_names,
    "discovery.operations": discovery_list,
    "discovery.backup_management_types": discovery_list,
    "discovery.vault": discovery_list,
    "discovery.subscription": discovery_list,
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _normalised(key: str, value: Any, from_env: bool) -> Any:
    normaliser = _NORMALISERS.get(key)
    return normaliser(key, value, from_env) if normaliser else value


def _from_env(section: str, key: str, text: str) -> Any:
    """An environment string as the key's type: numbers and booleans converted, tables and
    arrays given as JSON."""
    name = f"{section}.{key}"
    fields = {f.name: f.type for f in msgspec.structs.fields(_SECTIONS[section])}
    if key not in fields:
        raise ConfigError(f"unknown config key {name}")
    kind = fields[key]
    if name in _NORMALISERS:
        return _normalised(name, text, True)
    if kind is bool and text.strip().lower() in _TRUE + _FALSE:
        return text.strip().lower() in _TRUE
    if kind in (str, int, float, bool):
        try:
            return msgspec.convert(text, kind, strict=False)
        except msgspec.ValidationError:
            raise ConfigError(
                f"config key {name} must be {_EXPECTED[kind.__name__]}, got {shown(text)}"
            ) from None
    try:
        return json.loads(text)
    except ValueError:
        shape = "a JSON object" if getattr(kind, "__origin__", None) is dict else "a JSON array"
        raise ConfigError(f"config key {name} must be {shape}") from None


# How an error names a type: msgspec's names (int, array …) in the words of a config file.
_EXPECTED = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
    "array": "an array",
    "object": "a table",
}
_ERROR_RE = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>.*)`)?$", re.DOTALL)
_STEP_RE = re.compile(r"\.(\w+)|\[(\d+|\.\.\.)\]")


def _reworded(exc: msgspec.ValidationError, sections: Mapping[str, Any]) -> ConfigError:
    """msgspec's "Expected `int`, got `str` - at `$.polling.concurrency`" as this module's
    "config key polling.concurrency must be an integer, got '4'"."""
    match = _ERROR_RE.match(str(exc))
    assert match is not None
    what, key = match["what"], ""
    value: Any = sections
    for name, index in _STEP_RE.findall(match["path"] or ""):
        if name:
            key = f"{key}.{name}" if key else name
            value = value.get(name) if isinstance(value, dict) else None
        elif index == "..." and isinstance(value, dict):
            # msgspec names no dict key: the first value of the wrong type is the one.
            bad = next((k for k, v in value.items() if finite_float(v, False) is None), "")
            key, value = f"{key}[{json.dumps(str(bad))}]", value.get(bad)
        elif index.isdigit():
            key = f"{key}[{index}]"
            value = (
                value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            )
    unknown = re.match(r"Object contains unknown field `(.*)`", what)
    if unknown:
        return ConfigError(f"unknown config key {key}.{unknown[1]}")
    missing = re.match(r"Object missing required field `(.*)`", what)
    if missing:
        return ConfigError(f"config key {key}.{missing[1]} is required")
    expected = re.match(r"Expected `(\w+)`", what)
    if expected:
        kind = _EXPECTED.get(expected[1], expected[1])
        return ConfigError(f"config key {key} must be {kind}, got {shown(value)}")
    return ConfigError(f"config key {key} must be a finite number, got {shown(value)}")


def _webhooks(notify: NotifyConfig) -> tuple[WebhookConfig, ...]:
    """`[[notify.webhook]]` tables: http(s) URLs, known events, unique names (by default
    `webhook-N`)."""
    key, hooks = "notify.webhook", []
    for index, hook in enumerate(notify.webhook):
        where = f"{key}[{index}]"
        if urlsplit(hook.url).scheme not in ("http", "https"):
            raise ConfigError(f"config key {where}.url must be an http(s) URL")
        if not hook.events or any(e not in WEBHOOK_EVENTS for e in hook.events):
            raise ConfigError(f"config key {where}.events must list some of {WEBHOOK_EVENTS}")
        hooks.append(replace(hook, name=hook.name or f"webhook-{index + 1}"))
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
    for key in ("api_version", "data_protection_api_version", "crr_api_version"):
        if not _API_VERSION_RE.match(getattr(az, key)):
            raise ConfigError(f"config key azure.{key} must look like YYYY-MM-DD[-preview]")
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
        for spec in msgspec.structs.fields(values):
            key = f"{section}.{spec.name}"
            value = getattr(values, spec.name)
            if isinstance(value, dict):
                for name, number in value.items():
                    yield key, f"{key}[{json.dumps(name)}]", number
            elif isinstance(value, tuple):
                for index, item in enumerate(value):
                    if isinstance(item, _Section):
                        for inner in msgspec.structs.fields(item):
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
