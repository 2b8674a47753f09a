"""The wheel and sdist pass `twine check --strict` (what PyPI would refuse), and `pipx
install` of the wheel, the way users install a command, gives a `backupjobd` that works:
--version, --help, and `migrate` on a fresh SQLite file (the Alembic scripts ship inside).

Built offline from a copy of the sources (--no-isolation: the test extra has setuptools and
build). pipx takes the dependencies from the package index, pinned by requirements.lock. A
missing tool skips, unless BACKUPJOBD_REQUIRE_TOOLS=1 (CI), where it fails instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REQUIRE_TOOLS = os.environ.get("BACKUPJOBD_REQUIRE_TOOLS") == "1"
SOURCES = ("pyproject.toml", "README.md", "daemon", "migrations")
TIMEOUT_S = 180
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _module_or_skip(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        reason = f"{name} is not installed (the test extra has it)"
        if REQUIRE_TOOLS:
            pytest.fail(f"{reason} (BACKUPJOBD_REQUIRE_TOOLS=1)", pytrace=False)
        pytest.skip(reason)


def _run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(args[:4])}…:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and sdist, built from a copy of the sources (the tree stays untouched)."""
    for module in ("build", "setuptools"):
        _module_or_skip(module)
    tmp = tmp_path_factory.mktemp("dist")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp / "out"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])
    return out


def test_wheel_and_sdist_pass_twine_check(dist: Path) -> None:
    _module_or_skip("twine")
    wheel = dist / f"backupjobd-{VERSION}-py3-none-any.whl"
    sdist = dist / f"backupjobd-{VERSION}.tar.gz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([wheel.name, sdist.name])

    output = _run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)])

    assert output.count("PASSED") == 2, output
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("backupjobd/migrations/versions/")}
    expected = {
        f"backupjobd/migrations/versions/{p.name}" for p in ROOT.glob("migrations/versions/*.py")
    }
    assert expected and expected <= shipped
    assert f"backupjobd-{VERSION}.dist-info/entry_points.txt" in names
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "migrations/env.py"} <= members


def test_pipx_install_of_the_wheel_gives_a_working_command(dist: Path, tmp_path: Path) -> None:
    _module_or_skip("pipx")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKUPJOBD_", "PIPX_"))}
    env.update(
        PIPX_HOME=str(tmp_path / "pipx"),
        PIPX_BIN_DIR=str(tmp_path / "bin"),
        PIPX_MAN_DIR=str(tmp_path / "man"),
        PIPX_DEFAULT_PYTHON=sys.executable,
        PIP_CONSTRAINT=str(ROOT / "requirements.lock"),
    )
    wheel = dist / f"backupjobd-{VERSION}-py3-none-any.whl"

    _run([sys.executable, "-m", "pipx", "install", str(wheel)], env=env)

    command = tmp_path / "bin" / "backupjobd"
    assert command.is_file()
    assert _run([str(command), "--version"], env=env) == f"backupjobd {VERSION}\n"
    assert "healthcheck" in _run([str(command), "--help"], env=env)
    env["BACKUPJOBD_DATABASE__URL"] = f"sqlite+aiosqlite:///{tmp_path / 'pipx.db'}"
    assert _run([str(command), "migrate"], env=env, cwd=tmp_path) == "database schema is at head\n"
    assert (tmp_path / "pipx.db").stat().st_size > 0
