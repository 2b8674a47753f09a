"""CPU and ARM reads per tracked job: the daemon (with persistence) against per-job polling.

    python bench/cpu_per_job.py [--jobs 2000] [--interval 5] [--min-duration 20]
                                [--max-duration 60] [--skip-sdk] [--skip-aiohttp]

One emulator; each contender gets fresh jobs from the same specs (same durations and final
statuses, mixed), created just before it starts, and runs alone:

(a) the SDK baseline and (b) the bare aiohttp baseline (bench/baselines.py; CPU of this
process while they run), (c) `backupjobd serve` with `interval_seconds` and
`min_interval_seconds` both `--interval` and `[throttle] enabled = false`, all jobs registered
with one `backupjobd register -`. The daemon's CPU is utime+stime from /proc/<pid>/stat
between "serving" (start-up excluded, printed apart) and all jobs finished; the register CLI's
CPU is printed apart too. ARM reads are the emulator's job_get + job_list + operation_get;
detection lag is the first terminal transition's observed_at minus the job's endTime.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

# Runs as `python bench/x.py` as well as `python -m bench.x`: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import (
    Daemon,
    Emulator,
    Result,
    arm_reads,
    daemon_env,
    job_specs,
    read_db_jobs,
    register_cpu,
    run_aiohttp_baseline,
    run_sdk_baseline,
    stats_delta,
    vault_ids,
    wait_daemon_done,
    write_config,
)


def run_daemon(
    emu: Emulator,
    workdir: Path,
    specs: list[dict[str, object]],
    interval: float,
    deadline_seconds: float,
    log_level: str,
) -> Result:
    db_url = f"sqlite+aiosqlite:///{workdir}/cpu.db"
    config = write_config(
        workdir / "cpu.toml",
        emu.base,
        db_url,
        {"interval_seconds": interval, "min_interval_seconds": interval},
        {"enabled": False},
        log_level=log_level,
    )
    env = daemon_env(emu.token)
    result = Result("backupjobd serve (SQLite)", len(specs))
    daemon = Daemon(config, workdir / "daemon.log", env)
    try:
        daemon.wait_serving()
        time.sleep(2.0)  # let start-up (imports, migration, first ticks) settle
        startup_cpu = daemon.cpu()
        before = emu.stats()
        ids = emu.create_job_ids(specs)
        wall0 = time.monotonic()
        cpu0 = daemon.cpu()
        cli_cpu = register_cpu(config, env, ids)
        wait_daemon_done(db_url, len(ids), time.monotonic() + deadline_seconds, 1.0, "daemon")
        result.wall_seconds = time.monotonic() - wall0
        result.cpu_seconds = daemon.cpu() - cpu0
        after = emu.stats()
    finally:
        daemon.stop()
    result.polls = arm_reads(after) - arm_reads(before)
    delta = stats_delta(before, after)
    jobs = asyncio.run(read_db_jobs(db_url))
    result.finished = sum(1 for j in jobs if j.tracking != "active")
    result.lags = [lag for j in jobs if (lag := j.lag) is not None]
    result.extra_cpu_seconds = cli_cpu
    result.notes += [
        f"start-up CPU (not counted) {startup_cpu:.2f} s",
        f"register CLI CPU (not counted above) {cli_cpu:.2f} s"
        f" = {1000 * cli_cpu / max(1, len(ids)):.2f} ms/job",
        f"CPU per job incl. register {1000 * (result.cpu_seconds + cli_cpu) / len(ids):.2f} ms",
        f"emulator saw {delta}",
    ]
    return result


def table(results: list[Result]) -> list[str]:
    head = (
        f"{'contender':<44} {'CPU/job ms':>10} {'CPU/poll ms':>11} {'reads/job':>9}"
        f" {'wall s':>7} {'lag p50':>8} {'lag p99':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.name:<44} {r.cpu_per_job_ms:>10.3f} {r.cpu_per_poll_ms:>11.4f}"
            f" {r.polls_per_job:>9.2f} {r.wall_seconds:>7.1f} {r.lag(50):>8.2f} {r.lag(99):>8.2f}"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--min-duration", type=float, default=20.0)
    parser.add_argument("--max-duration", type=float, default=60.0)
    parser.add_argument("--vaults", type=int, default=10)
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument("--skip-aiohttp", action="store_true")
    parser.add_argument("--skip-daemon", action="store_true")
    parser.add_argument("--log-level", default="INFO", help="the daemon's [log] level")
    parser.add_argument("--deadline", type=float, default=900.0, help="per contender, seconds")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(
        f"cpu_per_job: {args.jobs} jobs in {args.vaults} vaults, interval {args.interval:g} s,"
        f" durations {args.min_duration:g}-{args.max_duration:g} s",
        flush=True,
    )
    specs = job_specs(
        args.jobs, vault_ids(args.vaults), args.min_duration, args.max_duration, args.seed
    )
    results: list[Result] = []
    with (
        tempfile.TemporaryDirectory(prefix="backupjobd-cpu-") as tmp,
        Emulator(Path(tmp)) as emu,
    ):
        baselines = []
        if not args.skip_sdk:
            baselines.append(run_sdk_baseline)
        if not args.skip_aiohttp:
            baselines.append(run_aiohttp_baseline)
        for run in baselines:
            ids = emu.create_job_ids(specs)
            before = emu.stats()
            result = run(emu.base, emu.token, ids, args.interval)
            result.notes.append(f"emulator saw {stats_delta(before, emu.stats())}")
            results.append(result)
            print("\n".join(result.lines() + [f"  {n}" for n in result.notes]), flush=True)
        if not args.skip_daemon:
            result = run_daemon(emu, Path(tmp), specs, args.interval, args.deadline, args.log_level)
            results.append(result)
            print("\n".join(result.lines() + [f"  {n}" for n in result.notes]), flush=True)
    print()
    print("\n".join(table(results)))
    daemon = next((r for r in results if r.name.startswith("backupjobd")), None)
    if daemon is not None:
        for base in results:
            if base is daemon:
                continue
            print(
                f"daemon / {base.name}:"
                f" CPU per job {daemon.cpu_per_job_ms / base.cpu_per_job_ms:.3f},"
                f" CPU per poll {daemon.cpu_per_poll_ms / base.cpu_per_poll_ms:.3f},"
                f" reads per job {daemon.polls_per_job / max(base.polls_per_job, 1e-9):.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
