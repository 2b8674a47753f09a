"""Soak: the real daemon against the emulator with faulty answers, a tight ARM read budget
and `kill -9` restarts; then every job's truth is checked against the emulator's.

    python bench/soak.py [--jobs 1000] [--fault-rate 0.1] [--restarts 5] [--budget 40/20]

Prints: jobs, faults injected, 429s received, restarts, wrong statuses (must be 0),
duplicated or missing transitions (must be 0), and the read-budget use. The acceptance
suite runs a bounded version of the same soak (tests/acceptance/test_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core.model import JobRecord, TransitionRecord
from backupjobd.emulator import EmulatorClient, EmulatorProcess

BIN = Path(sys.executable).parent / "backupjobd"
TOKEN = "soak-token"
TERMINAL = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
VAULTS = [
    f"/subscriptions/5a5a5a5a-0000-0000-0000-00000000000{s}/resourceGroups/rg-soak"
    f"/providers/Microsoft.RecoveryServices/vaults/vault-{v}"
    for s, v in ((1, "a"), (1, "b"), (2, "c"))
]


@dataclass
class SoakParams:
    jobs: int = 200
    operations: int = 20
    fault_rate: float = 0.10
    restarts: int = 3
    emulator_burst: int = 40
    emulator_refill: float = 20.0
    daemon_burst: int = 30
    daemon_refill: float = 15.0
    min_duration: float = 3.0
    max_duration: float = 14.0
    deadline_seconds: float = 100.0
    seed: int = 20261126


@dataclass
class SoakReport:
    jobs: int = 0
    finished: int = 0
    restarts: int = 0
    faults_injected: int = 0
    faults_by_kind: dict[str, int] = field(default_factory=dict)
    throttled_429s: int = 0
    arm_reads: int = 0
    wrong_statuses: list[str] = field(default_factory=list)
    broken_histories: list[str] = field(default_factory=list)
    seconds: float = 0.0
    daemon_cpu_seconds: float = 0.0
    reads_by_subscription: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        return [
            f"jobs                      {self.jobs} ({self.finished} finished)",
            f"restarts (kill -9)        {self.restarts}",
            f"faults injected           {self.faults_injected} {self.faults_by_kind}",
            f"429s from the read budget {self.throttled_429s}",
            f"ARM reads                 {self.arm_reads} ({self.arm_reads / max(1, self.jobs):.1f}"
            f" per job, {self.arm_reads / max(self.seconds, 1e-9):.1f}/s)",
            f"reads by subscription     {self.reads_by_subscription}",
            f"wrong statuses            {len(self.wrong_statuses)} (must be 0)",
            f"duplicated or missing     {len(self.broken_histories)} (must be 0)",
            f"wall time                 {self.seconds:.1f} s",
            f"daemon CPU                {self.daemon_cpu_seconds:.2f} s",
        ]


def run_soak(params: SoakParams, workdir: Path) -> SoakReport:
    rng = random.Random(params.seed)
    report = SoakReport()
    emulator = EmulatorProcess(workdir / "emulator.log", token=TOKEN, executable=BIN)
    daemon: subprocess.Popen[bytes] | None = None
    config = workdir / "soak.toml"
    config.write_text(
        f"""
[azure]
management_endpoint = "{emulator.base}"
credential = "static-token"
[database]
url = "sqlite+aiosqlite:///{workdir}/soak.db"
[polling]
interval_seconds = 1.5
min_interval_seconds = 0.5
operation_interval_seconds = 0.5
tick_seconds = 0.25
max_backoff_seconds = 3
not_found_grace_seconds = 60
concurrency = 16
[throttle]
reads_burst = {params.daemon_burst}
reads_per_second = {params.daemon_refill}
reserve_reads = 2
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}
    env["BACKUPJOBD_STATIC_TOKEN"] = TOKEN
    started = time.monotonic()
    try:
        emulator.start()
        emulator.configure(
            read_burst=params.emulator_burst, read_refill_per_second=params.emulator_refill
        )
        truth = _create_and_register(emulator, config, env, params, rng)
        report.jobs = len(truth)
        emulator.add_fault(
            kind="random",
            rate=params.fault_rate,
            kinds=["500", "503", "garbled", "truncated", "429", "reset"],
            retry_after=1,
            seed=params.seed,
        )
        log = (workdir / "daemon.log").open("ab")
        daemon = _start(config, env, log)
        kill_at = sorted(rng.uniform(3, params.max_duration + 4) for _ in range(params.restarts))
        deadline = started + params.deadline_seconds
        while True:
            elapsed = time.monotonic() - started
            if kill_at and elapsed >= kill_at[0]:
                kill_at.pop(0)
                report.daemon_cpu_seconds += _cpu(daemon.pid)
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(timeout=10)
                report.restarts += 1
                daemon = _start(config, env, log)
            jobs = _cli_json(config, env, "jobs", "list", "--json")
            finished = sum(1 for j in jobs if j["finished"])
            if len(jobs) >= report.jobs and finished == len(jobs) and not kill_at:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        report.daemon_cpu_seconds += _cpu(daemon.pid)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
        report.seconds = time.monotonic() - started
        emulator.add_fault(kind="random", rate=0)
        jobs, histories = asyncio.run(_read_db(f"sqlite+aiosqlite:///{workdir}/soak.db"))
        report.finished = sum(1 for j in jobs.values() if j.finished)
        for job_id, final in truth.items():
            job = jobs.get(job_id)
            if job is None or job.status != final or not job.finished:
                report.wrong_statuses.append(
                    f"{job_id}: {job and job.status} (tracking {job and job.tracking}), "
                    f"truth {final}"
                )
                continue
            chain = [(t.from_status, t.to_status) for t in histories[job_id]]
            if chain not in ([(None, "InProgress"), ("InProgress", final)], [(None, final)]):
                report.broken_histories.append(f"{job_id}: {chain}")
        stats = emulator.stats()
        report.faults_injected = int(stats.get("faults_served", 0))
        report.faults_by_kind = dict(stats.get("faults_by_kind", {}))
        report.throttled_429s = int(stats.get("throttled", 0))
        report.arm_reads = int(stats.get("by_kind", {}).get("job_get", 0)) + int(
            stats.get("by_kind", {}).get("operation_get", 0)
        )
        report.reads_by_subscription = dict(stats.get("reads_by_subscription", {}))
        return report
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        emulator.stop()


def _create_and_register(
    emulator: EmulatorClient,
    config: Path,
    env: dict[str, str],
    params: SoakParams,
    rng: random.Random,
) -> dict[str, str]:
    """Jobs by ARM id plus jobs behind operations; returns job id → true final status."""
    truth: dict[str, str] = {}
    specs = []
    for i in range(params.jobs - params.operations):
        specs.append(
            {
                "vault_id": VAULTS[i % len(VAULTS)],
                "final_status": rng.choice(TERMINAL),
                "duration_seconds": rng.uniform(params.min_duration, params.max_duration),
            }
        )
    created = emulator.create_jobs(specs)
    for job, spec in zip(created, specs, strict=True):
        truth[job["job_id"]] = spec["final_status"]
    docs: list[Any] = [job["id"] for job in created]
    for i in range(params.operations):
        final = rng.choice(TERMINAL)
        op = emulator.create_operation(
            vault_id=VAULTS[i % len(VAULTS)],
            delay_seconds=rng.uniform(0.5, 3),
            job_count=1,
            jobs={
                "final_status": final,
                "duration_seconds": rng.uniform(params.min_duration, params.max_duration),
            },
        )
        docs.append(op["azure_async_operation"])
        truth[op["job_ids"][0]] = final
    out = subprocess.run(
        [str(BIN), "--config", str(config), "register", "-"],
        input=json.dumps(docs),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"soak: register failed: {out.stderr}")
    return truth


async def _read_db(url: str) -> tuple[dict[str, JobRecord], dict[str, list[TransitionRecord]]]:
    """Read every job and its transitions straight from the store (one process, fast)."""
    store = SqlStore.from_url(url)
    try:
        jobs = {j.job_id: j for j in await store.list_jobs()}
        histories = {job_id: (await store.history(j.pk))[0] for job_id, j in jobs.items()}
        return jobs, histories
    finally:
        await store.close()


def _start(config: Path, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(BIN), "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env
    )


def _cli_json(config: Path, env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(
        [str(BIN), "--config", str(config), *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(out.stdout)


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--operations", type=int, default=50)
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--budget", default="60/25", help="emulator burst/refill per second")
    parser.add_argument("--daemon-budget", default="50/20", help="daemon burst/refill")
    parser.add_argument("--max-duration", type=float, default=40.0)
    parser.add_argument("--deadline", type=float, default=600.0)
    args = parser.parse_args()
    burst, refill = (float(x) for x in args.budget.split("/"))
    d_burst, d_refill = (float(x) for x in args.daemon_budget.split("/"))
    params = SoakParams(
        jobs=args.jobs,
        operations=args.operations,
        fault_rate=args.fault_rate,
        restarts=args.restarts,
        emulator_burst=int(burst),
        emulator_refill=refill,
        daemon_burst=int(d_burst),
        daemon_refill=d_refill,
        max_duration=args.max_duration,
        deadline_seconds=args.deadline,
    )
    with tempfile.TemporaryDirectory(prefix="backupjobd-soak-") as tmp:
        report = run_soak(params, Path(tmp))
    print("\n".join(report.lines()))
    for line in (report.wrong_statuses + report.broken_histories)[:20]:
        print("  ", line)
    return 0 if not report.wrong_statuses and not report.broken_histories else 1


if __name__ == "__main__":
    sys.exit(main())
