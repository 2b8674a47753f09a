"""`make image-check`: build the container image, run it, and see it do its job.

    python scripts/image_check.py [--base IMAGE] [--tag TAG] [--keep]

1. Base image: --base, else python:3.11-slim-bookworm from its registry, else (no registry
   answers) a local Debian bookworm root with Python 3.11 made by mmdebstrap and imported
   into podman once (localhost/backupjobd-base:bookworm-py3.11).
2. Build ./Dockerfile with podman (docker format, so the HEALTHCHECK is kept), the OCI labels
   from pyproject's version and git; the image's pip packages come from PyPI, pinned by
   requirements.lock.
3. Check the image: its labels, no pip or setuptools in the runtime venv, every installed
   package at the lock's version, no secret file under the build's source directories.
4. Run the emulator and the daemon from it (host network; the daemon on a non-default API
   port, 0.0.0.0 with a token, as in production), wait for `podman healthcheck run` to pass,
   create a job in the emulator, register it through the API, wait until the API shows it
   finished, read /metrics, then `podman stop` both and report how long each took to stop and
   its exit code.

Needs root, podman and (without a registry) mmdebstrap: `apt-get install podman buildah
mmdebstrap runc`. On a cgroup v1/v2 hybrid host crun refuses to start containers, so runc is
used when it is installed; the containers get the caller's open-files limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from backupjobd.emulator import EmulatorClient, free_port, listening, request

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_BASE = "docker.io/library/python:3.11-slim-bookworm"
LOCAL_BASE = "localhost/backupjobd-base:bookworm-py3.11"
LOCAL_BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
VAULT = (
    "/subscriptions/00000000-0000-0000-0000-00000000c4ec/resourceGroups/rg-image"
    "/providers/Microsoft.RecoveryServices/vaults/vault-image"
)
ARM_TOKEN = "image-check-arm-token"
API_TOKEN = "image-check-api-token-0123456789abcdef"
READ_TOKEN = "image-check-read-token-0123456789abcdef"
JOB_SECONDS = 4.0
WAIT_SECONDS = 120.0
T = TypeVar("T")


class CheckFailed(Exception):
    """One step did not do what it should; the message says which and why."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="the Python 3.11 base image (default: see above)")
    parser.add_argument("--tag", default="localhost/backupjobd:image-check")
    parser.add_argument("--keep", action="store_true", help="leave the containers behind")
    args = parser.parse_args(argv)
    podman = shutil.which("podman")
    if podman is None:
        print("image-check: podman not found (apt-get install podman buildah mmdebstrap runc)")
        return 2
    started = time.monotonic()
    check = ImageCheck(Podman(podman), args.tag, keep=args.keep)
    try:
        check.run(args.base)
    except CheckFailed as exc:
        print(f"image-check: FAILED: {exc}")
        return 1
    finally:
        check.clean_up()
    print(f"image-check: OK in {time.monotonic() - started:.0f} s")
    return 0


class Podman:
    """podman with what this host needs to start containers."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        hybrid = Path("/sys/fs/cgroup/unified").is_dir()
        self.global_options = ["--runtime", "runc"] if hybrid and shutil.which("runc") else []
        _, files = resource.getrlimit(resource.RLIMIT_NOFILE)
        # podman's default limits are above what an unprivileged sandbox may set.
        self.limits = ["--ulimit", f"nofile={files}:{files}", "--ulimit", "nproc=4096:4096"]

    def __call__(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.executable, *self.global_options, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CheckFailed(
                f"podman {' '.join(args[:2])} exited {result.returncode}: {_tail(result.stderr)}"
            )
        return result


class ImageCheck:
    def __init__(self, podman: Podman, tag: str, *, keep: bool) -> None:
        self.podman = podman
        self.tag = tag
        self.keep = keep
        self.containers: list[str] = []
        self.suffix = str(os.getpid())

    def run(self, base: str | None) -> None:
        base = base or self.base_image()
        version = _pyproject_version()
        self.check_build_context(base)
        self.build(base, version)
        self.inspect(version)
        self.run_containers()

    # ---- base and build ------------------------------------------------------------------

    def base_image(self) -> str:
        pulled = self.podman("pull", "--quiet", REGISTRY_BASE, timeout=120, check=False)
        if pulled.returncode == 0:
            step("base", f"{REGISTRY_BASE} (from its registry)")
            return REGISTRY_BASE
        reason = (_tail(pulled.stderr).splitlines() or ["no answer"])[-1]
        step("base", f"no registry: {reason.rpartition(': ')[2] or reason}")
        if self.podman("image", "exists", LOCAL_BASE, check=False).returncode == 0:
            step("base", f"{LOCAL_BASE} (made earlier by mmdebstrap)")
            return LOCAL_BASE
        self.make_local_base()
        return LOCAL_BASE

    def make_local_base(self) -> None:
        mmdebstrap = shutil.which("mmdebstrap")
        if mmdebstrap is None:
            raise CheckFailed("no registry and no mmdebstrap (apt-get install mmdebstrap)")
        with tempfile.TemporaryDirectory(prefix="image-check-") as tmp:
            tarball = Path(tmp) / "base.tar"
            began = time.monotonic()
            # The host's CA bundle goes in: pip in the build reaches PyPI the way this
            # host does, which may be through a TLS proxy with its own root certificate.
            result = subprocess.run(
                [
                    mmdebstrap,
                    "--variant=minbase",
                    f"--include={LOCAL_BASE_PACKAGES}",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--customize-hook=cp /etc/ssl/certs/ca-certificates.crt"
                    ' "$1/etc/ssl/certs/ca-certificates.crt"',
                    "bookworm",
                    str(tarball),
                ],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            if result.returncode != 0:
                raise CheckFailed(f"mmdebstrap exited {result.returncode}: {_tail(result.stderr)}")
            self.podman(
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                'CMD ["python3"]',
                str(tarball),
                LOCAL_BASE,
                timeout=300,
            )
        step("base", f"{LOCAL_BASE} made by mmdebstrap in {time.monotonic() - began:.0f} s")

    def check_build_context(self, base: str) -> None:
        """The builder stage of a copy of the build inputs with secrets planted deep in it:
        .dockerignore must keep every one of them out of the build."""
        planted = ["daemon/backupjobd/secret.env", "migrations/versions/.env", "daemon/x.key"]
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="image-check-context-") as tmp:
            context = Path(tmp)
            for name in BUILD_INPUTS:
                source = ROOT / name
                if source.is_dir():
                    shutil.copytree(source, context / name)
                else:
                    shutil.copy2(source, context / name)
            for name in planted:
                (context / name).write_text("PLANTED_SECRET=1\n")
            self.podman(
                "build", "--pull=never" if base.startswith("localhost/") else "--pull=missing",
                "--format=docker", "--network=host", *self.podman.limits,
                "--build-arg", f"PYTHON_IMAGE={base}", "--target", "builder",
                "--tag", f"{self.tag}-builder", str(context), timeout=900,
            )  # fmt: skip
        found = self.podman(
            "run", "--rm", *self.podman.limits, "--network=host", "--entrypoint", "find",
            f"{self.tag}-builder", "/src", "(", "-name", "*.env", "-o", "-name", "*.key",
            "-o", "-name", "__pycache__", ")", timeout=60,
        ).stdout.split()  # fmt: skip
        if found:
            raise CheckFailed(f"the build stage received {', '.join(found)}")
        step(
            "context",
            f"builder stage in {time.monotonic() - began:.0f} s: {len(planted)} planted secrets"
            f" (e.g. {planted[0]}) kept out of it",
        )

    def build(self, base: str, version: str) -> None:
        began = time.monotonic()
        revision = _git("rev-parse", "HEAD") or "unknown"
        source = _git("remote", "get-url", "origin") or "unknown"
        self.podman(
            "build",
            "--pull=never" if base.startswith("localhost/") else "--pull=missing",
            "--format=docker",
            "--network=host",
            *self.podman.limits,
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            "--build-arg",
            f"VERSION={version}",
            "--build-arg",
            f"REVISION={revision}",
            "--build-arg",
            f"SOURCE={source}",
            "--tag",
            self.tag,
            str(ROOT),
            timeout=900,
        )
        size = self.podman("image", "inspect", self.tag, "--format", "{{.Size}}").stdout.strip()
        step(
            "build",
            f"{self.tag} in {time.monotonic() - began:.0f} s, {int(size) / 1e6:.0f} MB",
        )

    # ---- the image's contents ------------------------------------------------------------

    def inspect(self, version: str) -> None:
        [image] = json.loads(self.podman("image", "inspect", self.tag).stdout)
        config = image.get("Config", {})
        labels = config.get("Labels") or {}
        wanted = {"version": version}
        for name, value in wanted.items():
            if labels.get(f"org.opencontainers.image.{name}") != value:
                raise CheckFailed(f"label {name} is {labels.get(name)!r}, expected {value!r}")
        shown = {
            k.rsplit(".", 1)[1]: v for k, v in labels.items() if k.startswith("org.opencontainers")
        }
        step(
            "labels", ", ".join(f"{k}={v}" for k, v in sorted(shown.items()) if k != "description")
        )
        health = (image.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test")
        if health != ["CMD", "backupjobd", "healthcheck"]:
            raise CheckFailed(f"HEALTHCHECK is {health!r}")
        step("healthcheck", " ".join(health[1:]))
        report = json.loads(self.in_image("python", "-c", VENV_PROBE))
        if report["installers"]:
            raise CheckFailed(f"the runtime venv has {', '.join(report['installers'])}")
        pins = _lock_pins()
        drift = {
            name: f"{found} (lock: {pins.get(name)})"
            for name, found in report["packages"].items()
            if name != "backupjobd" and pins.get(name) != found
        }
        if drift:
            raise CheckFailed(f"image packages differ from requirements.lock: {drift}")
        step(
            "venv",
            f"{len(report['packages']) - 1} packages, each at its requirements.lock version;"
            " no pip, setuptools or wheel",
        )
        secrets = self.in_image("find", "/opt", "/var/lib/backupjobd", "-name", "*.env").strip()
        if secrets:
            raise CheckFailed(f"env files in the image: {secrets}")
        answered = self.in_image("backupjobd", "--version").strip()
        if answered != f"backupjobd {version}":
            raise CheckFailed(f"backupjobd --version says {answered!r}")
        step("version", answered)

    def in_image(self, *command: str) -> str:
        result = self.podman(
            "run",
            "--rm",
            *self.podman.limits,
            "--network=host",
            "--entrypoint",
            command[0],
            self.tag,
            *command[1:],
            timeout=60,
        )
        return result.stdout

    # ---- the image at work ---------------------------------------------------------------

    def run_containers(self) -> None:
        emulator_port, api_port = free_port(), free_port()
        emulator = self.start(
            "emulator",
            [],
            ["emulator", "--port", str(emulator_port), "--token", ARM_TOKEN],
        )
        wait_for("the emulator to listen", lambda: listening(emulator_port), 30)
        daemon = self.start(
            "daemon",
            [
                f"BACKUPJOBD_API__PORT={api_port}",
                f"BACKUPJOBD_API_TOKEN={API_TOKEN}",
                f"BACKUPJOBD_API_READ_TOKEN={READ_TOKEN}",
                f"BACKUPJOBD_AZURE__MANAGEMENT_ENDPOINT=http://127.0.0.1:{emulator_port}",
                "BACKUPJOBD_AZURE__CREDENTIAL=static-token",
                f"BACKUPJOBD_STATIC_TOKEN={ARM_TOKEN}",
                "BACKUPJOBD_POLLING__INTERVAL_SECONDS=1",
                "BACKUPJOBD_POLLING__MIN_INTERVAL_SECONDS=0.5",
                "BACKUPJOBD_POLLING__TICK_SECONDS=0.25",
            ],
            [],
        )
        began = time.monotonic()
        wait_for(
            f"podman healthcheck run to pass (API on port {api_port})",
            lambda: self.podman("healthcheck", "run", daemon, check=False).returncode == 0,
            60,
            every=1.0,
        )
        step(
            "healthy",
            f"podman healthcheck run passed {time.monotonic() - began:.1f} s after start,"
            f" API on 0.0.0.0:{api_port} (not 8080)",
        )
        said = self.podman("exec", daemon, "backupjobd", "healthcheck").stdout.strip()
        step("healthy", f"backupjobd healthcheck in the container: {said}")
        self.register_and_finish(emulator_port, api_port)
        self.stop(daemon, grace=20)
        self.stop(emulator, grace=10)

    def start(self, role: str, env: list[str], command: list[str]) -> str:
        name = f"backupjobd-image-check-{role}-{self.suffix}"
        options = [f"--env={item}" for item in env]
        self.podman(
            "run",
            "--detach",
            "--name",
            name,
            "--network=host",
            *self.podman.limits,
            *options,
            self.tag,
            *command,
        )
        self.containers.append(name)
        init = self.podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
        if "backupjobd" not in Path(init[1] if len(init) > 1 else init[0]).name:
            raise CheckFailed(f"PID 1 of {name} is {' '.join(init)}, not backupjobd")
        return name

    def register_and_finish(self, emulator_port: int, api_port: int) -> None:
        emulator = EmulatorClient(f"http://127.0.0.1:{emulator_port}", token=ARM_TOKEN)
        [job] = emulator.create_jobs(
            [{"vault_id": VAULT, "duration_seconds": JOB_SECONDS, "final_status": "Completed"}]
        )
        api = f"http://127.0.0.1:{api_port}"
        status, _, answer = request(
            "POST", f"{api}/v1/jobs", {"job_id": job["job_id"], "vault_id": VAULT}, API_TOKEN
        )
        if status != 201:
            raise CheckFailed(f"POST /v1/jobs answered {status}: {answer}")
        step("register", f"POST /v1/jobs -> {status}, job {job['job_id']} ({JOB_SECONDS:g} s)")
        began = time.monotonic()

        def finished() -> dict[str, Any] | None:
            _, _, body = request("GET", f"{api}/v1/jobs/{job['job_id']}", None, API_TOKEN)
            return body if isinstance(body, dict) and body.get("finished") else None

        done = wait_for("the job to finish", finished, WAIT_SECONDS, every=0.5)
        step(
            "finished",
            f"status {done['status']} after {time.monotonic() - began:.1f} s,"
            f" {done['poll_count']} polls",
        )
        if done["status"] != "Completed":
            raise CheckFailed(f"the job ended {done['status']}, the emulator said Completed")
        try:
            request("GET", f"{api}/metrics", None, None)
        except urllib.error.HTTPError as exc:
            unauthenticated = exc.code
        else:
            raise CheckFailed("/metrics answered without a token on 0.0.0.0")
        status, _, _ = _get_text(f"{api}/metrics", READ_TOKEN)
        if status != 200:
            raise CheckFailed(f"/metrics answered {status} to the read-only token")
        try:
            request("POST", f"{api}/v1/jobs/{job['job_id']}/cancel", {}, READ_TOKEN)
        except urllib.error.HTTPError as exc:
            refused = exc.code
        else:
            raise CheckFailed("the read-only token could cancel a job")
        step(
            "tokens",
            f"/metrics {unauthenticated} without a token, {status} with the read-only one;"
            f" cancel with the read-only token {refused}",
        )
        page_status, headers, page = _get_text(f"{api}/", READ_TOKEN)
        if page_status != 200 or job["job_id"] not in page:
            raise CheckFailed(f"GET / answered {page_status} without the job on it")
        style = f"{api}/ui/static/page.css"
        css_status = urllib.request.urlopen(style, timeout=30).status
        step(
            "page",
            f"GET / {page_status} ({len(page):,} bytes, the job on it, CSP"
            f" {headers.get('Content-Security-Policy', 'missing')!r}); page.css {css_status}",
        )

    def stop(self, name: str, grace: int) -> None:
        began = time.monotonic()
        self.podman("stop", "--time", str(grace), name, timeout=grace + 30)
        took = time.monotonic() - began
        state = self.podman("inspect", name, "--format", "{{.State.ExitCode}}").stdout.strip()
        role = name.split("-")[-2]
        step("stop", f"{role} (PID 1): SIGTERM, stopped in {took:.1f} s, exit code {state}")
        if state != "0" or took >= grace:
            raise CheckFailed(f"{role} did not stop cleanly on SIGTERM: {_logs(self, name)}")

    def clean_up(self) -> None:
        for name in self.containers:
            if self.keep:
                print(f"image-check: kept container {name}")
                continue
            self.podman("rm", "--force", "--volumes", name, check=False)
        self.podman("rmi", f"{self.tag}-builder", check=False)


# What the Dockerfile COPYs (tests/integration/test_packaging.py keeps the two in step).
BUILD_INPUTS = (
    "Dockerfile", ".dockerignore", "requirements.lock", "pyproject.toml", "README.md",
    "daemon", "migrations",
)  # fmt: skip

VENV_PROBE = """
import importlib.metadata, importlib.util, json, re
packages = {
    re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
    for d in importlib.metadata.distributions()
}
installers = [n for n in ("pip", "setuptools", "wheel") if importlib.util.find_spec(n)]
print(json.dumps({"packages": packages, "installers": installers}))
"""


def step(what: str, detail: str) -> None:
    print(f"image-check: {what:12} {detail}", flush=True)


def wait_for(
    what: str, check: Callable[[], T | bool | None], timeout: float, every: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise CheckFailed(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def _get_text(url: str, token: str) -> tuple[int, dict[str, str], str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status), dict(resp.headers), resp.read().decode()


def _logs(check: ImageCheck, name: str) -> str:
    return _tail(check.podman("logs", name, check=False).stderr)


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-").replace(".", "-")] = version
    return pins


def _pyproject_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def _git(*args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
