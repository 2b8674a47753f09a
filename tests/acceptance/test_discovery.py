"""The real daemon with `[discovery]` enabled for a subscription: jobs nobody registered (those
a backup policy starts on schedule), some already finished and some still running, in every
vault of the subscription, end up tracked with source "discovery" and their true final status.

The contract: when `[discovery] enabled`, `serve` runs `Discoverer.tick` at start and then
every `discovery.interval_seconds`.
"""

from __future__ import annotations

from typing import Any

from tests.acceptance.conftest import (
    TERMINAL,
    VAULT,
    Daemon,
    Emulator,
    assert_clean_chain,
    http,
    wait_until,
)

SUBSCRIPTION = VAULT.split("/")[2]
SECOND_VAULT = VAULT.replace("vault-accept", "vault-accept-2")
ELSEWHERE = VAULT.replace(SUBSCRIPTION, "99999999-2222-3333-4444-555555555555")


def _enable_discovery(daemon: Daemon) -> None:
    with daemon.config_path.open("a", encoding="utf-8") as config:
        config.write(
            f"""
[discovery]
enabled = true
interval_seconds = 1
lookback_hours = 24
overlap_seconds = 120

[[discovery.subscription]]
id = "{SUBSCRIPTION}"
"""
        )


def _all_finished(daemon: Daemon, expected: set[str]) -> list[dict[str, Any]] | None:
    jobs = [j for j in daemon.jobs() if j["job_id"] in expected]
    done = len(jobs) == len(expected) and all(j["finished"] for j in jobs)
    return jobs if done else None


def test_discovered_jobs_reach_their_true_final_status(emulator: Emulator, daemon: Daemon) -> None:
    # Jobs started by a policy earlier: MAB agent jobs already finished, VM and SQL jobs
    # still running (they finish while the daemon watches), in two vaults of the subscription.
    finished = emulator.create_jobs(
        [
            {"job_type": "MabJob", "final_status": final, "started_seconds_ago": 3600}
            for final in ("Completed", "Failed", "CompletedWithWarnings")
        ]
    )
    running = emulator.create_jobs(
        [
            {"vault_id": vault, "job_type": kind, "final_status": final, "duration_seconds": 4}
            for vault, kind, final in (
                (VAULT, "AzureIaaSVMJob", "Completed"),
                (SECOND_VAULT, "AzureWorkloadJob", "Failed"),
                (SECOND_VAULT, "AzureIaaSVMJob", "CompletedWithWarnings"),
            )
        ]
    )
    too_old = emulator.create_jobs([{"started_seconds_ago": 2 * 24 * 3600}])
    elsewhere = emulator.create_jobs([{"vault_id": ELSEWHERE}])
    _enable_discovery(daemon)
    daemon.ok("migrate")  # the reads below may come before serve has created the database
    daemon.start()

    expected = {j["job_id"] for j in finished + running}
    jobs = wait_until("the discovered jobs to finish", lambda: _all_finished(daemon, expected), 60)

    # A job the policy starts while the daemon runs is found by a later run.
    later = emulator.create_jobs([{"duration_seconds": 1}])
    expected.add(later[0]["job_id"])
    jobs = wait_until("the later job to finish", lambda: _all_finished(daemon, expected), 60)

    for job in jobs:
        truth = emulator.truth(job["job_id"])
        assert job["source"] == "discovery", job
        assert job["status"] == truth["final_status"] == truth["status"], job
        assert job["status"] in TERMINAL
        assert job["vault_id"].lower() == truth["vault_id"].lower()
        statuses = assert_clean_chain(daemon.history(job["job_id"]), job["status"])
        if job["job_id"] in {j["job_id"] for j in finished}:
            assert statuses == [job["status"]]  # recorded from its first (and only) poll
    tracked = {j["job_id"] for j in daemon.jobs()}
    assert not tracked & {j["job_id"] for j in too_old + elsewhere}
    assert "discovery in vault" in daemon.log_text()
    # Each finished-on-arrival job took a single job GET.
    gets = http("GET", f"{emulator.base}/admin/stats")[2]["job_gets"]
    assert all(gets[j["job_id"]] == 1 for j in finished)
    assert daemon.stop() == 0
