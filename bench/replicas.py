"""One replica against three on the same work, on one PostgreSQL database: CPU, ARM reads and
429s side by side, and what two `kill -9` cost (issue 11).

    python bench/replicas.py [--jobs 2000] [--min-duration 30] [--max-duration 120]
                             [--interval 2] [--replicas 3] [--kills 2]
                             [--kill-at 40,70 | --kill-fractions 0.33,0.5]
                             [--restart-after 5]
                             [--pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
                             [--deadline 900] [--keep DIR]

`--jobs` jobs over two subscriptions (two vaults each), lasting `--min-duration` to
`--max-duration` s, the emulator's read budget 100 burst / 10 per s per subscription (which
the daemons' default `[throttle]`, 250 / 25 per s, does not know), `page_size` 200. Each run
gets a fresh emulator and a fresh PostgreSQL database (created next to `--pg-url`, dropped
afterwards) and polls with `interval_seconds = --interval`:

* one `backupjobd serve`;
* `--replicas` of them on the same database (started together), then `--kills` of them
  killed with SIGKILL: at `--kill-at` seconds after registration, or else at
  `--kill-fractions` of the one-replica run's wall time. The victim is a replica that owns
  a subscription (the one owning most), so that every kill has a failover to measure; a
  kill waits for the previous one's takeover. Without `--restart-after` nothing is
  restarted and the survivors take over; with it, a killed replica's `serve` starts again
  that many seconds after the kill, as systemd does for the shipped unit
  (`Restart=on-failure`, `RestartSec=5s`), and takes its share back (a new replica in the
  tables, "restart of N").

Measured per run: jobs whose final status is the emulator's, clean histories (None ->
InProgress -> final, or None -> final: every chain starts from None, each from_status is the
previous to_status, no status twice), ARM reads the emulator answered and reads per job,
429s and their share of the requests, detection lag p50/p99 (first terminal transition minus
the job's endTime), the CPU of every replica (utime + stime from /proc from "serving" to the
end of the run, or to just before the kill; start-up printed apart) and each replica's share
of the total, the failover time (from the kill to the first `backupjobd replicas --json`
that shows each of the victim's subscriptions owned by another replica) and the wall time
(registration to the last job finished). Then the ratios three / one next to the issue's
targets, and the budgets the live replicas learned (`replicas --json`). `--keep DIR` works in
DIR and keeps the replicas' and emulators' logs (the databases are dropped anyway).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Runs as `python bench/x.py` as well as `python -m bench.x`: the repository root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import (
    TOKEN,
    Daemon,
    Emulator,
    arm_reads,
    daemon_env,
    db_counts,
    job_specs,
    percentile,
    proc_cpu,
    read_db_jobs,
    register_cpu,
    run_cli,
    stats_delta,
    vault_ids,
    wait_daemon_done,
    write_config,
)

SUB_A = "6b6b6b6b-0000-0000-0000-00000000000a"
SUB_B = "6b6b6b6b-0000-0000-0000-00000000000b"
BUDGET = {"read_burst": 100, "read_refill_per_second": 10, "read_others_per_second": 0}
PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
FAILOVER_TIMEOUT_S = 120.0
# When each replica's first subscriptions are read: after a heartbeat (3 s) has seen the jobs.
FIRST_LOOK_S = 5.0
# The targets for three replicas against one, in the same run.
TARGETS = {"reads": 1.15, "cpu": 1.5, "share": 0.60, "throttled": 0.01, "lag_p99": 30.0}


# --------------------------------------------------------------------------- database


async def _admin(pg_url: str, statement: str) -> None:
    from sqlalchemy import make_url
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    url = make_url(pg_url).set(database="postgres").render_as_string(hide_password=False)
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def create_database(pg_url: str) -> tuple[str, str]:
    """A fresh, empty database next to `pg_url`'s: (name, its URL)."""
    from sqlalchemy import make_url

    name = f"backupjobd_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(pg_url, f'CREATE DATABASE "{name}"'))
    url = make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    return name, url


def drop_database(pg_url: str, name: str) -> None:
    asyncio.run(_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def read_histories(db_url: str) -> dict[str, list[tuple[str | None, str]]]:
    """Every job's transitions in order, keyed by job id (lower case), in one query."""
    from sqlalchemy import select

    from backupjobd.adapters.sql import schema
    from backupjobd.adapters.sql.store import SqlStore

    t, tr = schema.jobs, schema.transitions
    query = (
        select(t.c.job_id, tr.c.from_status, tr.c.to_status)
        .select_from(t.outerjoin(tr, tr.c.job_pk == t.c.pk))
        .order_by(t.c.pk, tr.c.seq)
    )
    store = SqlStore.from_url(db_url)
    try:
        async with store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
    finally:
        await store.close()
    out: dict[str, list[tuple[str | None, str]]] = {}
    for row in rows:
        chain = out.setdefault(row.job_id.lower(), [])
        if row.to_status is not None:
            chain.append((row.from_status, row.to_status))
    return out


def clean_history(chain: list[tuple[str | None, str]], final: str) -> bool:
    """None -> InProgress -> final, or None -> final; in general: starts from None, each
    from_status the previous to_status, no status twice, ends at the job's final status."""
    if not chain or chain[0][0] is not None or chain[-1][1] != final:
        return False
    statuses = [to for _, to in chain]
    if len(set(statuses)) != len(statuses):
        return False
    return all(chain[i][0] == chain[i - 1][1] for i in range(1, len(chain)))


# --------------------------------------------------------------------------- one run


@dataclass
class Replica:
    index: int
    daemon: Daemon
    startup_cpu: float = 0.0
    end_cpu: float = 0.0
    instance_id: str = ""
    owned_first: tuple[str, ...] = ()
    killed_at: float | None = None  # seconds after registration
    restart_of: int | None = None  # the killed replica this one restarted
    owned_at_kill: tuple[str, ...] = ()
    failover: float | None = None  # seconds from the kill to another owner, all subscriptions
    restarted: bool = False

    @property
    def cpu(self) -> float:
        return max(0.0, self.end_cpu - self.startup_cpu)


@dataclass
class RunResult:
    replicas: list[Replica]
    jobs: int
    finished: int = 0
    right: int = 0
    clean: int = 0
    wall: float = 0.0
    reads: int = 0
    throttled: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    reads_by_subscription: dict[str, int] = field(default_factory=dict)
    p50: float = float("nan")
    p99: float = float("nan")
    lag_max: float = float("nan")
    # (seconds from registration to the job's endTime, detection lag, subscription)
    ends: list[tuple[float, float, str]] = field(default_factory=list)
    budgets: list[str] = field(default_factory=list)
    log_warnings: int = 0
    log_errors: int = 0
    broken: list[str] = field(default_factory=list)

    @property
    def cpu(self) -> float:
        return sum(r.cpu for r in self.replicas)

    @property
    def startup_cpu(self) -> float:
        return sum(r.startup_cpu for r in self.replicas)

    @property
    def share(self) -> float:
        return self.throttled / max(1, self.reads + self.throttled)

    @property
    def reads_per_job(self) -> float:
        return self.reads / max(1, self.jobs)

    @property
    def top_share(self) -> float:
        return max((r.cpu for r in self.replicas), default=0.0) / max(1e-9, self.cpu)


def _replicas_json(config: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    return list(json.loads(run_cli(config, env, "replicas", "--json").stdout))


def _owners(found: list[dict[str, Any]]) -> dict[str, str]:
    """subscription -> instance_id of the replica listed as owning it."""
    return {s.lower(): r["instance_id"] for r in found for s in r.get("owns", [])}


def _identify(replicas: list[Replica], found: list[dict[str, Any]], first: bool = False) -> None:
    """Each replica's instance id (by pid) and, on the first look, what it owns."""
    by_pid = {int(r["pid"]): r for r in found}
    for replica in replicas:
        row = by_pid.get(replica.daemon.pid)
        if row is not None:
            replica.instance_id = str(row["instance_id"])
            if first:
                replica.owned_first = tuple(sorted(s.lower() for s in row.get("owns", [])))


def _restart(
    replicas: list[Replica], victim: Replica, config: Path, env: dict[str, str], wall0: float
) -> None:
    """Start the killed replica's `serve` again (a new replica), as systemd would."""
    index = len(replicas)
    log = victim.daemon.log.with_name(f"replica-{index}.log")
    replica = Replica(index, Daemon(config, log, env), restart_of=victim.index)
    replica.daemon.wait_serving()
    replica.startup_cpu = replica.daemon.cpu()
    replicas.append(replica)
    print(
        f"  t={time.monotonic() - wall0:5.0f} s replica {index} (restart of {victim.index},"
        f" pid {replica.daemon.pid}) serving",
        flush=True,
    )


def _kill_one(
    replicas: list[Replica],
    config: Path,
    env: dict[str, str],
    wall0: float,
    db_url: str,
    restart_after: float | None = None,
) -> None:
    """SIGKILL the live replica owning most subscriptions, time the takeover, and start it
    again `restart_after` seconds after the kill when asked."""
    _kill_and_wait(replicas, config, env, wall0, db_url)
    victim = max(
        (r for r in replicas if r.killed_at is not None),
        key=lambda r: r.killed_at or 0.0,
        default=None,
    )
    if restart_after is None or victim is None or victim.restarted:
        return
    victim.restarted = True
    delay = wall0 + (victim.killed_at or 0.0) + restart_after - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    _restart(replicas, victim, config, env, wall0)


def _kill_and_wait(
    replicas: list[Replica], config: Path, env: dict[str, str], wall0: float, db_url: str
) -> None:
    """SIGKILL the live replica owning most subscriptions, then time the takeover."""
    alive = [r for r in replicas if r.killed_at is None and r.daemon.proc.poll() is None]
    if len(alive) < 2:
        print("  not killing the last live replica", flush=True)
        return
    found = _replicas_json(config, env)
    _identify(replicas, found)
    owns = {str(r["instance_id"]): tuple(sorted(s.lower() for s in r["owns"])) for r in found}
    victim = max(alive, key=lambda r: (len(owns.get(r.instance_id, ())), -r.index))
    victim.owned_at_kill = owns.get(victim.instance_id, ())
    victim.end_cpu = proc_cpu(victim.daemon.pid)
    victim.daemon.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.killed_at = killed - wall0
    victim.daemon.proc.wait(timeout=30)
    print(
        f"  t={victim.killed_at:5.0f} s kill -9 replica {victim.index} (pid {victim.daemon.pid},"
        f" owns {', '.join(victim.owned_at_kill) or 'nothing'})",
        flush=True,
    )
    if not victim.owned_at_kill:
        return
    while time.monotonic() - killed < FAILOVER_TIMEOUT_S:
        owners = _owners(_replicas_json(config, env))
        if all(
            owners.get(s, victim.instance_id) != victim.instance_id for s in victim.owned_at_kill
        ):
            victim.failover = time.monotonic() - killed
            index = {r.instance_id: str(r.index) for r in replicas}
            by = sorted({index.get(owners[s], "?") for s in victim.owned_at_kill})
            print(
                f"  t={time.monotonic() - wall0:5.0f} s taken over in {victim.failover:.1f} s"
                f" by replica {', '.join(by)}",
                flush=True,
            )
            return
        counts = asyncio.run(db_counts(db_url))
        if counts.get("jobs_active", 0) == 0:
            print("  every job finished before a takeover", flush=True)
            return
        time.sleep(0.5)
    print(f"  NOT taken over within {FAILOVER_TIMEOUT_S:.0f} s", flush=True)


def _read_rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> str:
    """GETs per second of each subscription between two /admin/stats answers (the emulator
    counts a GET it throttles there too)."""
    old, new = before.get("reads_by_subscription", {}), after.get("reads_by_subscription", {})
    return ", ".join(
        f"{_subs((sub,))} {(int(n) - int(old.get(sub, 0))) / max(1e-9, seconds):.1f}/s"
        for sub, n in sorted(new.items())
    )


def _log_levels(log: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    if not log.exists():
        return found
    for line in log.read_text(errors="replace").splitlines():
        for level in ("WARNING", "ERROR", "CRITICAL", "Traceback"):
            if level in line:
                found[level] += 1
    return found


def run(
    count: int,
    kill_at: list[float],
    specs: list[dict[str, Any]],
    args: argparse.Namespace,
    workdir: Path,
) -> RunResult:
    label = f"{count} replica{'s' if count > 1 else ''}"
    name, db_url = create_database(args.pg_url)
    try:
        with Emulator(workdir) as emu:
            emu.configure(page_size=200, **BUDGET)
            config = write_config(
                workdir / "replicas.toml",
                emu.base,
                db_url,
                {"interval_seconds": args.interval, "min_interval_seconds": args.interval / 2},
                log_level=args.log_level,
            )
            env = daemon_env(emu.token or TOKEN)
            replicas = [
                Replica(i, Daemon(config, workdir / f"replica-{i}.log", env)) for i in range(count)
            ]
            result = RunResult(replicas, len(specs))
            try:
                for replica in replicas:
                    replica.daemon.wait_serving()
                    replica.startup_cpu = replica.daemon.cpu()
                ids = emu.create_job_ids(specs)
                truth = {
                    arm_id.rsplit("/", 1)[-1].lower(): spec["final_status"]
                    for arm_id, spec in zip(ids, specs, strict=True)
                }
                subscription_of = {
                    arm_id.rsplit("/", 1)[-1].lower(): arm_id.split("/")[2].lower()
                    for arm_id in ids
                }
                before = emu.stats()
                wall0, epoch0 = time.monotonic(), time.time()
                register_cpu(config, env, ids)
                print(f"{label}: registered in {time.monotonic() - wall0:.1f} s", flush=True)
                pending = sorted(kill_at)
                deadline = wall0 + args.deadline
                finished = 0
                first_look = wall0 + FIRST_LOOK_S  # what each replica owns, once
                last, last_at = before, wall0
                while time.monotonic() < deadline:
                    until = min(deadline, time.monotonic() + 30)
                    if pending:
                        until = min(until, wall0 + pending[0])
                    if first_look:
                        until = min(until, first_look)
                    finished = wait_daemon_done(db_url, len(ids), until, 1.0)
                    if first_look and time.monotonic() >= first_look:
                        _identify(replicas, _replicas_json(config, env), first=True)
                        first_look = 0.0
                    if finished >= len(ids):
                        break
                    if pending and time.monotonic() >= wall0 + pending[0]:
                        pending.pop(0)
                        _kill_one(replicas, config, env, wall0, db_url, args.restart_after)
                        continue
                    stats, now = emu.stats(), time.monotonic()
                    rates = _read_rates(last, stats, now - last_at)
                    last, last_at = stats, now
                    print(
                        f"  [{label}] t={now - wall0:5.0f} s finished"
                        f" {finished}/{len(ids)}, reads {arm_reads(stats) - arm_reads(before)}"
                        f" ({rates}), 429s {int(stats['throttled']) - int(before['throttled'])}",
                        flush=True,
                    )
                result.finished = finished
                result.wall = time.monotonic() - wall0
                after = emu.stats()
                for replica in replicas:
                    if replica.killed_at is None:
                        replica.end_cpu = replica.daemon.cpu()
                found = _replicas_json(config, env)
                index = {r.daemon.pid: r.index for r in replicas}
                result.budgets = [
                    f"replica {index.get(int(r['pid']), '?')} {_subs((b['subscription_id'],))}"
                    f" {b['rate']:.1f}/s (reads {b.get('reads', '-')},"
                    f" 429s {b.get('throttled', '-')})"
                    for r in found
                    for b in r.get("budgets", [])
                ]
            finally:
                for replica in replicas:
                    replica.daemon.stop()
        result.reads = arm_reads(after) - arm_reads(before)
        result.throttled = int(after.get("throttled", 0)) - int(before.get("throttled", 0))
        result.by_kind = {k: v for k, v in stats_delta(before, after).items() if v}
        result.reads_by_subscription = {
            _subs((s,)): int(n) - int(before.get("reads_by_subscription", {}).get(s, 0))
            for s, n in sorted(after.get("reads_by_subscription", {}).items())
        }
        jobs = asyncio.run(read_db_jobs(db_url))
        histories = asyncio.run(read_histories(db_url))
    finally:
        drop_database(args.pg_url, name)
    by_id = {j.job_id.lower(): j for j in jobs}
    for job_id, final in truth.items():
        job = by_id.get(job_id)
        if job is None or job.status != final:
            result.broken.append(f"{job_id}: {job and job.status} (truth {final})")
            continue
        result.right += 1
        chain = histories.get(job_id, [])
        if clean_history(chain, final):
            result.clean += 1
        else:
            result.broken.append(f"{job_id}: history {chain}")
    lags = [lag for j in jobs if (lag := j.lag) is not None]
    result.ends = [
        (j.end_time.timestamp() - epoch0, lag, subscription_of.get(j.job_id.lower(), ""))
        for j in jobs
        if (lag := j.lag) is not None and j.end_time is not None
    ]
    result.p50, result.p99, result.lag_max = (percentile(lags, q) for q in (50, 99, 100))
    for replica in replicas:
        levels = _log_levels(replica.daemon.log)
        result.log_warnings += levels["WARNING"]
        result.log_errors += levels["ERROR"] + levels["CRITICAL"] + levels["Traceback"]
    return result


# --------------------------------------------------------------------------- report


def _ratio(three: float, one: float) -> str:
    return f"{three / one:.2f}x" if one else "-"


def report(args: argparse.Namespace, one: RunResult, many: RunResult) -> None:
    n = args.jobs
    name = f"{args.replicas} replicas"
    killed = sorted(
        (r for r in many.replicas if r.killed_at is not None), key=lambda r: r.killed_at or 0.0
    )
    failovers = [r.failover for r in killed]
    rows: list[tuple[str, str, str, str, str]] = [
        ("jobs right", f"{one.right}/{n}", f"{many.right}/{n}", "", "every job"),
        ("clean histories", f"{one.clean}/{n}", f"{many.clean}/{n}", "", "all"),
        ("wall s", f"{one.wall:.0f}", f"{many.wall:.0f}", _ratio(many.wall, one.wall), ""),
        ("ARM reads", f"{one.reads}", f"{many.reads}", "", ""),
        (
            "reads per job",
            f"{one.reads_per_job:.3f}",
            f"{many.reads_per_job:.3f}",
            _ratio(many.reads_per_job, one.reads_per_job),
            f"<= {TARGETS['reads']:.2f}x",
        ),
        (
            "429s (share)",
            f"{one.throttled} ({100 * one.share:.2f}%)",
            f"{many.throttled} ({100 * many.share:.2f}%)",
            "",
            f"<= {100 * TARGETS['throttled']:.0f}%",
        ),
        ("lag p50 s", f"{one.p50:.1f}", f"{many.p50:.1f}", "", ""),
        ("lag p99 s", f"{one.p99:.1f}", f"{many.p99:.1f}", "", f"<= {TARGETS['lag_p99']:.0f} s"),
        ("lag max s", f"{one.lag_max:.1f}", f"{many.lag_max:.1f}", "", ""),
        *_phase_rows(one, many, [r.killed_at for r in killed if r.killed_at is not None]),
        (
            "CPU s, all replicas",
            f"{one.cpu:.1f}",
            f"{many.cpu:.1f}",
            _ratio(many.cpu, one.cpu),
            f"<= {TARGETS['cpu']:.1f}x",
        ),
        (
            "  + start-up CPU s",
            f"{one.startup_cpu:.1f}",
            f"{many.startup_cpu:.1f}",
            _ratio(many.cpu + many.startup_cpu, one.cpu + one.startup_cpu),
            "(ratio with it)",
        ),
        (
            "largest CPU share",
            f"{100 * one.top_share:.0f}%",
            f"{100 * many.top_share:.0f}%",
            "",
            f"<= {100 * TARGETS['share']:.0f}%",
        ),
        (
            "failover s",
            "-",
            ", ".join("none" if f is None else f"{f:.1f}" for f in failovers) or "-",
            "",
            "",
        ),
        ("log warnings/errors", _log(one), _log(many), "", ""),
    ]
    print()
    print(
        f"{n} jobs over 2 subscriptions (2 vaults each) lasting {args.min_duration:g}-"
        f"{args.max_duration:g} s, interval {args.interval:g} s, emulator budget 100 / 10 per s"
        f" per subscription, daemon [throttle] default; PostgreSQL"
    )
    print(f"{'':34} {'1 replica':>13} {name:>13} {'ratio':>6}  target")
    for label, a, b, ratio, target in rows:
        print(f"{label:34} {a:>13} {b:>13} {ratio:>6}  {target}")
    print()
    print(
        f"{'replica':>7} {'pid':>8} {'owned first':>11} {'killed at s':>11} {'owned then':>10}"
        f" {'failover s':>10} {'CPU s':>6} {'share':>6}"
    )
    for r in many.replicas:
        killed_s = "-" if r.killed_at is None else f"{r.killed_at:.0f}"
        failover = "-" if r.failover is None else f"{r.failover:.1f}"
        restart = "" if r.restart_of is None else f"  (restart of {r.restart_of})"
        print(
            f"{r.index:>7} {r.daemon.pid:>8} {_subs(r.owned_first):>11} {killed_s:>11}"
            f" {_subs(r.owned_at_kill):>10} {failover:>10} {r.cpu:6.1f}"
            f" {100 * r.cpu / max(1e-9, many.cpu):5.0f}%{restart}"
        )
    for label, res in (("1 replica", one), (name, many)):
        print(
            f"{label}: reads by kind {res.by_kind}; by subscription {res.reads_by_subscription};"
            f" learned {', '.join(res.budgets) or '-'}"
        )
        for line in res.broken[:10]:
            print(f"  WRONG {line}")


def _lags(
    result: RunResult, start: float, end: float, subscription: str = ""
) -> tuple[float, float]:
    """Lag p50 and p99 of the jobs that ended in [start, end) s after registration."""
    lags = [
        lag
        for at, lag, sub in result.ends
        if start <= at < end and (not subscription or sub == subscription)
    ]
    return percentile(lags, 50), percentile(lags, 99)


def _phase_rows(
    one: RunResult, many: RunResult, kills: list[float]
) -> list[tuple[str, str, str, str, str]]:
    """Lag p50 / p99 of the jobs that ended before the first kill and after it (at the
    same offsets from registration in both runs), and per subscription."""
    if not kills:
        return []
    rows = []
    cuts = [("ended before kill 1", 0.0, kills[0], ""), ("ended after kill 1", kills[0], 1e9, "")]
    cuts += [(f"subscription {_subs((s,))}", 0.0, 1e9, s) for s in (SUB_A, SUB_B)]
    for label, start, end, sub in cuts:
        a, b = (
            " / ".join("-" if math.isnan(x) else f"{x:.1f}" for x in _lags(r, start, end, sub))
            for r in (one, many)
        )
        rows.append((f"  lag p50/p99, {label}", a, b, "", ""))
    return rows


def _subs(subscriptions: tuple[str, ...]) -> str:
    """Subscriptions as A and B."""
    names = {SUB_A: "A", SUB_B: "B"}
    return ",".join(names.get(s.lower(), s) for s in subscriptions) or "-"


def _log(result: RunResult) -> str:
    return f"{result.log_warnings}/{result.log_errors}"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--min-duration", type=float, default=30.0)
    parser.add_argument("--max-duration", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--kill-at", type=_floats, help="seconds after registration, e.g. 40,70")
    parser.add_argument("--kill-fractions", type=_floats, default=[1 / 3, 1 / 2])
    parser.add_argument(
        "--restart-after",
        type=float,
        help="start a killed replica again this many seconds after the kill (systemd: 5)",
    )
    parser.add_argument("--deadline", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--keep", type=Path, help="work here and keep the logs")
    args = parser.parse_args()
    if args.kills >= args.replicas:
        parser.error("--kills must leave at least one replica")
    if len(args.kill_at or args.kill_fractions) < args.kills:
        parser.error("give --kill-at or --kill-fractions a time for each of --kills")
    vaults = vault_ids(2, subscription=SUB_A, rg="rg-a") + vault_ids(
        2, subscription=SUB_B, rg="rg-b"
    )
    specs = job_specs(args.jobs, vaults, args.min_duration, args.max_duration, args.seed)
    print(
        f"replicas: {args.jobs} jobs, 2 subscriptions, durations {args.min_duration:g}-"
        f"{args.max_duration:g} s, interval {args.interval:g} s; 1 replica, then"
        f" {args.replicas} with {args.kills} kill -9"
        + ("" if args.restart_after is None else f", restarted after {args.restart_after:g} s"),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="backupjobd-replicas-") as tmp:
        root = args.keep or Path(tmp)
        (root / "one").mkdir(parents=True, exist_ok=True)
        (root / "many").mkdir(parents=True, exist_ok=True)
        one = run(1, [], specs, args, root / "one")
        kill_at = args.kill_at or [f * one.wall for f in args.kill_fractions]
        kill_at = sorted(kill_at)[: args.kills]
        print(f"kills at {', '.join(f'{t:.0f}' for t in kill_at)} s after registration", flush=True)
        many = run(args.replicas, kill_at, specs, args, root / "many")
    report(args, one, many)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
