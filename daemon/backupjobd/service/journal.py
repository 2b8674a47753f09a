"""The journal: the log lines and the metrics for what was committed. It reads each poll's
`Commit` as it was written, so the log, the metrics and the store never disagree."""

from __future__ import annotations

import logging
from datetime import datetime

from backupjobd.adapters.metrics import Metrics
from backupjobd.core.decisions import (
    Failure,
    Missing,
    OperationDecision,
    OperationOutcome,
    Outcome,
    Seen,
    Tracking,
)
from backupjobd.core.model import Commit, JobRecord, OperationRecord, RegisterResult
from backupjobd.service.work import log_fields

logger = logging.getLogger(__name__)


def outcome_label(outcome: object) -> str:
    if isinstance(outcome, Failure):
        return "transient_error" if outcome.transient else "permanent_error"
    return "not_found" if isinstance(outcome, Missing) else "ok"


class Journal:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics

    def job(self, commit: Commit, outcome: Outcome) -> None:
        """A single GET's commit: counted, and one line per state change."""
        if self._metrics is not None:
            self._metrics.poll("job", outcome_label(outcome), commit.before.vault_kind.value)
        self._count_transition(commit)
        self._lines(commit, outcome)

    def _count_transition(self, commit: Commit) -> None:
        decision = commit.decision
        if self._metrics is None or decision.transition is None or decision.status is None:
            return
        end = decision.observation.end_time if decision.observation else None
        terminal = decision.tracking is Tracking.FINISHED
        self._metrics.transition(
            decision.status,
            end if terminal else None,
            commit.now,
            commit.before.registered_at,
            vault_kind=commit.before.vault_kind.value,
            job_kind=commit.before.kind.value,
        )

    def swept_job(self, commit: Commit) -> None:
        """A sweep's commit of one job: logged when it changed state or got stuck (the
        sweep itself is counted once, in `sweep`)."""
        decision = commit.decision
        seen = decision.observation
        self._count_transition(commit)
        if seen and (decision.transition or decision.newly_stuck):
            self._lines(commit, Seen(seen, full=False))

    def discarded(self, record: JobRecord, *, swept: bool = False) -> None:
        if swept:
            fields = {"vault_id": record.vault_id, "action": "sweep", "job_id": None}
            logger.info("job changed concurrently; sweep result discarded", extra=fields)
        else:
            logger.info("job changed concurrently; poll discarded", extra=log_fields(record))

    def sweep(
        self,
        vault_id: str,
        listed_at: datetime,
        now: datetime,
        listed: int,
        unchanged: int,
        recorded: int,
        handed_on: int,
    ) -> None:
        if self._metrics is not None:
            self._metrics.poll("sweep", "ok")
        logger.debug(
            "swept vault %s (listed from %s in %.1f s): %d in progress listed, %d unchanged,"
            " %d recorded, %d need a GET",
            vault_id,
            listed_at.isoformat(),
            (now - listed_at).total_seconds(),
            listed,
            unchanged,
            recorded,
            handed_on,
            extra={"vault_id": vault_id, "action": "sweep", "job_id": None},
        )

    def _lines(self, commit: Commit, outcome: Outcome) -> None:
        record, decision = commit.before, commit.decision
        fields = log_fields(record)
        logger.debug(
            "polled job %s: %s", record.job_id, type(outcome).__name__.lower(), extra=fields
        )
        finished = decision.tracking is Tracking.FINISHED
        if decision.transition is not None:
            # One line per state change: a change that ends tracking says so itself.
            old, new = decision.transition
            logger.info(
                "job %s %s: %s -> %s%s",
                record.job_id,
                decision.observation.operation if decision.observation else "",
                old or "(new)",
                new,
                " (finished)" if finished else "",
                extra={
                    **fields,
                    "action": "transition",
                    "from_status": old,
                    "to_status": new,
                    "finished": finished,
                },
            )
        if decision.newly_stuck:
            logger.warning(
                "job %s looks stuck: still %s since %s",
                record.job_id,
                decision.status,
                record.start_time.isoformat() if record.start_time else "registration",
                extra={**fields, "action": "stuck"},
            )
        if decision.unknown_status:
            logger.warning(
                "job %s reports an unknown status %r; still polling",
                record.job_id,
                decision.status,
                extra={**fields, "action": "unknown_status"},
            )
        if finished and decision.transition is None:
            logger.info(
                "job %s finished: %s",
                record.job_id,
                decision.status,
                extra={**fields, "action": "finish"},
            )
        elif decision.tracking is Tracking.LOST:
            logger.warning(
                "job %s lost: Azure does not know it",
                record.job_id,
                extra={**fields, "action": "lost"},
            )
        elif decision.error is not None and decision.new_error:
            if self._metrics is not None and decision.tracking is not Tracking.ACTIVE:
                self._metrics.operation_failed(decision.status or "unknown")
            logger.warning(
                "job %s: %s",
                record.job_id,
                decision.error,
                extra={**fields, "action": "poll_error"},
            )

    def operation(
        self,
        record: OperationRecord,
        outcome: OperationOutcome,
        decision: OperationDecision,
        registered: list[RegisterResult] | None,
    ) -> None:
        """An operation poll: counted, and what it resolved (or why not)."""
        fields = {"job_id": None, "vault_id": record.vault_id, "operation_id": record.operation_id}
        if self._metrics is not None:
            self._metrics.poll("operation", outcome_label(outcome), record.vault_kind.value)
        if registered is None:
            logger.info("operation changed concurrently; poll discarded", extra=fields)
            return
        for result in registered:
            logger.info(
                "operation %s started job %s%s",
                record.operation_id,
                result.ident,
                "" if result.created else " (already tracked)",
                extra={**fields, "job_id": result.ident, "action": "operation_resolved"},
            )
        if decision.tracking is Tracking.FINISHED and not decision.job_ids:
            logger.info(
                "operation %s succeeded without starting a job",
                record.operation_id,
                extra={**fields, "action": "operation_resolved"},
            )
        elif decision.error is not None and decision.new_error:
            logger.warning(
                "operation %s: %s",
                record.operation_id,
                decision.error,
                extra={**fields, "action": "operation_error"},
            )
