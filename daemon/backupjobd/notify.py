"""Webhook delivery from the durable outbox: at least once, signed, retried with backoff.

Each delivery POSTs the stored CloudEvents body as it is (so retries are byte-identical
and the event id is stable) with `X-Backupjobd-Signature-256: sha256=<HMAC-SHA256 of the
body>` when the webhook has a secret. A 2xx answer marks it delivered; anything else is
retried until `max_attempts`, then kept as a dead letter (`backupjobd notify failed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import aiohttp

from backupjobd.config import WebhookConfig
from backupjobd.errors import BackupJobdError
from backupjobd.events import next_attempt
from backupjobd.metrics import Metrics
from backupjobd.store import OutboxRecord, Store

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Backupjobd-Signature-256"
EVENT_ID_HEADER = "X-Backupjobd-Event-Id"
CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Notifier:
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
        self._in_flight: set[int] = set()
        self._lock = asyncio.Lock()

    async def tick(self) -> int:
        """Deliver what is due. Never raises: a bad tick is logged and retried next time."""
        async with self._lock:
            try:
                due = await self._store.due_outbox(self._clock(), self._batch_size, self._in_flight)
                await asyncio.gather(*(self._deliver(record) for record in due))
                return len(due)
            except BackupJobdError as exc:
                logger.warning("webhook delivery tick failed: %s", exc)
            except Exception:
                logger.exception("webhook delivery tick failed")
            return 0

    async def _deliver(self, record: OutboxRecord) -> None:
        self._in_flight.add(record.pk)
        try:
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
        finally:
            self._in_flight.discard(record.pk)

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
                await resp.read()
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return f"request failed: {type(exc).__name__}"
