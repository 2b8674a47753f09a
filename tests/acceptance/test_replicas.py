"""Several `backupjobd serve` replicas: on PostgreSQL they split the work by subscription and
take over from each other after kill -9; on SQLite a second one refuses to start.

Real processes against the real emulator: three replicas on one PostgreSQL database follow
jobs in three subscriptions; `backupjobd replicas --json` shows one subscription each; two are
killed with SIGKILL, and the survivor takes their subscriptions over within a lease span and
a heartbeat, and every job ends right with a clean history (no transition recorded twice).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.conftest import (
    Daemon,
    Emulator,
    assert_clean_chain,
    http,
    wait_until,
)
from tests.integration.conftest import pg_database_url  # noqa: F401 - the fixture

SUBS = [f"7a7a7a7a-{n}{n}{n}{n}-4000-8000-00000000000{n}" for n in (1, 2, 3)]
VAULTS = [
    f"/subscriptions/{s}/resourceGroups/rg-replicas/providers/Microsoft.RecoveryServices"
    f"/vaults/vault-{n}"
    for n, s in enumerate(SUBS)
]
FINALS = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
JOBS_PER_SUB = 20
TAKEOVER_S = 15 + 3 + 10  # lease span + a heartbeat + slack for a loaded machine
DEADLINE_S = 150.0


def replicas(daemon: Daemon) -> list[dict[str, Any]]:
    return list(json.loads(daemon.ok("replicas", "--json")))


def owners(daemon: Daemon) -> dict[str, list[str]]:
    return {r["instance_id"]: r["owns"] for r in replicas(daemon)}


def replica(base: Daemon, tmp_path: Path, n: int) -> Daemon:
    return Daemon(base.config_path, base.env, tmp_path / f"replica-{n}.log")


@pytest.mark.timeout(DEADLINE_S + 120)
def test_three_replicas_on_postgresql_split_the_work_and_survive_kill_9(
    tmp_path: Path,
    emulator: Emulator,
    daemon: Daemon,
    pg_database_url: str,  # noqa: F811 - the fixture imported above
) -> None:
    text = daemon.config_path.read_text()
    text = text.replace(
        f'url = "sqlite+aiosqlite:///{tmp_path}/backupjobd.db"', f'url = "{pg_database_url}"'
    )
    daemon.config_path.write_text(text)
    rng = random.Random(20261206)
    specs = [
        {
            "vault_id": VAULTS[i % len(VAULTS)],
            "final_status": FINALS[i % len(FINALS)],
            "duration_seconds": round(rng.uniform(10.0, 30.0), 2),
        }
        for i in range(JOBS_PER_SUB * len(SUBS))
    ]
    created = http("POST", f"{emulator.base}/admin/jobs", specs)[2]["jobs"]
    truth = {job["job_id"]: spec["final_status"] for job, spec in zip(created, specs, strict=True)}
    daemon.ok("register", "-", stdin=json.dumps([job["id"] for job in created]))

    fleet = [replica(daemon, tmp_path, n) for n in range(3)]
    try:
        for member in fleet:
            member.start()
        wait_until(
            "three replicas owning one subscription each",
            lambda: sorted(len(v) for v in owners(daemon).values()) == [1, 1, 1],
            60,
        )
        listed = replicas(daemon)
        assert sorted(s for r in listed for s in r["owns"]) == SUBS
        assert {r["pid"] for r in listed} == {m.process.pid for m in fleet if m.process}
        # Two replicas die without a word; their leases expire and the survivor claims them.
        for victim in fleet[:2]:
            victim.kill9()
        survivor = fleet[2]
        assert survivor.process is not None
        killed_at = time.monotonic()
        wait_until(
            "the survivor to own every subscription",
            lambda: list(owners(daemon).values()) == [SUBS],
            TAKEOVER_S + 15,
        )
        took_over = time.monotonic() - killed_at
        print(f"\nkill -9 of two replicas: the survivor owned all three after {took_over:.1f} s")
        assert took_over <= TAKEOVER_S
        wait_until(
            "every job to finish",
            lambda: all(j["finished"] for j in daemon.jobs()),
            DEADLINE_S,
        )
        assert survivor.process.poll() is None, survivor.log_text()[-3000:]
        log = survivor.log_text()
        assert "now polling subscription" in log
        assert survivor.stop() == 0
    finally:
        for member in fleet:
            member.close()
    jobs = daemon.jobs()
    assert len(jobs) == len(truth)
    wrong = [j["job_id"] for j in jobs if j["status"] != truth[j["job_id"]]]
    assert wrong == [], f"{len(wrong)} jobs with a wrong status, e.g. {wrong[:5]}"
    for job in jobs:
        assert_clean_chain(daemon.history(job["job_id"]), truth[job["job_id"]])


def test_a_second_serve_on_one_sqlite_file_refuses_to_start(daemon: Daemon) -> None:
    daemon.ok("migrate")
    daemon.start()
    assert daemon.process is not None
    wait_until("serve to start", lambda: "backupjobd serving" in daemon.log_text(), 30)
    second = daemon.cli("serve")
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr
    assert "already running" in lines[0] and "PostgreSQL" in lines[0]
    assert daemon.process.poll() is None  # the first one is undisturbed
    [me] = replicas(daemon)
    assert me["pid"] == daemon.process.pid
    assert daemon.stop() == 0
    # Once it is gone, serve starts again on the same file.
    daemon.start()
    wait_until(
        "serve to start again",
        lambda: daemon.log_text().count("backupjobd serving") == 2,
        30,
    )
    assert daemon.stop() == 0
