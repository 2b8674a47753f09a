"""Scale: many in-flight jobs under ARM's read budget, and a large tracked history.

    python bench/scale.py --inflight 10000 [--vaults 10] [--interval 30]
                          [--min-duration 60] [--max-duration 300] [--deadline 1200]
                          [--detail-interval 300] [--log-level DEBUG --keep DIR]
    python bench/scale.py --tracked 100000 [--active 2000] [--settle 60]

`--inflight N`: N jobs in one subscription across `--vaults` vaults, the emulator enforcing
ARM's read budget (`--budget 250/25`) and `page_size 200`; the daemon runs with
`interval_seconds = --interval` and the default `[throttle]`. Prints the 429s the emulator
sent, ARM reads (total, per job, per second), jobs finished, wall time, detection lag p50/p99
(first terminal transition's observed_at minus the job's endTime, from the database), the
daemon's CPU and peak RSS; then the per-job-polling baseline for the same jobs, computed
analytically (polled at 0, I, 2I, ... from creation: ceil(d/I)+1 reads and ceil(d/I)*I - d
lag per job), and the ratio. The emulator counts GETs of jobs still running apart: those
are the daemon's progress snapshots (`--detail-interval`, spent from spare budget only);
the ratio is printed with them and without them. `--keep DIR` keeps the database and the
daemon log; with `--log-level DEBUG`, `bench/lag_breakdown.py DIR` splits the lag.

`--tracked N`: a fresh SQLite database with N jobs, `--active` of them still running in the
emulator and the rest finished (with two transitions and one snapshot each), then the daemon
is started: time from process start to the first ARM request reaching the emulator, the same
after a SIGTERM restart, and the daemon's RSS (VmRSS, VmHWM) after `--settle` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Runs as `python bench/x.py` as well as `python -m bench.x`: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import (
    Daemon,
    Emulator,
    arm_reads,
    daemon_env,
    job_specs,
    percentile,
    read_db_jobs,
    register_cpu,
    stats_delta,
    vault_ids,
    wait_daemon_done,
    write_config,
)

MB = 1024 * 1024


def _budget(text: str) -> tuple[int, float]:
    burst, refill = text.split("/")
    return int(burst), float(refill)


# --------------------------------------------------------------------------- in flight


def run_inflight(args: argparse.Namespace, workdir: Path) -> int:
    burst, refill = _budget(args.budget)
    vaults = vault_ids(args.vaults)
    specs = job_specs(args.inflight, vaults, args.min_duration, args.max_duration, args.seed)
    db_url = f"sqlite+aiosqlite:///{workdir}/scale.db"
    print(
        f"inflight: {args.inflight} jobs, 1 subscription, {args.vaults} vaults, durations"
        f" {args.min_duration:g}-{args.max_duration:g} s, interval {args.interval:g} s,"
        f" emulator budget {burst} burst / {refill:g} per s, page_size {args.page_size}",
        flush=True,
    )
    with Emulator(workdir) as emu:
        emu.configure(read_burst=burst, read_refill_per_second=refill, page_size=args.page_size)
        config = write_config(
            workdir / "scale.toml",
            emu.base,
            db_url,
            {"interval_seconds": args.interval, "detail_interval_seconds": args.detail_interval},
            log_level=args.log_level,
        )
        env = daemon_env(emu.token)
        daemon = Daemon(config, workdir / "daemon.log", env)
        peak_rss = 0
        try:
            daemon.wait_serving()
            cpu0 = daemon.cpu()
            before = emu.stats()
            ids = emu.create_job_ids(specs)
            wall0 = time.monotonic()
            cli_cpu = register_cpu(config, env, ids)
            print(f"  registered in {time.monotonic() - wall0:.1f} s", flush=True)
            deadline = wall0 + args.deadline
            finished = 0
            while time.monotonic() < deadline:
                finished = wait_daemon_done(
                    db_url, len(ids), min(deadline, time.monotonic() + 30), 2.0
                )
                peak_rss = max(peak_rss, daemon.memory().get("VmHWM", 0))
                stats = emu.stats()
                print(
                    f"  t={time.monotonic() - wall0:5.0f} s finished {finished}/{len(ids)},"
                    f" reads {arm_reads(stats) - arm_reads(before)},"
                    f" 429s {int(stats.get('throttled', 0)) - int(before.get('throttled', 0))}",
                    flush=True,
                )
                if finished >= len(ids):
                    break
            wall = time.monotonic() - wall0
            cpu = daemon.cpu() - cpu0
            peak_rss = max(peak_rss, daemon.memory().get("VmHWM", 0))
            after = emu.stats()
        finally:
            daemon.stop()
    jobs = asyncio.run(read_db_jobs(db_url))
    lags = [lag for j in jobs if (lag := j.lag) is not None]
    reads = arm_reads(after) - arm_reads(before)
    delta = stats_delta(before, after)
    n = len(specs)
    # Per-job polling from creation at the same interval, analytically.
    base_reads = [math.ceil(s["duration_seconds"] / args.interval) + 1 for s in specs]
    base_lags = [
        math.ceil(s["duration_seconds"] / args.interval) * args.interval - s["duration_seconds"]
        for s in specs
    ]
    base_total = sum(base_reads)
    base_rate = base_total / max(s["duration_seconds"] for s in specs)
    print()
    print(f"jobs finished              {sum(1 for j in jobs if j.tracking != 'active')}/{n}")
    print(f"wall time                  {wall:.1f} s (registration to last job finished)")
    print(f"429s received              {delta['throttled_429']}")
    print(
        f"ARM reads                  {reads} ({reads / n:.3f} per job, {reads / wall:.1f}/s)"
        f"  by kind {delta}"
    )
    running = int(after.get("job_gets_running", 0)) - int(before.get("job_gets_running", 0))
    print(
        f"  of which of running jobs {running} (progress snapshots every"
        f" {args.detail_interval:g} s from spare budget); the rest, {reads - running}"
        f" ({(reads - running) / n:.3f} per job), found and recorded the ends"
    )
    print(
        f"detection lag              p50 {percentile(lags, 50):.1f} s, p99"
        f" {percentile(lags, 99):.1f} s, max {percentile(lags, 100):.1f} s ({len(lags)} jobs)"
    )
    print(
        f"daemon CPU                 {cpu:.1f} s ({1000 * cpu / n:.2f} ms/job);"
        f" register CLI {cli_cpu:.1f} s; peak RSS {peak_rss / MB:.0f} MB"
    )
    print(
        f"per-job polling baseline   {base_total} reads ({base_total / n:.2f} per job,"
        f" avg {base_rate:.0f}/s vs a {refill:g}/s budget), lag p50"
        f" {percentile(base_lags, 50):.1f} s, p99 {percentile(base_lags, 99):.1f} s"
        " (analytic, unthrottled)"
    )
    print(
        f"baseline reads / daemon    {base_total / max(1, reads):.1f}x (same interval);"
        f" {base_total / max(1, reads - running):.1f}x counting only the daemon's reads"
        " that found ends"
    )
    # The same comparison at the same detection lag: a per-job poller whose median lag
    # matches the daemon's polls every 2 x (the daemon's median lag).
    same_lag = max(1.0, 2 * percentile(lags, 50)) if lags else args.interval
    lag_reads = sum(math.ceil(s["duration_seconds"] / same_lag) + 1 for s in specs)
    lag_lags = [
        math.ceil(s["duration_seconds"] / same_lag) * same_lag - s["duration_seconds"]
        for s in specs
    ]
    print(
        f"per-job polling, same lag  every {same_lag:.1f} s: {lag_reads} reads"
        f" ({lag_reads / n:.2f} per job), lag p50 {percentile(lag_lags, 50):.1f} s,"
        f" p99 {percentile(lag_lags, 99):.1f} s; baseline reads / daemon"
        f" {lag_reads / max(1, reads):.1f}x ({lag_reads / max(1, reads - running):.1f}x"
        " counting only reads that found ends)"
    )
    return 0


# --------------------------------------------------------------------------- tracked


def _snapshot_properties(job_id: str, status: str, start: datetime, end: datetime) -> str:
    iso = "%Y-%m-%dT%H:%M:%S.%fZ"
    return json.dumps(
        {
            "jobType": "AzureIaaSVMJob",
            "entityFriendlyName": f"vm-{job_id[:8]}",
            "backupManagementType": "AzureIaasVM",
            "operation": "Backup",
            "status": status,
            "startTime": start.strftime(iso),
            "endTime": end.strftime(iso),
            "activityId": str(uuid.uuid4()),
            "duration": "PT12M3.5S",
            "actionsInfo": [],
            "virtualMachineVersion": "Compute",
            "extendedInfo": {
                "tasksList": [
                    {"taskId": "Take Snapshot", "status": "Completed", "duration": "00:02:00"},
                    {
                        "taskId": "Transfer data to vault",
                        "status": status,
                        "progressPercentage": 100.0,
                        "duration": "00:10:03",
                    },
                ],
                "propertyBag": {"VM Name": f"vm-{job_id[:8]}", "Backup Size": "1234 MB"},
                "progressPercentage": 100.0,
            },
        },
        sort_keys=True,
    )


async def populate(db_url: str, active: list[str], finished: int, vaults: list[str]) -> None:
    """Register `active` (job ARM ids) and `finished` more jobs, then mark the latter
    finished with bulk SQL (two transitions and one snapshot each)."""
    from sqlalchemy import bindparam, insert, select, update

    from backupjobd.adapters.sql import schema
    from backupjobd.adapters.sql.store import SqlStore
    from backupjobd.core.azure import parse_job_arm_id, vault_from_id
    from backupjobd.core.registration import JobRegistration

    rng = random.Random(11)
    now = datetime.now(UTC)
    store = SqlStore.from_url(db_url)
    try:
        await store.migrate()
        regs = [JobRegistration(*parse_job_arm_id(a), "bench") for a in active]
        refs = [vault_from_id(v) for v in vaults]
        done_ids = [str(uuid.uuid4()) for _ in range(finished)]
        regs += [JobRegistration(refs[i % len(refs)], j, "bench") for i, j in enumerate(done_ids)]
        # Finished jobs first, so the active ones have the highest pks (as in real life).
        regs = regs[len(active) :] + regs[: len(active)]
        for i in range(0, len(regs), 10_000):
            await store.register(regs[i : i + 10_000], now - timedelta(days=30))
        t = schema.jobs
        done = set(done_ids)
        async with store.engine.connect() as conn:
            rows = (await conn.execute(select(t.c.pk, t.c.job_id))).all()
        pks = [(r.pk, r.job_id) for r in rows if r.job_id in done]
        statuses = ["Completed"] * 8 + ["CompletedWithWarnings", "Failed"]
        upd = (
            update(t)
            .where(t.c.pk == bindparam("b_pk"))
            .values(
                status=bindparam("b_status"),
                tracking="finished",
                job_type="AzureIaaSVMJob",
                operation="Backup",
                entity_friendly_name=bindparam("b_entity"),
                backup_management_type="AzureIaasVM",
                start_time=bindparam("b_start"),
                end_time=bindparam("b_end"),
                last_polled_at=bindparam("b_end"),
                finished_at=bindparam("b_end"),
                next_poll_at=None,
                poll_count=7,
                last_snapshot_hash=bindparam("b_hash"),
                version=7,
            )
        )
        for i in range(0, len(pks), 5000):
            chunk = pks[i : i + 5000]
            jobs_rows, trans_rows, snap_rows = [], [], []
            for pk, job_id in chunk:
                start = now - timedelta(days=rng.uniform(0.1, 30))
                end = start + timedelta(minutes=rng.uniform(5, 60))
                status = rng.choice(statuses)
                digest = uuid.uuid4().hex * 2
                jobs_rows.append(
                    {
                        "b_pk": pk,
                        "b_status": status,
                        "b_entity": f"vm-{job_id[:8]}",
                        "b_start": start,
                        "b_end": end,
                        "b_hash": digest,
                    }
                )
                trans_rows += [
                    {
                        "job_pk": pk,
                        "seq": 1,
                        "from_status": None,
                        "to_status": "InProgress",
                        "observed_at": start,
                    },
                    {
                        "job_pk": pk,
                        "seq": 2,
                        "from_status": "InProgress",
                        "to_status": status,
                        "observed_at": end,
                    },
                ]
                snap_rows.append(
                    {
                        "job_pk": pk,
                        "content_hash": digest,
                        "observed_at": end,
                        "status": status,
                        "properties": _snapshot_properties(job_id, status, start, end),
                    }
                )
            async with store.engine.begin() as conn:
                await conn.execute(upd, jobs_rows)
                await conn.execute(insert(schema.transitions), trans_rows)
                await conn.execute(insert(schema.snapshots), snap_rows)
    finally:
        await store.close()


def _start_times(
    emu: Emulator, daemon: Daemon, before: int, timeout: float
) -> tuple[float | None, float | None]:
    """Seconds from the daemon's process start to its "serving" log line and to the first ARM
    request reaching the emulator."""
    offset = daemon.log.stat().st_size if daemon.log.exists() else 0
    serving: float | None = None
    first: float | None = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (serving is None or first is None):
        now = time.monotonic() - daemon.started_at
        if serving is None:
            with daemon.log.open("rb") as f:
                f.seek(offset)
                if b"backupjobd serving" in f.read():
                    serving = now
        if first is None and int(emu.stats().get("requests", 0)) > before:
            first = now
        if daemon.proc.poll() is not None:
            raise SystemExit(f"bench: daemon exited ({daemon.proc.returncode})")
        time.sleep(0.02)
    return serving, first


def _secs(value: float | None) -> str:
    return "none" if value is None else f"{value:.2f} s"


def run_tracked(args: argparse.Namespace, workdir: Path) -> int:
    burst, refill = _budget(args.budget)
    vaults = vault_ids(args.vaults)
    db_path = workdir / "tracked.db"
    db_url = f"sqlite+aiosqlite:///{db_path}"
    print(
        f"tracked: {args.tracked} jobs ({args.active} active in the emulator), {args.vaults}"
        f" vaults, interval {args.interval:g} s, emulator budget {burst}/{refill:g}",
        flush=True,
    )
    with Emulator(workdir) as emu:
        emu.configure(read_burst=burst, read_refill_per_second=refill, page_size=args.page_size)
        specs = [
            {"vault_id": vaults[i % len(vaults)], "duration_seconds": args.active_duration}
            for i in range(args.active)
        ]
        active = emu.create_job_ids(specs)
        t0 = time.monotonic()
        asyncio.run(populate(db_url, active, args.tracked - args.active, vaults))
        size = sum(p.stat().st_size for p in workdir.glob("tracked.db*"))
        print(
            f"  populated in {time.monotonic() - t0:.1f} s; database {size / MB:.0f} MB",
            flush=True,
        )
        config = write_config(
            workdir / "tracked.toml",
            emu.base,
            db_url,
            {"interval_seconds": args.interval, "detail_interval_seconds": args.detail_interval},
            log_level=args.log_level,
        )
        env = daemon_env(emu.token)
        figures: list[str] = []
        for attempt in ("first start", "restart"):
            before = int(emu.stats().get("requests", 0))
            daemon = Daemon(config, workdir / "daemon.log", env)
            try:
                serving, first = _start_times(emu, daemon, before, args.first_poll_timeout)
                figures.append(
                    f"{attempt:<12} process start to serving {_secs(serving)},"
                    f" to first ARM request {_secs(first)}"
                )
                print("  " + figures[-1], flush=True)
                if attempt == "first start":
                    samples = []
                    t_end = time.monotonic() + args.settle
                    while time.monotonic() < t_end:
                        samples.append(daemon.memory().get("VmRSS", 0))
                        time.sleep(1.0)
                    mem = daemon.memory()
                    stats = emu.stats()
                    figures.append(
                        f"RSS after {args.settle:g} s: VmRSS {mem.get('VmRSS', 0) / MB:.0f} MB,"
                        f" VmHWM (peak) {mem.get('VmHWM', 0) / MB:.0f} MB, max sampled"
                        f" {max(samples, default=0) / MB:.0f} MB; CPU {daemon.cpu():.1f} s;"
                        f" ARM reads {arm_reads(stats)}, 429s {stats.get('throttled', 0)}"
                    )
                    print("  " + figures[-1], flush=True)
            finally:
                daemon.stop()
    print()
    print("\n".join(figures))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--inflight", type=int, help="jobs in flight (e.g. 10000)")
    mode.add_argument("--tracked", type=int, help="jobs in the database (e.g. 100000)")
    parser.add_argument("--vaults", type=int, default=10)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument(
        "--detail-interval", type=float, default=300.0, help="the daemon's progress-read cadence"
    )
    parser.add_argument("--budget", default="250/25", help="emulator read burst/refill per s")
    parser.add_argument("--page-size", type=int, default=200)
    parser.add_argument("--min-duration", type=float, default=60.0)
    parser.add_argument("--max-duration", type=float, default=300.0)
    parser.add_argument("--deadline", type=float, default=1200.0, help="inflight: seconds")
    parser.add_argument("--active", type=int, default=2000, help="tracked: jobs still running")
    parser.add_argument("--active-duration", type=float, default=3600.0)
    parser.add_argument("--settle", type=float, default=60.0, help="tracked: seconds before RSS")
    parser.add_argument("--first-poll-timeout", type=float, default=120.0)
    parser.add_argument("--log-level", default="INFO", help="the daemon's [log] level")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--keep", type=Path, help="work in this directory and keep it (database, daemon log)"
    )
    args = parser.parse_args()
    run = run_inflight if args.inflight is not None else run_tracked
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args, args.keep)
    with tempfile.TemporaryDirectory(prefix="backupjobd-scale-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
