"""How long jobs take: the durations learned from the finished jobs in the store, which
adaptive polling uses to poll sparsely mid-job, and every view (CLI, API, webhooks) uses to
say when a job should end. One model for both, kept here below the loops and the API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from backupjobd.core.decisions import DurationModel, Tracking
from backupjobd.core.model import JobRecord
from backupjobd.store import Store

DURATIONS_REFRESH_SECONDS = 300.0


class Durations:
    """Typical job durations, learned again from the store every few minutes at most."""

    def __init__(
        self,
        refresh_seconds: float = DURATIONS_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._model = DurationModel(())
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._at: float | None = None

    async def refresh(self, store: Store) -> None:
        now = self._clock()
        if self._at is not None and now - self._at < self._refresh_seconds:
            return
        self._at = now
        self._model = DurationModel(await store.finished_durations())

    def expected(self, record: JobRecord) -> timedelta | None:
        return self._model.expected(record.operation, record.job_type, record.entity_friendly_name)

    def annotate(self, records: Iterable[JobRecord]) -> list[JobRecord]:
        """The records with `expected_end_at` set, as every view prints them."""
        return [record.expecting(self.expected(record)) for record in records]

    async def annotated(self, store: Store, records: Iterable[JobRecord]) -> list[JobRecord]:
        """`annotate` after learning again when that is due; when no record is tracked
        actively there is nothing to expect, and the store is not read."""
        listed = list(records)
        if any(r.tracking is Tracking.ACTIVE for r in listed):
            await self.refresh(store)
        return self.annotate(listed)


async def with_expected_end(store: Store, records: Iterable[JobRecord]) -> list[JobRecord]:
    """For one-off readers (the CLI): learn the durations once, annotate the records."""
    return await Durations().annotated(store, records)
