"""Start-up cost of a read command: `backupjobd jobs list` against `python -c "import sqlalchemy"`.

    python bench/cli_startup.py [--runs 15] [--jobs 20] [--backupjobd PATH] [--python PATH]

A read command has to import SQLAlchemy to read the database, so that import is the floor; what
it pays beyond it (aiohttp, APScheduler, Alembic, the HTTP API...) is the start-up a user feels on
every `jobs list`. A fresh SQLite database in a temporary directory is migrated and given
`--jobs` registered jobs; then each command runs `--runs` times, alternating, and the medians of
the wall times are printed with their ratio (the issue's target: at most 1.6x), and the same for
CPU time (user + system of the child process), which holds up better on a busy machine.

`--backupjobd` and `--python` measure another install (say, an older virtualenv's
`bin/backupjobd` and `bin/python`); by default both are taken from this interpreter's bin/.
Wall times depend on the machine's load: run it on an otherwise idle one.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

VAULT = (
    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg"
    "/providers/Microsoft.RecoveryServices/vaults/bench-vault"
)
TARGET_RATIO = 1.6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (median)")
    parser.add_argument("--jobs", type=int, default=20, help="jobs in the small database")
    bin_dir = Path(sys.executable).parent
    parser.add_argument("--backupjobd", default=str(bin_dir / "backupjobd"), metavar="PATH")
    parser.add_argument("--python", default=sys.executable, metavar="PATH")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="cli-startup-") as tmp:
        conf = Path(tmp) / "backupjobd.toml"
        conf.write_text(f'[database]\nurl = "sqlite+aiosqlite:///{Path(tmp) / "jobs.db"}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKUPJOBD_")}
        cli = [args.backupjobd, "--config", str(conf)]
        _check([*cli, "migrate"], env)
        job_ids: list[str] = []
        for _ in range(args.jobs):
            job_ids += ["--job-id", str(uuid.uuid4())]
        _check([*cli, "register", "--vault", VAULT, *job_ids], env)
        listing = [*cli, "jobs", "list"]
        floor = [args.python, "-c", "import sqlalchemy"]
        _check(listing, env)  # warm the page cache and the bytecode caches first
        _check(floor, env)
        list_times: list[tuple[float, float]] = []
        floor_times: list[tuple[float, float]] = []
        for _ in range(args.runs):
            list_times.append(_timed(listing, env))
            floor_times.append(_timed(floor, env))

    print(f"backupjobd: {args.backupjobd}")
    print(f"database: SQLite, {args.jobs} jobs; {args.runs} runs each, medians")
    list_wall, list_cpu = (statistics.median(t[i] for t in list_times) for i in (0, 1))
    floor_wall, floor_cpu = (statistics.median(t[i] for t in floor_times) for i in (0, 1))
    rows = [
        ("", "wall", "cpu"),
        ("backupjobd jobs list", f"{list_wall * 1000:.1f} ms", f"{list_cpu * 1000:.1f} ms"),
        (
            'python -c "import sqlalchemy"',
            f"{floor_wall * 1000:.1f} ms",
            f"{floor_cpu * 1000:.1f} ms",
        ),
    ]
    wall_ratio, cpu_ratio = list_wall / floor_wall, list_cpu / floor_cpu
    verdict = "within" if wall_ratio <= TARGET_RATIO else "over"
    rows.append(("ratio", f"{wall_ratio:.2f}x", f"{cpu_ratio:.2f}x"))
    for name, wall, cpu in rows:
        print(f"  {name:30}{wall:>10}{cpu:>10}")
    print(f"  wall-time ratio {wall_ratio:.2f}x: {verdict} the {TARGET_RATIO}x target")
    return 0


def _check(cmd: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    _check(cmd, env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


if __name__ == "__main__":
    sys.exit(main())
