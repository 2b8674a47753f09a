"""A read budget the daemon does not have to itself: 429s, reads and lag when others share the
subscription, or when the subscription's budget is smaller than the config says.

    python bench/shared_budget.py [--jobs 2000] [--min-duration 30] [--max-duration 120]
                                  [--interval 2] [--scenario others|small|both]
                                  [--baseline /path/to/old/venv/bin/backupjobd]

Scenarios (the daemon's `[throttle]` is the default: 250 burst, 25 reads/s, max_share 0.7):

* `others`: the emulator's budget is ARM's (250 / 25 per s) and other clients take 15 reads/s
  of it (`read_others_per_second`);
* `small`: the emulator's budget is 100 / 10 per s, which the config does not know.

For each scenario, `--jobs` jobs of one subscription in 2 vaults, lasting `--min-duration` to
`--max-duration` s, are registered and followed to the end with `polling.interval_seconds =
--interval`. Printed: jobs finished and right, wall time, ARM reads the emulator answered,
429s (and their share of the daemon's requests), detection lag p50/p99, the learned rate at
the end (from `backupjobd replicas --json`, when the executable has it) and the daemon's CPU. With
`--baseline` the same runs are made with another install (say an older commit's virtualenv,
whose fixed pacing is what the learner replaces), side by side in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runs as `python bench/x.py` as well as `python -m bench.x`: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import (
    BIN,
    Daemon,
    Emulator,
    arm_reads,
    daemon_env,
    job_specs,
    percentile,
    read_db_jobs,
    register_cpu,
    vault_ids,
    wait_daemon_done,
    write_config,
)

SCENARIOS: dict[str, dict[str, Any]] = {
    "others": {"read_burst": 250, "read_refill_per_second": 25, "read_others_per_second": 15},
    "small": {"read_burst": 100, "read_refill_per_second": 10, "read_others_per_second": 0},
}


def run_one(name: str, executable: Path, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    budget = SCENARIOS[name]
    specs = job_specs(args.jobs, vault_ids(2), args.min_duration, args.max_duration, args.seed)
    db_url = f"sqlite+aiosqlite:///{workdir}/shared.db"
    with Emulator(workdir) as emu:
        emu.configure(page_size=200, **budget)
        config = write_config(
            workdir / "shared.toml",
            emu.base,
            db_url,
            {"interval_seconds": args.interval, "min_interval_seconds": args.interval / 2},
        )
        env = daemon_env(emu.token)
        daemon = Daemon(config, workdir / "daemon.log", env, executable=executable)
        try:
            daemon.wait_serving()
            cpu0 = daemon.cpu()
            ids = emu.create_job_ids(specs)
            truth = dict(zip(ids, (s["final_status"] for s in specs), strict=True))
            before = emu.stats()
            wall0 = time.monotonic()
            register_cpu(config, env, ids, executable=executable)
            finished = wait_daemon_done(
                db_url, len(ids), wall0 + args.deadline, 2.0, label=f"{name} {executable}"
            )
            wall = time.monotonic() - wall0
            after = emu.stats()
            cpu = daemon.cpu() - cpu0
            learned = _learned(daemon)
        finally:
            daemon.stop()
    jobs = asyncio.run(read_db_jobs(db_url))
    by_id = {j.job_id.lower(): j for j in jobs}
    right = sum(
        1
        for arm_id, final in truth.items()
        if (job := by_id.get(arm_id.rsplit("/", 1)[-1].lower())) and job.status == final
    )
    lags = [lag for j in jobs if (lag := j.lag) is not None]
    reads = arm_reads(after) - arm_reads(before)
    throttled = int(after.get("throttled", 0)) - int(before.get("throttled", 0))
    return {
        "finished": finished,
        "right": right,
        "wall": wall,
        "reads": reads,
        "throttled": throttled,
        "share": throttled / max(1, reads + throttled),
        "p50": percentile(lags, 50),
        "p99": percentile(lags, 99),
        "cpu": cpu,
        "learned": learned,
    }


def _learned(daemon: Daemon) -> str:
    """The learned read rate per subscription, as `backupjobd replicas` shows it ("-" for an
    install without that command)."""
    if "replicas" not in daemon.cli("--help").stdout:
        return "-"
    found = json.loads(daemon.cli("replicas", "--json").stdout)
    rates = [f"{b['rate']:.1f}/s" for r in found for b in r["budgets"]]
    return ", ".join(rates) or "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--min-duration", type=float, default=30.0)
    parser.add_argument("--max-duration", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--scenario", choices=("others", "small", "both"), default="both")
    parser.add_argument("--baseline", type=Path, help="another install's bin/backupjobd")
    args = parser.parse_args()
    names = ["others", "small"] if args.scenario == "both" else [args.scenario]
    executables = [BIN] + ([args.baseline] if args.baseline else [])
    rows = []
    for name in names:
        for executable in executables:
            with tempfile.TemporaryDirectory(prefix="backupjobd-shared-") as tmp:
                result = run_one(name, executable, args, Path(tmp))
            label = "this" if executable == BIN else "baseline"
            rows.append((name, label, result))
            print(f"{name:6} {label:8} {result}", flush=True)
    print()
    print(
        f"{args.jobs} jobs of {args.min_duration:g}-{args.max_duration:g} s, interval"
        f" {args.interval:g} s; the daemon's [throttle] is the default (250 / 25 per s)"
    )
    print(
        f"{'scenario':8} {'install':8} {'right':>11} {'wall s':>7} {'reads':>6} {'429s':>6}"
        f" {'429 %':>6} {'lag p50':>7} {'lag p99':>7} {'cpu s':>6}  learned"
    )
    for name, label, r in rows:
        print(
            f"{name:8} {label:8} {r['right']:>5}/{args.jobs:<5} {r['wall']:7.1f} {r['reads']:6}"
            f" {r['throttled']:6} {100 * r['share']:5.1f}% {r['p50']:7.1f} {r['p99']:7.1f}"
            f" {r['cpu']:6.1f}  {r['learned']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
