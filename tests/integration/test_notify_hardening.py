"""Webhook receivers that misbehave on purpose, against a real Notifier and SqlStore: an
answer with a huge or endless body must not be buffered or hold the delivery, and a
receiver that hangs until its timeout must not delay any other receiver's deliveries.

The outbox rows come from the `env` of test_notify (tracker, emulator, fake clock); the
receivers here are loopback aiohttp servers whose behaviour is chosen per webhook name."""

from __future__ import annotations

import asyncio
import contextlib
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from backupjobd.config import WebhookConfig
from backupjobd.emulator import JobSpec
from backupjobd.service.notify import EVENT_ID_HEADER, Notifier
from tests.integration.test_notify import MAX_ATTEMPTS, MAX_BACKOFF, RUN_DEADLINE_S, Env
from tests.integration.test_notify import env as env  # the fixture, used by name

HUGE_BODY_BYTES = 200 * 1024 * 1024
CHUNK = b"x" * (1024 * 1024)
MAX_GROWTH_BYTES = 20 * 1024 * 1024
HANG_TIMEOUT_S = 30.0  # far beyond every wait below: a test that waits for it fails
WAIT_S = 5.0
TICK_S = 0.05


@dataclass
class Receiver:
    """Answers per webhook name: "ok" (200), "hang" (nothing until `release`), "huge"
    (200 with a HUGE_BODY_BYTES body), "endless" (200 with a body that never ends)."""

    modes: dict[str, str]
    requests: list[tuple[str, str]] = field(default_factory=list)
    sent: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    streamed: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None
    port: int = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def hook(self, name: str, timeout: float = HANG_TIMEOUT_S) -> WebhookConfig:
        url = f"http://127.0.0.1:{self.port}/hooks/{name}"
        return WebhookConfig(url, name, ("all",), "", timeout)

    async def arrival(self, hook: str, event_id: str | None = None) -> None:
        """Returns once `hook` got a request (for `event_id`, if given)."""

        def seen() -> bool:
            return any(h == hook and event_id in (None, e) for h, e in self.requests)

        async with self._arrived:
            await self._arrived.wait_for(seen)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        hook = request.match_info["name"]
        await request.read()
        async with self._arrived:
            self.requests.append((hook, request.headers[EVENT_ID_HEADER]))
            self._arrived.notify_all()
        mode = self.modes.get(hook, "ok")
        if mode == "hang":
            await self.release.wait()
        if mode not in ("huge", "endless"):
            return web.Response(text="ok")
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            while mode == "endless" or self.sent < HUGE_BODY_BYTES:
                await response.write(CHUNK)
                self.sent += len(CHUNK)
                if mode == "endless":
                    await asyncio.sleep(0.005)  # a trickle: ~200 MB/s would fill memory
            await response.write_eof()
        except ConnectionError:
            pass  # the daemon hung up, as it should
        finally:
            self.streamed.set()
        return response


@contextlib.asynccontextmanager
async def receiver(**modes: str) -> AsyncIterator[Receiver]:
    stub = Receiver(modes)
    await stub.start()
    try:
        yield stub
    finally:
        await stub.stop()


def notifier(env: Env, hooks: list[WebhookConfig], batch_size: int = 50) -> Notifier:
    return Notifier(
        env.store,
        env.session,
        hooks,
        {},
        env.clock.now,
        max_attempts=MAX_ATTEMPTS,
        max_backoff=MAX_BACKOFF,
        batch_size=batch_size,
        rng=random.Random(3),
    )


@contextlib.asynccontextmanager
async def ticking(notifier: Notifier) -> AsyncIterator[None]:
    """What the daemon's scheduler does (max_instances=1): tick, and tick again shortly
    after the previous tick has returned."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await notifier.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK_S)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        # A tick stuck on a hanging receiver is cancelled by wait_for.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(task, WAIT_S)


async def new_pending_id(env: Env, hook: str, known: set[str]) -> str:
    [event_id] = [
        p.event_id
        for p in await env.outbox("pending")
        if p.webhook == hook and p.event_id not in known
    ]
    return event_id


@contextlib.contextmanager
def traced_memory() -> Iterator[list[int]]:
    """[growth of the traced peak over the start] once the block has run."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    result: list[int] = []
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        yield result
        _, peak = tracemalloc.get_traced_memory()
        result.append(peak - before)
    finally:
        if not tracing:
            tracemalloc.stop()


# --------------------------------------------------------------------------- big answers


async def test_a_huge_answer_is_not_read_into_memory(env: Env) -> None:
    await env.register_job(JobSpec(final_status="Completed", duration_seconds=60))
    await env.tracker.run_until_idle(RUN_DEADLINE_S)
    async with receiver(everything="huge") as stub:
        sender = notifier(env, [stub.hook("everything")])
        with traced_memory() as measured:
            assert await asyncio.wait_for(sender.tick(), 60) == 1
        [growth] = measured
        assert growth < MAX_GROWTH_BYTES, f"memory grew by {growth / 2**20:.1f} MiB"
        [delivered] = await env.outbox("delivered")
        assert delivered.attempts == 1 and delivered.last_error is None
        await asyncio.wait_for(stub.streamed.wait(), WAIT_S)
        assert stub.sent < HUGE_BODY_BYTES  # the rest was never asked for
        assert await sender.drain(1.0)


async def test_an_endless_answer_does_not_hold_the_delivery(env: Env) -> None:
    await env.register_job(JobSpec(final_status="Completed", duration_seconds=60))
    await env.tracker.run_until_idle(RUN_DEADLINE_S)
    timeout = 3.0
    async with receiver(everything="endless") as stub:
        sender = notifier(env, [stub.hook("everything", timeout)])
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await asyncio.wait_for(sender.tick(), 2 * timeout) == 1
        took = loop.time() - started
        [delivered] = await env.outbox("delivered")
        assert delivered.attempts == 1 and delivered.last_error is None
        assert took < timeout / 2, f"the delivery took {took:.2f} s"
        await asyncio.wait_for(stub.streamed.wait(), WAIT_S)
        assert await sender.drain(1.0)


# --------------------------------------------------------------------------- per receiver


async def test_a_hanging_receiver_does_not_delay_another_receiver(env: Env) -> None:
    # Two events, three deliveries: two for everything (fast), one for pager (it hangs).
    await env.register_job(JobSpec(final_status="Failed", duration_seconds=2))
    await env.run_jobs_to_the_end()
    first = {p.event_id for p in await env.outbox("pending")}
    assert len(first) == 2
    async with receiver(pager="hang") as stub:
        sender = notifier(env, [stub.hook("everything"), stub.hook("pager")])
        async with ticking(sender):
            await asyncio.wait_for(stub.arrival("pager"), WAIT_S)
            # The pager receiver is now hanging; a new event for the other one comes due.
            await env.register_job(JobSpec(final_status="Completed", duration_seconds=60))
            await env.tracker.run_until_idle(RUN_DEADLINE_S)
            later = await new_pending_id(env, "everything", first)
            loop = asyncio.get_running_loop()
            due_at = loop.time()
            await asyncio.wait_for(stub.arrival("everything", later), WAIT_S)
            delay = loop.time() - due_at
        # Shutting down does not wait for the hanging receiver; its event stays pending.
        started = loop.time()
        assert await sender.drain(0.2) is False
        assert loop.time() - started < WAIT_S

    assert delay < WAIT_S
    delivered = await env.outbox("delivered")
    assert sorted(d.webhook for d in delivered) == ["everything"] * 3
    assert later in {d.event_id for d in delivered}
    [hung] = await env.outbox("pending")
    assert hung.webhook == "pager" and hung.attempts == 0
    assert await sender.tick() == 0  # drained: nothing new starts


async def test_a_busy_receivers_backlog_does_not_crowd_out_the_others(env: Env) -> None:
    # Oldest first: everything/inprogress, everything/failed, pager/failed. With a batch of
    # one, the hanging receiver's own backlog must not hide pager's delivery from the query.
    await env.register_job(JobSpec(final_status="Failed", duration_seconds=2))
    await env.run_jobs_to_the_end()
    pending = await env.outbox("pending")
    assert [p.webhook for p in pending] == ["everything", "everything", "pager"]
    async with receiver(everything="hang") as stub:
        sender = notifier(env, [stub.hook("everything"), stub.hook("pager")], batch_size=1)
        async with ticking(sender):
            await asyncio.wait_for(stub.arrival("pager"), WAIT_S)
        assert await sender.drain(0.2) is False

    assert [d.webhook for d in await env.outbox("delivered")] == ["pager"]
    assert [h for h, _ in stub.requests].count("everything") == 1  # one batch at a time


@pytest.mark.parametrize("grace", [0.0, 1.0])
async def test_draining_an_idle_notifier_is_immediate(env: Env, grace: float) -> None:
    sender = notifier(env, list(env.hooks))
    assert await asyncio.wait_for(sender.drain(grace), WAIT_S) is True
