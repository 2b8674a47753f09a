"""Webhook delivery end to end in one process: a real Tracker polls the in-process emulator
and writes outbox rows into a real SqlStore (SQLite), a real Notifier POSTs them to a real
aiohttp receiver on loopback. One fake clock drives the emulator, the tracker and the
notifier, so retries happen when the test moves time, not when a sleep ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from backupjobd import cli
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.config import WebhookConfig
from backupjobd.core import events
from backupjobd.core.decisions import Tracking
from backupjobd.core.model import JobRecord, OutboxRecord
from backupjobd.emulator import DEFAULT_VAULT_ID, JobSpec
from backupjobd.service.notify import EVENT_ID_HEADER, SIGNATURE_HEADER, Notifier
from backupjobd.testing import BASE, TEST_POLICY
from tests.integration.rig import RUN_DEADLINE_S, MakeRig, Rig

TOKEN = "notify-token-SECRET"
SECRET = b"webhook-shared-secret"
POLICY = TEST_POLICY
MAX_ATTEMPTS = 3
MAX_BACKOFF = timedelta(seconds=8)
CONTENT_TYPE = "application/cloudevents+json"
TYPE = "com.backupjobd.job."


# --------------------------------------------------------------------------- the receiver


@dataclass(frozen=True)
class Received:
    hook: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def event_id(self) -> str:
        return self.headers[EVENT_ID_HEADER]


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1 that records every request. It answers `status`, and
    can be stopped (connections refused) and started again on the same port."""

    port: int = 0
    status: int = 200
    hang: asyncio.Event | None = None
    requests: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        sockets = runner.addresses
        self.port = int(sockets[0][1])
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{name}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.status
        self.requests.append(
            Received(request.match_info["name"], dict(request.headers), body, status)
        )
        if self.hang is not None:
            await self.hang.wait()
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    def for_hook(self, hook: str) -> list[Received]:
        return [r for r in self.requests if r.hook == hook]

    def accepted(self, hook: str) -> list[Received]:
        return [r for r in self.for_hook(hook) if 200 <= r.answered < 300]


def verify(secret: bytes, received: Received) -> bool:
    """What a receiver does: recompute the HMAC and compare in constant time."""
    header = received.headers.get(SIGNATURE_HEADER, "")
    scheme, _, given = header.partition("=")
    expected = hmac.new(secret, received.body, hashlib.sha256).hexdigest()
    return scheme == "sha256" and hmac.compare_digest(given, expected)


# --------------------------------------------------------------------------- the wiring


@dataclass
class Env(Rig):
    receiver: Receiver = field(default_factory=Receiver)
    hooks: tuple[WebhookConfig, ...] = ()

    def notifier(
        self,
        store: SqlStore | None = None,
        hooks: Sequence[WebhookConfig] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> Notifier:
        return Notifier(
            store or self.store,
            self.session,
            self.hooks if hooks is None else hooks,
            {"everything": SECRET},
            self.clock.now,
            max_attempts=max_attempts,
            max_backoff=MAX_BACKOFF,
            rng=random.Random(3),
        )

    async def register_job(self, spec: JobSpec) -> JobRecord:
        return await self.register(self.state.add_job(spec).job_id)

    async def run_jobs_to_the_end(self) -> None:
        """Poll whatever is due and advance the clock until every job is finished."""
        for _ in range(60):
            await self.run()
            if all(r.tracking is not Tracking.ACTIVE for r in await self.store.list_jobs()):
                return
            self.clock.advance(1)
        raise AssertionError("jobs did not finish within 60 fake seconds")

    async def outbox(self, state: str) -> list[OutboxRecord]:
        return await self.store.outbox_list(state)

    async def deliver_until(
        self, notifier: Notifier, done: Callable[[], Awaitable[bool]], max_rounds: int = 20
    ) -> int:
        """Tick, check, then jump the fake clock past every pending attempt; bounded."""
        for rounds in range(1, max_rounds + 1):
            await notifier.tick()
            if await done():
                return rounds
            pending = await self.outbox("pending")
            assert pending, "nothing pending, yet the condition does not hold"
            self.clock.advance_to(max(p.next_attempt_at or BASE for p in pending))
        raise AssertionError(f"not done within {max_rounds} delivery rounds")

    def write_config(self) -> Path:
        path = self.tmp_path / "backupjobd.toml"
        path.write_text(f'[database]\nurl = "{self.db_url}"\n', encoding="utf-8")
        return path


@pytest.fixture
async def env(make_rig: MakeRig) -> AsyncIterator[Env]:
    receiver = Receiver()
    await receiver.start()
    hooks = (
        WebhookConfig(receiver.url("everything"), "everything", ("all",), "HOOK_SECRET", 5.0),
        WebhookConfig(receiver.url("pager"), "pager", ("failures",), "", 5.0),
    )
    try:
        rig = await make_rig(
            cls=Env,
            token=TOKEN,
            name="notify",
            tracker_options={"webhooks": hooks},
            receiver=receiver,
            hooks=hooks,
        )
        assert isinstance(rig, Env)
        yield rig
    finally:
        if receiver.hang is not None:
            receiver.hang.set()
        await receiver.stop()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """cli.main configures the root logger for a CLI run; put it back for the next tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def run_cli(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    """`backupjobd …` in-process (cli.main runs its own event loop, so in a thread)."""
    for name in list(os.environ):
        if name.startswith("BACKUPJOBD_"):
            monkeypatch.delenv(name)
    capsys.readouterr()
    with _quiet_root_logger():
        code = await asyncio.to_thread(cli.main, argv)
    return code, capsys.readouterr().out


# --------------------------------------------------------------------------- delivery


async def test_events_are_delivered_signed_with_the_event_id_header(env: Env) -> None:
    ok = await env.register_job(JobSpec(final_status="Completed", duration_seconds=3))
    failed = await env.register_job(JobSpec(final_status="Failed", duration_seconds=4))
    await env.run_jobs_to_the_end()

    pending = await env.outbox("pending")
    assert sorted((p.webhook, p.event_type) for p in pending) == sorted(
        [
            ("everything", TYPE + "inprogress"),
            ("everything", TYPE + "inprogress"),
            ("everything", TYPE + "completed"),
            ("everything", TYPE + "failed"),
            ("pager", TYPE + "failed"),
        ]
    )
    notifier = env.notifier()
    assert await notifier.tick() == 5
    assert await notifier.tick() == 0  # nothing is delivered twice

    assert len(env.receiver.requests) == 5
    for received in env.receiver.requests:
        event = received.event
        assert received.event_id == event["id"]
        assert received.headers["Content-Type"].startswith(CONTENT_TYPE)
        assert event["specversion"] == "1.0"
        assert event["source"] == "backupjobd"
        job_id = event["data"]["job"]["job_id"]
        assert event["subject"] == f"{DEFAULT_VAULT_ID}/backupJobs/{job_id}"
        if received.hook == "everything":
            assert verify(SECRET, received)
            assert not verify(b"another secret", received)
        else:
            assert SIGNATURE_HEADER not in received.headers

    # One event, one id, for every webhook that got it; the same bytes went to both.
    [failed_all] = [
        r for r in env.receiver.for_hook("everything") if r.event["type"].endswith(".failed")
    ]
    [failed_pager] = env.receiver.for_hook("pager")
    assert failed_all.event_id == failed_pager.event_id
    assert failed_all.body == failed_pager.body
    assert failed_pager.event["data"]["job"]["job_id"] == failed.job_id
    assert failed_pager.event["data"]["transition"]["to_status"] == "Failed"

    by_job: dict[str, list[str]] = {}
    for received in env.receiver.for_hook("everything"):
        by_job.setdefault(received.event["data"]["job"]["job_id"], []).append(
            received.event["type"]
        )
    assert sorted(by_job[ok.job_id]) == [TYPE + "completed", TYPE + "inprogress"]
    assert sorted(by_job[failed.job_id]) == [TYPE + "failed", TYPE + "inprogress"]

    delivered = await env.outbox("delivered")
    assert len(delivered) == 5
    assert all(d.attempts == 1 and d.delivered_at == env.clock.now() for d in delivered)
    assert all(d.next_attempt_at is None and d.last_error is None for d in delivered)
    assert {d.event_id for d in delivered} == {r.event_id for r in env.receiver.requests}
    assert await env.store.outbox_counts() == {"pending": 0, "delivered": 5, "dead": 0}


async def test_the_event_body_reads_like_the_committed_job(env: Env) -> None:
    job = await env.register_job(JobSpec(final_status="CompletedWithWarnings", duration_seconds=3))
    await env.run_jobs_to_the_end()
    committed = (await env.job(job.job_id)).to_json()
    [final] = [p for p in await env.outbox("pending") if p.webhook == "pager"]
    event = json.loads(final.payload)
    assert event["type"] == TYPE + "completedwithwarnings"
    assert event["data"]["job"] == committed
    transitions, snapshots = await env.store.history(job.pk)
    assert event["data"]["transition"] == transitions[-1].to_json()
    assert event["data"]["snapshot"] == snapshots[-1].properties


async def test_the_event_after_a_failed_poll_reads_like_the_committed_job(env: Env) -> None:
    # The job ends while its poll is failing: the poll that recovers sees it Completed.
    job = await env.register_job(JobSpec(final_status="Completed", duration_seconds=1.5))
    await env.tracker.run_until_idle(RUN_DEADLINE_S)
    env.state.add_fault("500", count=1, path_contains=job.job_id)
    env.clock.advance(1)
    await env.tracker.run_until_idle(RUN_DEADLINE_S)
    assert (await env.job(job.job_id)).last_error is not None
    await env.run_jobs_to_the_end()
    assert await env.store.history(job.pk) is not None
    transitions, _ = await env.store.history(job.pk)
    assert [t.to_status for t in transitions] == ["InProgress", "Completed"]
    committed = (await env.job(job.job_id)).to_json()
    assert committed["last_error"] is None
    assert committed["poll_count"] == 3  # InProgress, the 500, Completed
    [final] = [
        p
        for p in await env.outbox("pending")
        if p.event_type == TYPE + "completed" and p.webhook == "everything"
    ]
    assert json.loads(final.payload)["data"]["job"] == committed


async def test_receiver_down_then_back_gets_every_event_with_its_original_id_and_bytes(
    env: Env,
) -> None:
    await env.receiver.stop()  # connections refused
    await env.register_job(JobSpec(final_status="Failed", duration_seconds=3))
    await env.register_job(JobSpec(final_status="Completed", duration_seconds=3))
    await env.run_jobs_to_the_end()
    queued = {(p.event_id, p.webhook): p.payload for p in await env.outbox("pending")}
    assert len(queued) == 5

    notifier = env.notifier(max_attempts=10)
    assert await notifier.tick() == 5
    pending = await env.outbox("pending")
    assert len(pending) == 5
    for p in pending:
        assert p.attempts == 1
        assert p.last_error == "request failed: ClientConnectorError"
        assert p.next_attempt_at is not None and p.next_attempt_at > env.clock.now()
        assert p.next_attempt_at - env.clock.now() <= MAX_BACKOFF
    # Not due yet: nothing is tried before next_attempt_at.
    assert await notifier.tick() == 0

    # Back, but failing (500) for a round, then healthy.
    await env.receiver.start()
    env.receiver.status = 500
    env.clock.advance_to(max(p.next_attempt_at or BASE for p in pending))
    assert await notifier.tick() == 5
    assert len(env.receiver.requests) == 5
    assert all(p.attempts == 2 for p in await env.outbox("pending"))
    assert {p.last_error for p in await env.outbox("pending")} == {"HTTP 500"}

    env.receiver.status = 200

    async def all_delivered() -> bool:
        return (await env.store.outbox_counts())["pending"] == 0

    await env.deliver_until(notifier, all_delivered)
    delivered = await env.outbox("delivered")
    assert {(d.event_id, d.webhook) for d in delivered} == set(queued)
    assert all(d.attempts == 3 for d in delivered)

    # Every attempt of one delivery carried the same id and the same bytes (so the same
    # signature); every delivery was accepted once.
    for (event_id, hook), payload in queued.items():
        attempts = [r for r in env.receiver.for_hook(hook) if r.event_id == event_id]
        assert len(attempts) == 2
        assert {r.body for r in attempts} == {payload.encode()}
        assert len({r.headers.get(SIGNATURE_HEADER) for r in attempts}) == 1
        assert [r.answered for r in attempts] == [500, 200]
        assert all(r.event["id"] == event_id for r in attempts)
        if hook == "everything":
            assert all(verify(SECRET, r) for r in attempts)


async def test_a_hanging_receiver_times_out_and_is_retried(env: Env) -> None:
    await env.register_job(JobSpec(final_status="Completed", duration_seconds=60))
    await env.tracker.run_until_idle(RUN_DEADLINE_S)
    env.receiver.hang = asyncio.Event()
    hooks = [WebhookConfig(env.receiver.url("everything"), "everything", ("all",), "", 0.2)]
    notifier = env.notifier(hooks=hooks)
    assert await notifier.tick() == 1
    [pending] = await env.outbox("pending")
    assert pending.attempts == 1
    assert pending.last_error is not None and pending.last_error.startswith("request failed")
    assert len(env.receiver.requests) == 1


async def test_a_webhook_no_longer_configured_is_not_posted_and_ends_dead(env: Env) -> None:
    await env.register_job(JobSpec(final_status="Failed", duration_seconds=2))
    await env.run_jobs_to_the_end()
    notifier = env.notifier(hooks=[env.hooks[0]])

    async def pager_dead() -> bool:
        return all(p.webhook != "pager" for p in await env.outbox("pending"))

    await env.deliver_until(notifier, pager_dead)
    [dead] = await env.outbox("dead")
    assert dead.webhook == "pager"
    assert dead.attempts == MAX_ATTEMPTS
    assert dead.last_error == "webhook 'pager' is no longer configured"
    assert env.receiver.for_hook("pager") == []
    assert len(env.receiver.accepted("everything")) == 2


# --------------------------------------------------------------------------- dead letters


async def test_permanent_failures_become_dead_letters_and_can_be_requeued(
    env: Env, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env.receiver.status = 500
    await env.register_job(JobSpec(final_status="CompletedWithWarnings", duration_seconds=3))
    await env.run_jobs_to_the_end()
    notifier = env.notifier()

    async def none_pending() -> bool:
        return (await env.store.outbox_counts())["pending"] == 0

    rounds = await env.deliver_until(notifier, none_pending)
    assert rounds == MAX_ATTEMPTS
    dead = await env.outbox("dead")
    assert sorted((d.webhook, d.event_type) for d in dead) == [
        ("everything", TYPE + "completedwithwarnings"),
        ("everything", TYPE + "inprogress"),
        ("pager", TYPE + "completedwithwarnings"),
    ]
    for d in dead:
        assert d.attempts == MAX_ATTEMPTS
        assert d.last_error == "HTTP 500"
        assert d.next_attempt_at is None and d.delivered_at is None
        tries = [r for r in env.receiver.for_hook(d.webhook) if r.event_id == d.event_id]
        assert len(tries) == MAX_ATTEMPTS
        assert {r.body for r in tries} == {d.payload.encode()}
    # A dead letter is not tried again, however long we wait.
    env.clock.advance(timedelta(days=1))
    assert await notifier.tick() == 0
    assert len(env.receiver.requests) == 3 * MAX_ATTEMPTS

    config = str(env.write_config())
    code, out = await run_cli(
        ["--config", config, "notify", "failed", "--json"], capsys, monkeypatch
    )
    assert code == 0
    listed = json.loads(out)
    assert sorted((d["event_id"], d["webhook"]) for d in listed) == sorted(
        (d.event_id, d.webhook) for d in dead
    )
    for entry in listed:
        assert entry["state"] == "dead"
        assert entry["attempts"] == MAX_ATTEMPTS
        assert entry["last_error"] == "HTTP 500"
        assert entry["type"].startswith(TYPE)
    code, out = await run_cli(["--config", config, "notify", "failed"], capsys, monkeypatch)
    assert code == 0
    assert "3 dead letter(s)" in out

    # Requeued through the store: a fresh set of attempts, failing again to the end.
    assert await env.store.outbox_requeue_dead(env.clock.now()) == 3
    requeued = await env.outbox("pending")
    assert len(requeued) == 3
    assert all(p.attempts == 0 and p.next_attempt_at == env.clock.now() for p in requeued)
    assert await env.deliver_until(notifier, none_pending) == MAX_ATTEMPTS
    assert len(await env.outbox("dead")) == 3

    # Requeued through the CLI, with the receiver healthy: delivered, same ids.
    env.receiver.status = 200
    code, out = await run_cli(["--config", config, "notify", "retry"], capsys, monkeypatch)
    assert code == 0
    assert "requeued 3 dead letter(s)" in out
    requeued = await env.outbox("pending")
    assert len(requeued) == 3 and all(p.attempts == 0 for p in requeued)
    # The CLI requeues for "now" on the wall clock (the daemon's clock), not this test's.
    wall = datetime.now(UTC)
    for p in requeued:
        assert p.next_attempt_at is not None
        assert abs(p.next_attempt_at - wall) < timedelta(minutes=1)
    env.clock.advance_to(max(p.next_attempt_at or BASE for p in requeued))
    assert await notifier.tick() == 3
    assert await env.store.outbox_counts() == {"pending": 0, "delivered": 3, "dead": 0}
    accepted = {(r.event_id, r.hook) for r in env.receiver.requests if r.answered == 200}
    assert accepted == {(d.event_id, d.webhook) for d in dead}
    code, out = await run_cli(
        ["--config", config, "notify", "failed", "--json"], capsys, monkeypatch
    )
    assert (code, json.loads(out)) == (0, [])


# --------------------------------------------------------------------------- with the transition


async def test_a_poll_that_lost_the_compare_and_set_writes_no_event(env: Env) -> None:
    stale = await env.register_job(JobSpec(final_status="Failed", duration_seconds=5))

    first = await env.tracker.poll_job(stale)
    second = await env.tracker.poll_job(stale)  # same version: its write is refused
    assert first.transition == second.transition == (None, "InProgress")
    pending = await env.outbox("pending")
    assert [(p.webhook, p.event_type) for p in pending] == [("everything", TYPE + "inprogress")]

    # Four racing polls of the stale record: none of them lands, no event is written.
    async with asyncio.timeout(RUN_DEADLINE_S):
        await asyncio.gather(*(env.tracker.poll_job(stale) for _ in range(4)))
    assert len(await env.outbox("pending")) == 1

    # The job fails; a poll from the stale record decides (None -> Failed) but must not land,
    # and so must not announce it.
    env.clock.advance(6)
    late = await env.tracker.poll_job(stale)
    assert late.transition == (None, "Failed")
    assert len(await env.outbox("pending")) == 1
    assert (await env.job(stale.job_id)).status == "InProgress"

    # Directly: apply_job refused (False) writes none of the entries it was given.
    current = await env.job(stale.job_id)
    entries = events.outbox_entries(
        current, late, env.clock.now(), env.hooks, lambda: "11111111-1111-4111-8111-111111111111"
    )
    assert len(entries) == 2
    assert await env.store.apply_job(stale, late, env.clock.now(), entries) is False
    assert len(await env.outbox("pending")) == 1

    # The poll from the current record commits the transition and its events together.
    decision = await env.tracker.poll_job(current)
    assert decision.transition == ("InProgress", "Failed")
    events_now = sorted((p.webhook, p.event_type) for p in await env.outbox("pending"))
    assert events_now == [
        ("everything", TYPE + "failed"),
        ("everything", TYPE + "inprogress"),
        ("pager", TYPE + "failed"),
    ]
    transitions, _ = await env.store.history(current.pk)
    assert [t.to_status for t in transitions] == ["InProgress", "Failed"]
    # One event per committed transition, nothing more.
    all_hook = [
        json.loads(p.payload) for p in await env.outbox("pending") if p.webhook == "everything"
    ]
    assert sorted(e["data"]["transition"]["to_status"] for e in all_hook) == [
        "Failed",
        "InProgress",
    ]


async def test_polls_without_a_transition_write_no_event(env: Env) -> None:
    job = await env.register_job(JobSpec(final_status="Completed", duration_seconds=30))
    for _ in range(5):
        await env.tracker.run_until_idle(RUN_DEADLINE_S)
        env.clock.advance(POLICY.interval)
    assert (await env.job(job.job_id)).poll_count >= 5
    assert [p.event_type for p in await env.outbox("pending")] == [TYPE + "inprogress"]


# --------------------------------------------------------------------------- durability


async def test_the_outbox_survives_closing_and_reopening_the_store(env: Env) -> None:
    await env.receiver.stop()
    await env.register_job(JobSpec(final_status="Failed", duration_seconds=2))
    await env.run_jobs_to_the_end()
    assert await env.notifier().tick() == 3  # all refused: attempts 1, retry scheduled
    before = await env.outbox("pending")
    assert len(before) == 3 and all(p.attempts == 1 for p in before)
    await env.store.close()

    reopened = SqlStore.from_url(env.db_url)
    try:
        await reopened.check_schema()
        after = await reopened.outbox_list("pending")
        assert after == before
        assert await reopened.outbox_counts() == {"pending": 3, "delivered": 0, "dead": 0}

        await env.receiver.start()
        notifier = env.notifier(store=reopened)
        env.clock.advance_to(max(p.next_attempt_at or BASE for p in before))
        assert await notifier.tick() == 3
        assert await reopened.outbox_counts() == {"pending": 0, "delivered": 3, "dead": 0}
        assert sorted((r.event_id, r.hook, r.body) for r in env.receiver.requests) == sorted(
            (p.event_id, p.webhook, p.payload.encode()) for p in before
        )
    finally:
        await reopened.close()


async def test_a_rejected_trigger_is_an_event_for_all_and_failures(env: Env) -> None:
    """The operation ended Failed without a job: one operation.failed event, delivered."""
    from backupjobd.core.registration import Endpoint, operation_from_url

    op = env.state.add_operation(delay_seconds=0.0, result="Failed")
    url = (
        f"{env.endpoint}{DEFAULT_VAULT_ID}/backupOperations/{op.operation_id}"
        "?api-version=2025-08-01"
    )
    [result] = await env.store.register(
        [operation_from_url(url, Endpoint.from_url(env.endpoint), "operation-url")],
        env.clock.now(),
    )
    assert result.created
    for _ in range(5):
        await env.run()
        if await env.outbox("pending"):
            break
        env.clock.advance(1)
    pending = await env.outbox("pending")
    assert {p.webhook for p in pending} == {"everything", "pager"}
    assert {p.event_type for p in pending} == {"com.backupjobd.operation.failed"}
    body = json.loads(pending[0].payload)
    assert body["data"]["operation"]["operation_id"] == op.operation_id
    assert body["data"]["operation"]["last_error"]
    notifier = env.notifier()

    async def delivered() -> bool:
        return len(env.receiver.accepted("pager")) == 1

    await env.deliver_until(notifier, delivered)
    [received] = env.receiver.accepted("pager")
    assert json.loads(received.body)["type"] == "com.backupjobd.operation.failed"
