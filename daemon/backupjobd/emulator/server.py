"""In-process emulator of the Azure Resource Manager Azure Backup jobs API.

Like Azurite for Storage: a real HTTP server speaking the ARM wire shapes, so tests, the demo
and benchmarks exercise the real client code (auth headers, api-version, async-operation
polling, paging, throttling and broken responses) without an Azure subscription. Job lifecycles
run on an injectable clock so tests can advance time deterministically with no sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import ipaddress
import itertools
import logging
import math
import random
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from backupjobd.emulator.replay import DEFAULT_RETRY_AFTER_CAP, ReplayServer, load_replay

logger = logging.getLogger(__name__)

DEFAULT_VAULT_ID: Final = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-emulator"
    "/providers/Microsoft.RecoveryServices/vaults/vault-emulator"
)
#: api-version written into URLs the emulator hands out when no request version is at hand.
DEFAULT_API_VERSION: Final = "2025-08-01"
DEFAULT_CONTAINER_NAME: Final = "IaasVMContainer;iaasvmcontainerv2;rg-emulator;vm-emulator"
DEFAULT_PROTECTED_ITEM_NAME: Final = "VM;iaasvmcontainerv2;rg-emulator;vm-emulator"
JOB_RESOURCE_TYPE: Final = "Microsoft.RecoveryServices/vaults/backupJobs"
OPERATION_PENDING_END: Final = "0001-01-01T00:00:00"
FAULT_KINDS: Final = frozenset({"429", "500", "502", "503", "504", "garbled", "truncated", "reset"})
#: Kinds drawn by random faults when the admin request names none.
DEFAULT_RANDOM_FAULT_KINDS: Final = ("500", "503", "garbled", "truncated", "429")
#: ARM's documented read budget: 250 requests of burst, refilled at 25 per second.
ARM_READ_BURST: Final = 250
ARM_READ_REFILL_PER_SECOND: Final = 25.0
READS_REMAINING_HEADER: Final = "x-ms-ratelimit-remaining-subscription-reads"
#: How long a cancelled job stays ``Cancelling`` before it reports ``Cancelled``.
CANCELLING_SECONDS: Final = 1.0
#: Fraction of a job's duration after which the snapshot task is done.
SNAPSHOT_FRACTION: Final = 0.4

# Bounds of admin input: the admin API has no authentication and runs in the event loop, so
# one request must not be able to wedge the emulator or exhaust its memory. They leave ample
# room for the tests, scripts/demo.py and bench/*.py (1,000 jobs per request, 100,000 in all).
#: Largest admin request body (aiohttp's default, stated so nobody raises it unknowingly).
MAX_BODY_BYTES: Final = 1024 * 1024
#: Most jobs or vaults one admin request may create.
MAX_ITEMS_PER_REQUEST: Final = 10_000
#: Most jobs held at once, counting those that pending operations will bring (~1 KB each).
MAX_JOBS: Final = 500_000
#: Most jobs one operation may announce (Azure's multi-item operations name a handful).
MAX_OPERATION_JOBS: Final = 1_000
MAX_OPERATIONS: Final = 100_000
MAX_VAULTS: Final = 100_000
#: Most entries in the fault queue, which every ARM request scans.
MAX_QUEUED_FAULTS: Final = 1_000
MAX_FAULT_COUNT: Final = 1_000_000
MAX_RANDOM_FAULT_KINDS: Final = 64
MAX_RETRY_AFTER: Final = 3_600
#: Longest duration, delay, not-found window or backdating: a year keeps timestamps sane.
MAX_SECONDS: Final = 366 * 86_400
MAX_PAGE_SIZE: Final = 10_000
MAX_READ_BURST: Final = 1_000_000
#: Slowest refill: keeps the computed Retry-After finite (at most 1,000 s).
MIN_READ_REFILL_PER_SECOND: Final = 0.001
MAX_READ_REFILL_PER_SECOND: Final = 1_000_000.0
MAX_SEED: Final = 2**63 - 1
#: Longest job id, status, operation, job type, entity, container or item name.
MAX_NAME_LENGTH: Final = 256
#: Longest vault ARM id or fault path filter.
MAX_ID_LENGTH: Final = 1_024

_API_VERSION_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VAULT_PATTERN: Final = (
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.recoveryservices/vaults/(?P<vault>[^/]+)"
)
_VAULT_RE: Final = re.compile(rf"^{_VAULT_PATTERN}$", re.IGNORECASE)
_ITEM_PATTERN: Final = (
    r"/backupfabrics/(?P<fabric>[^/]+)/protectioncontainers/(?P<container>[^/]+)"
    r"/protecteditems/(?P<item>[^/]+)"
)
_SUBSCRIPTION_RE: Final = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_FILTER_CLAUSE_RE: Final = re.compile(r"^\s*(\w+)\s+eq\s+'([^']*)'\s*$", re.IGNORECASE)
_FILTER_SPLIT_RE: Final = re.compile(r"\s+and\s+", re.IGNORECASE)
_FILTER_TIME_FORMAT: Final = "%Y-%m-%d %I:%M:%S %p"
_RUNNING_STATUSES: Final = frozenset({"inprogress", "cancelling"})
_MANAGEMENT_TYPES: Final[Mapping[str, str]] = {
    # Azure spells the enum value ``AzureIaasVM`` (lower-case "as") on the wire.
    "azureiaasvmjob": "AzureIaasVM",
    "azureiaasvmjobv2": "AzureIaasVM",
    "azureworkloadjob": "AzureWorkload",
    "azurestoragejob": "AzureStorage",
    "dpmjob": "DPM",
    "mabjob": "MAB",
}

JSONDict = dict[str, Any]


# --------------------------------------------------------------------------- formatting


def _iso(ts: float) -> str:
    """ARM timestamps carry 7 fractional digits and a Z; clients must cope with that."""
    ticks = round(ts * 10_000_000)
    secs, frac = divmod(ticks, 10_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:07d}Z"


def _timespan(seconds: float) -> str:
    """Raw REST job durations are .NET TimeSpans (``[d.]hh:mm:ss.fffffff``), not ISO 8601."""
    ticks = max(0, round(seconds * 10_000_000))
    whole, frac = divmod(ticks, 10_000_000)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}.{frac:07d}"
    return f"{days}.{text}" if days else text


def _arm_error(status: int, code: str, message: str, **headers: str) -> web.Response:
    """Every ARM failure uses the ``{"error": {"code", "message"}}`` envelope."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _vault_id(sub: str, rg: str, vault: str) -> str:
    """Canonical casing of a vault ARM id built from the request's path segments."""
    return (
        f"/subscriptions/{sub}/resourceGroups/{rg}"
        f"/providers/Microsoft.RecoveryServices/vaults/{vault}"
    )


def _base_url(request: web.Request) -> str:
    """URLs handed out must point back at whatever address the client used."""
    return f"{request.scheme}://{request.host}"


def _query(request: web.Request, name: str) -> str | None:
    """ARM treats query parameter names case-insensitively (``$skipToken`` vs ``$skiptoken``)."""
    wanted = name.lower()
    for key, value in request.query.items():
        if key.lower() == wanted:
            return value
    return None


# --------------------------------------------------------------------------- model


class ValidationError(ValueError):
    """Bad admin input; becomes a 400 so test mistakes surface immediately."""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """How an emulated job behaves; shared by admin-created and operation-created jobs."""

    final_status: str = "Completed"
    duration_seconds: float = 5.0
    not_found_seconds: float = 0.0
    operation: str = "Backup"
    job_type: str = "AzureIaaSVMJob"
    entity_friendly_name: str | None = None


@dataclass(slots=True)
class EmulatedJob:
    """One job; its status is derived from the clock rather than stored."""

    vault_id: str
    job_id: str
    spec: JobSpec
    created_at: float
    seq: int
    activity_id: str
    cancel_requested_at: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.vault_id.lower(), self.job_id.lower())

    @property
    def entity(self) -> str:
        return self.spec.entity_friendly_name or f"vm-{self.job_id[:8].lower()}"


@dataclass(slots=True)
class EmulatedOperation:
    """An async ARM operation whose jobs only exist once it has completed."""

    operation_id: str
    vault_id: str
    created_at: float
    delay_seconds: float
    result: str
    job_ids: list[str]
    job_spec: JobSpec
    container_name: str | None = None
    protected_item_name: str | None = None
    materialized: bool = False

    @property
    def done_at(self) -> float:
        return self.created_at + self.delay_seconds


@dataclass(slots=True)
class Fault:
    """A queued misbehaviour served instead of the next matching ARM answers."""

    kind: str
    remaining: int
    retry_after: int = 1
    path_contains: str | None = None

    def matches(self, path: str) -> bool:
        return self.path_contains is None or self.path_contains.lower() in path.lower()


@dataclass(slots=True)
class RandomFaults:
    """Each ARM request independently misbehaves with probability ``rate`` (seeded)."""

    rate: float
    kinds: tuple[str, ...]
    retry_after: int
    seed: int | None
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def draw(self) -> Fault | None:
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        return Fault(self.rng.choice(self.kinds), 1, self.retry_after)


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class ReadBudget:
    """ARM's per-subscription read token bucket, so clients can be tested against it.

    Every read takes one token; tokens come back at ``refill_per_second`` up to ``burst``.
    """

    def __init__(self, burst: int, refill_per_second: float) -> None:
        if burst < 1:
            raise ValueError("read_burst must be >= 1")
        if not refill_per_second > 0 or not math.isfinite(refill_per_second):
            raise ValueError("read_refill_per_second must be > 0")
        self.burst = burst
        self.refill_per_second = refill_per_second
        self._buckets: dict[str, _Bucket] = {}

    def take(self, subscription: str, now: float) -> tuple[bool, int, int]:
        """(allowed, whole tokens left, seconds until one token is back when refused)."""
        bucket = self._buckets.get(subscription)
        if bucket is None:
            bucket = self._buckets[subscription] = _Bucket(float(self.burst), now)
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.refill_per_second)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True, int(bucket.tokens), 0
        wait = math.ceil((1.0 - bucket.tokens) / self.refill_per_second)
        return False, 0, max(1, wait)

    def refill(self) -> None:
        self._buckets.clear()


@dataclass(slots=True)
class _Stats:
    requests: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    faults_served: int = 0
    faults_by_kind: Counter[str] = field(default_factory=Counter)
    job_gets: Counter[str] = field(default_factory=Counter)
    # GETs of jobs still running (progress reads, or polls before the end).
    job_gets_running: int = 0
    throttled: int = 0
    reads_by_subscription: Counter[str] = field(default_factory=Counter)


class EmulatorState:
    """All jobs, operations, faults and counters of one emulator; the clock is injectable."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        page_size: int = 200,
        required_token: str | None = None,
        epoch: float | None = None,
        read_burst: int | None = None,
        read_refill_per_second: float = ARM_READ_REFILL_PER_SECOND,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.clock = clock
        self.page_size = page_size
        self.required_token = required_token
        self.read_budget: ReadBudget | None = None
        self.read_refill_per_second = read_refill_per_second
        self.configure_reads(read_burst, read_refill_per_second)
        self.random_faults: RandomFaults | None = None
        #: When set, ARM requests are answered from recordings instead of the model.
        self.replay: ReplayServer | None = None
        # Map the (possibly fake, monotonic) clock onto wall time for ARM timestamps.
        self._clock_origin = clock()
        self._wall_origin = time.time() if epoch is None else epoch
        self._jobs: dict[tuple[str, str], EmulatedJob] = {}
        self._by_vault: dict[str, dict[str, EmulatedJob]] = {}
        #: Vaults the subscription-level vault list shows: lower-cased id -> canonical id.
        self._vaults: dict[str, str] = {}
        self._operations: dict[str, EmulatedOperation] = {}
        self._pending: list[tuple[float, int, EmulatedOperation]] = []
        #: Job ids announced by pending operations, which count against ``MAX_JOBS``.
        self._pending_jobs = 0
        self._faults: deque[Fault] = deque()
        self._stats = _Stats()
        self._seq = itertools.count(1)

    # ---- time

    def now(self) -> float:
        """Current clock reading; also brings completed operations' jobs into existence."""
        now = self.clock()
        while self._pending and self._pending[0][0] <= now:
            self._materialize(heapq.heappop(self._pending)[2])
        return now

    def wall(self, t: float) -> float:
        """Unix time corresponding to clock reading ``t``."""
        return self._wall_origin + (t - self._clock_origin)

    def clock_at_wall(self, wall: float) -> float:
        return self._clock_origin + (wall - self._wall_origin)

    # ---- jobs

    def add_job(
        self,
        spec: JobSpec | None = None,
        *,
        vault_id: str = DEFAULT_VAULT_ID,
        job_id: str | None = None,
        created_at: float | None = None,
    ) -> EmulatedJob:
        """Create a job whose lifecycle starts now (or at ``created_at``)."""
        job = EmulatedJob(
            vault_id=vault_id,
            job_id=job_id or str(uuid.uuid4()),
            spec=spec or JobSpec(),
            created_at=self.now() if created_at is None else created_at,
            seq=next(self._seq),
            activity_id=str(uuid.uuid4()),
        )
        if job.key in self._jobs:
            raise ValidationError(f"job {job.job_id} already exists in {vault_id}")
        self._insert(job)
        return job

    def _insert(self, job: EmulatedJob) -> None:
        self._jobs[job.key] = job
        self._by_vault.setdefault(job.key[0], {})[job.key[1]] = job
        self.add_vault(job.vault_id)

    def find_job(self, vault_id: str, job_id: str) -> EmulatedJob | None:
        """A job as ARM sees it: ``None`` while still inside its not-found window."""
        now = self.now()
        job = self._jobs.get((vault_id.lower(), job_id.lower()))
        if job is None or not self._visible(job, now):
            return None
        return job

    def find_job_any_vault(self, job_id: str, vault_id: str | None = None) -> EmulatedJob | None:
        """Emulator truth regardless of visibility, for the admin API."""
        self.now()
        if vault_id is not None:
            return self._jobs.get((vault_id.lower(), job_id.lower()))
        wanted = job_id.lower()
        return next((j for j in self._jobs.values() if j.key[1] == wanted), None)

    def jobs_in_vault(self, vault_id: str) -> list[EmulatedJob]:
        """Visible jobs of a vault in creation order, which keeps paging stable."""
        now = self.now()
        # Insertion order is sequence order, so no sort is needed.
        vault = self._by_vault.get(vault_id.lower(), {})
        return [j for j in vault.values() if self._visible(j, now)]

    # ---- vaults

    def add_vault(self, vault_id: str) -> str:
        """Make a vault known (jobs add theirs), so subscription vault lists include it."""
        found = _VAULT_RE.match(vault_id.rstrip("/"))
        if found is None:
            raise ValidationError(f"vault_id {vault_id!r} is not a Recovery Services vault ARM id")
        canonical = _vault_id(found["sub"], found["rg"], found["vault"])
        return self._vaults.setdefault(canonical.lower(), canonical)

    def is_known_vault(self, vault_id: str) -> bool:
        return vault_id.lower() in self._vaults

    def sizes(self) -> tuple[int, int, int, int]:
        """(jobs held or announced, operations, vaults, queued faults), to bound admin input."""
        self.now()
        held = len(self._jobs) + self._pending_jobs
        return held, len(self._operations), len(self._vaults), len(self._faults)

    def vaults_in_subscription(self, subscription_id: str) -> list[str]:
        """The subscription's known vaults in the order they became known (stable paging)."""
        prefix = f"/subscriptions/{subscription_id.lower()}/"
        return [v for key, v in self._vaults.items() if key.startswith(prefix)]

    @staticmethod
    def _visible(job: EmulatedJob, now: float) -> bool:
        return now >= job.created_at + job.spec.not_found_seconds

    def job_end(self, job: EmulatedJob) -> float | None:
        """Clock time the job finished (or will finish); ``None`` if it never does."""
        if job.cancel_requested_at is not None:
            return job.cancel_requested_at + CANCELLING_SECONDS
        if job.spec.final_status.lower() in _RUNNING_STATUSES:
            return None
        return job.created_at + job.spec.duration_seconds

    def job_status(self, job: EmulatedJob, now: float | None = None) -> str:
        now = self.now() if now is None else now
        if job.cancel_requested_at is not None:
            cancelled_at = job.cancel_requested_at + CANCELLING_SECONDS
            return "Cancelling" if now < cancelled_at else "Cancelled"
        end = self.job_end(job)
        if end is None or now < end:
            return "InProgress" if end is not None else job.spec.final_status
        return job.spec.final_status

    def cancel_job(self, job: EmulatedJob) -> bool:
        """Start cancelling a running job; finished jobs are left alone (returns False)."""
        now = self.now()
        if self.job_status(job, now) != "InProgress":
            return False
        job.cancel_requested_at = now
        return True

    # ---- operations

    def add_operation(
        self,
        *,
        vault_id: str = DEFAULT_VAULT_ID,
        delay_seconds: float = 1.0,
        result: str = "Succeeded",
        job_count: int = 1,
        job_spec: JobSpec | None = None,
        container_name: str | None = None,
        protected_item_name: str | None = None,
    ) -> EmulatedOperation:
        """Queue an async operation; its job ids are allocated now, its jobs appear later."""
        succeeded = result == "Succeeded"
        op = EmulatedOperation(
            operation_id=str(uuid.uuid4()),
            vault_id=vault_id,
            created_at=self.clock(),
            delay_seconds=delay_seconds,
            result=result,
            job_ids=[str(uuid.uuid4()) for _ in range(job_count)] if succeeded else [],
            job_spec=job_spec or JobSpec(),
            container_name=container_name,
            protected_item_name=protected_item_name,
        )
        self._operations[op.operation_id.lower()] = op
        heapq.heappush(self._pending, (op.done_at, next(self._seq), op))
        self._pending_jobs += len(op.job_ids)
        self.now()  # a zero-delay operation completes immediately
        return op

    def find_operation(self, vault_id: str, operation_id: str) -> EmulatedOperation | None:
        self.now()
        op = self._operations.get(operation_id.lower())
        if op is None or op.vault_id.lower() != vault_id.lower():
            return None
        return op

    def _materialize(self, op: EmulatedOperation) -> None:
        op.materialized = True
        self._pending_jobs -= len(op.job_ids)
        for job_id in op.job_ids:
            key = (op.vault_id.lower(), job_id.lower())
            if key not in self._jobs:
                self._insert(
                    EmulatedJob(
                        vault_id=op.vault_id,
                        job_id=job_id,
                        spec=op.job_spec,
                        created_at=op.done_at,
                        seq=next(self._seq),
                        activity_id=str(uuid.uuid4()),
                    )
                )
        logger.debug("operation %s completed with jobs %s", op.operation_id, op.job_ids)

    # ---- faults and stats

    def add_fault(
        self,
        kind: str,
        *,
        count: int = 1,
        retry_after: int = 1,
        path_contains: str | None = None,
    ) -> Fault:
        """Queue ``count`` occurrences of a fault for ARM requests matching ``path_contains``."""
        if kind not in FAULT_KINDS:
            raise ValidationError(f"unknown fault kind {kind!r}")
        fault = Fault(kind, count, retry_after, path_contains)
        self._faults.append(fault)
        return fault

    def take_fault(self, path: str) -> Fault | None:
        """Consume the oldest queued fault that applies to ``path``, else draw a random one."""
        chosen: Fault | None = None
        for fault in self._faults:
            if fault.matches(path):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                chosen = fault
                break
        if chosen is None and self.random_faults is not None:
            chosen = self.random_faults.draw()
        if chosen is not None:
            self._stats.faults_served += 1
            self._stats.faults_by_kind[chosen.kind] += 1
        return chosen

    def set_random_faults(
        self,
        rate: float,
        kinds: Iterable[str] = DEFAULT_RANDOM_FAULT_KINDS,
        *,
        retry_after: int = 1,
        seed: int | None = None,
    ) -> RandomFaults | None:
        """Make every ARM request fail with probability ``rate``; 0 turns it off."""
        if not 0.0 <= rate <= 1.0:
            raise ValidationError("rate must be between 0 and 1")
        chosen = tuple(kinds)
        unknown = sorted(set(chosen) - FAULT_KINDS)
        if not chosen or unknown:
            raise ValidationError(f"kinds must be a non-empty subset of {sorted(FAULT_KINDS)}")
        self.random_faults = RandomFaults(rate, chosen, retry_after, seed) if rate > 0 else None
        return self.random_faults

    # ---- read budget

    def configure_reads(self, burst: int | None, refill_per_second: float | None = None) -> None:
        """Enable (or with ``None`` disable) the per-subscription read budget; buckets refill."""
        if refill_per_second is not None:
            self.read_refill_per_second = refill_per_second
        self.read_budget = None if burst is None else ReadBudget(burst, self.read_refill_per_second)

    def take_read(self, path: str) -> tuple[bool, int, int] | None:
        """Charge one read to the path's subscription; None when no budget is set."""
        found = _SUBSCRIPTION_RE.match(path)
        subscription = found[1].lower() if found else ""
        self._stats.reads_by_subscription[subscription] += 1
        if self.read_budget is None:
            return None
        verdict = self.read_budget.take(subscription, self.clock())
        if not verdict[0]:
            self._stats.throttled += 1
        return verdict

    # ---- replay

    def load_replay(
        self,
        paths: Iterable[str | Path],
        *,
        retry_after_cap: int | None = DEFAULT_RETRY_AFTER_CAP,
    ) -> ReplayServer:
        """Answer ARM requests from these recordings (see ``backupjobd.emulator.replay``)."""
        self.replay = load_replay(paths, retry_after_cap=retry_after_cap)
        logger.info(
            "replaying %d recording(s), %d resources",
            len(self.replay.recordings),
            self.replay.summary()["keys"],
        )
        return self.replay

    def record_request(self, kind: str) -> None:
        self._stats.requests += 1
        self._stats.by_kind[kind] += 1

    def record_job_get(self, job_id: str, *, running: bool = False) -> None:
        self._stats.job_gets[job_id] += 1
        if running:
            self._stats.job_gets_running += 1

    def stats(self) -> JSONDict:
        stats: JSONDict = {
            "requests": self._stats.requests,
            "by_kind": dict(self._stats.by_kind),
            "faults_served": self._stats.faults_served,
            "faults_by_kind": dict(self._stats.faults_by_kind),
            "job_gets": dict(self._stats.job_gets),
            "job_gets_running": self._stats.job_gets_running,
            "jobs": len(self._jobs),
            "throttled": self._stats.throttled,
            "reads_by_subscription": dict(self._stats.reads_by_subscription),
        }
        if self.replay is not None:
            stats["replay"] = self.replay.summary()
        return stats

    def reset(self) -> None:
        """Forget everything so one server can serve many independent tests."""
        self._jobs.clear()
        self._by_vault.clear()
        self._vaults.clear()
        self._operations.clear()
        self._pending.clear()
        self._pending_jobs = 0
        self._faults.clear()
        self.random_faults = None
        if self.read_budget is not None:
            self.read_budget.refill()
        if self.replay is not None:
            self.replay.rewind()
        self._stats = _Stats()

    # ---- rendering

    def render_job(self, job: EmulatedJob, *, extended: bool = True) -> JSONDict:
        """JobResource as ARM returns it for the job's current state."""
        now = self.now()
        status = self.job_status(job, now)
        spec = job.spec
        running = status.lower() in _RUNNING_STATUSES or (
            status == spec.final_status and self.job_end(job) is None
        )
        end = None if running else self.job_end(job)
        duration = (end if end is not None else now) - job.created_at
        job_type_key = spec.job_type.lower()
        operation = spec.operation
        if job_type_key == "azureworkloadjob" and operation == "Backup" and not running:
            operation = "Backup (Full)"
        props: JSONDict = {
            "jobType": spec.job_type,
            "entityFriendlyName": job.entity,
            "backupManagementType": _MANAGEMENT_TYPES.get(job_type_key, "Invalid"),
            "operation": operation,
            "status": status,
            "startTime": _iso(self.wall(job.created_at)),
            "activityId": job.activity_id,
            "duration": _timespan(duration),
            "actionsInfo": ["Cancellable"] if status == "InProgress" else [],
        }
        if end is not None:
            props["endTime"] = _iso(self.wall(end))
        if job_type_key.startswith("azureiaasvmjob"):
            props["virtualMachineVersion"] = "Compute"
            props["containerName"] = f"iaasvmcontainerv2;rg-emulator;{job.entity}"
        if job_type_key in {"azureiaasvmjob", "azurestoragejob"}:
            props["isUserTriggered"] = True
        if job_type_key == "azureworkloadjob":
            props["workloadType"] = "SQLDataBase"
        errors = _error_details(status)
        if errors:
            props["errorDetails"] = errors
        if extended:
            props["extendedInfo"] = self._extended_info(job, status, now, end)
        return {
            "id": f"{job.vault_id}/backupJobs/{job.job_id}",
            "name": job.job_id,
            "type": JOB_RESOURCE_TYPE,
            "properties": props,
        }

    def _extended_info(
        self, job: EmulatedJob, status: str, now: float, end: float | None
    ) -> JSONDict:
        duration = job.spec.duration_seconds
        reference = min(now, end) if end is not None else now
        elapsed = max(0.0, reference - job.created_at)
        if end is not None and job.cancel_requested_at is None:
            fraction = 1.0
        elif duration <= 0:
            fraction = 0.99
        else:
            fraction = min(elapsed / duration, 0.99 if end is None else 1.0)
        if job.cancel_requested_at is not None:
            fraction = min(fraction, 0.99)
        split = job.created_at + duration * SNAPSHOT_FRACTION
        lower_status = status.lower()
        failed = lower_status == "failed"
        cancelled = lower_status in {"cancelled", "cancelling"}

        def task_status(started: bool, done: bool) -> str:
            if done:
                return "Completed"
            if not started:
                return "NotStarted"
            if failed:
                return "Failed"
            if cancelled:
                return "Cancelled"
            return "InProgress"

        snap_done = fraction >= SNAPSHOT_FRACTION
        transfer_done = fraction >= 1.0
        transfer_pct = max(0.0, (fraction - SNAPSHOT_FRACTION) / (1 - SNAPSHOT_FRACTION)) * 100
        if failed and end is not None:
            # A failed job fails in its transfer step, after the snapshot was taken.
            snap_done, transfer_done = True, False
        snapshot: JSONDict = {
            "taskId": "Take Snapshot",
            "status": task_status(True, snap_done),
            "startTime": _iso(self.wall(job.created_at)),
            "duration": _timespan(min(elapsed, duration * SNAPSHOT_FRACTION)),
        }
        if snap_done:
            snapshot["endTime"] = _iso(self.wall(split))
        transfer: JSONDict = {
            "taskId": "Transfer data to vault",
            "status": task_status(snap_done, transfer_done),
            "progressPercentage": round(100.0 if transfer_done else transfer_pct, 2),
            "duration": _timespan(max(0.0, reference - split)) if snap_done else "00:00:00",
        }
        if snap_done:
            transfer["startTime"] = _iso(self.wall(split))
        if transfer_done and end is not None:
            transfer["endTime"] = _iso(self.wall(end))
        size_mb = int(hashlib.sha256(job.job_id.encode()).hexdigest()[:6], 16) % 4000 + 100
        return {
            "tasksList": [snapshot, transfer],
            "propertyBag": {
                "VM Name": job.entity,
                "Backup Size": f"{int(size_mb * min(fraction, 1.0))} MB",
            },
            "progressPercentage": round(fraction * 100, 2),
        }

    def render_operation(self, op: EmulatedOperation) -> JSONDict:
        """OperationStatus body; jobs are only announced once the operation is done."""
        now = self.now()
        body: JSONDict = {
            "id": op.operation_id,
            "name": op.operation_id,
            "status": "InProgress",
            "startTime": _iso(self.wall(op.created_at)),
            "endTime": OPERATION_PENDING_END,
        }
        if now < op.done_at:
            return body
        body["status"] = op.result
        body["endTime"] = _iso(self.wall(op.done_at))
        if op.result != "Succeeded":
            body["error"] = {
                "code": "UserErrorBackupOperationInProgress",
                "message": "Taking backup is not allowed as another backup operation is "
                "already in progress on this item.",
            }
        elif len(op.job_ids) == 1:
            body["properties"] = {
                "objectType": "OperationStatusJobExtendedInfo",
                "jobId": op.job_ids[0],
            }
        elif op.job_ids:
            body["properties"] = {
                "objectType": "OperationStatusJobsExtendedInfo",
                "jobIds": list(op.job_ids),
                "failedJobsError": {},
            }
        return body


def _error_details(status: str) -> list[JSONDict]:
    lower = status.lower()
    if lower == "failed":
        return [
            {
                "errorCode": 400239,
                "errorString": "Backup failed as the snapshot transfer to the vault timed out.",
                "errorTitle": "UserErrorSnapshotTransferTimedOut",
                "recommendations": ["Retry the backup operation after some time."],
            }
        ]
    if lower == "completedwithwarnings":
        return [
            {
                "errorCode": 400218,
                "errorString": "Backup completed but some disks were skipped.",
                "errorTitle": "UserErrorSomeDisksSkipped",
                "recommendations": ["Check the disk exclusion settings of the policy."],
            }
        ]
    return []


# --------------------------------------------------------------------------- app wiring

STATE_KEY: Final = web.AppKey("backupjobd_emulator_state", EmulatorState)

_Handler = Callable[[web.Request, EmulatorState, re.Match[str]], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    kind: str
    handler: _Handler


def _vault_from(match: re.Match[str]) -> str:
    return _vault_id(match["sub"], match["rg"], match["vault"])


def _not_found(kind: str, name: str, match: re.Match[str]) -> web.Response:
    return _arm_error(
        404,
        "ResourceNotFound",
        f"The Resource 'Microsoft.RecoveryServices/vaults/{match['vault']}/{kind}/{name}' "
        f"under resource group '{match['rg']}' was not found.",
    )


def _api_version(request: web.Request) -> str:
    return _query(request, "api-version") or DEFAULT_API_VERSION


async def _get_job(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    job_id = match["job"]
    job = state.find_job(_vault_from(match), job_id)
    if job is None:
        state.record_job_get(job_id)
        return _not_found("backupJobs", job_id, match)
    body = state.render_job(job)
    state.record_job_get(job.job_id, running="endTime" not in body["properties"])
    return web.json_response(body)


async def _cancel_job(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    job = state.find_job(_vault_from(match), match["job"])
    if job is None:
        return _not_found("backupJobs", match["job"], match)
    if not state.cancel_job(job):
        logger.debug("cancel of job %s ignored: already finished", job.job_id)
    op_id = str(uuid.uuid4())
    location = (
        f"{_base_url(request)}{job.vault_id}/backupJobs/{job.job_id}/operationResults/{op_id}"
        f"?api-version={quote(_api_version(request))}"
    )
    return web.Response(status=202, headers={"Location": location, "Retry-After": "1"})


async def _cancel_result(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    if state.find_job(_vault_from(match), match["job"]) is None:
        return _not_found("backupJobs", match["job"], match)
    return web.Response(status=204)


async def _get_operation(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = state.find_operation(_vault_from(match), match["op"])
    if op is None:
        return _not_found("backupOperations", match["op"], match)
    return web.json_response(state.render_operation(op))


async def _operation_result(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    op = state.find_operation(_vault_from(match), match["op"])
    if op is None:
        return _not_found("operationResults", match["op"], match)
    if state.now() < op.done_at:
        return web.Response(
            status=202,
            headers={"Location": str(request.url), "Retry-After": "1"},
        )
    return web.Response(status=204)


def _job_type_for_item(item_name: str) -> str:
    prefix = item_name.split(";", 1)[0].lower()
    if prefix in {"sqldatabase", "saphanadatabase", "saphanadbinstance", "sapasedatabase"}:
        return "AzureWorkloadJob"
    if prefix == "azurefileshare":
        return "AzureStorageJob"
    return "AzureIaaSVMJob"


def _item_urls(
    base: str, vault_id: str, container: str, item: str, op_id: str, api_version: str
) -> tuple[str, str]:
    """(Azure-AsyncOperation, Location) for an item-level operation."""
    item_path = (
        f"{base}{vault_id}/backupFabrics/Azure/protectionContainers/{container}"
        f"/protectedItems/{item}"
    )
    suffix = f"{op_id}?api-version={quote(api_version)}"
    return f"{item_path}/operationsStatus/{suffix}", f"{item_path}/operationResults/{suffix}"


async def _trigger_backup(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    container, item = match["container"], match["item"]
    vault_id = _vault_from(match)
    op = state.add_operation(
        vault_id=vault_id,
        delay_seconds=1.0,
        job_spec=JobSpec(
            duration_seconds=5.0,
            job_type=_job_type_for_item(item),
            entity_friendly_name=item.rsplit(";", 1)[-1],
        ),
        container_name=container,
        protected_item_name=item,
    )
    status_url, result_url = _item_urls(
        _base_url(request), vault_id, container, item, op.operation_id, _api_version(request)
    )
    logger.info("backup triggered for %s: operation %s", item, op.operation_id)
    return web.Response(
        status=202,
        headers={"Azure-AsyncOperation": status_url, "Location": result_url, "Retry-After": "1"},
    )


def _parse_filter_time(value: str) -> float:
    try:
        parsed = datetime.strptime(value, _FILTER_TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ValidationError(
            f"time {value!r} is not in the format 'yyyy-MM-dd hh:mm:ss tt'"
        ) from exc
    return parsed.timestamp()


def _parse_filter(text: str) -> list[tuple[str, str]]:
    """Parse the OData-ish ``field eq 'value' and ...`` subset that the Backup RP accepts."""
    known = {"status", "operation", "backupmanagementtype", "jobid", "starttime", "endtime"}
    clauses: list[tuple[str, str]] = []
    if not text.strip():
        return clauses
    for part in _FILTER_SPLIT_RE.split(text.strip()):
        found = _FILTER_CLAUSE_RE.match(part)
        if found is None:
            raise ValidationError(f"cannot parse filter clause {part!r}")
        name, value = found[1].lower(), found[2]
        if name not in known:
            raise ValidationError(f"unsupported filter field {found[1]!r}")
        if name in {"starttime", "endtime"}:
            _parse_filter_time(value)
        clauses.append((name, value))
    return clauses


def _job_matches(state: EmulatorState, job: EmulatedJob, clauses: list[tuple[str, str]]) -> bool:
    for name, value in clauses:
        wanted = value.lower()
        if name == "status":
            ok = state.job_status(job).lower() == wanted
        elif name == "operation":
            ok = job.spec.operation.lower() == wanted
        elif name == "backupmanagementtype":
            ok = _MANAGEMENT_TYPES.get(job.spec.job_type.lower(), "Invalid").lower() == wanted
        elif name == "jobid":
            ok = job.job_id.lower() == wanted
        elif name == "starttime":
            ok = state.wall(job.created_at) >= _parse_filter_time(value)
        else:  # endtime: upper bound of the window on the job's start
            ok = state.wall(job.created_at) <= _parse_filter_time(value)
        if not ok:
            return False
    return True


async def _list_jobs(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    filter_text = _query(request, "$filter") or ""
    token = _query(request, "$skiptoken")
    try:
        clauses = _parse_filter(filter_text)
    except ValidationError as exc:
        return _arm_error(400, "BMSUserErrorInvalidFilter", str(exc))
    after = 0
    if token:
        if not token.isdigit():
            return _arm_error(400, "BMSUserErrorInvalidSkipToken", f"bad $skiptoken {token!r}")
        after = int(token)
    # The skip token is the creation sequence of the last job served, so jobs appearing or
    # changing status between pages never cause duplicates.
    jobs = [
        j
        for j in state.jobs_in_vault(_vault_from(match))
        if j.seq > after and _job_matches(state, j, clauses)
    ]
    page = jobs[: state.page_size]
    body: JSONDict = {"value": [state.render_job(j, extended=False) for j in page]}
    if len(jobs) > len(page):
        params = [f"api-version={quote(_api_version(request), safe='')}"]
        if filter_text:
            params.append(f"$filter={quote(filter_text, safe='')}")
        params.append(f"$skiptoken={page[-1].seq}")
        body["nextLink"] = f"{_base_url(request)}{request.path}?{'&'.join(params)}"
    return web.json_response(body)


async def _list_vaults(
    request: web.Request, state: EmulatorState, match: re.Match[str]
) -> web.StreamResponse:
    """`GET /subscriptions/{sub}/providers/Microsoft.RecoveryServices/vaults`, paged like
    ARM with a `nextLink` (its `$skiptoken` is the index of the next vault)."""
    token = _query(request, "$skiptoken") or "0"
    if not token.isdigit():
        return _arm_error(400, "InvalidSkipToken", f"bad $skiptoken {token!r}")
    start = int(token)
    vaults = state.vaults_in_subscription(match["sub"])
    page = vaults[start : start + state.page_size]
    body: JSONDict = {
        "value": [
            {
                "id": vault_id,
                "name": vault_id.rsplit("/", 1)[-1],
                "type": "Microsoft.RecoveryServices/vaults",
                "location": "westeurope",
                "sku": {"name": "Standard"},
                "properties": {"provisioningState": "Succeeded"},
            }
            for vault_id in page
        ]
    }
    if start + len(page) < len(vaults):
        version = quote(_api_version(request), safe="")
        body["nextLink"] = (
            f"{_base_url(request)}{request.path}?api-version={version}"
            f"&$skiptoken={start + len(page)}"
        )
    return web.json_response(body)


_V = _VAULT_PATTERN
_ROUTES: Final = (
    _Route(
        "GET",
        re.compile(
            r"^/subscriptions/(?P<sub>[^/]+)/providers/microsoft\.recoveryservices/vaults$", re.I
        ),
        "vault_list",
        _list_vaults,
    ),
    _Route("GET", re.compile(rf"^{_V}/backupjobs$", re.I), "job_list", _list_jobs),
    _Route("GET", re.compile(rf"^{_V}/backupjobs/(?P<job>[^/]+)$", re.I), "job_get", _get_job),
    _Route(
        "POST", re.compile(rf"^{_V}/backupjobs/(?P<job>[^/]+)/cancel$", re.I), "cancel", _cancel_job
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}/backupjobs/(?P<job>[^/]+)/operationresults/(?P<op>[^/]+)$", re.I),
        "cancel_result",
        _cancel_result,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}/backupoperations/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_operation,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}{_ITEM_PATTERN}/operationsstatus/(?P<op>[^/]+)$", re.I),
        "operation_get",
        _get_operation,
    ),
    _Route(
        "GET",
        re.compile(rf"^{_V}{_ITEM_PATTERN}/operationresults/(?P<op>[^/]+)$", re.I),
        "operation_result",
        _operation_result,
    ),
    _Route("POST", re.compile(rf"^{_V}{_ITEM_PATTERN}/backup$", re.I), "trigger", _trigger_backup),
)


def _check_auth(request: web.Request, state: EmulatorState) -> web.Response | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        reason = "The request is missing a bearer token in the Authorization header."
    elif state.required_token is not None and token != state.required_token:
        reason = "The access token is invalid."
    else:
        return None
    return _arm_error(
        401,
        "AuthenticationFailed",
        f"Authentication failed. {reason}",
        **{"WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/"'},
    )


def _check_api_version(request: web.Request) -> web.Response | None:
    version = _query(request, "api-version")
    if version is None:
        return _arm_error(
            400,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    if not _API_VERSION_RE.match(version):
        return _arm_error(
            400,
            "InvalidApiVersionParameter",
            f"The api-version '{version}' is invalid. The supported format is "
            "'yyyy-mm-dd' or 'yyyy-mm-dd-preview'.",
        )
    return None


async def _serve_fault(
    fault: Fault,
    request: web.Request,
    answer: Callable[[], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    logger.info("emulator fault %s served for %s %s", fault.kind, request.method, request.path)
    if fault.kind == "429":
        return _arm_error(
            429,
            "TooManyRequests",
            "The request is being throttled as the limit has been reached for operation "
            "type - 'Read'.",
            **{"Retry-After": str(fault.retry_after)},
        )
    if fault.kind in {"500", "502", "503", "504"}:
        codes = {
            "500": "InternalServerError",
            "502": "BadGateway",
            "503": "ServiceUnavailable",
            "504": "GatewayTimeout",
        }
        return _arm_error(int(fault.kind), codes[fault.kind], "Injected fault.")
    if fault.kind == "garbled":
        return web.Response(
            status=200,
            body=b"<html><body>502 Bad Gateway \x00\xff</body></html>",
            content_type="application/json",
        )
    if fault.kind == "truncated":
        real = await answer()
        body = real.body if isinstance(real, web.Response) else None
        raw = body if isinstance(body, bytes) and len(body) > 2 else b'{"value": [{"id": "x"}]}'
        return web.Response(status=200, body=raw[: len(raw) // 2], content_type="application/json")
    # reset: drop the connection without any answer; writing the response then fails quietly.
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=500)


def _throttled(retry_after: int) -> web.Response:
    return _arm_error(
        429,
        "SubscriptionRequestsThrottled",
        "Number of 'read' requests for subscription exceeded the limit. "
        f"Please try again after '{retry_after}' seconds.",
        **{"Retry-After": str(retry_after), READS_REMAINING_HEADER: "0"},
    )


async def _replay_answer(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    assert state.replay is not None
    recorded = state.replay.next_answer(request.method, request.path)
    if recorded is None:
        return _arm_error(
            404,
            "ResourceNotFound",
            f"{request.method} {request.path} is not in the replayed recordings.",
        )
    return state.replay.render(recorded, _base_url(request))


async def _arm_entry(request: web.Request) -> web.StreamResponse:
    """Single entry for every ARM path, so routing can be case-insensitive like ARM.

    Order: the read budget (ARM's gateway throttles first), then injected faults, then the
    answer (auth and api-version checks, then the model or the replayed recording).
    """
    state = request.app[STATE_KEY]
    budget = state.take_read(request.path) if request.method == "GET" else None
    if budget is not None and not budget[0]:
        state.record_request("throttled")
        logger.debug("read budget exhausted for %s; 429 for %s", request.path, budget[2])
        return _throttled(budget[2])
    response = await _arm_answer(request, state)
    if budget is not None and isinstance(response, web.Response) and not response.prepared:
        response.headers[READS_REMAINING_HEADER] = str(budget[1])
    return response


async def _arm_answer(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    path = request.path.rstrip("/") or "/"
    route: _Route | None = None
    match: re.Match[str] | None = None
    method_mismatch = False
    for candidate in _ROUTES:
        found = candidate.pattern.match(path)
        if found is None:
            continue
        if candidate.method != request.method:
            method_mismatch = True
            continue
        route, match = candidate, found
        break
    if state.replay is not None:
        state.record_request("replay")
    else:
        state.record_request(route.kind if route is not None else "unknown")

    async def answer() -> web.StreamResponse:
        denied = _check_auth(request, state) or _check_api_version(request)
        if denied is not None:
            return denied
        if state.replay is not None:
            return await _replay_answer(request, state)
        if route is None or match is None:
            if method_mismatch:
                return _arm_error(
                    405, "MethodNotAllowed", f"The method {request.method} is not allowed."
                )
            return _arm_error(
                404, "InvalidResourceType", f"No route for {request.method} {request.path}."
            )
        return await route.handler(request, state, match)

    fault = state.take_fault(request.path)
    if fault is not None:
        return await _serve_fault(fault, request, answer)
    return await answer()


# --------------------------------------------------------------------------- admin API

_JOB_FIELDS: Final = {
    "final_status",
    "duration_seconds",
    "not_found_seconds",
    "operation",
    "job_type",
    "entity_friendly_name",
}


def _number(
    body: Mapping[str, Any],
    key: str,
    default: float,
    minimum: float = 0.0,
    maximum: float = MAX_SECONDS,
) -> float:
    """A finite JSON number in [minimum, maximum]; NaN, infinities and booleans are refused."""
    value = body.get(key, default)
    # NaN fails every comparison and infinities the bounds; comparing before float() keeps a
    # huge integer from overflowing the conversion.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= maximum
    ):
        raise ValidationError(f"{key} must be a number between {minimum:g} and {maximum:g}")
    return float(value)


def _integer(body: Mapping[str, Any], key: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ValidationError(f"{key} must be an integer between {minimum} and {maximum}")
    return value


def _string(
    body: Mapping[str, Any], key: str, default: str | None, max_length: int = MAX_NAME_LENGTH
) -> str | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{key} must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(f"{key} must be at most {max_length} characters")
    return value


def _require_object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object")
    return value


def _items(raw: Any, what: str) -> list[Any]:
    """An admin body that is one object or an array of them, at most ``MAX_ITEMS_PER_REQUEST``."""
    items = raw if isinstance(raw, list) else [raw]
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise ValidationError(f"{what}: at most {MAX_ITEMS_PER_REQUEST} per request")
    return items


def _reject_unknown(body: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        # Names come from the client: show a few, shortened, so the error stays one short line.
        shown = ", ".join(repr(name[:64]) for name in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValidationError(f"unknown {what} field(s): {shown}{more}")


def _parse_job_spec(body: Mapping[str, Any]) -> JobSpec:
    return JobSpec(
        final_status=_string(body, "final_status", "Completed") or "Completed",
        duration_seconds=_number(body, "duration_seconds", 5.0),
        not_found_seconds=_number(body, "not_found_seconds", 0.0),
        operation=_string(body, "operation", "Backup") or "Backup",
        job_type=_string(body, "job_type", "AzureIaaSVMJob") or "AzureIaaSVMJob",
        entity_friendly_name=_string(body, "entity_friendly_name", None),
    )


def _parse_vault(body: Mapping[str, Any]) -> str:
    vault_id = _string(body, "vault_id", DEFAULT_VAULT_ID, MAX_ID_LENGTH) or DEFAULT_VAULT_ID
    found = _VAULT_RE.match(vault_id.rstrip("/"))
    if found is None:
        raise ValidationError(f"vault_id {vault_id!r} is not a Recovery Services vault ARM id")
    return _vault_id(found["sub"], found["rg"], found["vault"])


def _parse_arm_name(body: Mapping[str, Any], key: str, default: str | None) -> str | None:
    value = _string(body, key, default)
    if value is not None and ("/" in value or "?" in value or "#" in value):
        raise ValidationError(f"{key} must not contain '/', '?' or '#'")
    return value


def _check_room(state: EmulatorState, *, jobs: int = 0, vaults: Iterable[str] = ()) -> None:
    """Refuse what would take the emulator past ``MAX_JOBS`` or ``MAX_VAULTS``."""
    held, _, known, _ = state.sizes()
    if held + jobs > MAX_JOBS:
        raise ValidationError(
            f"jobs: {held} held, {jobs} more would pass the limit of {MAX_JOBS}"
            " (POST /admin/reset to start over)"
        )
    new = {v.lower() for v in vaults if not state.is_known_vault(v)}
    if known + len(new) > MAX_VAULTS:
        raise ValidationError(
            f"vault_id: {known} vaults known, {len(new)} more would pass the limit of"
            f" {MAX_VAULTS} (POST /admin/reset to start over)"
        )


async def _json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ValidationError(f"body must be at most {MAX_BODY_BYTES} bytes") from exc
    except RecursionError as exc:
        raise ValidationError("body is nested too deeply") from exc
    # ValueError covers JSONDecodeError and integers longer than Python converts.
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"body is not valid JSON: {exc}") from exc


def _admin_error(exc: ValidationError) -> web.Response:
    return web.json_response({"error": str(exc)}, status=400)


async def _admin_add_jobs(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        items = _items(await _json_body(request), "jobs")
        parsed: list[tuple[str, str | None, JobSpec, float]] = []
        for item in items:
            body = _require_object(item, "job")
            _reject_unknown(
                body, _JOB_FIELDS | {"vault_id", "job_id", "started_seconds_ago"}, "job"
            )
            job_id = _string(body, "job_id", None)
            if job_id is not None and not _NAME_RE.match(job_id):
                raise ValidationError(f"job_id {job_id!r} is not a valid job name")
            ago = _number(body, "started_seconds_ago", 0.0)
            parsed.append((_parse_vault(body), job_id, _parse_job_spec(body), ago))
        _check_room(state, jobs=len(parsed), vaults=[vault_id for vault_id, *_ in parsed])
        seen: set[tuple[str, str]] = set()
        for vault_id, job_id, _, _ in parsed:
            if job_id is None:
                continue
            key = (vault_id.lower(), job_id.lower())
            if key in seen or state.find_job_any_vault(job_id, vault_id) is not None:
                raise ValidationError(f"job {job_id} already exists in {vault_id}")
            seen.add(key)
    except ValidationError as exc:
        return _admin_error(exc)
    # `started_seconds_ago` backdates the start: a job longer ago than its duration arrives
    # already finished (as MAB/agent jobs often do by the time anyone lists them).
    now = state.now()
    created = [
        state.add_job(spec, vault_id=v, job_id=j, created_at=now - ago)
        for v, j, spec, ago in parsed
    ]
    logger.debug("admin created %d job(s)", len(created))
    return web.json_response(
        {
            "jobs": [
                {
                    "job_id": job.job_id,
                    "vault_id": job.vault_id,
                    "id": f"{job.vault_id}/backupJobs/{job.job_id}",
                }
                for job in created
            ]
        },
        status=201,
    )


async def _admin_add_operation(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    allowed = {
        "vault_id",
        "delay_seconds",
        "result",
        "job_count",
        "item_level",
        "jobs",
        "container_name",
        "protected_item_name",
        "api_version",
    }
    try:
        body = _require_object(await _json_body(request), "operation")
        _reject_unknown(body, allowed, "operation")
        vault_id = _parse_vault(body)
        result = body.get("result", "Succeeded")
        if result not in {"Succeeded", "Failed"}:
            raise ValidationError("result must be 'Succeeded' or 'Failed'")
        item_level = body.get("item_level", False)
        if not isinstance(item_level, bool):
            raise ValidationError("item_level must be a boolean")
        jobs_body = _require_object(body.get("jobs", {}), "jobs")
        _reject_unknown(jobs_body, _JOB_FIELDS, "jobs")
        api_version = _string(body, "api_version", DEFAULT_API_VERSION) or DEFAULT_API_VERSION
        if not _API_VERSION_RE.match(api_version):
            raise ValidationError("api_version must look like yyyy-mm-dd[-preview]")
        container = _parse_arm_name(body, "container_name", DEFAULT_CONTAINER_NAME)
        item = _parse_arm_name(body, "protected_item_name", DEFAULT_PROTECTED_ITEM_NAME)
        delay = _number(body, "delay_seconds", 1.0)
        job_count = _integer(body, "job_count", 1, 1, MAX_OPERATION_JOBS)
        job_spec = _parse_job_spec(jobs_body)
        if state.sizes()[1] >= MAX_OPERATIONS:
            raise ValidationError(
                f"operations: at most {MAX_OPERATIONS} (POST /admin/reset to start over)"
            )
        _check_room(state, jobs=job_count if result == "Succeeded" else 0)
        op = state.add_operation(
            vault_id=vault_id,
            delay_seconds=delay,
            result=result,
            job_count=job_count,
            job_spec=job_spec,
            container_name=container if item_level else None,
            protected_item_name=item if item_level else None,
        )
    except ValidationError as exc:
        return _admin_error(exc)
    base = _base_url(request)
    if item_level and container is not None and item is not None:
        status_url, result_url = _item_urls(
            base, vault_id, container, item, op.operation_id, api_version
        )
    else:
        suffix = f"{op.operation_id}?api-version={quote(api_version)}"
        status_url = f"{base}{vault_id}/backupOperations/{suffix}"
        result_url = f"{base}{vault_id}/backupOperationResults/{suffix}"
    return web.json_response(
        {
            "operation_id": op.operation_id,
            "azure_async_operation": status_url,
            "location": result_url,
            "job_ids": list(op.job_ids),
        },
        status=201,
    )


async def _admin_add_fault(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    try:
        body = _require_object(await _json_body(request), "fault")
        if body.get("kind") == "random":
            return _set_random_faults(state, body)
        _reject_unknown(body, {"kind", "count", "retry_after", "path_contains"}, "fault")
        kind = body.get("kind")
        if isinstance(kind, int) and not isinstance(kind, bool):
            kind = str(kind)
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise ValidationError(f"kind must be one of {sorted(FAULT_KINDS)}")
        count = _integer(body, "count", 1, 1, MAX_FAULT_COUNT)
        retry_after = _integer(body, "retry_after", 1, 0, MAX_RETRY_AFTER)
        path_contains = _string(body, "path_contains", None, MAX_ID_LENGTH)
        if state.sizes()[3] >= MAX_QUEUED_FAULTS:
            raise ValidationError(
                f"faults: at most {MAX_QUEUED_FAULTS} queued (POST /admin/reset to start over)"
            )
        fault = state.add_fault(
            kind, count=count, retry_after=retry_after, path_contains=path_contains
        )
    except ValidationError as exc:
        return _admin_error(exc)
    return web.json_response(
        {
            "kind": fault.kind,
            "count": fault.remaining,
            "retry_after": fault.retry_after,
            "path_contains": fault.path_contains,
        },
        status=201,
    )


def _set_random_faults(state: EmulatorState, body: Mapping[str, Any]) -> web.Response:
    _reject_unknown(body, {"kind", "rate", "kinds", "retry_after", "seed"}, "fault")
    if "rate" not in body:
        raise ValidationError("rate must be a number between 0 and 1")
    rate = _number(body, "rate", 0.0, 0.0, 1.0)
    kinds = body.get("kinds", list(DEFAULT_RANDOM_FAULT_KINDS))
    if not isinstance(kinds, list) or len(kinds) > MAX_RANDOM_FAULT_KINDS:
        raise ValidationError(
            f"kinds must be a list of at most {MAX_RANDOM_FAULT_KINDS} fault kinds"
        )
    kinds = [str(k) if isinstance(k, int) and not isinstance(k, bool) else k for k in kinds]
    if not all(isinstance(k, str) for k in kinds):
        raise ValidationError("kinds must be a list of fault kinds")
    seed = body.get("seed")
    if seed is not None:
        seed = _integer(body, "seed", 0, 0, MAX_SEED)
    faults = state.set_random_faults(
        rate, kinds, retry_after=_integer(body, "retry_after", 1, 0, MAX_RETRY_AFTER), seed=seed
    )
    logger.info("random faults %s", f"at rate {rate}" if faults else "off")
    return web.json_response(
        {
            "kind": "random",
            "rate": faults.rate if faults else 0.0,
            "kinds": list(faults.kinds) if faults else [],
            "retry_after": faults.retry_after if faults else None,
            "seed": faults.seed if faults else None,
        },
        status=201,
    )


def _config_view(state: EmulatorState) -> JSONDict:
    return {
        "read_burst": state.read_budget.burst if state.read_budget else None,
        "read_refill_per_second": state.read_refill_per_second,
        "page_size": state.page_size,
    }


async def _admin_get_config(request: web.Request) -> web.StreamResponse:
    return web.json_response(_config_view(request.app[STATE_KEY]))


async def _admin_set_config(request: web.Request) -> web.StreamResponse:
    """Runtime settings; fields left out keep their value, ``read_burst: null`` disables."""
    state = request.app[STATE_KEY]
    try:
        body = _require_object(await _json_body(request), "config")
        _reject_unknown(body, {"read_burst", "read_refill_per_second", "page_size"}, "config")
        refill = state.read_refill_per_second
        if "read_refill_per_second" in body:
            refill = _number(
                body,
                "read_refill_per_second",
                refill,
                MIN_READ_REFILL_PER_SECOND,
                MAX_READ_REFILL_PER_SECOND,
            )
        burst = state.read_budget.burst if state.read_budget else None
        if "read_burst" in body:
            burst = (
                None
                if body["read_burst"] is None
                else _integer(body, "read_burst", 1, 1, MAX_READ_BURST)
            )
        page_size = _integer(body, "page_size", state.page_size, 1, MAX_PAGE_SIZE)
    except ValidationError as exc:
        return _admin_error(exc)
    state.configure_reads(burst, refill)
    state.page_size = page_size
    logger.info("emulator config: %s", _config_view(state))
    return web.json_response(_config_view(state))


async def _admin_replay(request: web.Request) -> web.StreamResponse:
    replay = request.app[STATE_KEY].replay
    if replay is None:
        return web.json_response({"error": "not in replay mode"}, status=404)
    return web.json_response({**replay.summary(), "resources": replay.progress()})


async def _admin_add_vaults(request: web.Request) -> web.StreamResponse:
    """`{"vault_id": …}` or an array of them: vaults without jobs, for subscription lists."""
    state = request.app[STATE_KEY]
    try:
        ids = []
        for item in _items(await _json_body(request), "vaults"):
            body = _require_object(item, "vault")
            _reject_unknown(body, {"vault_id"}, "vault")
            ids.append(_parse_vault(body))
        _check_room(state, vaults=ids)
    except ValidationError as exc:
        return _admin_error(exc)
    return web.json_response({"vaults": [state.add_vault(v) for v in ids]}, status=201)


async def _admin_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[STATE_KEY].stats())


async def _admin_reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE_KEY].reset()
    logger.info("emulator state reset")
    return web.json_response({"reset": True})


async def _admin_get_job(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    job = state.find_job_any_vault(request.match_info["job_id"], request.query.get("vault_id"))
    if job is None:
        return web.json_response({"error": "no such job"}, status=404)
    return web.json_response(
        {
            "job_id": job.job_id,
            "vault_id": job.vault_id,
            "final_status": job.spec.final_status,
            "status": state.job_status(job),
        }
    )


def _is_loopback(host: str) -> bool:
    """Whether a listening address only takes connections from this machine."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _warn_if_exposed(hosts: Iterable[str], required_token: str | None) -> None:
    """One warning when reachable from other machines: the admin API never asks who calls."""
    exposed = sorted({h for h in hosts if not _is_loopback(h)})
    if not exposed:
        return
    logger.warning(
        "emulator listens beyond loopback (%s): its admin API (/admin/*) has no authentication,"
        " --token guards only the ARM API%s, so anyone who can reach it can create jobs, inject"
        " faults or reset it; keep it on 127.0.0.1",
        ", ".join(exposed),
        "" if required_token is not None else " (not set: any bearer token is accepted)",
    )


def build_emulator_app(state: EmulatorState | None = None) -> web.Application:
    """The emulator as an aiohttp app, for TestServer or any runner."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = state if state is not None else EmulatorState()
    app.router.add_post("/admin/jobs", _admin_add_jobs)
    app.router.add_get("/admin/jobs/{job_id}", _admin_get_job)
    app.router.add_post("/admin/operations", _admin_add_operation)
    app.router.add_post("/admin/faults", _admin_add_fault)
    app.router.add_post("/admin/vaults", _admin_add_vaults)
    app.router.add_get("/admin/stats", _admin_stats)
    app.router.add_get("/admin/config", _admin_get_config)
    app.router.add_post("/admin/config", _admin_set_config)
    app.router.add_get("/admin/replay", _admin_replay)
    app.router.add_post("/admin/reset", _admin_reset)
    app.router.add_route("*", "/{tail:.*}", _arm_entry)
    return app


async def run_emulator(
    host: str = "127.0.0.1",
    port: int = 8443,
    *,
    required_token: str | None = None,
    ready: Callable[[int], None] | None = None,
    replay_files: Iterable[str | Path] = (),
    read_burst: int | None = None,
    read_refill_per_second: float = ARM_READ_REFILL_PER_SECOND,
) -> None:
    """Serve the emulator until cancelled; ``ready`` receives the bound port (for port 0).

    With ``replay_files`` ARM requests are answered from those recordings; a file that
    cannot be loaded raises ``ReplayError`` before anything listens.
    """
    state = EmulatorState(
        required_token=required_token,
        read_burst=read_burst,
        read_refill_per_second=read_refill_per_second,
    )
    files = list(replay_files)
    if files:
        state.load_replay(files)
    app = build_emulator_app(state)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        actual_port = int(runner.addresses[0][1]) if runner.addresses else port
        logger.info("emulator listening on http://%s:%d", host, actual_port)
        # The bound addresses, not ``host``: a name may resolve beyond loopback, "" binds all.
        bound = [str(address[0]) for address in runner.addresses]
        _warn_if_exposed(bound or [host], required_token)
        if ready is not None:
            ready(actual_port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
