from __future__ import annotations

# A read command starts fast: `jobs list`, `--help`, `--version` and the other commands that
# only read the database import no aiohttp, APScheduler or Alembic (together about 0.7 s of a
# CLI call before they were made lazy), nor SQLAlchemy's asyncio extension and ORM (some 60 ms:
# on SQLite the store reads on its plain engine). Each command runs in a fresh interpreter,
# which then reports which of those packages ended up in sys.modules.
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("aiohttp", "apscheduler", "alembic", "sqlalchemy.ext.asyncio", "sqlalchemy.orm")
VAULT = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
    "/providers/Microsoft.RecoveryServices/vaults/v1"
)
JOB = "00000000-0000-0000-0000-0000000000aa"
PROBE = """
import json, sys
{before}
from backupjobd.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""
READ_COMMANDS = [
    ["--help"],
    ["--version"],
    ["jobs", "list", "--help"],
    ["jobs", "list"],
    ["jobs", "list", "--json", "--limit", "5"],
    ["jobs", "show", JOB],
    ["jobs", "history", JOB, "--json"],
    ["operations", "list"],
    ["notify", "failed", "--json"],
]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}


def _run(argv: list[str], before: str = "") -> tuple[int, list[str]]:
    """(exit code, heavy packages imported) of `backupjobd ARGV` in a fresh interpreter."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before, heavy=HEAVY), *argv],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["code"], report["loaded"]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with one tracked job."""
    tmp = tmp_path_factory.mktemp("cli-imports")
    path = tmp / "backupjobd.toml"
    path.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{tmp / "jobs.db"}"\n')
    for args in (["migrate"], ["register", "--vault", VAULT, "--job-id", JOB]):
        code, _ = _run(["--config", str(path), *args])
        assert code == 0, args
    return path


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=" ".join)
def test_read_commands_import_no_network_scheduler_or_migrations(
    config_file: Path, argv: list[str]
) -> None:
    code, loaded = _run(["--config", str(config_file), *argv])
    assert code == 0, f"backupjobd {' '.join(argv)} exited {code}"
    assert loaded == [], f"backupjobd {' '.join(argv)} imported {', '.join(loaded)}"


def test_the_probe_sees_what_was_imported(config_file: Path) -> None:
    """The check can fail: the same probe reports a package imported before the command."""
    code, loaded = _run(["--config", str(config_file), "--version"], before="import aiohttp")
    assert code == 0
    assert loaded == ["aiohttp"]


def test_healthcheck_imports_no_network_scheduler_or_migrations(config_file: Path) -> None:
    """The container probe runs every few seconds in a fresh process: stdlib HTTP only.
    (The API is disabled in this config: the probe answers 1 without connecting.)"""
    code, loaded = _run(["--config", str(config_file), "healthcheck"])
    assert code == 1
    assert loaded == [], f"backupjobd healthcheck imported {', '.join(loaded)}"
