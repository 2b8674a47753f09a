"""Prometheus metrics (prometheus-client), kept in one registry owned by the composition root.

Counters and histograms are fed as things happen (ARM requests, polls, transitions);
gauges that describe stored state (jobs by status, outbox depth, stuck jobs, budget left)
are refreshed from the store just before each scrape.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from backupjobd import __version__
from backupjobd.adapters.budget import ReadBudget

__all__ = ["CONTENT_TYPE", "Metrics"]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_LAG_BUCKETS = (1, 5, 10, 20, 30, 45, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Gauge(
            "backupjobd_jobs",
            "Tracked jobs by Azure status and tracking state",
            ["status", "tracking"],
            registry=r,
        )
        self.stuck_jobs = Gauge("backupjobd_stuck_jobs", "Jobs flagged stuck", registry=r)
        self.transitions = Counter(
            "backupjobd_transitions",
            "Recorded status transitions by new status, vault kind and job kind",
            ["to_status", "vault_kind", "job_kind"],
            registry=r,
        )
        self.polls = Counter(
            "backupjobd_polls",
            "Polls of jobs and operations by outcome and vault kind",
            ["kind", "outcome", "vault_kind"],
            registry=r,
        )
        self.arm_requests = Counter(
            "backupjobd_arm_requests",
            "ARM requests by method and HTTP status (0: no answer)",
            ["method", "status"],
            registry=r,
        )
        self.arm_throttled = Counter(
            "backupjobd_arm_throttled",
            "ARM 429 answers by subscription",
            ["subscription"],
            registry=r,
        )
        self.arm_latency = Histogram(
            "backupjobd_arm_request_seconds",
            "ARM request latency",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.detection_lag = Histogram(
            "backupjobd_detection_lag_seconds",
            "Time from Azure's endTime of a job to our record of its terminal status",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.outbox_depth = Gauge(
            "backupjobd_outbox_pending", "Webhook deliveries waiting", registry=r
        )
        self.outbox_dead = Gauge(
            "backupjobd_outbox_dead", "Webhook deliveries given up (dead letters)", registry=r
        )
        self.outbox_failures = Counter(
            "backupjobd_webhook_failures",
            "Failed webhook delivery attempts",
            ["webhook"],
            registry=r,
        )
        self.outbox_delivered = Counter(
            "backupjobd_webhook_deliveries", "Delivered webhook events", ["webhook"], registry=r
        )
        self.budget_tokens = Gauge(
            "backupjobd_read_budget_tokens",
            "ARM read tokens left per subscription",
            ["subscription"],
            registry=r,
        )
        self.budget_reads = Gauge(
            "backupjobd_read_budget_reads",
            "ARM reads spent per subscription since start",
            ["subscription"],
            registry=r,
        )
        self.budget_rate = Gauge(
            "backupjobd_read_rate_learned",
            "ARM reads per second the daemon paces itself to, learned per subscription from"
            " the remaining-reads header and 429s",
            ["subscription"],
            registry=r,
        )
        self.budget_remaining = Gauge(
            "backupjobd_read_budget_remaining",
            "The remaining-reads count Azure last reported per subscription",
            ["subscription"],
            registry=r,
        )
        self.write_budget_tokens = Gauge(
            "backupjobd_write_budget_tokens",
            "ARM write tokens left per subscription for cross-region-restore job reads (POSTs)",
            ["subscription"],
            registry=r,
        )
        self.write_budget_remaining = Gauge(
            "backupjobd_write_budget_remaining",
            "The remaining-writes count Azure last reported per subscription",
            ["subscription"],
            registry=r,
        )
        self.last_tick = Gauge(
            "backupjobd_last_tick_timestamp_seconds",
            "When the dispatcher last ticked (Unix time; 0 before the first tick)",
            registry=r,
        )
        self.operations_failed = Counter(
            "backupjobd_operations_failed",
            "Operations Azure ended without a job (a trigger it rejected), by status",
            ["status"],
            registry=r,
        )
        Info("backupjobd_build", "The running version", registry=r).info({"version": __version__})
        # process_* (CPU, memory, open descriptors, start time) and python_info.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    # Feeding, called by the adapters -------------------------------------------------

    def arm_request(self, method: str, status: int | None, seconds: float) -> None:
        self.arm_requests.labels(method, str(status or 0)).inc()
        self.arm_latency.labels(method).observe(seconds)

    def throttled(self, subscription_id: str) -> None:
        self.arm_throttled.labels(subscription_id).inc()

    def poll(self, kind: str, outcome: str, vault_kind: str = "RecoveryServices") -> None:
        self.polls.labels(kind, outcome, vault_kind).inc()

    def transition(
        self,
        to_status: str,
        end_time: datetime | None,
        observed: datetime,
        registered_at: datetime | None = None,
        *,
        vault_kind: str = "RecoveryServices",
        job_kind: str = "RecoveryServices",
    ) -> None:
        """A recorded transition; a terminal one also gives the detection lag, counted from
        the later of Azure's end time and the registration (a job registered after it had
        ended was not late to be seen). `job_kind` tells cross-region restores apart."""
        self.transitions.labels(to_status, vault_kind, job_kind).inc()
        if end_time is not None:
            since = max(end_time, registered_at) if registered_at is not None else end_time
            self.detection_lag.observe(max(0.0, (observed - since).total_seconds()))

    def operation_failed(self, status: str) -> None:
        self.operations_failed.labels(status).inc()

    def set_last_tick(self, age_seconds: float | None, now: float) -> None:
        self.last_tick.set(0.0 if age_seconds is None else now - age_seconds)

    # Refreshing, just before a scrape ------------------------------------------------

    def set_job_counts(self, counts: dict[tuple[str, str], int], stuck: int) -> None:
        self.jobs.clear()
        for (status, tracking), n in counts.items():
            self.jobs.labels(status, tracking).set(n)
        self.stuck_jobs.set(stuck)

    def set_outbox(self, pending: int, dead: int) -> None:
        self.outbox_depth.set(pending)
        self.outbox_dead.set(dead)

    def set_budget(self, budget: ReadBudget | None) -> None:
        if budget is None:
            return
        for state in budget.snapshot():
            self.budget_tokens.labels(state.subscription_id).set(state.tokens)
            self.budget_reads.labels(state.subscription_id).set(state.reads)
            self.budget_rate.labels(state.subscription_id).set(state.rate)
            if state.remaining is not None:
                self.budget_remaining.labels(state.subscription_id).set(state.remaining)

    def set_write_budget(self, budget: ReadBudget | None) -> None:
        """The bucket cross-region-restore job reads draw on (Azure counts them as writes)."""
        if budget is None:
            return
        for state in budget.snapshot():
            self.write_budget_tokens.labels(state.subscription_id).set(state.tokens)
            if state.remaining is not None:
                self.write_budget_remaining.labels(state.subscription_id).set(state.remaining)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
