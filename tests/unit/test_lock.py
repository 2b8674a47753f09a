"""requirements.lock pins every dependency pyproject.toml names (runtime, every extra, the
build backend), and this venv runs exactly those versions: `make venv` and the Dockerfile
install with `--constraint requirements.lock`, so the image ships what the suite ran."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s;]+)$", re.I)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = NAME.match(spec)
    assert match, f"cannot read a name from {spec!r}"
    return normalise(match[1])


def lock_pins(text: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"not a plain `name==version` pin: {line!r}"
        assert normalise(match[1]) not in pins, f"{match[1]} pinned twice"
        pins[normalise(match[1])] = match[2]
    return pins


@pytest.fixture(scope="module")
def pins() -> dict[str, str]:
    return lock_pins(LOCK.read_text())


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = list(project["project"]["dependencies"])
    for extra in project["project"]["optional-dependencies"].values():
        specs += extra
    specs += project["build-system"]["requires"]
    return {requirement_name(spec) for spec in specs}


def test_every_declared_dependency_is_pinned(pins: dict[str, str]) -> None:
    missing = sorted(declared() - pins.keys())
    assert not missing, f"not in requirements.lock (run `make lock`): {', '.join(missing)}"


def test_the_venv_runs_the_pinned_versions(pins: dict[str, str]) -> None:
    drift = {}
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = "not installed"
        if installed != version:
            drift[name] = f"{installed} (lock: {version})"
    assert not drift, f"the venv differs from requirements.lock (run `make venv`): {drift}"


def test_the_lock_names_no_index_and_its_refresh_command() -> None:
    text = LOCK.read_text()
    assert "#    make lock\n" in text
    assert not re.search(r"^\s*-", text, re.M), "options (index URLs, find-links) in the lock"


def test_the_lock_parser_refuses_loose_lines() -> None:
    """Guards the tests above: a range, an option or a duplicate is not taken as a pin."""
    for text in ("aiohttp>=3.9\n", "--find-links /opt/wheels\n", "a==1\nA==2\n"):
        with pytest.raises(AssertionError):
            lock_pins(text)
    assert lock_pins("# c\nPyYAML==6.0.2\n    # via x\n") == {"pyyaml": "6.0.2"}


def test_make_installs_with_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(BIN)/backupjobd: pyproject.toml $(LOCK)\n", 1)[1].split("\n\n")[0]
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert installs and all("--constraint $(LOCK)" in line for line in installs), recipe
    assert "LOCK := requirements.lock" in makefile
