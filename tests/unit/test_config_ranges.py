from __future__ import annotations

# Every number in the config has a range, so a value that passes validation cannot crash or
# exhaust `serve` later; plus the other values `serve` used to fail on with a traceback (a bind
# with a space, an unusable socket path, a short API token, an in-memory database).
import json
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from backupjobd import bootstrap as app
from backupjobd import config
from backupjobd.config import (
    MIN_API_TOKEN_LENGTH,
    NUMBER_RANGES,
    build,
    check_api_token,
    check_serve_database,
    load,
)
from backupjobd.errors import ConfigError

WEBHOOK = "notify.webhook.timeout_seconds"
THRESHOLDS = "stuck.thresholds"


def _numeric_keys() -> dict[str, type[Any]]:
    """Every numeric key of every section, found from the structs' types (not from
    NUMBER_RANGES), so a key added later without a range shows up here."""
    found: dict[str, type[Any]] = {}

    def walk(prefix: str, cls: type[Any]) -> None:
        for spec in msgspec.structs.fields(cls):
            hint = spec.type
            origin, args = typing.get_origin(hint), typing.get_args(hint)
            key = f"{prefix}.{spec.name}"
            if hint in (int, float):
                found[key] = hint
            elif origin is dict and args[1] in (int, float):
                found[key] = args[1]
            elif origin is tuple and issubclass(args[0], msgspec.Struct):
                walk(key, args[0])

    for spec in msgspec.structs.fields(config.Config):
        if isinstance(spec.type, type) and issubclass(spec.type, msgspec.Struct):
            walk(spec.name, spec.type)
    return found


NUMERIC = _numeric_keys()


def test_the_walk_finds_the_numbers() -> None:
    assert len(NUMERIC) >= 30
    assert {WEBHOOK, THRESHOLDS, "api.port", "polling.concurrency"} <= set(NUMERIC)
    assert "throttle.enabled" not in NUMERIC  # a bool is no number


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_every_numeric_key_has_a_sane_range(key: str) -> None:
    assert key in NUMBER_RANGES, f"{key} has no range in config.NUMBER_RANGES"
    low, high = NUMBER_RANGES[key]
    assert 0 <= low < high <= 100_000_000


def test_every_range_names_a_key() -> None:
    assert set(NUMBER_RANGES) == set(NUMERIC)


def test_a_number_without_a_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(NUMBER_RANGES, "polling.batch_size")
    with pytest.raises(ConfigError, match=r"polling\.batch_size has no range"):
        build({}, {})


# --------------------------------------------------------------------------- helpers


def _raw(key: str, value: Any) -> dict[str, Any]:
    """The raw (TOML-shaped) config setting `key` to `value`, with what it must agree with."""
    if key == WEBHOOK:
        return {"notify": {"webhook": [{"url": "https://hooks.example", "timeout_seconds": value}]}}
    if key == THRESHOLDS:
        return {"stuck": {"thresholds": {"Backup": value}}}
    section, _, name = key.partition(".")
    raw: dict[str, Any] = {section: {name: value}}
    # min_interval_seconds <= interval_seconds still holds at either one's bounds (the other
    # follows, kept within its own range).
    pair = {"interval_seconds": "min_interval_seconds", "min_interval_seconds": "interval_seconds"}
    if section == "polling" and name in pair:
        low, high = NUMBER_RANGES[f"polling.{pair[name]}"]
        raw["polling"][pair[name]] = min(max(value, low), high)
    return raw


def _env(key: str, value: Any) -> dict[str, str]:
    """The same as environment overrides."""
    env: dict[str, str] = {}
    for section, table in _raw(key, value).items():
        for name, item in table.items():
            text = item if isinstance(item, int | float) else json.dumps(item)
            env[f"BACKUPJOBD_{section.upper()}__{name.upper()}"] = str(text)
    return env


def _named(key: str) -> str:
    """How the error names the key."""
    if key == WEBHOOK:
        return "notify.webhook[0].timeout_seconds"
    if key == THRESHOLDS:
        return 'stuck.thresholds["Backup"]'
    return key


def _value(key: str, cfg: config.Config) -> float:
    if key == WEBHOOK:
        return cfg.notify.webhook[0].timeout_seconds
    if key == THRESHOLDS:
        return cfg.stuck.thresholds["Backup"]
    section, _, name = key.partition(".")
    number: float = getattr(getattr(cfg, section), name)
    return number


def _out_of_range(key: str) -> list[Any]:
    low, high = NUMBER_RANGES[key]
    if NUMERIC[key] is int:
        return [int(low) - 1, int(high) + 1, 10**9, 10**12, 10**18, -(10**18)]
    below = low / 2 if low > 0 else -1.0
    return [below, high * 1.01, 1e12, 1e18, -1e18, 10**18]


OUT_OF_RANGE = [(key, value) for key in sorted(NUMERIC) for value in _out_of_range(key)]


def _refused(raw: dict[str, Any], env: dict[str, str], key: str) -> str:
    with pytest.raises(ConfigError) as excinfo:
        build(raw, env)
    message = str(excinfo.value)
    assert _named(key) in message
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE)
def test_out_of_range_in_the_file_is_refused_naming_the_key(key: str, value: Any) -> None:
    message = _refused(_raw(key, value), {}, key)
    assert "must be between" in message


@pytest.mark.parametrize(("key", "value"), OUT_OF_RANGE)
def test_out_of_range_in_the_environment_is_refused_naming_the_key(key: str, value: Any) -> None:
    _refused({}, _env(key, value), key)


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("text", ["1e12", "1e18", "-1e18", "1e308"])
def test_huge_floats_in_a_toml_file_are_refused(key: str, text: str, tmp_path: Path) -> None:
    """Through the real TOML parser: a float for an int key is refused as such, one for a
    float key as out of range; either way one line naming the key, never a traceback."""
    path = tmp_path / "backupjobd.toml"
    if key == WEBHOOK:
        body = f'[[notify.webhook]]\nurl = "https://hooks.example"\ntimeout_seconds = {text}\n'
    elif key == THRESHOLDS:
        body = f"[stuck.thresholds]\nBackup = {text}\n"
    else:
        section, _, name = key.partition(".")
        body = f"[{section}]\n{name} = {text}\n"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load(path, {})
    assert _named(key) in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_an_integer_too_big_for_a_float_is_refused(key: str) -> None:
    """TOML integers are unbounded; float() of one this big raises OverflowError."""
    message = _refused(_raw(key, 10**400), {}, key)
    assert len(message) < 300


@pytest.mark.parametrize("key", sorted(NUMERIC))
def test_the_bounds_themselves_are_accepted(key: str) -> None:
    for bound in NUMBER_RANGES[key]:
        value = NUMERIC[key](bound)
        assert _value(key, build(_raw(key, value), {})) == value
        assert _value(key, build({}, _env(key, value))) == value


def test_the_message_gives_the_range_and_the_value() -> None:
    with pytest.raises(ConfigError) as excinfo:
        build({"polling": {"concurrency": 1_000_000_000}}, {})
    assert str(excinfo.value) == (
        "config key polling.concurrency must be between 1 and 1024, got 1000000000"
    )
    with pytest.raises(ConfigError) as excinfo:
        build({}, {"BACKUPJOBD_POLLING__TICK_SECONDS": "1e18"})
    assert str(excinfo.value) == (
        "config key polling.tick_seconds must be between 0.01 and 3600, got 1e+18"
    )


def test_the_cross_field_rule_still_holds() -> None:
    with pytest.raises(ConfigError, match="min_interval_seconds must be <= interval_seconds"):
        build({"polling": {"interval_seconds": 10, "min_interval_seconds": 20}}, {})


def test_the_repository_s_own_small_values_are_accepted() -> None:
    """The acceptance tests and benches run the daemon this fast (tests/acceptance,
    bench/soak.py); their configs must stay valid."""
    polling = {
        "interval_seconds": 0.06,
        "min_interval_seconds": 0.03,
        "operation_interval_seconds": 0.03,
        "tick_seconds": 0.03,
        "max_backoff_seconds": 1,
        "not_found_grace_seconds": 30,
    }
    cfg = build(
        {
            "polling": polling,
            "notify": {"max_attempts": 1000, "max_backoff_seconds": 1},
            "throttle": {"reads_burst": 60, "reads_per_second": 20, "reserve_reads": 2},
            "discovery": {"interval_seconds": 1, "overlap_seconds": 0},
            "stuck": {"after_seconds": 90, "thresholds": {"Backup/AzureIaaSVMJob": 1.5}},
        },
        {},
    )
    assert cfg.polling.tick_seconds == 0.03


def test_durations_at_their_upper_bounds_do_not_overflow() -> None:
    """At 1e12 s a timedelta still fits but now + it does not: every poll logged an
    OverflowError. At the upper bounds, the policy and a few intervals past now are fine."""
    raw: dict[str, dict[str, Any]] = {}
    for key in NUMERIC:
        if key not in (WEBHOOK, THRESHOLDS):
            section, _, name = key.partition(".")
            raw.setdefault(section, {})[name] = NUMBER_RANGES[key][1]
    raw["stuck"]["thresholds"] = {"Backup": NUMBER_RANGES[THRESHOLDS][1]}
    cfg = build(raw, {})
    policy = app.poll_policy(cfg)
    far = datetime(2200, 1, 1, tzinfo=UTC)
    for span in (
        policy.interval,
        policy.max_backoff,
        policy.stuck.default,
        policy.max_detection_lag,
    ):
        assert far + 10 * span > far
    assert far + 10 * timedelta(hours=cfg.discovery.lookback_hours) > far
    assert app.read_budget(cfg) is not None


# --------------------------------------------------------------------------- api.bind


@pytest.mark.parametrize(
    "bind",
    [
        "127.0.0.1",
        "0.0.0.0",
        "::",
        "::1",
        "fe80::1%eth0",
        "localhost",
        "api.internal",
        "example.com.",
        "my-host-1",
        "10.0.0.4",
    ],
)
def test_good_binds_are_accepted(bind: str) -> None:
    assert build({"api": {"bind": bind}}, {}).api.bind == bind


@pytest.mark.parametrize(
    "bind",
    [
        "127.0.0.1 ",
        " 127.0.0.1",
        "",
        " ",
        "a b",
        "0.0.0.0\n",
        "host\tname",
        "[::1]",
        "-bad.example",
        "bad-.example",
        "a..b",
        "exa_mple.com",
        "x" * 64,
        "256.1.1.1",
        "1.2.3",
        "fe80::1%a b",
        "127.0.0.1:8080",
        "http://127.0.0.1",
        "höst.example",
    ],
)
def test_bad_binds_are_refused(bind: str) -> None:
    _refused({"api": {"bind": bind}}, {}, "api.bind")
    _refused({}, {"BACKUPJOBD_API__BIND": bind}, "api.bind")


# --------------------------------------------------------------------------- api.unix_socket


@pytest.mark.parametrize(
    "path", ["", "/run/backupjobd/api.sock", "/" + "a" * 106, "/tmp/with space.sock"]
)
def test_good_unix_sockets_are_accepted(path: str) -> None:
    assert build({"api": {"unix_socket": path}}, {}).api.unix_socket == path


@pytest.mark.parametrize(
    "path",
    [
        "api.sock",
        "./api.sock",
        "~/api.sock",
        "@abstract",
        "/" + "a" * 107,
        "/" + "é" * 60,
        "/tmp/nul\x00.sock",
    ],
)
def test_bad_unix_sockets_are_refused(path: str) -> None:
    _refused({"api": {"unix_socket": path}}, {}, "api.unix_socket")


# --------------------------------------------------------------------------- API token


def test_the_minimum_token_length() -> None:
    assert MIN_API_TOKEN_LENGTH == 16


@pytest.mark.parametrize(
    "token",
    [
        "a" * 16,
        "0123456789abcdef",
        "U1csqOKVkaWMlz67-mwZyah9_Xg23WODO9M8lAJ166s",
        "tok-" + "é" * 12,
    ],
)
def test_good_api_tokens_are_accepted(token: str) -> None:
    check_api_token(token, "BACKUPJOBD_API_TOKEN")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "hunter",
        "a" * 15,
        "secret-token-" + " " * 3,
        "secret token with spaces",
        "secret-token-12345\n",
        "\tsecret-token-12345",
        "secret-token-12345\x00",
        "secret-token-12345\x1b",
        "secret\u200btoken-12345",
        "secret\u00a0token-12345",
    ],
)
def test_bad_api_tokens_are_refused_without_echoing_them(token: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        check_api_token(token, "MY_TOKEN_ENV")
    message = str(excinfo.value)
    assert "MY_TOKEN_ENV" in message
    assert "\n" not in message
    if token.strip():
        assert token.strip() not in message


# --------------------------------------------------------------------------- in-memory database


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///",
        "sqlite+aiosqlite:///%3Amemory%3A",
        "sqlite+aiosqlite:///:memory:?cache=shared",
        "sqlite+aiosqlite:///file:jobs?mode=memory&cache=shared&uri=true",
        "sqlite+aiosqlite:///file::memory:?cache=shared&uri=true",
    ],
)
def test_serve_refuses_an_in_memory_database(url: str) -> None:
    build({"database": {"url": url}}, {})  # fine for the other commands' config
    with pytest.raises(ConfigError) as excinfo:
        check_serve_database(url)
    assert "database.url" in str(excinfo.value)
    assert "in-memory" in str(excinfo.value)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:///./backupjobd.db",
        "sqlite+aiosqlite:////var/lib/backupjobd/backupjobd.db",
        "sqlite+aiosqlite:///./memory.db",
        "sqlite+aiosqlite:///x.db?mode=rwc",
        "postgresql+asyncpg://u@db/backupjobd",
    ],
)
def test_serve_accepts_a_durable_database(url: str) -> None:
    check_serve_database(url)


def test_allowed_hosts_from_toml_and_environment() -> None:
    assert config.build({"api": {"allowed_hosts": ["API.example"]}}, {}).api.allowed_hosts == (
        "api.example",
    )
    env = {"BACKUPJOBD_API__ALLOWED_HOSTS": "a.example, b.example"}
    assert config.build({}, env).api.allowed_hosts == ("a.example", "b.example")
    env = {"BACKUPJOBD_API__ALLOWED_HOSTS": '["c.example"]'}
    assert config.build({}, env).api.allowed_hosts == ("c.example",)
    for bad in (["x.example:80"], ["a b"], [""], "x.example", [1]):
        with pytest.raises(ConfigError, match=r"^config key api\.allowed_hosts"):
            config.build({"api": {"allowed_hosts": bad}}, {})
