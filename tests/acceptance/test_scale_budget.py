"""At scale inside a tight read budget: the real daemon (`backupjobd serve`) follows 2,000
jobs in 4 vaults of 2 subscriptions to the end against the real emulator process, which
enforces a per-subscription read budget of 80 burst / 25 per second and pages lists by 200.

The daemon keeps its own budget under the emulator's (60 / 20 per second per subscription),
so the emulator never has to answer 429; vault sweeps make that affordable: one list page
refreshes up to 200 running jobs, and each job needs about one GET at the end (plus early
and detail reads).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from pathlib import Path

import pytest

from backupjobd.adapters.sql.store import SqlStore
from backupjobd.core.model import JobRecord, TransitionRecord
from tests.acceptance.conftest import Daemon, Emulator, http, process_cpu_seconds

JOBS = 2000
SUBSCRIPTIONS = ("5c5c5c5c-1111-4000-8000-00000000000a", "5c5c5c5c-2222-4000-8000-00000000000b")
VAULTS = [
    f"/subscriptions/{sub}/resourceGroups/rg-scale/providers/Microsoft.RecoveryServices"
    f"/vaults/vault-{sub[-1]}{n}"
    for sub in SUBSCRIPTIONS
    for n in (1, 2)
]
FINALS = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
MIN_DURATION_S, MAX_DURATION_S = 5.0, 40.0
DEADLINE_S = 150.0


class NotAllFinished(AssertionError):
    """Not every job finished before the deadline (kept apart from wrong results)."""


def _configure(daemon: Daemon) -> None:
    text = daemon.config_path.read_text()
    text = text.split("[polling]")[0]
    daemon.config_path.write_text(
        text
        + """
[polling]
interval_seconds = 5
min_interval_seconds = 2
tick_seconds = 0.5
not_found_grace_seconds = 60

[throttle]
reads_burst = 60
reads_per_second = 20
reserve_reads = 2
# The whole configured budget: this test is about keeping under the emulator's, not about
# leaving room for other clients (test_shared_budget.py is).
max_share = 1.0
"""
    )


async def _read_db(url: str) -> tuple[list[JobRecord], dict[str, list[TransitionRecord]]]:
    store = SqlStore.from_url(url)
    try:
        jobs = await store.list_jobs()
        histories = {j.job_id: (await store.history(j.pk))[0] for j in jobs}
        return jobs, histories
    finally:
        await store.close()


async def _finished(url: str) -> int:
    store = SqlStore.from_url(url)
    try:
        counts = await store.counts()
        return int(counts.get("jobs_finished", 0))
    finally:
        await store.close()


@pytest.mark.timeout(DEADLINE_S + 90)
def test_two_thousand_jobs_finish_inside_a_tight_read_budget(
    tmp_path: Path, emulator: Emulator, daemon: Daemon
) -> None:
    _configure(daemon)
    db_url = f"sqlite+aiosqlite:///{tmp_path}/backupjobd.db"
    http(
        "POST",
        f"{emulator.base}/admin/config",
        # ARM's real refill rate with a smaller bucket; the daemon keeps under both.
        {"read_burst": 80, "read_refill_per_second": 25, "page_size": 200},
    )
    rng = random.Random(20261126)
    specs = [
        {
            "vault_id": VAULTS[i % len(VAULTS)],
            "final_status": FINALS[i % len(FINALS)],
            "duration_seconds": round(rng.uniform(MIN_DURATION_S, MAX_DURATION_S), 2),
        }
        for i in range(JOBS)
    ]
    created = http("POST", f"{emulator.base}/admin/jobs", specs)[2]["jobs"]
    truth = {job["job_id"]: spec["final_status"] for job, spec in zip(created, specs, strict=True)}
    assert len(truth) == JOBS

    started = time.monotonic()
    daemon.ok("register", "-", stdin=json.dumps([job["id"] for job in created]))
    daemon.start()
    assert daemon.process is not None

    finished = 0
    cpu = 0.0
    while time.monotonic() - started < DEADLINE_S:
        assert daemon.process.poll() is None, daemon.log_text()[-3000:]
        cpu = process_cpu_seconds(daemon.process.pid)
        finished = asyncio.run(_finished(db_url))
        if finished >= JOBS:
            break
        time.sleep(1.0)  # a bounded wait on the condition above, not a synchronisation
    wall = time.monotonic() - started
    stats = emulator.stats()
    assert daemon.stop() == 0

    kinds = stats["by_kind"]
    gets, lists = int(kinds.get("job_get", 0)), int(kinds.get("job_list", 0))
    print(
        f"\n{JOBS} jobs in {len(VAULTS)} vaults / {len(SUBSCRIPTIONS)} subscriptions, "
        f"emulator budget 80 burst + 25/s per subscription, page size 200\n"
        f"finished            {finished} of {JOBS}\n"
        f"wall time           {wall:.1f} s (registration to the last finish)\n"
        f"ARM reads           {gets + lists} (job_get {gets}, job_list {lists}): "
        f"{(gets + lists) / JOBS:.2f} per job, {(gets + lists) / wall:.1f}/s\n"
        f"reads by sub        {stats['reads_by_subscription']}\n"
        f"429 from the budget {stats['throttled']}\n"
        f"daemon CPU          {cpu:.1f} s"
    )
    assert stats["throttled"] == 0

    # Whatever finished is right, and whatever did not is still honestly in progress.
    jobs, histories = asyncio.run(_read_db(db_url))
    assert len(jobs) == JOBS
    wrong = [
        j.job_id
        for j in jobs
        if (j.status != truth[j.job_id] if j.finished else j.status not in (None, "InProgress"))
    ]
    assert wrong == [], f"{len(wrong)} jobs with a wrong status, e.g. {wrong[:5]}"
    broken = []
    for job in jobs:
        chain = [(t.from_status, t.to_status) for t in histories[job.job_id]]
        expected_last = truth[job.job_id] if job.finished else job.status
        starts = not chain or chain[0][0] is None
        ends = (chain[-1][1] if chain else None) == expected_last
        linked = all(b[0] == a[1] for a, b in itertools.pairwise(chain))
        statuses = [to for _, to in chain]
        if not (starts and ends and linked and len(set(statuses)) == len(statuses)):
            broken.append((job.job_id, chain))
    assert broken == [], f"{len(broken)} broken histories, e.g. {broken[:3]}"
    if finished < JOBS:
        raise NotAllFinished(f"only {finished} of {JOBS} finished within {DEADLINE_S:.0f} s")
