"""Where detection lag goes, per job, from a kept `scale.py --inflight` run.

    python bench/scale.py --inflight 10000 --log-level DEBUG --keep /tmp/run
    python bench/lag_breakdown.py /tmp/run

Splits each job's lag (first terminal transition's observed_at minus the job's endTime)
into: waiting for its vault's next sweep to start listing, the list itself, and from the
end of that list to the single GET that recorded the end (queue and read budget). Needs
the daemon's DEBUG log ("swept vault … (listed from … in … s)" lines). Prints percentiles
of each part, for all jobs and for the slowest 1%.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import re
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.baselines import percentile, read_db_jobs

SWEPT = re.compile(r"^(\S+ \S+) DEBUG .*swept vault (\S+) \(listed from (\S+) in ([0-9.]+) s\)")


def _sweeps(log: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    """Per vault (lower-cased id): (list started, list ended), in order."""
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    for line in log.open(encoding="utf-8", errors="replace"):
        match = SWEPT.match(line)
        if match is None:
            continue
        started = datetime.fromisoformat(match.group(3))
        ended = started + timedelta(seconds=float(match.group(4)))
        out.setdefault(match.group(2).lower(), []).append((started, ended))
    for sweeps in out.values():
        sweeps.sort()
    return out


def _vaults(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return {
            job: vault.lower() for job, vault in conn.execute("SELECT job_id, vault_id FROM jobs")
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the --keep directory of a scale.py run")
    args = parser.parse_args()
    sweeps = _sweeps(args.run / "daemon.log")
    if not sweeps:
        print("no sweep lines in daemon.log: run scale.py with --log-level DEBUG", file=sys.stderr)
        return 2
    vault_of = _vaults(args.run / "scale.db")
    jobs = asyncio.run(read_db_jobs(f"sqlite+aiosqlite:///{args.run / 'scale.db'}"))
    parts: list[tuple[float, float, float, float]] = []
    for job in jobs:
        if job.terminal_seen_at is None or job.end_time is None:
            continue
        end, seen = job.end_time, job.terminal_seen_at
        vault_sweeps = sweeps.get(vault_of[job.job_id], [])
        starts = [s for s, _ in vault_sweeps]
        i = bisect.bisect_right(starts, end)
        if i >= len(vault_sweeps) or vault_sweeps[i][0] > seen:
            continue  # recorded by a single GET not following a sweep
        started, ended = vault_sweeps[i]
        lag = (seen - end).total_seconds()
        parts.append(
            (
                lag,
                (started - end).total_seconds(),
                (ended - started).total_seconds(),
                (seen - ended).total_seconds(),
            )
        )
    parts.sort()
    slowest = parts[-max(1, len(parts) // 100) :]
    names = ("lag", "wait for sweep", "list", "list end to GET")
    print(f"{len(parts)} jobs whose end a sweep found (of {len(jobs)})")
    for title, rows in (("all", parts), ("slowest 1%", slowest)):
        print(f"  {title}:")
        for k, name in enumerate(names):
            values = [r[k] for r in rows]
            print(
                f"    {name:<18} p50 {percentile(values, 50):6.1f} s  p99"
                f" {percentile(values, 99):6.1f} s  max {percentile(values, 100):6.1f} s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
