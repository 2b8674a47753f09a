from __future__ import annotations

# Configuration: defaults, TOML, environment overrides and validation.
from pathlib import Path
from typing import Any

import pytest

from backupjobd import config
from backupjobd.config import build, check_endpoint, load, resolve_path
from backupjobd.errors import ConfigError


def test_defaults() -> None:
    cfg = build({}, {})
    assert cfg.azure.cloud == "AzureCloud"
    assert cfg.azure.management_endpoint == ""
    assert cfg.azure.endpoint == "https://management.azure.com"
    assert cfg.azure.credential == "default"
    assert cfg.azure.static_token_env == "BACKUPJOBD_STATIC_TOKEN"
    assert cfg.database.url == "sqlite+aiosqlite:///./backupjobd.db"
    assert cfg.polling.interval_seconds == 30.0
    assert cfg.polling.min_interval_seconds == 5.0
    assert cfg.source == "<memory>"


def test_load_without_file_is_built_in_defaults() -> None:
    cfg = load(None, {})
    assert cfg.source == "built-in defaults"
    assert cfg == build({}, {}, source="built-in defaults")


def test_load_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "backupjobd.toml"
    path.write_text(
        """
[azure]
cloud = "AzureUSGovernment"
management_endpoint = "http://127.0.0.1:8443/"
credential = "static-token"
api_version = "2024-04-01-preview"

[database]
url = "postgresql+asyncpg://u@db/backupjobd"

[polling]
interval_seconds = 60
min_interval_seconds = 2.5
concurrency = 4

[log]
level = "debug"
format = "json"
""",
        encoding="utf-8",
    )
    cfg = load(path, {})
    assert cfg.source == str(path)
    assert cfg.azure.cloud == "AzureUSGovernment"
    assert cfg.azure.endpoint == "http://127.0.0.1:8443"
    assert cfg.azure.credential == "static-token"
    assert cfg.azure.api_version == "2024-04-01-preview"
    assert cfg.database.url == "postgresql+asyncpg://u@db/backupjobd"
    assert cfg.polling.interval_seconds == 60.0
    assert isinstance(cfg.polling.interval_seconds, float)
    assert cfg.polling.min_interval_seconds == 2.5
    assert cfg.polling.concurrency == 4
    assert cfg.log.format == "json"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.toml", {})


def test_load_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[azure\ncloud = ", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path, {})


def test_load_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[azure]\ncloud = "\xff"\n')
    with pytest.raises(ConfigError):
        load(path, {})


def test_env_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite+aiosqlite:///file.db"\n', encoding="utf-8")
    env = {
        "BACKUPJOBD_DATABASE__URL": "sqlite+aiosqlite:////var/lib/backupjobd/db.sqlite",
        "BACKUPJOBD_POLLING__INTERVAL_SECONDS": "12.5",
        "BACKUPJOBD_POLLING__CONCURRENCY": "32",
        "BACKUPJOBD_STATIC_TOKEN": "not-a-config-key",
        "PATH": "/usr/bin",
    }
    cfg = load(path, env)
    assert cfg.database.url == "sqlite+aiosqlite:////var/lib/backupjobd/db.sqlite"
    assert cfg.polling.interval_seconds == 12.5
    assert isinstance(cfg.polling.interval_seconds, float)
    assert cfg.polling.concurrency == 32
    assert isinstance(cfg.polling.concurrency, int)


def test_env_key_case_is_ignored() -> None:
    cfg = build({}, {"BACKUPJOBD_azure__Cloud": "AzureChinaCloud"})
    assert cfg.azure.cloud == "AzureChinaCloud"


@pytest.mark.parametrize(
    ("raw", "env", "needle"),
    [
        ({"nosuch": {}}, {}, "[nosuch]"),
        ({"azure": {"colud": "AzureCloud"}}, {}, "azure.colud"),
        ({}, {"BACKUPJOBD_POLLING__INTERVAL": "3"}, "polling.interval"),
        ({}, {"BACKUPJOBD_NOSUCH__KEY": "3"}, "BACKUPJOBD_NOSUCH__KEY"),
        ({"azure": "AzureCloud"}, {}, "[azure]"),
    ],
)
def test_unknown_sections_and_keys_are_named(
    raw: dict[str, Any], env: dict[str, str], needle: str
) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build(raw, env)
    assert needle in str(excinfo.value)


@pytest.mark.parametrize(
    ("raw", "env", "needle"),
    [
        ({"polling": {"interval_seconds": "thirty"}}, {}, "polling.interval_seconds"),
        ({"polling": {"interval_seconds": True}}, {}, "polling.interval_seconds"),
        ({"polling": {"concurrency": 2.5}}, {}, "polling.concurrency"),
        ({"polling": {"concurrency": "4"}}, {}, "polling.concurrency"),
        ({"azure": {"cloud": 3}}, {}, "azure.cloud"),
        ({"database": {"busy_timeout_ms": False}}, {}, "database.busy_timeout_ms"),
        ({}, {"BACKUPJOBD_POLLING__INTERVAL_SECONDS": "soon"}, "polling.interval_seconds"),
        ({}, {"BACKUPJOBD_POLLING__CONCURRENCY": "1.5"}, "polling.concurrency"),
    ],
)
def test_wrong_type_is_named(raw: dict[str, Any], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build(raw, env)
    assert needle in str(excinfo.value)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"azure": {"cloud": "AzureGermanCloud"}}, "azure.cloud"),
        ({"azure": {"cloud": "azurecloud"}}, "azure.cloud"),
        ({"azure": {"credential": "password"}}, "azure.credential"),
        ({"azure": {"api_version": "latest"}}, "azure.api_version"),
        ({"azure": {"api_version": "2025-08-01-beta"}}, "azure.api_version"),
        ({"azure": {"api_version": "25-08-01"}}, "azure.api_version"),
        ({"azure": {"request_timeout_seconds": 0}}, "azure.request_timeout_seconds"),
        ({"database": {"url": "sqlite:///x.db"}}, "database.url"),
        ({"polling": {"interval_seconds": 0}}, "polling.interval_seconds"),
        ({"polling": {"min_interval_seconds": -1}}, "polling.min_interval_seconds"),
        ({"polling": {"min_interval_seconds": 60}}, "min_interval_seconds"),
        ({"polling": {"concurrency": 0}}, "polling.concurrency"),
        ({"polling": {"not_found_grace_seconds": -1}}, "polling.not_found_grace_seconds"),
        ({"log": {"level": "TRACE"}}, "log.level"),
        ({"log": {"format": "xml"}}, "log.format"),
    ],
)
def test_bad_values_are_named(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        build(raw, {})
    assert needle in str(excinfo.value)


@pytest.mark.parametrize("credential", list(config.CREDENTIALS))
def test_every_documented_credential_is_accepted(credential: str) -> None:
    assert build({"azure": {"credential": credential}}, {}).azure.credential == credential


@pytest.mark.parametrize("version", ["2016-12-01", "2025-08-01", "2022-06-01-preview"])
def test_api_versions_accepted(version: str) -> None:
    assert build({"azure": {"api_version": version}}, {}).azure.api_version == version


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8443",
        "http://127.0.0.1",
        "http://127.0.0.2:9000/",
        "http://[::1]:8443",
        "http://localhost:8443",
        "http://LOCALHOST",
        "https://management.azure.com",
        "https://management.azure.com/",
        "https://emulator.internal:8443",
    ],
)
def test_endpoint_allowed(url: str) -> None:
    check_endpoint(url)
    cfg = build({"azure": {"management_endpoint": url}}, {})
    assert cfg.azure.endpoint == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://management.azure.com",
        "http://10.0.0.1:8443",
        "http://0.0.0.0:8443",
        "http://localhost.evil.example.com",
        "http://127.0.0.1.nip.io",
        "http://[::2]:8443",
        "https://management.azure.com/subscriptions",
        "https://management.azure.com/api/",
        "http://127.0.0.1:8443/prefix",
        "https://user:pw@management.azure.com",
        "https://management.azure.com?x=1",
        "https://management.azure.com#frag",
        "ftp://127.0.0.1",
        "management.azure.com",
        "https://",
    ],
)
def test_endpoint_refused(url: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        check_endpoint(url)
    assert "azure.management_endpoint" in str(excinfo.value)
    with pytest.raises(ConfigError):
        build({"azure": {"management_endpoint": url}}, {})


def test_endpoint_env_override_is_checked() -> None:
    with pytest.raises(ConfigError, match="loopback"):
        build({}, {"BACKUPJOBD_AZURE__MANAGEMENT_ENDPOINT": "http://example.com"})


@pytest.mark.parametrize(
    ("cloud", "endpoint", "scope"),
    [
        ("AzureCloud", "https://management.azure.com", "https://management.azure.com/.default"),
        (
            "AzureUSGovernment",
            "https://management.usgovcloudapi.net",
            "https://management.core.usgovcloudapi.net/.default",
        ),
        (
            "AzureChinaCloud",
            "https://management.chinacloudapi.cn",
            "https://management.chinacloudapi.cn/.default",
        ),
    ],
)
def test_cloud_endpoint_and_token_scope(cloud: str, endpoint: str, scope: str) -> None:
    cfg = build({"azure": {"cloud": cloud}}, {})
    assert cfg.azure.endpoint == endpoint
    assert cfg.azure.token_scope == scope
    # An emulator endpoint does not change the cloud's token scope.
    emulated = build({"azure": {"cloud": cloud, "management_endpoint": "http://[::1]:1"}}, {})
    assert emulated.azure.endpoint == "http://[::1]:1"
    assert emulated.azure.token_scope == scope


# --------------------------------------------------------------------------- resolve_path


@pytest.fixture
def default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc" / "backupjobd.toml"
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", path)
    return path


def test_resolve_path_explicit_wins(default_path: Path) -> None:
    default_path.parent.mkdir()
    default_path.write_text("", encoding="utf-8")
    env = {"BACKUPJOBD_CONFIG": "/from/env.toml"}
    assert resolve_path("/explicit.toml", env) == Path("/explicit.toml")


def test_resolve_path_env_next(default_path: Path) -> None:
    default_path.parent.mkdir()
    default_path.write_text("", encoding="utf-8")
    assert resolve_path(None, {"BACKUPJOBD_CONFIG": "/from/env.toml"}) == Path("/from/env.toml")
    assert resolve_path("", {"BACKUPJOBD_CONFIG": "/from/env.toml"}) == Path("/from/env.toml")


def test_resolve_path_default_only_when_present(default_path: Path) -> None:
    assert resolve_path(None, {}) is None
    assert resolve_path(None, {"BACKUPJOBD_CONFIG": ""}) is None
    default_path.parent.mkdir()
    default_path.write_text("", encoding="utf-8")
    assert resolve_path(None, {}) == default_path


# --------------------------------------------------------------------------- found bugs


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_non_finite_float_is_refused(value: str) -> None:
    with pytest.raises(ConfigError):
        build({}, {"BACKUPJOBD_POLLING__INTERVAL_SECONDS": value})


@pytest.mark.parametrize("url", ["https://management.azure.com:abc", "http://127.0.0.1:99999"])
def test_endpoint_with_bad_port_is_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        check_endpoint(url)
