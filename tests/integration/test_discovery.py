"""Job discovery wired as in production (SqlStore on SQLite, ArmClient over aiohttp, the Tracker)
against the in-process emulator; one fake clock drives the emulator, the Discoverer and the
Tracker, so windows and cursors are exact and nothing sleeps.

Also here: the `[discovery]` config section, the pure helpers of `backupjobd.service.discovery`, and
the store contract of the `discovery_state` table on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from backupjobd import config
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.config import DiscoveryConfig
from backupjobd.core import azure
from backupjobd.core.azure import filter_time, window_filter
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import JobRecord
from backupjobd.emulator import JobSpec
from backupjobd.errors import ConfigError, StoreError
from backupjobd.service.discovery import Discoverer, base_operation, job_wanted, window
from backupjobd.testing import BASE
from tests.integration.rig import MakeRig, Rig

TOKEN = "discovery-token-SECRET"
SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "99999999-2222-3333-4444-555555555555"
HOUR = 3600.0


def vault_id(name: str, sub: str = SUB) -> str:
    return (
        f"/subscriptions/{sub}/resourceGroups/rg-disc"
        f"/providers/Microsoft.RecoveryServices/vaults/{name}"
    )


VAULT_A, VAULT_B = vault_id("vault-a"), vault_id("vault-b")


class Env(Rig):
    def discoverer(self, **overrides: Any) -> Discoverer:
        settings: dict[str, Any] = {"enabled": True, "vault": (VAULT_A,), **overrides}
        return Discoverer(self.store, self.arm, DiscoveryConfig(**settings), self.clock.now)

    def started(self, vault: str, *, ago: float, **spec: Any) -> str:
        """A job in the emulator that started `ago` seconds before now."""
        created = self.state.add_job(JobSpec(**spec), vault_id=vault, created_at=self.clock.t - ago)
        return created.job_id

    async def admin(self, path: str, body: Any) -> Any:
        async with self.session.post(f"{self.endpoint}{path}", json=body) as resp:
            assert resp.status == 201, await resp.text()
            return await resp.json()

    async def tracked(self) -> dict[str, JobRecord]:
        return {r.job_id: r for r in await self.store.list_jobs()}

    def list_requests(self) -> int:
        return int(self.state.stats()["by_kind"].get("job_list", 0))


@pytest.fixture
async def env(make_rig: MakeRig) -> Env:
    rig = await make_rig(
        cls=Env, token=TOKEN, name="discovery", seed=3, emulator={"epoch": BASE.timestamp()}
    )
    assert isinstance(rig, Env)
    return rig


# --------------------------------------------------------------------------- discovery runs


async def test_scheduled_jobs_are_registered_once(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backupjobd.service.discovery")
    running = [env.started(VAULT_A, ago=600, duration_seconds=4 * HOUR) for _ in range(3)]
    discoverer = env.discoverer()

    assert await discoverer.tick() == 3
    tracked = await env.tracked()
    assert set(tracked) == set(running)
    assert all(r.source == "discovery" and r.vault_id == VAULT_A for r in tracked.values())
    lines = [r for r in caplog.records if getattr(r, "action", None) == "discovery"]
    assert len(lines) == 1 and getattr(lines[0], "vault_id", None) == VAULT_A
    assert "3 newly registered" in lines[0].getMessage()

    # Nothing new: nothing registered, nothing changed.
    env.clock.advance(300)
    assert await discoverer.tick() == 0
    assert await env.tracked() == tracked

    # A job the policy starts later is found by the next run.
    env.clock.advance(60)
    later = env.started(VAULT_A, ago=10, duration_seconds=HOUR)
    env.clock.advance(240)
    assert await discoverer.tick() == 1
    assert (await env.tracked())[later].source == "discovery"
    [state] = await env.store.discovery_states()
    assert state.jobs_found == 4
    assert state.last_listed_until == env.clock.now()


async def test_jobs_finished_on_arrival_are_recorded_with_their_final_status(env: Env) -> None:
    finals = {
        env.started(
            VAULT_A, ago=2 * HOUR, job_type="MabJob", final_status=final, duration_seconds=600
        ): final
        for final in ("Completed", "Failed", "CompletedWithWarnings")
    }
    running = env.started(VAULT_A, ago=60, job_type="AzureIaaSVMJob", duration_seconds=HOUR)

    assert await env.discoverer().tick() == 4
    await env.tracker.run_until_idle(5)

    tracked = await env.tracked()
    for job_id, final in finals.items():
        record = tracked[job_id]
        assert (record.status, record.tracking) == (final, Tracking.FINISHED)
        assert record.backup_management_type == "MAB"
        assert record.end_time is not None
        transitions, snapshots = await env.store.history(record.pk)
        assert [(t.from_status, t.to_status) for t in transitions] == [(None, final)]
        assert snapshots[-1].properties["status"] == final
        # One full GET was enough to record the final state.
        assert env.state.stats()["job_gets"][job_id] == 1
    assert tracked[running].status == "InProgress"
    assert tracked[running].tracking is Tracking.ACTIVE


async def test_filters_by_operation_and_management_type_with_one_list_request(env: Env) -> None:
    wanted = {
        # SQL backups finish as "Backup (Full)": the suffix does not matter.
        env.started(VAULT_A, ago=HOUR, job_type="AzureWorkloadJob", duration_seconds=60),
        env.started(VAULT_A, ago=HOUR, job_type="AzureWorkloadJob", duration_seconds=2 * HOUR),
        env.started(VAULT_A, ago=HOUR, job_type="MabJob", operation="Restore"),
    }
    env.started(VAULT_A, ago=HOUR, job_type="AzureIaaSVMJob")  # other management type
    env.started(
        VAULT_A, ago=HOUR, job_type="MabJob", operation="ConfigureBackup"
    )  # other operation
    env.started(VAULT_A, ago=HOUR, job_type="AzureStorageJob", operation="Restore")  # both wrong

    discoverer = env.discoverer(
        operations=("backup", "Restore"), backup_management_types=("AzureWorkload", "mab")
    )
    assert await discoverer.tick() == 3
    assert set(await env.tracked()) == wanted
    assert env.list_requests() == 1
    run = discoverer.last_runs[azure.vault_from_id(VAULT_A).key]
    assert (run.listed, run.matched, run.registered) == (6, 3, 3)


async def test_look_back_on_the_first_run_then_the_cursor_also_after_a_restart(env: Env) -> None:
    env.clock.advance(7 * 24 * HOUR)
    too_old = env.started(VAULT_A, ago=25 * HOUR, final_status="Completed", duration_seconds=60)
    recent = env.started(VAULT_A, ago=23 * HOUR, final_status="Completed", duration_seconds=60)

    first = env.discoverer(lookback_hours=24, overlap_seconds=120)
    assert await first.tick() == 1
    assert set(await env.tracked()) == {recent}
    assert too_old not in await env.tracked()
    listed_until = env.clock.now()
    run = first.last_runs[azure.vault_from_id(VAULT_A).key]
    assert (run.since, run.until) == (listed_until - timedelta(hours=24), listed_until)

    # Jobs Azure shows only after that run: one stamped inside the overlap, one before it.
    env.clock.advance(300)
    late = env.started(VAULT_A, ago=300 + 60, duration_seconds=HOUR)
    missed = env.started(VAULT_A, ago=300 + 3 * HOUR, duration_seconds=4 * HOUR)

    # A restart: a new Discoverer on the same database continues from the stored cursor;
    # the look-back window (which would cover `missed`) is not applied again.
    restarted = env.discoverer(lookback_hours=24, overlap_seconds=120)
    assert await restarted.tick() == 1
    tracked = await env.tracked()
    assert late in tracked and missed not in tracked
    run = restarted.last_runs[azure.vault_from_id(VAULT_A).key]
    assert run.since == listed_until - timedelta(seconds=120)
    assert run.until == env.clock.now()


async def test_subscription_enumeration_finds_every_vault_across_pages(env: Env) -> None:
    env.state.page_size = 2  # vault lists and job lists both take several pages
    with_jobs = [vault_id(f"vault-{i}") for i in range(3)]
    jobs = {
        env.started(v, ago=HOUR, duration_seconds=2 * HOUR) for v in with_jobs for _ in range(3)
    }
    empty = [vault_id("vault-empty-1"), vault_id("vault-empty-2")]
    await env.admin("/admin/vaults", [{"vault_id": v} for v in empty])
    elsewhere = env.started(vault_id("vault-x", OTHER_SUB), ago=HOUR)

    discoverer = env.discoverer(vault=(), subscription=(SUB,), vault_refresh_seconds=3600)
    assert {v.id for v in await discoverer.vaults()} == {*with_jobs, *empty}
    assert await discoverer.tick() == 9
    tracked = await env.tracked()
    assert set(tracked) == jobs and elsewhere not in tracked
    assert {s.vault_id for s in await env.store.discovery_states()} == {*with_jobs, *empty}

    # A vault created later is listed once the vault list is refreshed.
    newcomer = vault_id("vault-new")
    env.clock.advance(60)
    new_job = env.started(newcomer, ago=10, duration_seconds=HOUR)
    env.clock.advance(300)
    assert await discoverer.tick() == 0
    env.clock.advance(3600)
    assert await discoverer.tick() == 1
    assert (await env.tracked())[new_job].vault_id == newcomer


async def test_a_failing_vault_does_not_stop_the_others_and_is_retried(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="backupjobd.service.discovery")
    good = env.started(VAULT_A, ago=HOUR, duration_seconds=2 * HOUR)
    bad = env.started(VAULT_B, ago=HOUR, duration_seconds=2 * HOUR)
    env.state.add_fault("500", count=2, path_contains="vaults/vault-b/backupJobs")
    discoverer = env.discoverer(vault=(VAULT_B, VAULT_A))

    assert await discoverer.tick() == 1
    assert set(await env.tracked()) == {good}
    assert [s.vault_id for s in await env.store.discovery_states()] == [VAULT_A]
    env.clock.advance(300)
    assert await discoverer.tick() == 0  # the same error again
    warnings = [r for r in caplog.records if getattr(r, "action", None) == "discovery_error"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.DEBUG]
    assert getattr(warnings[0], "vault_id", None) == VAULT_B
    assert "HTTP 500" in warnings[0].getMessage()

    # The fault is gone: the vault, never listed, gets its look-back window.
    env.clock.advance(300)
    assert await discoverer.tick() == 1
    assert set(await env.tracked()) == {good, bad}
    assert any("again" in r.getMessage() for r in caplog.records)


async def test_a_failing_subscription_list_is_retried_on_the_next_tick(env: Env) -> None:
    configured = env.started(VAULT_A, ago=HOUR, duration_seconds=2 * HOUR)
    enumerated = env.started(vault_id("vault-b", OTHER_SUB), ago=HOUR, duration_seconds=2 * HOUR)
    env.state.add_fault("503", path_contains=f"{OTHER_SUB}/providers/")
    discoverer = env.discoverer(vault=(VAULT_A,), subscription=(OTHER_SUB,))

    assert await discoverer.tick() == 1
    assert set(await env.tracked()) == {configured}
    env.clock.advance(300)  # far less than vault_refresh_seconds: a failed list is retried
    assert await discoverer.tick() == 1
    assert set(await env.tracked()) == {configured, enumerated}


async def test_tick_never_raises(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.started(VAULT_A, ago=HOUR)

    async def broken() -> list[Any]:
        raise StoreError("database error while reading discovery state: disk I/O error")

    monkeypatch.setattr(env.store, "discovery_states", broken)
    assert await env.discoverer().tick() == 0

    async def bug() -> list[Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(env.store, "discovery_states", bug)
    assert await env.discoverer().tick() == 0
    assert await env.tracked() == {}


async def test_the_emulator_backdates_jobs_and_lists_vaults(env: Env) -> None:
    """The admin API pieces the acceptance test relies on."""
    created = await env.admin(
        "/admin/jobs",
        [
            {"vault_id": VAULT_A, "job_type": "MabJob", "started_seconds_ago": 7200},
            {"vault_id": VAULT_A, "started_seconds_ago": 1, "duration_seconds": 60},
        ],
    )
    done, running = (env.state.find_job(VAULT_A, j["job_id"]) for j in created["jobs"])
    assert done is not None and running is not None
    assert env.state.job_status(done) == "Completed"
    assert env.state.job_status(running) == "InProgress"
    assert await env.arm.list_vaults(SUB) == [azure.vault_from_id(VAULT_A)]
    async with env.session.post(f"{env.endpoint}/admin/vaults", json={"vault_id": "nope"}) as resp:
        assert resp.status == 400


# --------------------------------------------------------------------------- store contract


async def test_discovery_state_is_kept_per_vault(store: SqlStore) -> None:
    a, b = azure.vault_from_id(VAULT_A), azure.vault_from_id(VAULT_B.upper())
    assert await store.discovery_states() == []
    await store.save_discovery_state(a, BASE, BASE + timedelta(seconds=1), 3)
    await store.save_discovery_state(b, BASE, BASE, 0)
    later = BASE + timedelta(minutes=5)
    await store.save_discovery_state(a, later, later, 2)
    states = {s.vault_id.lower(): s for s in await store.discovery_states()}
    assert set(states) == {a.key, b.key}
    assert (states[a.key].last_listed_until, states[a.key].jobs_found) == (later, 5)
    assert states[a.key].last_run_at == later
    assert states[b.key].vault_id == b.id
    assert states[a.key].to_json()["last_listed_until"] == "2026-03-01T12:05:00Z"


# --------------------------------------------------------------------------- pure helpers


def test_filter_times_use_a_12_hour_clock_in_utc() -> None:
    assert filter_time(datetime(2026, 3, 1, 13, 5, 9, 999, tzinfo=UTC)) == "2026-03-01 01:05:09 PM"
    assert filter_time(datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC)) == "2026-03-01 12:00:00 AM"
    assert filter_time(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)) == "2026-03-01 12:00:00 PM"
    plus_two = datetime(2026, 3, 1, 14, 0, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert filter_time(plus_two) == "2026-03-01 02:00:00 PM"
    assert window_filter(BASE, BASE + timedelta(hours=1)) == (
        "startTime eq '2026-03-01 12:00:00 PM' and endTime eq '2026-03-01 01:00:00 PM'"
    )


def test_window_looks_back_first_then_overlaps_the_cursor() -> None:
    now = BASE + timedelta(seconds=0.7)
    lookback, overlap = timedelta(hours=24), timedelta(seconds=120)
    assert window(None, now, lookback, overlap) == (BASE - lookback, BASE)
    cursor = BASE - timedelta(minutes=5)
    assert window(cursor, now, lookback, overlap) == (cursor - overlap, BASE)
    # A clock that went backwards never yields an inverted window.
    assert window(BASE + timedelta(hours=1), now, lookback, timedelta(0)) == (BASE, BASE)


def test_operation_suffixes_and_filters() -> None:
    assert base_operation("Backup (Full)") == "Backup"
    assert base_operation("Backup (Log) ") == "Backup"
    assert base_operation("Restore") == "Restore"

    def obs(operation: str | None, kind: str | None) -> azure.JobObservation:
        return azure.JobObservation(
            "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e",
            None,
            "InProgress",
            None,
            operation,
            None,
            kind,
            None,
            None,
            None,
            {},
        )

    assert job_wanted(obs("Backup (Full)", "AzureWorkload"), (), ())
    assert job_wanted(obs(None, None), (), ())
    assert job_wanted(obs("Backup (Full)", "AzureWorkload"), ("backup",), ("azureworkload",))
    assert not job_wanted(obs("Restore", "AzureWorkload"), ("Backup",), ())
    assert not job_wanted(obs("Backup", "AzureIaasVM"), (), ("MAB",))
    assert not job_wanted(obs(None, None), ("Backup",), ())
    assert not job_wanted(obs("Backup", None), (), ("MAB",))


# --------------------------------------------------------------------------- config


def test_discovery_config_defaults() -> None:
    disc = config.build({}, {}).discovery
    assert disc == DiscoveryConfig()
    assert (disc.enabled, disc.interval_seconds, disc.lookback_hours) == (False, 300.0, 24.0)
    assert (disc.overlap_seconds, disc.vault_refresh_seconds) == (120.0, 3600.0)
    assert disc.operations == disc.backup_management_types == disc.vault == disc.subscription == ()


def test_discovery_config_from_toml_tables(tmp_path: Path) -> None:
    path = tmp_path / "backupjobd.toml"
    path.write_text(
        f"""
[discovery]
enabled = true
interval_seconds = 60
operations = ["Backup", "Restore", "Backup"]
backup_management_types = ["AzureIaasVM", "MAB"]

[[discovery.vault]]
id = "{VAULT_A}"

[[discovery.vault]]
id = "{VAULT_A.upper().replace("/SUBSCRIPTIONS/", "/subscriptions/")}"

[[discovery.subscription]]
id = "{SUB.upper()}"
""",
        encoding="utf-8",
    )
    disc = config.load(path, {}).discovery
    assert disc.enabled and disc.interval_seconds == 60.0
    assert disc.operations == ("Backup", "Restore")
    assert disc.backup_management_types == ("AzureIaasVM", "MAB")
    assert disc.vault == (VAULT_A,)
    assert disc.subscription == (SUB,)


def test_discovery_config_from_the_environment() -> None:
    env = {
        "BACKUPJOBD_DISCOVERY__ENABLED": "true",
        "BACKUPJOBD_DISCOVERY__VAULT": f'[{{"id": "{VAULT_B}"}}]',
        "BACKUPJOBD_DISCOVERY__SUBSCRIPTION": f'[{{"id": "{SUB}"}}]',
        "BACKUPJOBD_DISCOVERY__OPERATIONS": '["Backup"]',
        "BACKUPJOBD_DISCOVERY__OVERLAP_SECONDS": "0",
    }
    disc = config.build({"discovery": {"vault": [{"id": VAULT_A}]}}, env).discovery
    assert disc.enabled and disc.vault == (VAULT_B,) and disc.subscription == (SUB,)
    assert (disc.operations, disc.overlap_seconds) == (("Backup",), 0.0)


@pytest.mark.parametrize(
    ("raw", "env", "message"),
    [
        ({"enabled": True}, {}, "discovery.enabled"),
        ({"vault": [{"id": "/subscriptions/x/vaults/v"}]}, {}, r"discovery.vault\[0\].id"),
        ({"vault": [{"id": VAULT_A, "name": "a"}]}, {}, r"discovery.vault\[0\].name"),
        ({"vault": [VAULT_A]}, {}, "discovery.vault must be an array of tables"),
        ({"subscription": [{"id": "not-a-guid"}]}, {}, r"discovery.subscription\[0\].id"),
        ({"subscription": [{}]}, {}, r"discovery.subscription\[0\].id"),
        ({"operations": "Backup"}, {}, "discovery.operations must be an array"),
        ({"backup_management_types": [""]}, {}, "discovery.backup_management_types"),
        ({"overlap_seconds": -1}, {}, "discovery.overlap_seconds"),
        ({"lookback_hours": 0}, {}, "discovery.lookback_hours"),
        ({"interval_seconds": 0}, {}, "discovery.interval_seconds"),
        ({"vault_refresh_seconds": -5}, {}, "discovery.vault_refresh_seconds"),
        ({"nope": 1}, {}, "discovery.nope"),
        (
            {},
            {"BACKUPJOBD_DISCOVERY__VAULT": "/subscriptions/..."},
            "discovery.vault must be a JSON",
        ),
        ({}, {"BACKUPJOBD_DISCOVERY__OPERATIONS": "[1]"}, "discovery.operations"),
    ],
)
def test_discovery_config_errors_name_the_key(
    raw: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config.build({"discovery": raw} if raw else {}, env)


def backup_vault_id(name: str, sub: str = SUB) -> str:
    return (
        f"/subscriptions/{sub}/resourceGroups/rg-disc"
        f"/providers/Microsoft.DataProtection/backupVaults/{name}"
    )


async def test_backup_vaults_are_enumerated_and_listed_without_a_filter(env: Env) -> None:
    """A subscription's Backup vaults are enumerated too; their job list has no $filter, so
    every page is read and the window applied here: old jobs are not registered."""
    env.state.page_size = 2
    bv = backup_vault_id("bv-a")
    recent = {
        env.started(bv, ago=600, duration_seconds=HOUR, final_status="Succeeded") for _ in range(3)
    }
    old = env.started(bv, ago=48 * HOUR, duration_seconds=60, final_status="Succeeded")
    rsv_job = env.started(VAULT_A, ago=600, duration_seconds=HOUR)
    configured = backup_vault_id("bv-configured")
    configured_job = env.started(configured, ago=60, duration_seconds=HOUR)

    discoverer = env.discoverer(vault=(configured,), subscription=(SUB,))
    kinds = {v.id: v.kind for v in await discoverer.vaults()}
    assert kinds[bv] is azure.VaultKind.DATA_PROTECTION
    assert kinds[VAULT_A] is azure.VaultKind.RECOVERY_SERVICES
    before = env.list_requests()
    assert await discoverer.tick() == 5
    tracked = await env.tracked()
    assert set(tracked) == {*recent, rsv_job, configured_job}
    assert old not in tracked
    assert tracked[configured_job].vault_kind is azure.VaultKind.DATA_PROTECTION
    # bv-a: 4 jobs at 2 a page = 2 pages; bv-configured: 1; vault-a: 1 (filtered list).
    assert env.list_requests() - before == 4

    await env.tracker.run_until_idle(5)
    assert (await env.tracked())[configured_job].status == "Started"
