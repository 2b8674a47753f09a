"""Per-job polling baselines, written the way a user would write them, against the emulator.

    python bench/baselines.py [--jobs 2000] [--interval 5] [--min-duration 20] [--max-duration 60]

One asyncio task per job calls GET backupJobs/{job} every `--interval` seconds until the job is
terminal (Completed, CompletedWithWarnings, Failed, Cancelled):

* `run_sdk_baseline`: azure-mgmt-recoveryservicesbackup's aio client,
  `client.job_details.get(vault_name, resource_group, job_name)`;
* `run_aiohttp_baseline`: the same loop with a bare aiohttp session.

Both return a `Result`: polls, CPU seconds this process spent (process_time delta, every
thread), wall time and detection lag samples (when the poller saw the terminal status minus
the job's `endTime` in that final body).

This module also holds the harness the other bench scripts share (the emulator and daemon
subprocesses, job specs, reading the daemon's database). The SDK is not a dependency of
backupjobd: `pip install azure-mgmt-recoveryservicesbackup psutil` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from backupjobd.emulator import EmulatorProcess

BIN = Path(sys.executable).parent / "backupjobd"
TOKEN = "bench-token"
API_VERSION = "2025-08-01"
TERMINAL = frozenset({"Completed", "CompletedWithWarnings", "Failed", "Cancelled"})
# Final statuses of the emulated jobs: mostly successes, as in a real estate.
FINAL_MIX = (
    ("Completed", 0.70),
    ("CompletedWithWarnings", 0.10),
    ("Failed", 0.15),
    ("Cancelled", 0.05),
)
SUBSCRIPTION = "6b6b6b6b-0000-0000-0000-000000000001"


def vault_ids(count: int, subscription: str = SUBSCRIPTION, rg: str = "rg-bench") -> list[str]:
    return [
        f"/subscriptions/{subscription}/resourceGroups/{rg}"
        f"/providers/Microsoft.RecoveryServices/vaults/vault-{i:02d}"
        for i in range(count)
    ]


# --------------------------------------------------------------------------- results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Result:
    name: str
    jobs: int
    polls: int = 0
    errors: int = 0
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    lags: list[float] = field(default_factory=list)
    finished: int = 0
    extra_cpu_seconds: float = 0.0  # e.g. the daemon's start-up or the register CLI
    notes: list[str] = field(default_factory=list)

    @property
    def cpu_per_job_ms(self) -> float:
        return 1000 * self.cpu_seconds / max(1, self.jobs)

    @property
    def cpu_per_poll_ms(self) -> float:
        return 1000 * self.cpu_seconds / max(1, self.polls)

    @property
    def polls_per_job(self) -> float:
        return self.polls / max(1, self.jobs)

    def lag(self, q: float) -> float:
        return percentile(self.lags, q)

    def lines(self) -> list[str]:
        return [
            f"{self.name}: {self.jobs} jobs ({self.finished} seen terminal), {self.polls} polls"
            f" ({self.polls_per_job:.2f}/job), {self.errors} errors",
            f"  CPU {self.cpu_seconds:.2f} s = {self.cpu_per_job_ms:.2f} ms/job,"
            f" {self.cpu_per_poll_ms:.3f} ms/poll; wall {self.wall_seconds:.1f} s",
            f"  detection lag p50 {self.lag(50):.2f} s, p99 {self.lag(99):.2f} s,"
            f" max {self.lag(100):.2f} s",
        ]


# --------------------------------------------------------------------------- baselines


def _split_job_id(arm_id: str) -> tuple[str, str, str, str]:
    """(subscription, resource group, vault, job) of a job ARM id."""
    parts = arm_id.strip("/").split("/")
    # subscriptions/S/resourceGroups/RG/providers/Microsoft.RecoveryServices/vaults/V/backupJobs/J
    return parts[1], parts[3], parts[7], parts[9]


def _lag(end_time: datetime | str | None, seen_at: float) -> float | None:
    if end_time is None:
        return None
    if isinstance(end_time, str):
        end_time = datetime.fromisoformat(end_time)
    return seen_at - end_time.timestamp()


def run_sdk_baseline(base: str, token: str, jobs: Sequence[str], interval: float) -> Result:
    """One task per job polling `job_details.get` through the SDK's aio client."""
    # Imports first, so that their CPU is not charged to the polls.
    from azure.core.credentials import AccessToken
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.recoveryservicesbackup.aio import RecoveryServicesBackupClient

    class StaticCredential:
        """An AsyncTokenCredential with a fixed token (the emulator checks only equality)."""

        async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken(token, int(time.time()) + 3600)

        async def close(self) -> None:
            return None

        async def __aenter__(self) -> StaticCredential:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

    result = Result("sdk (azure-mgmt-recoveryservicesbackup aio)", len(jobs))

    async def poll_one(client: Any, rg: str, vault: str, job: str) -> None:
        while True:
            try:
                # azure-core refuses bearer tokens over plain http unless told per call.
                resource = await client.job_details.get(vault, rg, job, enforce_https=False)
            except HttpResponseError:
                result.polls += 1
                result.errors += 1
                await asyncio.sleep(interval)
                continue
            result.polls += 1
            props = resource.properties
            if props.status in TERMINAL:
                lag = _lag(props.end_time, time.time())
                if lag is not None:
                    result.lags.append(lag)
                result.finished += 1
                return
            await asyncio.sleep(interval)

    async def main() -> None:
        by_sub: dict[str, list[tuple[str, str, str]]] = {}
        for arm_id in jobs:
            sub, rg, vault, job = _split_job_id(arm_id)
            by_sub.setdefault(sub, []).append((rg, vault, job))
        credential = StaticCredential()
        clients = [RecoveryServicesBackupClient(credential, sub, base_url=base) for sub in by_sub]
        try:
            await asyncio.gather(
                *(
                    poll_one(client, rg, vault, job)
                    for client, items in zip(clients, by_sub.values(), strict=True)
                    for rg, vault, job in items
                )
            )
        finally:
            for client in clients:
                await client.close()

    cpu0, wall0 = time.process_time(), time.monotonic()
    asyncio.run(main())
    result.cpu_seconds = time.process_time() - cpu0
    result.wall_seconds = time.monotonic() - wall0
    return result


def run_aiohttp_baseline(base: str, token: str, jobs: Sequence[str], interval: float) -> Result:
    """One task per job polling GET backupJobs/{job} with a bare aiohttp session."""
    import aiohttp

    result = Result("bare aiohttp", len(jobs))

    async def poll_one(session: aiohttp.ClientSession, arm_id: str) -> None:
        url = f"{base}{arm_id}?api-version={API_VERSION}"
        while True:
            try:
                async with session.get(url) as resp:
                    result.polls += 1
                    if resp.status != 200:
                        result.errors += 1
                        await asyncio.sleep(interval)
                        continue
                    body = await resp.json()
            except (aiohttp.ClientError, ValueError):
                result.errors += 1
                await asyncio.sleep(interval)
                continue
            props = body["properties"]
            if props["status"] in TERMINAL:
                lag = _lag(props.get("endTime"), time.time())
                if lag is not None:
                    result.lags.append(lag)
                result.finished += 1
                return
            await asyncio.sleep(interval)

    async def main() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            await asyncio.gather(*(poll_one(session, arm_id) for arm_id in jobs))

    cpu0, wall0 = time.process_time(), time.monotonic()
    asyncio.run(main())
    result.cpu_seconds = time.process_time() - cpu0
    result.wall_seconds = time.monotonic() - wall0
    return result


# --------------------------------------------------------------------------- harness


def wait_for(what: str, check: Any, timeout: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(every)


def proc_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) in bytes."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in {"VmRSS", "VmHWM"}:
            out[key] = int(value.split()[0]) * 1024
    return out


class Emulator(EmulatorProcess):
    """`backupjobd emulator` for a bench run, its log in the work directory."""

    def __init__(self, workdir: Path, token: str = TOKEN) -> None:
        super().__init__(
            workdir / "emulator.log", token=token, executable=BIN, start_timeout=30, timeout=120
        )

    def create_job_ids(self, specs: Sequence[dict[str, Any]]) -> list[str]:
        """Create jobs (admin specs); returns their ARM ids in order."""
        return [job["id"] for job in self.create_jobs(specs)]


def arm_reads(stats: dict[str, Any]) -> int:
    """ARM GETs the emulator answered from its model (429s from the budget not included)."""
    kinds = stats.get("by_kind", {})
    return sum(int(kinds.get(k, 0)) for k in ("job_get", "job_list", "operation_get"))


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Per-kind request counts between two /admin/stats answers, plus 429s ("throttled")."""
    kinds = set(before.get("by_kind", {})) | set(after.get("by_kind", {}))
    out = {
        k: int(after.get("by_kind", {}).get(k, 0)) - int(before.get("by_kind", {}).get(k, 0))
        for k in kinds
    }
    out["throttled_429"] = int(after.get("throttled", 0)) - int(before.get("throttled", 0))
    return out


def job_specs(
    count: int,
    vaults: Sequence[str],
    min_duration: float,
    max_duration: float,
    seed: int,
) -> list[dict[str, Any]]:
    """Admin job specs: uniform durations, mixed final statuses, vaults round-robin."""
    rng = random.Random(seed)
    statuses = [s for s, _ in FINAL_MIX]
    weights = [w for _, w in FINAL_MIX]
    return [
        {
            "vault_id": vaults[i % len(vaults)],
            "duration_seconds": rng.uniform(min_duration, max_duration),
            "final_status": rng.choices(statuses, weights)[0],
        }
        for i in range(count)
    ]


def daemon_env(token: str = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}
    env["BACKUPJOBD_STATIC_TOKEN"] = token
    return env


def write_config(
    path: Path,
    base: str,
    db_url: str,
    polling: dict[str, Any],
    throttle: dict[str, Any] | None = None,
    log_level: str = "INFO",
) -> Path:
    def table(values: dict[str, Any]) -> str:
        return "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())

    text = (
        f'[azure]\nmanagement_endpoint = "{base}"\ncredential = "static-token"\n'
        f'[database]\nurl = "{db_url}"\n'
        f"[polling]\n{table(polling)}\n"
        f'[log]\nlevel = "{log_level}"\n'
    )
    if throttle:
        text += f"[throttle]\n{table(throttle)}\n"
    path.write_text(text)
    return path


class Daemon:
    """`backupjobd serve` as a subprocess."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        executable: Path = BIN,
    ) -> None:
        self.config = config
        self.log = log
        self.env = env or daemon_env()
        self.executable = executable
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [str(executable), "--config", str(config), "serve"],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_serving(self, timeout: float = 120) -> float:
        """Block until the log says it serves; returns seconds since the process started."""
        offset = self.log.stat().st_size if self.log.exists() else 0

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench: daemon exited ({self.proc.returncode}); see {self.log}")
            with self.log.open("rb") as f:
                f.seek(max(0, offset - 4096))
                return b"backupjobd serving" in f.read()

        wait_for("the daemon to serve", serving, timeout, every=0.05)
        return time.monotonic() - self.started_at

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def memory(self) -> dict[str, int]:
        return proc_memory(self.proc.pid)

    def stop(self, timeout: float = 60) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, self.env, *args, stdin=stdin, executable=self.executable)


def run_cli(
    config: Path,
    env: dict[str, str],
    *args: str,
    stdin: str | None = None,
    executable: Path = BIN,
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [str(executable), "--config", str(config), *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if out.returncode != 0:
        raise SystemExit(f"bench: backupjobd {' '.join(args)} failed: {out.stderr[-2000:]}")
    return out


def register_cpu(
    config: Path, env: dict[str, str], arm_ids: Sequence[str], executable: Path = BIN
) -> float:
    """`backupjobd register -` with every id; returns the CPU seconds the CLI process used."""
    before = os.times()
    run_cli(config, env, "register", "-", stdin=json.dumps(list(arm_ids)), executable=executable)
    after = os.times()
    return (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )


@dataclass(frozen=True)
class DbJob:
    job_id: str
    tracking: str
    status: str | None
    end_time: datetime | None
    finished_at: datetime | None
    terminal_seen_at: datetime | None
    poll_count: int

    @property
    def lag(self) -> float | None:
        """Seconds from Azure's endTime to the first recorded terminal transition."""
        seen = self.terminal_seen_at or self.finished_at
        if seen is None or self.end_time is None:
            return None
        return (seen - self.end_time).total_seconds()


async def read_db_jobs(db_url: str) -> list[DbJob]:
    """Every job with its end time and when its terminal status was first recorded."""
    from sqlalchemy import and_, func, select

    from backupjobd.adapters.sql import schema
    from backupjobd.adapters.sql.store import SqlStore

    t, tr = schema.jobs, schema.transitions
    seen = func.min(tr.c.observed_at).label("seen")
    query = (
        select(t.c.job_id, t.c.tracking, t.c.status, t.c.end_time, t.c.finished_at, t.c.poll_count)
        .add_columns(seen)
        .select_from(
            t.outerjoin(tr, and_(tr.c.job_pk == t.c.pk, tr.c.to_status.in_(sorted(TERMINAL))))
        )
        .group_by(t.c.pk)
    )
    store = SqlStore.from_url(db_url)
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    finally:
        await store.close()
    return [
        DbJob(r.job_id, r.tracking, r.status, r.end_time, r.finished_at, r.seen, r.poll_count)
        for r in rows
    ]


async def db_counts(db_url: str) -> dict[str, int]:
    from backupjobd.adapters.sql.store import SqlStore

    store = SqlStore.from_url(db_url)
    try:
        return await store.counts()
    finally:
        await store.close()


def wait_daemon_done(
    db_url: str, expected: int, deadline: float, every: float = 2.0, label: str = ""
) -> int:
    """Wait until `expected` jobs are no longer active (or the monotonic deadline); returns
    how many are not active."""
    done = 0
    last_print = 0.0
    while time.monotonic() < deadline:
        counts = asyncio.run(db_counts(db_url))
        active = counts.get("jobs_active", 0)
        total = sum(v for k, v in counts.items() if k.startswith("jobs_"))
        done = total - active
        if total >= expected and active == 0:
            return done
        if label and time.monotonic() - last_print > 30:
            print(f"  [{label}] {done}/{expected} finished", flush=True)
            last_print = time.monotonic()
        time.sleep(every)
    return done


def run_baselines(
    which: Iterable[str],
    jobs: int,
    interval: float,
    min_duration: float,
    max_duration: float,
    vaults: int = 10,
    seed: int = 7,
) -> list[Result]:
    """Start an emulator and run each named baseline ("sdk", "aiohttp") on fresh jobs."""
    runners = {"sdk": run_sdk_baseline, "aiohttp": run_aiohttp_baseline}
    results = []
    with tempfile.TemporaryDirectory(prefix="backupjobd-bench-") as tmp, Emulator(Path(tmp)) as emu:
        specs = job_specs(jobs, vault_ids(vaults), min_duration, max_duration, seed)
        for name in which:
            ids = emu.create_job_ids(specs)
            before = emu.stats()
            result = runners[name](emu.base, emu.token, ids, interval)
            after = emu.stats()
            result.notes.append(f"emulator saw {stats_delta(before, after)}")
            results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--min-duration", type=float, default=20.0)
    parser.add_argument("--max-duration", type=float, default=60.0)
    parser.add_argument("--only", choices=["sdk", "aiohttp"], action="append")
    args = parser.parse_args()
    which = args.only or ["sdk", "aiohttp"]
    print(
        f"baselines: {args.jobs} jobs, {args.interval:g} s interval, durations "
        f"{args.min_duration:g}-{args.max_duration:g} s",
        flush=True,
    )
    for result in run_baselines(
        which, args.jobs, args.interval, args.min_duration, args.max_duration
    ):
        print("\n".join(result.lines() + [f"  {n}" for n in result.notes]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
