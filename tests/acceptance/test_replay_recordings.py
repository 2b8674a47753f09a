"""Every recording in `shared/recordings/` replayed to the real daemon: per job, the daemon's
final status and its chain of distinct statuses equal what Azure answered in the recording,
recorded HTTP 500s and 429s included.

One emulator serves all 28 recordings at once (their resource paths do not collide) and one
daemon follows all their jobs, so the whole file runs in well under a minute. Each job is
registered the way the recorded client learnt it: through its operation URL, or by job id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backupjobd.emulator import ExpectedJob, load_recording
from backupjobd.emulator.client import EmulatorProcess
from tests.acceptance.conftest import (
    BIN,
    TERMINAL,
    TOKEN,
    Daemon,
    wait_until,
)

pytestmark = pytest.mark.recordings

#: The whole replay (registration to the last job) must stay well inside the file's budget.
REPLAY_TIMEOUT_S = 45
#: Job poll interval. The longest recorded job takes 197 GETs one after another, so at 0.2 s
#: (plus up to a tick of dispatch delay) it alone would need about a minute; at 0.06 s the
#: whole replay takes about 30 s on 2 CPUs.
INTERVAL_S = 0.06


def _shared_dir() -> Path | None:
    override = os.environ.get("BACKUPJOBD_SHARED_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[3] / "shared"
    return path if path.is_dir() else None


SHARED = _shared_dir()
RECORDINGS = SHARED / "recordings" if SHARED is not None else None
MISSING_REASON = (
    "recordings not found: set BACKUPJOBD_SHARED_DIR to the directory holding recordings/ "
    "(default: ../shared next to the repository)"
)
# CI sets BACKUPJOBD_REQUIRE_SHARED=1: there a missing directory fails instead of skipping.
REQUIRED = os.environ.get("BACKUPJOBD_REQUIRE_SHARED") == "1"


def _files() -> list[Any]:
    if RECORDINGS is None or not RECORDINGS.is_dir() or not any(RECORDINGS.glob("*.json")):
        marks = () if REQUIRED else (pytest.mark.skip(MISSING_REASON),)
        return [pytest.param(None, id="recordings-missing", marks=marks)]
    return [pytest.param(p, id=p.stem) for p in sorted(RECORDINGS.glob("*.json"))]


FILES = _files()

# `jobs history --json` through the real CLI code for many jobs, in one helper process:
# 100+ separate interpreter start-ups would cost more than the whole replay.
_HISTORY_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from backupjobd.cli import main
    config, jobs = sys.argv[1], json.loads(sys.stdin.read())
    out = {}
    for job_id, vault in jobs:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(["--config", config, "jobs", "history", job_id, "--vault", vault, "--json"])
        out[job_id] = json.loads(buf.getvalue()) if code == 0 else {"exit": code}
    print(json.dumps(out))
    """
)


@dataclass
class Replay:
    expected: dict[str, list[ExpectedJob]]
    jobs: dict[tuple[str, str], dict[str, Any]]  # (vault lower, job id) -> `jobs list` entry
    histories: dict[str, dict[str, Any]]
    resources: dict[str, dict[str, Any]]  # normalised job path -> replay progress
    seconds: float


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def _job_path(job: ExpectedJob) -> str:
    """The replay key its reads are served under (a CRR job's: POST backupCrrJob + its id)."""
    return job.resource_path


def _register(daemon: Daemon, base: str, expected: list[ExpectedJob]) -> None:
    """As the recorded clients did: operation URL when an operation named the job.

    The few `register` processes run side by side: the store serialises their writes.
    """
    op_urls = sorted(
        {u for j in expected if j.region is None and (u := j.operation_url(base)) is not None}
    )
    by_vault: dict[str, list[str]] = {}
    for job in expected:
        if job.registered_by == "job-id":
            by_vault.setdefault(job.vault_id, []).append(job.job_id)
    calls = [["register", *[a for u in op_urls for a in ("--operation-url", u)]]]
    # A cross-region restore's operation URL names no vault: its source vault goes as --vault.
    calls += [
        ["register", "--operation-url", u, "--vault", j.vault_id]
        for j in expected
        if j.region is not None and (u := j.operation_url(base)) is not None
    ]
    calls += [
        ["register", "--vault", vault, *[a for i in ids for a in ("--job-id", i)]]
        for vault, ids in by_vault.items()
    ]
    procs = [
        subprocess.Popen(
            [str(BIN), "--config", str(daemon.config_path), *args],
            env=daemon.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in calls
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


def _answers_read(base: str, expected: list[ExpectedJob]) -> dict[str, dict[str, Any]] | None:
    """Each job's GETs reached its final recorded status (or used up a running job's)."""
    resources = {r["path"]: r for r in _get(f"{base}/admin/replay")["resources"]}
    if all(resources[_job_path(j)]["served"] >= j.answers_to_final for j in expected):
        return resources
    return None


def _finished(
    daemon: Daemon, expected: list[ExpectedJob]
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """Every job is tracked, and those the recording ends terminal are finished."""
    jobs = {(j["vault_id"].lower(), j["job_id"]): j for j in daemon.jobs()}
    for job in expected:
        tracked = jobs.get((job.vault_id.lower(), job.job_id))
        if tracked is None or (job.final_status in TERMINAL and not tracked["finished"]):
            return None
    return jobs


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    if RECORDINGS is None:
        pytest.fail(f"{MISSING_REASON} (BACKUPJOBD_REQUIRE_SHARED=1)", pytrace=False)
    files = sorted(RECORDINGS.glob("*.json"))
    expected = {p.stem: load_recording(p).expected_jobs() for p in files}
    every_job = [j for jobs in expected.values() for j in jobs]
    tmp = tmp_path_factory.mktemp("replay")
    emulator = EmulatorProcess(
        tmp / "emulator.log", token=TOKEN, replay_files=files, executable=BIN
    ).start()
    base = emulator.base
    config_path = tmp / "backupjobd.toml"
    config_path.write_text(
        f"""
[azure]
management_endpoint = "{base}"
credential = "static-token"

[database]
url = "sqlite+aiosqlite:///{tmp}/backupjobd.db"

[polling]
interval_seconds = {INTERVAL_S}
min_interval_seconds = {INTERVAL_S / 2}
operation_interval_seconds = {INTERVAL_S / 2}
tick_seconds = {INTERVAL_S / 2}
max_backoff_seconds = 1
not_found_grace_seconds = 30

[throttle]
# The recordings put ~3,700 reads on one subscription; at ARM's 25 reads/s that alone
# would take 2.5 minutes. The budget has its own tests; here the recorded answers count.
enabled = false
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}
    env["BACKUPJOBD_STATIC_TOKEN"] = TOKEN
    daemon = Daemon(config_path, env, tmp / "daemon.log")
    try:
        started = time.monotonic()
        daemon.start()
        _register(daemon, base, every_job)
        # The emulator's replay progress is cheap to ask; `jobs list` is a process start.
        wait_until(
            "every replayed job to reach its final recorded answer",
            lambda: _answers_read(base, every_job),
            REPLAY_TIMEOUT_S,
            every=0.25,
        )
        jobs = wait_until("the daemon to finish them", lambda: _finished(daemon, every_job), 10)
        resources = _answers_read(base, every_job)
        assert resources is not None
        seconds = time.monotonic() - started
        assert daemon.stop() == 0
        helper = subprocess.run(
            [sys.executable, "-c", _HISTORY_SCRIPT, str(config_path)],
            input=json.dumps([[j.job_id, j.vault_id] for j in every_job]),
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        histories = json.loads(helper.stdout)
        yield Replay(expected, jobs, histories, resources, seconds)
    finally:
        daemon.close()
        emulator.stop()


@pytest.mark.parametrize("path", FILES)
def test_daemon_follows_the_recording(
    replay: Replay, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = replay.expected[path.stem]
    matched = 0
    problems: list[str] = []
    answers = polls = 0
    for job in expected:
        tracked = replay.jobs[(job.vault_id.lower(), job.job_id)]
        chain = tuple(t["to_status"] for t in replay.histories[job.job_id]["transitions"])
        answers += job.answers
        polls += replay.resources[_job_path(job)]["served"]
        if tracked["status"] == job.final_status and chain == job.statuses:
            matched += 1
        else:
            problems.append(
                f"{job.job_id}: recorded {' -> '.join(job.statuses)}, "
                f"daemon {' -> '.join(chain)} (status {tracked['status']})"
            )
    with capsys.disabled():
        print(
            f"\n{path.stem}: {len(expected)} jobs, {matched} matched "
            f"({answers} recorded job answers, {polls} job GETs served, "
            f"replay {replay.seconds:.1f} s)",
            end="",
        )
    assert not problems, problems
