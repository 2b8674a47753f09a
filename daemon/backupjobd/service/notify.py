"""Webhook delivery from the durable outbox: at least once, signed, retried with backoff.

Each delivery POSTs the stored CloudEvents body as it is (so retries are byte-identical
and the event id is stable) with `X-Backupjobd-Signature-256: sha256=<HMAC-SHA256 of the
body>` when the webhook has a secret. A 2xx answer marks it delivered; anything else is
retried until `max_attempts`, then kept as a dead letter (`backupjobd notify failed`).

Receivers are independent: each webhook's batch runs in its own task, and a tick only
starts batches for webhooks whose previous batch has finished, so a receiver that hangs
until its timeout delays its own deliveries and nobody else's. Only the status code of an
answer matters: at most `MAX_ANSWER_BYTES` of its body are read, the rest is never buffered.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import aiohttp

from backupjobd.adapters.metrics import Metrics
from backupjobd.config import WebhookConfig
from backupjobd.core.events import next_attempt
from backupjobd.core.model import OutboxRecord
from backupjobd.errors import BackupJobdError
from backupjobd.store import Store

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Backupjobd-Signature-256"
EVENT_ID_HEADER = "X-Backupjobd-Event-Id"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
# Enough for any "ok" a receiver sends back, so its keep-alive connection can be reused;
# a longer answer is cut off by closing the connection.
MAX_ANSWER_BYTES = 64 * 1024
# How long `drain` waits for cancelled deliveries to unwind (closing their connections).
_CANCEL_GRACE_SECONDS = 1.0


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Notifier:
    """Delivers the outbox. `tick()` starts what is due and waits at most `settle_seconds`
    for it (keep that below the tick interval); `drain()` ends the deliveries still running
    on shutdown."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        webhooks: Sequence[WebhookConfig],
        secrets: Mapping[str, bytes],
        clock: Callable[[], datetime],
        *,
        max_attempts: int = 12,
        max_backoff: timedelta = timedelta(minutes=10),
        batch_size: int = 50,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        per_webhook_concurrency: int = 8,
        settle_seconds: float = 0.5,
    ) -> None:
        self._store = store
        self._session = session
        self._hooks = {hook.name: hook for hook in webhooks}
        self._secrets = secrets
        self._clock = clock
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff
        self._batch_size = batch_size
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._per_webhook_concurrency = max(1, per_webhook_concurrency)
        self._settle_seconds = settle_seconds
        self._in_flight: set[int] = set()
        self._batches: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def tick(self) -> int:
        """Start what is due for every receiver that is not still busy with its previous
        batch, and give those deliveries `settle_seconds` to finish; a slower receiver goes
        on in the background. Returns how many deliveries were started. Never raises: a bad
        tick is logged and retried next time."""
        try:
            started, batches = await self._start_due()
            if batches:
                await asyncio.wait(batches, timeout=self._settle_seconds)
            return started
        except BackupJobdError as exc:
            logger.warning("webhook delivery tick failed: %s", exc)
        except Exception:
            logger.exception("webhook delivery tick failed")
        return 0

    async def drain(self, grace_seconds: float) -> bool:
        """Start nothing more; wait up to `grace_seconds` for the deliveries in flight,
        then cancel the rest. A cancelled delivery stays pending and is sent again after the
        restart (at least once). True when nothing had to be cancelled."""
        self._closed = True
        running = [task for task in self._batches.values() if not task.done()]
        if not running:
            return True
        _, late = await asyncio.wait(running, timeout=max(0.0, grace_seconds))
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=_CANCEL_GRACE_SECONDS)
            logger.warning(
                "stopped with %d webhook receiver(s) still busy; their deliveries stay pending",
                len(late),
            )
        return not late

    async def _start_due(self) -> tuple[int, list[asyncio.Task[None]]]:
        """Under the lock, so that two ticks never start the same delivery."""
        async with self._lock:
            if self._closed:
                return 0, []
            busy = {name for name, task in self._batches.items() if not task.done()}
            due = await self._store.due_outbox(
                self._clock(), self._batch_size, self._in_flight, skip_webhooks=busy
            )
            if self._closed:
                return 0, []
            by_hook: dict[str, list[OutboxRecord]] = {}
            for record in due:
                if record.webhook not in busy and record.pk not in self._in_flight:
                    by_hook.setdefault(record.webhook, []).append(record)
            batches = []
            for name, records in by_hook.items():
                pks = frozenset(record.pk for record in records)
                self._in_flight.update(pks)
                task = asyncio.create_task(self._deliver_batch(records))
                task.add_done_callback(functools.partial(self._batch_done, name, pks))
                self._batches[name] = task
                batches.append(task)
            return sum(len(records) for records in by_hook.values()), batches

    def _batch_done(self, name: str, pks: frozenset[int], task: asyncio.Task[None]) -> None:
        """Frees the batch's deliveries here, not in the task: a task cancelled before it
        ever ran would not reach a `finally`."""
        self._in_flight.difference_update(pks)
        if self._batches.get(name) is task:
            del self._batches[name]
        if not task.cancelled() and task.exception() is not None:
            logger.error("webhook %s: delivery batch failed", name, exc_info=task.exception())

    async def _deliver_batch(self, records: Sequence[OutboxRecord]) -> None:
        """One receiver's due deliveries, a few at a time (its hanging connections must not
        take the whole connection pool, which the ARM client shares)."""
        slots = asyncio.Semaphore(self._per_webhook_concurrency)

        async def one(record: OutboxRecord) -> None:
            async with slots:
                await self._deliver(record)

        await asyncio.gather(*(one(record) for record in records))

    async def _deliver(self, record: OutboxRecord) -> None:
        """One attempt and its outcome. Never raises: a result that cannot be recorded
        leaves the delivery pending, to be sent again (at least once)."""
        try:
            await self._attempt(record)
        except BackupJobdError as exc:
            logger.warning("webhook %s: could not record a delivery: %s", record.webhook, exc)
        except Exception:
            logger.exception("webhook %s: delivery failed", record.webhook)

    async def _attempt(self, record: OutboxRecord) -> None:
        error = await self._post(record)
        now = self._clock()
        if error is None:
            await self._store.outbox_result(record, now, delivered=True)
            if self._metrics is not None:
                self._metrics.outbox_delivered.labels(record.webhook).inc()
            logger.debug("delivered %s to %s", record.event_type, record.webhook)
            return
        if self._metrics is not None:
            self._metrics.outbox_failures.labels(record.webhook).inc()
        retry_at = next_attempt(
            record.attempts + 1,
            now,
            self._max_attempts,
            self._max_backoff,
            self._rng.random(),
        )
        await self._store.outbox_result(
            record, now, delivered=False, error=error, next_attempt_at=retry_at
        )
        if retry_at is None:
            logger.error(
                "webhook %s: gave up on event %s after %d attempts (%s); "
                "see `backupjobd notify failed`",
                record.webhook,
                record.event_id,
                record.attempts + 1,
                error,
                extra={"action": "webhook_dead"},
            )
        elif record.attempts == 0:
            logger.warning(
                "webhook %s: delivery failed (%s); retrying with backoff",
                record.webhook,
                error,
                extra={"action": "webhook_retry"},
            )

    async def _post(self, record: OutboxRecord) -> str | None:
        """None on success, else a one-line reason (never the URL: it may carry a secret)."""
        hook = self._hooks.get(record.webhook)
        if hook is None:
            return f"webhook {record.webhook!r} is no longer configured"
        body = record.payload.encode("utf-8")
        headers = {"Content-Type": CONTENT_TYPE, EVENT_ID_HEADER: record.event_id}
        secret = self._secrets.get(hook.name)
        if secret:
            headers[SIGNATURE_HEADER] = signature(secret, body)
        try:
            async with self._session.post(
                hook.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout_seconds),
                allow_redirects=False,
            ) as resp:
                await _discard_answer(resp)
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"request failed: {type(exc).__name__}"


async def _discard_answer(resp: aiohttp.ClientResponse) -> None:
    """Read at most MAX_ANSWER_BYTES of the body, then drop the connection if there is more:
    the status is the answer, and a huge or endless body must not fill memory or hold the
    delivery. Errors past the status line do not change what the status said."""
    left = MAX_ANSWER_BYTES
    try:
        while left > 0 and not resp.content.at_eof():
            chunk = await resp.content.read(left)
            if not chunk:
                break
            left -= len(chunk)
    except (aiohttp.ClientError, TimeoutError, OSError):
        pass
    if not resp.content.at_eof():
        resp.close()
