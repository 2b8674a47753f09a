"""`backupjobd config show`: every key, its value and where it came from; secrets as set or
unset, never their values; a database password masked. And a read command on a database that
does not exist says where the URL came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backupjobd.cli import main

SECRET = "hunter2-super-secret-value"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_config_show_says_where_every_value_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "b.toml"
    config.write_text('[polling]\ninterval_seconds = 12\n[api]\ntoken_env = "MY_TOKEN"\n')
    monkeypatch.setenv("BACKUPJOBD_DATABASE__URL", "postgresql+asyncpg://bob:pw%40x@db/jobs")
    monkeypatch.setenv("MY_TOKEN", SECRET)
    monkeypatch.delenv("BACKUPJOBD_STATIC_TOKEN", raising=False)
    code, out, err = run(capsys, "--config", str(config), "config", "show", "-o", "json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["polling.interval_seconds"] == {"value": 12.0, "from": f"file {config}"}
    assert shown["polling.tick_seconds"]["from"] == "default"
    assert shown["database.url"] == {
        "value": "postgresql+asyncpg://bob:***@db/jobs",
        "from": "env BACKUPJOBD_DATABASE__URL",
    }
    assert shown["api.token_env"]["secret"] == "set"
    assert shown["azure.static_token_env"]["secret"] == "unset"
    code, text, _ = run(capsys, "--config", str(config), "config", "show")
    assert code == 0
    assert "polling.interval_seconds = 12.0  # file " in text
    for output in (out, text):
        assert SECRET not in output and "pw%40x" not in output


def test_a_missing_database_says_where_its_url_came_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BACKUPJOBD_CONFIG", raising=False)
    monkeypatch.setenv("BACKUPJOBD_DATABASE__URL", f"sqlite+aiosqlite:///{tmp_path}/gone.db")
    code, out, err = run(capsys, "jobs", "list")
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert f"{tmp_path}/gone.db does not exist" in line
    assert "database.url: env BACKUPJOBD_DATABASE__URL" in line
    assert not (tmp_path / "gone.db").exists()
