"""Durable transitions per second through the store API (SQLite, and PostgreSQL when reachable).

    python bench/store_throughput.py [--jobs 10000] [--batch 500] [--concurrency 16]
                                     [--pg-url postgresql+asyncpg://postgres@127.0.0.1:5432/test]
                                     [--no-pg]

For each database and mode, a fresh database gets `--jobs` registered jobs; then every job gets
the decision a first poll makes (a None -> InProgress transition plus an extendedInfo snapshot,
computed beforehand by the pure core, so only the store is timed), as fast as possible:

* `apply_job sequential`: one transaction per job, one after another;
* `apply_job xN concurrent`: one transaction per job, N at a time (as the daemon's pollers);
* `apply_jobs batch B`: B jobs per transaction, when the store has `apply_jobs`.

SQLite runs as the store configures it (WAL, synchronous=FULL): every commit is durable.
PostgreSQL gets a fresh database created next to the one in `--pg-url` and dropped afterwards.
Prints transitions per second (committed transitions / elapsed) for each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from backupjobd.adapters.sql import schema
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core import azure
from backupjobd.core.decisions import JobDecision, PollPolicy, Seen, decide_job
from backupjobd.core.model import JobRecord, JobWrite
from backupjobd.core.registration import JobRegistration

DEFAULT_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
VAULT = (
    "/subscriptions/7c7c7c7c-0000-0000-0000-000000000001/resourceGroups/rg-store"
    "/providers/Microsoft.RecoveryServices/vaults/vault-store"
)


def _body(job_id: str, start: datetime) -> dict[str, Any]:
    """A JobResource as a first poll sees it (InProgress, extendedInfo)."""
    iso = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {
        "id": f"{VAULT}/backupJobs/{job_id}",
        "name": job_id,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": {
            "jobType": "AzureIaaSVMJob",
            "entityFriendlyName": f"vm-{job_id[:8]}",
            "backupManagementType": "AzureIaasVM",
            "operation": "Backup",
            "status": "InProgress",
            "startTime": iso,
            "activityId": str(uuid.uuid4()),
            "duration": "PT1M2.5S",
            "actionsInfo": ["Cancellable"],
            "virtualMachineVersion": "Compute",
            "extendedInfo": {
                "tasksList": [
                    {"taskId": "Take Snapshot", "status": "InProgress", "startTime": iso},
                    {
                        "taskId": "Transfer data to vault",
                        "status": "NotStarted",
                        "progressPercentage": 0.0,
                    },
                ],
                "propertyBag": {"VM Name": f"vm-{job_id[:8]}", "Backup Size": "0 MB"},
                "progressPercentage": 3.5,
            },
        },
    }


async def _prepare(url: str, jobs: int) -> tuple[SqlStore, list[tuple[JobRecord, JobDecision]]]:
    store = SqlStore.from_url(url)
    await store.migrate()
    now = datetime.now(UTC)
    vault = azure.vault_from_id(VAULT)
    regs = [JobRegistration(vault, str(uuid.uuid4()), "bench") for _ in range(jobs)]
    for i in range(0, len(regs), 5000):
        await store.register(regs[i : i + 5000], now - timedelta(minutes=1))
    records = await store.list_jobs()
    policy = PollPolicy()
    work = []
    for record in records:
        seen = Seen(azure.parse_job_resource(_body(record.job_id, now)))
        decision = decide_job(record.state(), seen, now, policy, 0.5)
        assert decision.transition is not None and decision.snapshot is not None
        work.append((record, decision))
    return store, work


async def _transitions(store: SqlStore) -> int:
    async with store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(schema.transitions)) or 0)


Mode = Callable[[SqlStore, Sequence[tuple[JobRecord, JobDecision]]], Awaitable[int]]


async def sequential(store: SqlStore, work: Sequence[tuple[JobRecord, JobDecision]]) -> int:
    now = datetime.now(UTC)
    applied = 0
    for record, decision in work:
        applied += await store.apply_job(record, decision, now)
    return applied


def concurrent(n: int) -> Mode:
    async def run(store: SqlStore, work: Sequence[tuple[JobRecord, JobDecision]]) -> int:
        now = datetime.now(UTC)
        queue = list(reversed(work))
        applied = 0

        async def worker() -> None:
            nonlocal applied
            while queue:
                record, decision = queue.pop()
                ok = await store.apply_job(record, decision, now)
                applied += ok

        await asyncio.gather(*(worker() for _ in range(n)))
        return applied

    return run


def batched(size: int) -> Mode:
    async def run(store: SqlStore, work: Sequence[tuple[JobRecord, JobDecision]]) -> int:
        now = datetime.now(UTC)
        applied = 0
        for i in range(0, len(work), size):
            writes = [JobWrite(record, decision, now) for record, decision in work[i : i + size]]
            applied += sum(bool(ok) for ok in await store.apply_jobs(writes))
        return applied

    return run


async def measure(url: str, jobs: int, mode: Mode) -> tuple[float, int, int]:
    """(seconds, decisions applied, transitions committed) for one mode on a fresh store."""
    store, work = await _prepare(url, jobs)
    try:
        t0 = time.perf_counter()
        applied = await mode(store, work)
        elapsed = time.perf_counter() - t0
        return elapsed, applied, await _transitions(store)
    finally:
        await store.close()


def _modes(args: argparse.Namespace) -> list[tuple[str, Mode]]:
    modes: list[tuple[str, Mode]] = [("apply_job sequential", sequential)]
    if args.concurrency > 1:
        modes.append((f"apply_job x{args.concurrency} concurrent", concurrent(args.concurrency)))
    if hasattr(SqlStore, "apply_jobs"):
        modes.append((f"apply_jobs batch {args.batch}", batched(args.batch)))
    return modes


async def _pg_database(admin_url: str, name: str, create: bool) -> None:
    import asyncpg

    dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def _report(backend: str, name: str, jobs: int, result: tuple[float, int, int]) -> str:
    elapsed, applied, transitions = result
    return (
        f"{backend:<10} {name:<28} {transitions / elapsed:>10.0f} transitions/s"
        f"  ({transitions} transitions, {applied}/{jobs} applied, {elapsed:.2f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pg-url", default=DEFAULT_PG)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    modes = _modes(args)
    if not hasattr(SqlStore, "apply_jobs"):
        print("(this store has no apply_jobs: batched mode skipped)")
    lines = []
    with tempfile.TemporaryDirectory(prefix="backupjobd-store-") as tmp:
        for i, (name, mode) in enumerate(modes):
            url = f"sqlite+aiosqlite:///{Path(tmp)}/store-{i}.db"
            lines.append(
                _report("sqlite", name, args.jobs, asyncio.run(measure(url, args.jobs, mode)))
            )
            print(lines[-1], flush=True)
    if not args.no_pg:
        db = f"bench_store_{uuid.uuid4().hex[:12]}"
        try:
            asyncio.run(_pg_database(args.pg_url, db, create=True))
        except Exception as exc:
            print(f"postgresql not reachable at {args.pg_url}: {exc}")
        else:
            pg_url = args.pg_url.rsplit("/", 1)[0] + f"/{db}"
            try:
                for name, mode in modes:
                    asyncio.run(_pg_database(args.pg_url, db, create=False))
                    asyncio.run(_pg_database(args.pg_url, db, create=True))
                    result = asyncio.run(measure(pg_url, args.jobs, mode))
                    lines.append(_report("postgresql", name, args.jobs, result))
                    print(lines[-1], flush=True)
            finally:
                asyncio.run(_pg_database(args.pg_url, db, create=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
