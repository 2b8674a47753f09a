"""Vault sweeps end to end in one process: a real Tracker (sweeps on), a real SqlStore on
SQLite and the emulator over loopback HTTP, all on one fake clock.

One paged `backupJobs?$filter=status eq 'InProgress'` stands in for the single GETs of a
vault's running jobs; jobs that left the list, changed, or whose detail is due still get a
full GET, so every job ends with its true status, a clean history and its final snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import types
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

import pytest

from backupjobd.adapters import budget as budget_module
from backupjobd.adapters.budget import ReadBudget
from backupjobd.config import WebhookConfig
from backupjobd.core import azure
from backupjobd.core.decisions import PollPolicy, StuckRules, Tracking
from backupjobd.core.leases import Fence
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import JobRegistration
from backupjobd.core.sweeps import LEASE_INTERVALS
from backupjobd.emulator import (
    DEFAULT_VAULT_ID,
    EmulatorState,
    Fault,
    JobSpec,
)
from backupjobd.testing import BASE, policy
from tests.integration.rig import MakeRig, Rig

TOKEN = "sweeps-token-SECRET"
FINALS = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]
POLICY = policy(
    interval=5, min_interval=2, not_found_grace=30, max_backoff=10, operation_interval=2
)
STUCK_POLICY = dataclasses.replace(POLICY, stuck=StuckRules(default=timedelta(seconds=20)))
DETAIL_S = 60.0
SWEEP_MIN_JOBS = 3
RUN_DEADLINE_S = 10.0
STEP_TIMEOUT_S = 5.0

VAULT_A_ID = DEFAULT_VAULT_ID
SUB_A = azure.vault_from_id(VAULT_A_ID).subscription_id
SUB_B = "bbbbbbbb-2222-3333-4444-555555555555"
VAULT_B_ID = (
    f"/subscriptions/{SUB_B}/resourceGroups/rg-other/providers/Microsoft.RecoveryServices"
    "/vaults/vault-other"
)


class SweepState(EmulatorState):
    """The emulator, able to fail the n-th list request (a page in the middle of a sweep);
    `Fault.path_contains` cannot tell a list from a GET (`…/backupJobs` is a prefix of both)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_list_requests: set[int] = set()
        self.list_requests = 0
        self._kind: str | None = None

    def record_request(self, kind: str) -> None:
        super().record_request(kind)
        self._kind = kind
        if kind == "job_list":
            self.list_requests += 1

    def take_fault(self, path: str) -> Fault | None:
        if self._kind == "job_list" and self.list_requests in self.fail_list_requests:
            self.fail_list_requests.discard(self.list_requests)
            return Fault("500", 1)
        return super().take_fault(path)


@dataclass
class Env(Rig):
    run_deadline: ClassVar[float] = RUN_DEADLINE_S
    state: SweepState
    truth: dict[str, str] = field(default_factory=dict)

    def reads(self) -> int:
        kinds = self.kinds()
        return kinds.get("job_get", 0) + kinds.get("job_list", 0)

    async def add_jobs(self, specs: list[JobSpec], vault_id: str = VAULT_A_ID) -> list[str]:
        ids = []
        for spec in specs:
            job = self.state.add_job(spec, vault_id=vault_id)
            self.truth[job.job_id] = spec.final_status
            ids.append(job.job_id)
        vault = azure.vault_from_id(vault_id)
        regs = [JobRegistration(vault, job_id, "job-id") for job_id in ids]
        results = await self.store.register(regs, self.clock.now())
        assert all(r.created for r in results)
        return ids

    async def jobs(self, ids: list[str]) -> list[JobRecord]:
        return [await self.job(job_id) for job_id in ids]

    async def all_finished(self) -> bool:
        return all(r.finished for r in await self.store.list_jobs())

    async def check_truth(self) -> None:
        """Every job: its true final status, finished, a clean chain, a final full read."""
        for job_id, final in self.truth.items():
            record = await self.job(job_id)
            assert record.status == final, job_id
            assert record.tracking is Tracking.FINISHED, job_id
            transitions, snapshots = await self.store.history(record.pk)
            assert [(t.from_status, t.to_status) for t in transitions] == [
                (None, "InProgress"),
                ("InProgress", final),
            ], job_id
            last = snapshots[-1]
            assert last.status == final
            assert last.properties["status"] == final
            assert "extendedInfo" in last.properties
            assert last.properties["extendedInfo"]["tasksList"], job_id
            assert "endTime" in last.properties
            # Never a snapshot of a list item (they have no extendedInfo).
            assert all("extendedInfo" in s.properties for s in snapshots), job_id


MakeEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
def make_env(make_rig: MakeRig) -> MakeEnv:
    """`make_rig` with this file's emulator, read budget, policy and sweep settings."""

    async def make(
        *,
        sweep_min_jobs: int = SWEEP_MIN_JOBS,
        page_size: int = 200,
        concurrency: int = 4,
        detail_s: float = DETAIL_S,
        policy: PollPolicy = POLICY,
        webhooks: tuple[WebhookConfig, ...] = (),
        name: str = "sweeps",
        must_drain: bool = True,
    ) -> Env:
        rig = await make_rig(
            cls=Env,
            state_cls=SweepState,
            token=TOKEN,
            name=name,
            emulator={"page_size": page_size, "epoch": BASE.timestamp()},
            # The budget runs on the fake clock too: 250 reads of burst never run out in a round.
            budget=lambda clock: ReadBudget(250, 25.0, reserve=10, clock=clock),
            policy=policy,
            concurrency=concurrency,
            seed=11,
            must_drain=must_drain,
            tracker_options={
                "sweep_min_jobs": sweep_min_jobs,
                "detail_interval_seconds": detail_s,
                "webhooks": webhooks,
            },
        )
        assert isinstance(rig, Env)
        return rig

    return make


def grouped_specs(
    count: int, group: int = 3, first: float = 8.0, gap: float = 3.0
) -> list[JobSpec]:
    """Jobs finishing `group` at a time (so a sweep always has company), mixed finals."""
    return [
        JobSpec(final_status=FINALS[i % len(FINALS)], duration_seconds=first + gap * (i // group))
        for i in range(count)
    ]


# --------------------------------------------------------------------------- (a) lifecycle


async def test_thirty_jobs_are_swept_in_pages_and_finish_with_their_true_status(
    make_env: MakeEnv,
) -> None:
    env = await make_env(page_size=7)
    ids = await env.add_jobs(grouped_specs(30))

    # First look: one sweep of five pages of 7 (30 in progress) sees every job running;
    # a list item carries no extendedInfo, so nothing is kept as a snapshot yet.
    await env.run()
    assert env.kinds().get("job_list", 0) == 5
    assert env.kinds().get("job_get", 0) == 0
    for record in await env.jobs(ids):
        assert record.status == "InProgress"
        assert record.last_detail_at is None
        transitions, snapshots = await env.store.history(record.pk)
        assert [(t.from_status, t.to_status) for t in transitions] == [(None, "InProgress")]
        assert snapshots == []

    # The first detail read is due one detail interval after registration; these jobs
    # are all shorter, so from here on: sweeps, and one GET for each job that left the
    # in-progress list (finished), which records its final snapshot.
    rounds: list[tuple[float, int, int, int, int]] = []
    last = [env.kinds().get("job_get", 0), env.kinds().get("job_list", 0), 0]

    async def account() -> None:
        gets, lists = env.kinds().get("job_get", 0), env.kinds().get("job_list", 0)
        finished = sum(1 for r in await env.store.list_jobs() if r.finished)
        running = sum(
            1
            for j in env.state.jobs_in_vault(VAULT_A_ID)
            if env.state.job_status(j) == "InProgress"
        )
        rounds.append((env.clock.t, gets - last[0], lists - last[1], finished - last[2], running))
        last[:] = [gets, lists, finished]

    env.clock.advance(1)
    await env.run_until(env.all_finished, step=1.0, max_steps=120, each=account)

    for t, gets, lists, finished, running in rounds:
        assert gets == finished, f"t={t}: {gets} GETs for {finished} finished jobs"
        # Each sweep follows nextLink to the end: ceil(in progress / 7) pages. Once jobs
        # end, one sweep tries the window their starts span (all 30 jobs, 5 pages), cut
        # at the in-progress pages plus one per four ends, then lists the in-progress jobs.
        pages = max(1, math.ceil(running / 7))
        assert lists == 0 or pages <= lists <= 2 * pages + 1, (t, lists, running)
    assert {i: env.gets(i) for i in ids} == dict.fromkeys(ids, 1)
    assert sum(lists for _, _, lists, _, _ in rounds) > 10
    for record in await env.jobs(ids):
        _, snapshots = await env.store.history(record.pk)
        assert len(snapshots) == 1 and "extendedInfo" in snapshots[0].properties
        assert snapshots[0].status == record.status
    await env.check_truth()


async def test_ends_a_window_list_shows_are_recorded_before_their_final_gets(
    make_env: MakeEnv,
) -> None:
    """While jobs end, sweeps list the window their starts span (one page here, as the
    in-progress list): the list shows each end with its final status, which is recorded
    at once; the GET that keeps the final snapshot comes after."""
    env = await make_env(page_size=50)
    ids = await env.add_jobs(grouped_specs(30, group=5))
    await env.run()
    # Single GETs fail for a while (the lists do not): whatever ends meanwhile is known
    # from the lists alone.
    env.state.add_fault("503", path_contains="/backupJobs/", count=40)
    recorded_before_get: set[str] = set()

    async def watch() -> None:
        for record in await env.store.list_jobs():
            ended = azure.is_terminal_status(record.status)
            if ended and record.tracking is Tracking.ACTIVE and env.gets(record.job_id) == 0:
                recorded_before_get.add(record.job_id)

    env.clock.advance(1)
    await env.run_until(env.all_finished, step=1.0, max_steps=120, each=watch)
    # The first group's ends are found by the in-progress list (their GETs then record
    # them); from then on, by the window list.
    assert len(recorded_before_get) >= 10, len(recorded_before_get)
    assert env.state.stats()["window_list_pages"] > 0
    assert env.state.stats()["faults_by_kind"] == {"503": 40}
    assert {i: env.gets(i) for i in ids} == dict.fromkeys(ids, 1)
    await env.check_truth()


async def test_a_window_crowded_with_other_jobs_falls_back_to_the_in_progress_list(
    make_env: MakeEnv,
) -> None:
    """60 jobs nobody tracks ended in the same seconds: the window of ours lists 13 pages
    of 7 where the running ones take at most 5. The window list stops at the pages it is
    worth, the sweep lists the in-progress jobs instead, and the vault keeps to them."""
    env = await make_env(page_size=7)
    for _ in range(60):
        env.state.add_job(JobSpec(final_status="Completed", duration_seconds=1.0))
    ids = await env.add_jobs(grouped_specs(30, group=5))
    await env.run()
    env.clock.advance(1)
    await env.run_until(env.all_finished, step=1.0, max_steps=120)
    assert {i: env.gets(i) for i in ids} == dict.fromkeys(ids, 1)
    await env.check_truth()
    # One window list tried, cut at the in-progress list's pages (5 at most) plus one per
    # four ends; then only in-progress lists (a window list every sweep: 13 pages each).
    assert 1 <= env.state.stats()["window_list_pages"] <= 6


# --------------------------------------------------------------------------- (b) read cost


async def _reads_to_completion(make_env: MakeEnv, sweep_min_jobs: int, name: str) -> int:
    env = await make_env(sweep_min_jobs=sweep_min_jobs, page_size=7, name=name)
    await env.add_jobs(grouped_specs(30, first=10.0, gap=4.0))
    await env.run_until(env.all_finished, step=1.0, max_steps=120)
    await env.check_truth()
    return env.reads()


async def test_sweeps_need_far_fewer_reads_than_one_get_per_job(make_env: MakeEnv) -> None:
    swept = await _reads_to_completion(make_env, SWEEP_MIN_JOBS, "swept")
    single = await _reads_to_completion(make_env, 0, "single")
    print(
        f"\nreads per job to completion (30 jobs, 10-46 s, interval 5 s): "
        f"sweeps {swept / 30:.2f}, single GETs {single / 30:.2f}"
    )
    assert swept < single
    assert swept * 2 < single, (swept, single)


# --------------------------------------------------------------------------- (c) list fails


async def _steady(env: Env) -> None:
    """Run rounds until, after the first sweep, one was a sweep alone (no GET): the state the
    fault tests start in."""
    for _ in range(10):
        gets, lists = env.kinds().get("job_get", 0), env.kinds().get("job_list", 0)
        await env.run()
        swept = env.kinds().get("job_list", 0) > lists
        if swept and lists > 0 and env.kinds().get("job_get", 0) == gets:
            return
        env.clock.advance(POLICY.min_interval.total_seconds())
    raise AssertionError("never reached a round that was a sweep alone")


async def test_a_failed_list_page_falls_back_to_single_gets_for_that_round(
    make_env: MakeEnv,
) -> None:
    env = await make_env(page_size=7)
    ids = await env.add_jobs(grouped_specs(30, first=50.0, gap=1.0))
    await _steady(env)
    before = {r.job_id: r for r in await env.jobs(ids)}

    # The next sweep fails on its third page: nothing it listed may be used.
    due = env.tracker.next_sweep_at(DEFAULT_VAULT_ID)
    assert due is not None
    env.clock.advance((due - env.clock.now()).total_seconds())
    env.state.fail_list_requests = {env.state.list_requests + 3}
    gets, lists = env.kinds().get("job_get", 0), env.kinds().get("job_list", 0)
    await env.run()
    assert env.state.fail_list_requests == set(), "the sweep did not reach page 3"
    assert env.kinds().get("job_list", 0) == lists + 3
    assert env.kinds().get("job_get", 0) == gets + 30  # each job read once, in full
    for record in await env.jobs(ids):
        assert record.status == "InProgress"
        assert record.consecutive_failures == 0
        assert record.last_error is None
        # The GET, and the sweeps not yet stored (they are stored with any row write).
        assert record.poll_count > before[record.job_id].poll_count
        assert record.last_detail_at == env.clock.now()
        transitions, _ = await env.store.history(record.pk)
        assert [(t.from_status, t.to_status) for t in transitions] == [(None, "InProgress")]

    # The round after sweeps again, all five pages.
    env.clock.advance(POLICY.interval.total_seconds())
    gets, lists = env.kinds().get("job_get", 0), env.kinds().get("job_list", 0)
    await env.run()
    assert env.kinds().get("job_list", 0) == lists + 5
    assert env.kinds().get("job_get", 0) == gets

    await env.run_until(env.all_finished, step=1.0, max_steps=120)
    await env.check_truth()


async def test_a_list_answering_500_on_its_first_page_costs_one_round_of_gets(
    make_env: MakeEnv,
) -> None:
    env = await make_env()
    ids = await env.add_jobs(grouped_specs(6, first=30.0, gap=2.0))
    await _steady(env)
    env.clock.advance(POLICY.interval.total_seconds())
    env.state.add_fault("500", count=1)
    gets, lists = env.kinds().get("job_get", 0), env.kinds().get("job_list", 0)
    await env.run()
    assert env.kinds().get("job_list", 0) == lists + 1
    assert env.kinds().get("job_get", 0) == gets + 6
    assert env.state.stats()["faults_by_kind"] == {"500": 1}
    for record in await env.jobs(ids):
        assert record.status == "InProgress" and record.last_error is None
    await env.run_until(env.all_finished, step=1.0, max_steps=120)
    await env.check_truth()


# --------------------------------------------------------------------------- (d) detail


async def test_a_long_swept_job_still_gets_a_full_read_every_detail_interval(
    make_env: MakeEnv,
) -> None:
    env = await make_env(detail_s=30.0)
    ids = await env.add_jobs([JobSpec(duration_seconds=400.0) for _ in range(4)])
    full_reads: dict[str, list[float]] = {i: [] for i in ids}
    gets = dict.fromkeys(ids, 0)

    async def note_full_reads() -> None:
        for job_id in ids:
            now = env.gets(job_id)
            if now > gets[job_id]:
                full_reads[job_id].append(env.clock.t)
                gets[job_id] = now

    async def long_enough() -> bool:
        return env.clock.t >= 200.0

    await env.run_until(long_enough, step=1.0, max_steps=260, each=note_full_reads)
    lists = env.kinds().get("job_list", 0)
    assert lists >= 30, lists  # mostly swept...
    for job_id in ids:
        times = full_reads[job_id]
        # ...yet read in full at least every detail interval (plus one poll interval).
        assert len(times) >= math.floor(200 / 30), (job_id, times)
        assert len(times) <= 200 / 30 + 3, (job_id, times)
        gaps = [b - a for a, b in itertools.pairwise([*times, env.clock.t])]
        assert max(gaps) <= 30.0 + POLICY.interval.total_seconds() + 1.0, (job_id, times)
        record = await env.job(job_id)
        assert record.status == "InProgress"
        assert record.last_detail_at is not None
        assert env.clock.now() - record.last_detail_at <= timedelta(seconds=36)
        _, snapshots = await env.store.history(record.pk)
        # Progress advances between full reads, so each one is a new snapshot.
        assert len(snapshots) >= len(times) - 1
        assert all("extendedInfo" in s.properties for s in snapshots)
        progress = [s.properties["extendedInfo"]["progressPercentage"] for s in snapshots]
        assert progress == sorted(progress) and progress[-1] > progress[0]


# --------------------------------------------------------------------------- (e) budget


class ParkedSleeps:
    """`asyncio.sleep` inside the read budget parks until the test releases it (the test
    then owns time: a 30 s pause costs no real seconds)."""

    def __init__(self) -> None:
        self.count = 0
        self.release = asyncio.Event()

    async def sleep(self, _seconds: float) -> None:
        self.count += 1
        await self.release.wait()


@pytest.fixture
def parked(monkeypatch: pytest.MonkeyPatch) -> ParkedSleeps:
    sleeps = ParkedSleeps()
    monkeypatch.setattr(
        budget_module, "asyncio", types.SimpleNamespace(sleep=sleeps.sleep, Lock=asyncio.Lock)
    )
    return sleeps


async def _until(check: Callable[[], Awaitable[bool]], *, tries: int = 200) -> bool:
    """A bounded wait on a condition while the tracker's tasks run."""
    for _ in range(tries):
        if await check():
            return True
        await asyncio.sleep(0.01)
    return False


async def _b_finishes_while_a_is_paused(env: Env, ids_b: list[str]) -> None:
    """Advance the fake clock a second at a time (never to A's Retry-After) until every job
    of subscription B has finished; the tracker's own tasks do the polling."""

    async def b_finished() -> bool:
        await env.tracker.tick()
        return all(r.finished for r in await env.jobs(ids_b))

    while env.clock.t < 25.0:
        if await _until(b_finished, tries=10):
            return
        env.clock.advance(1.0)
    unfinished = [r.job_id for r in await env.jobs(ids_b) if not r.finished]
    raise AssertionError(f"{len(unfinished)} jobs of subscription B waited for A's pause")


async def test_a_throttled_subscription_does_not_hold_up_another(
    make_env: MakeEnv, parked: ParkedSleeps
) -> None:
    env = await make_env(concurrency=4, must_drain=False)
    ids_a = await env.add_jobs([JobSpec(duration_seconds=600.0) for _ in range(8)])
    env.clock.advance(0.5)
    ids_b = await env.add_jobs(
        [JobSpec(final_status=FINALS[i % 4], duration_seconds=6.0) for i in range(6)],
        VAULT_B_ID,
    )
    env.state.add_fault("429", retry_after=30, path_contains="/vaults/vault-emulator/", count=50)
    budget = env.arm.budget
    assert budget is not None
    await env.tracker.tick()

    async def a_paused() -> bool:
        return budget.delay(SUB_A) > 0

    assert await _until(a_paused)
    assert budget.delay(SUB_B) == 0

    await _b_finishes_while_a_is_paused(env, ids_b)
    assert budget.delay(SUB_A) > 0
    for record in await env.jobs(ids_b):
        assert record.status == env.truth[record.job_id]
    for record in await env.jobs(ids_a):
        assert not record.finished


async def test_a_429_on_one_subscriptions_sweep_pauses_only_that_subscription(
    make_env: MakeEnv, parked: ParkedSleeps
) -> None:
    """With pollers to spare (the case that works today): A's sweep gets a 429, the whole
    subscription pauses, B's jobs are swept, read and finish on schedule meanwhile."""
    env = await make_env(concurrency=16, must_drain=False)
    ids_a = await env.add_jobs([JobSpec(duration_seconds=600.0) for _ in range(4)])
    ids_b = await env.add_jobs(
        [JobSpec(final_status=FINALS[i % 4], duration_seconds=9.0) for i in range(4)],
        VAULT_B_ID,
    )
    await env.run()  # the first sweep of each vault
    env.clock.advance(POLICY.min_interval.total_seconds())
    await env.run()  # the first detail reads
    env.state.add_fault("429", retry_after=30, path_contains="/vaults/vault-emulator/", count=50)
    env.clock.advance(POLICY.min_interval.total_seconds())
    lists_b = env.state.stats()["reads_by_subscription"].get(SUB_B, 0)
    await env.tracker.tick()

    budget = env.arm.budget
    assert budget is not None

    async def a_paused() -> bool:
        return budget.delay(SUB_A) > 0

    assert await _until(a_paused)
    assert budget.delay(SUB_B) == 0
    next_b = {r.job_id: r.next_poll_at for r in await env.jobs(ids_b)}

    await _b_finishes_while_a_is_paused(env, ids_b)
    assert budget.delay(SUB_A) > 0
    assert env.state.stats()["reads_by_subscription"][SUB_B] > lists_b
    for record in await env.jobs(ids_b):
        assert record.status == env.truth[record.job_id] and record.finished
        assert record.next_poll_at is None and next_b[record.job_id] is not None
    states = {s.subscription_id: s for s in budget.snapshot()}
    assert states[SUB_A].throttled >= 1
    assert states[SUB_B].throttled == 0
    for record in await env.jobs(ids_a):
        assert record.status == "InProgress" and not record.finished


# --------------------------------------------------------------------------- stuck events


async def test_a_job_found_stuck_by_a_sweep_raises_its_stuck_event(make_env: MakeEnv) -> None:
    hook = WebhookConfig(url="http://127.0.0.1:9/hook", name="ops", events=("stuck",))
    env = await make_env(policy=STUCK_POLICY, webhooks=(hook,), detail_s=300.0)
    ids = await env.add_jobs([JobSpec(duration_seconds=600.0) for _ in range(3)])

    async def all_stuck() -> bool:
        return all(r.stuck_since is not None for r in await env.jobs(ids))

    await env.run_until(all_stuck, step=1.0, max_steps=60)
    for record in await env.jobs(ids):
        # The stuck verdict came from a sweep: no full read since it was given.
        assert record.stuck_since is not None
        assert record.last_detail_at is None or record.last_detail_at < record.stuck_since
    pending = await env.store.outbox_list("pending")
    assert sorted(e.event_type for e in pending) == ["com.backupjobd.job.stuck"] * 3


async def test_with_sweeps_off_the_same_stuck_jobs_raise_their_events(make_env: MakeEnv) -> None:
    """The control for the test above: one GET per poll writes the stuck events."""
    hook = WebhookConfig(url="http://127.0.0.1:9/hook", name="ops", events=("stuck",))
    env = await make_env(policy=STUCK_POLICY, webhooks=(hook,), sweep_min_jobs=0)
    ids = await env.add_jobs([JobSpec(duration_seconds=600.0) for _ in range(3)])

    async def all_stuck() -> bool:
        return all(r.stuck_since is not None for r in await env.jobs(ids))

    await env.run_until(all_stuck, step=1.0, max_steps=60)
    assert env.kinds().get("job_list", 0) == 0
    pending = await env.store.outbox_list("pending")
    assert sorted(e.event_type for e in pending) == ["com.backupjobd.job.stuck"] * 3


# --------------------------------------------------------------------------- (f) members


def long_specs(count: int, seconds: float = 3600.0) -> list[JobSpec]:
    return [JobSpec(final_status="Completed", duration_seconds=seconds) for _ in range(count)]


async def _members(env: Env, ids: list[str]) -> list[JobRecord]:
    """First look (one write each), then one more sweep: the jobs are the vault's members."""
    await env.run()
    env.clock.advance(STEP_S)
    await env.run()
    return await env.jobs(ids)


# Longer than any jittered interval, so each step is due for exactly one sweep.
STEP_S = 1.2 * POLICY.interval.total_seconds()


async def test_sweeps_that_see_nothing_new_write_no_row_and_hold_a_lease(make_env: MakeEnv) -> None:
    env = await make_env(page_size=7, detail_s=10_000)
    ids = await env.add_jobs(long_specs(10))
    first = {r.job_id: r for r in await _members(env, ids)}
    lists = env.kinds()["job_list"]
    for _ in range(8):
        env.clock.advance(STEP_S)
        await env.run()
    # Eight sweeps of two pages each, and not one GET.
    assert env.kinds()["job_list"] - lists == 8 * 2
    assert env.kinds().get("job_get", 0) == 0
    now = env.clock.now()
    for record in await env.jobs(ids):
        before = first[record.job_id]
        # No row written: the same version, the same history...
        assert record.version == before.version
        assert record.status == "InProgress"
        transitions, snapshots = await env.store.history(record.pk)
        assert [(t.from_status, t.to_status) for t in transitions] == [(None, "InProgress")]
        assert snapshots == []
        # ...and the stored next poll is a lease beyond the next sweep: nobody else
        # polls the job meanwhile.
        assert record.next_poll_at is not None
        assert now + POLICY.interval < record.next_poll_at <= now + POLICY.max_detection_lag
    assert await env.store.due_jobs(now, 100) == []

    # Draining hands the jobs back due now, so a restarted daemon polls them at once,
    # and stores every sweep as a poll.
    await env.tracker.drain(2)
    assert {r.job_id for r in await env.store.due_jobs(now, 100)} == set(ids)
    for record in await env.jobs(ids):
        # The sweep that made them members, and the eight since.
        assert record.poll_count == first[record.job_id].poll_count + 1 + 8
        assert record.last_polled_at == now


async def test_the_lease_is_renewed_every_few_sweeps_and_stores_the_polls_counted_since(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    lagging = dataclasses.replace(POLICY, max_detection_lag=4 * POLICY.interval)
    env = await make_env(page_size=50, detail_s=10_000, policy=lagging)
    ids = await env.add_jobs(long_specs(6))
    first = {r.job_id: r for r in await _members(env, ids)}
    renewals: list[tuple[datetime, list[int] | None]] = []
    reschedule = env.store.reschedule_jobs

    async def spy(
        pks: Sequence[int],
        next_poll_at: datetime,
        polled_at: datetime | None = None,
        polls: Sequence[int] | None = None,
        fence: Fence | None = None,
    ) -> int:
        renewals.append((next_poll_at, None if polls is None else list(polls)))
        return await reschedule(pks, next_poll_at, polled_at, polls, fence)

    monkeypatch.setattr(env.store, "reschedule_jobs", spy)
    sweeps = 9
    for _ in range(sweeps):
        env.clock.advance(STEP_S)
        await env.run()
        now = env.clock.now()
        for record in await env.jobs(ids):
            # Whatever was stored last still covers the next sweep and one interval.
            next_sweep = env.tracker.next_sweep_at(DEFAULT_VAULT_ID)
            assert next_sweep is not None and record.next_poll_at is not None
            assert record.next_poll_at >= next_sweep + POLICY.interval
            assert record.next_poll_at <= now + lagging.max_detection_lag
    # Fewer writes than sweeps, and together they stored one poll per sweep.
    assert 1 < len(renewals) < sweeps
    stored = sum(polls[0] for _, polls in renewals if polls)
    for record in await env.jobs(ids):
        assert first[record.job_id].poll_count + stored == record.poll_count
        assert record.version == first[record.job_id].version
    # (The sweep that made them members is stored with the first renewal.)
    assert stored <= 1 + sweeps and all(len(set(p or [])) == 1 for _, p in renewals)


async def test_a_dead_process_swept_jobs_come_due_when_the_lease_ends(make_env: MakeEnv) -> None:
    env = await make_env(page_size=50, detail_s=10_000)
    ids = await env.add_jobs(long_specs(6))
    records = await _members(env, ids)
    now = env.clock.now()
    lease = max(r.next_poll_at for r in records if r.next_poll_at is not None)
    # What another process (a replica, or this one restarted after kill -9) sees: the
    # jobs come due at most four intervals after the last sweep.
    assert await env.store.due_jobs(now, 100) == []
    assert lease - now <= (LEASE_INTERVALS + 1) * POLICY.interval
    assert {r.job_id for r in await env.store.due_jobs(lease, 100)} == set(ids)


async def test_a_job_stopped_while_its_vault_is_swept_is_left_alone(make_env: MakeEnv) -> None:
    env = await make_env(page_size=50, detail_s=10_000)
    ids = await env.add_jobs(long_specs(5, seconds=40.0))
    await _members(env, ids)
    assert await env.store.stop_tracking(await env.job(ids[0]), env.clock.now())
    stopped = await env.job(ids[0])

    async def others_finished() -> bool:
        return all(r.finished for r in await env.jobs(ids[1:]))

    await env.run_until(others_finished, step=1.0, max_steps=120)
    victim = await env.job(ids[0])
    assert victim.tracking is Tracking.STOPPED
    assert victim.version == stopped.version and victim.status == "InProgress"
    transitions, _ = await env.store.history(victim.pk)
    assert [(t.from_status, t.to_status) for t in transitions] == [(None, "InProgress")]
    # Sweeps write nothing between lease renewals, so they notice the stop late: at
    # most the one GET of its end, whose result is discarded.
    assert env.gets(ids[0]) <= 1
    for record in await env.jobs(ids[1:]):
        transitions, _ = await env.store.history(record.pk)
        assert [(t.from_status, t.to_status) for t in transitions] == [
            (None, "InProgress"),
            ("InProgress", "Completed"),
        ]


# --------------------------------------------------------------------------- Backup vaults

BACKUP_VAULT_ID = (
    f"/subscriptions/{SUB_A}/resourceGroups/rg-bv/providers/Microsoft.DataProtection"
    "/backupVaults/bv-sweeps"
)


async def _backup_vault_reads(
    make_env: MakeEnv, *, running: int, history: int, name: str, sweep_min_jobs: int = 3
) -> tuple[Env, list[str], int, int]:
    """`running` Backup vault jobs tracked to the end in a vault also holding `history`
    finished jobs (which its unfiltered list pages through): (env, ids, lists, gets)."""
    env = await make_env(page_size=7, name=name, sweep_min_jobs=sweep_min_jobs)
    for _ in range(history):
        env.state.add_job(
            JobSpec(final_status="Succeeded", duration_seconds=1),
            vault_id=BACKUP_VAULT_ID,
            created_at=env.clock.t - 3600,
        )
    specs = [
        JobSpec(final_status="Succeeded", duration_seconds=10.0 + 4 * (i // 3))
        for i in range(running)
    ]
    ids = await env.add_jobs(specs, BACKUP_VAULT_ID)
    await env.run_until(env.all_finished, step=1.0, max_steps=120)
    for job_id in ids:
        record = await env.job(job_id)
        assert record.status == "Succeeded", job_id
        assert await env.transitions(job_id) == [(None, "Started"), ("Started", "Succeeded")]
        _, snapshots = await env.store.history(record.pk)
        assert all("extendedInfo" in s.properties for s in snapshots), job_id
    kinds = env.kinds()
    return env, ids, kinds.get("job_list", 0), kinds.get("job_get", 0)


async def test_a_backup_vault_is_swept_while_its_list_is_cheaper(make_env: MakeEnv) -> None:
    """Its list has no $filter: a sweep pages through every job of the vault, and still
    costs less than the running jobs' GETs while they outnumber its pages."""
    _, _, lists, gets = await _backup_vault_reads(make_env, running=21, history=0, name="bv")
    _, _, _, single = await _backup_vault_reads(
        make_env, running=21, history=0, name="bv-single", sweep_min_jobs=0
    )
    print(f"\nBackup vault, 21 jobs: swept {lists} list pages + {gets} GETs, single {single}")
    assert lists > 0
    assert lists + gets < single


async def test_a_backup_vault_with_a_long_history_is_not_swept(make_env: MakeEnv) -> None:
    """With 60 old jobs (9 pages of 7) and 6 running, the pages cost more than the GETs:
    after the first look (one list, size unknown yet) the jobs are read one by one."""
    _, ids, lists, gets = await _backup_vault_reads(
        make_env, running=6, history=60, name="bv-history"
    )
    assert lists <= math.ceil(66 / 7)  # at most the one first look
    assert gets >= len(ids)
