"""Not alone on the subscription: the real daemon (`backupjobd serve`, default `[throttle]`
settings: 250 burst, 25 reads/s, max_share 0.7) follows jobs to their end against the real
emulator process while the read budget is not what its config says:

- others (the portal, scripts, Terraform) take 15 of the subscription's 25 reads/s;
- the subscription's budget is 100 burst / 10 per second, which the config does not know.

The daemon learns the rate left to it from the remaining-reads header and keeps its share of
429s at 1 % or less, and every job ends right with a clean history.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import pytest

from backupjobd.adapters.sql.store import SqlStore
from tests.acceptance.conftest import Daemon, Emulator, assert_clean_chain, http

SUB = "5c5c5c5c-3333-4000-8000-00000000000c"
VAULTS = [
    f"/subscriptions/{SUB}/resourceGroups/rg-shared/providers/Microsoft.RecoveryServices"
    f"/vaults/vault-{n}"
    for n in (1, 2)
]
FINALS = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
JOBS = 250
DEADLINE_S = 120.0


async def _finished(url: str) -> int:
    store = SqlStore.from_url(url)
    try:
        return int((await store.counts()).get("jobs_finished", 0))
    finally:
        await store.close()


@pytest.mark.timeout(DEADLINE_S + 90)
@pytest.mark.parametrize(
    ("burst", "refill", "others"),
    [(250, 25.0, 15.0), (100, 10.0, 0.0)],
    ids=["others-take-15-of-25", "unknown-100-10-budget"],
)
def test_a_shared_or_smaller_budget_is_learned_not_assumed(
    tmp_path: Path,
    emulator: Emulator,
    daemon: Daemon,
    burst: int,
    refill: float,
    others: float,
) -> None:
    text = daemon.config_path.read_text().split("[polling]")[0]
    daemon.config_path.write_text(
        text
        + """
[polling]
interval_seconds = 2
min_interval_seconds = 1
tick_seconds = 0.5
not_found_grace_seconds = 60
"""
    )
    http(
        "POST",
        f"{emulator.base}/admin/config",
        {
            "read_burst": burst,
            "read_refill_per_second": refill,
            "read_others_per_second": others,
            "page_size": 200,
        },
    )
    rng = random.Random(20261206)
    specs = [
        {
            "vault_id": VAULTS[i % len(VAULTS)],
            "final_status": FINALS[i % len(FINALS)],
            "duration_seconds": round(rng.uniform(5.0, 15.0), 2),
        }
        for i in range(JOBS)
    ]
    created = http("POST", f"{emulator.base}/admin/jobs", specs)[2]["jobs"]
    truth = {job["job_id"]: spec["final_status"] for job, spec in zip(created, specs, strict=True)}
    daemon.ok("register", "-", stdin=json.dumps([job["id"] for job in created]))
    db_url = f"sqlite+aiosqlite:///{tmp_path}/backupjobd.db"

    started = time.monotonic()
    daemon.start()
    assert daemon.process is not None
    finished = 0
    while time.monotonic() - started < DEADLINE_S:
        assert daemon.process.poll() is None, daemon.log_text()[-3000:]
        finished = asyncio.run(_finished(db_url))
        if finished >= JOBS:
            break
        time.sleep(1.0)  # a bounded wait on the condition above, not a synchronisation
    wall = time.monotonic() - started
    stats = emulator.stats()
    assert daemon.stop() == 0

    reads = int(stats["reads_by_subscription"].get(SUB, 0))
    throttled = int(stats["throttled"])
    print(
        f"\n{JOBS} jobs, budget {burst} / {refill:g} per s, others take {others:g}/s:"
        f" finished {finished} in {wall:.1f} s, {reads} reads, {throttled} answered 429"
        f" ({throttled / max(1, reads):.2%})"
    )
    assert finished == JOBS, f"only {finished} of {JOBS} finished within {DEADLINE_S:.0f} s"
    assert throttled <= 0.01 * reads, f"{throttled} of {reads} reads answered 429"
    jobs = daemon.jobs()
    assert len(jobs) == JOBS
    wrong = [j["job_id"] for j in jobs if j["status"] != truth[j["job_id"]]]
    assert wrong == [], f"{len(wrong)} jobs with a wrong status, e.g. {wrong[:5]}"
    for job in rng.sample(jobs, 20):
        assert_clean_chain(daemon.history(job["job_id"]), truth[job["job_id"]])
