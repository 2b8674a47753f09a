"""The emulator's model: jobs, operations, vaults, faults and counters, on an injectable clock.

A job's status is derived from the clock rather than stored, so tests advance time
deterministically with no sleeps; an operation's jobs only come into existence once the
clock passes its end.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import logging
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from backupjobd.core.azure import job_arm_id
from backupjobd.emulator import render
from backupjobd.emulator.faults import (
    ARM_READ_REFILL_PER_SECOND,
    DEFAULT_RANDOM_FAULT_KINDS,
    FAULT_KINDS,
    Fault,
    RandomFaults,
    ReadBudget,
)
from backupjobd.emulator.render import RUNNING_STATUSES, JSONDict
from backupjobd.emulator.replay import DEFAULT_RETRY_AFTER_CAP, ReplayServer, load_replay

logger = logging.getLogger(__name__)

DEFAULT_VAULT_ID: Final = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-emulator"
    "/providers/Microsoft.RecoveryServices/vaults/vault-emulator"
)
#: How long a cancelled job stays ``Cancelling`` before it reports ``Cancelled``.
CANCELLING_SECONDS: Final = 1.0
VAULT_PATTERN: Final = (
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.recoveryservices/vaults/(?P<vault>[^/]+)"
)
BACKUP_VAULT_PATTERN: Final = (
    r"/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)"
    r"/providers/microsoft\.dataprotection/backupvaults/(?P<vault>[^/]+)"
)
VAULT_RE: Final = re.compile(rf"^{VAULT_PATTERN}$", re.IGNORECASE)
BACKUP_VAULT_RE: Final = re.compile(rf"^{BACKUP_VAULT_PATTERN}$", re.IGNORECASE)
SUBSCRIPTION_RE: Final = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
REGION_RE: Final = re.compile(r"^[a-z][a-z0-9]{1,39}$")
#: Where the emulator says Backup vaults live (their operationResults are at this location).
BACKUP_VAULT_LOCATION: Final = "westeurope"


def vault_arm_id(sub: str, rg: str, vault: str, *, backup_vault: bool = False) -> str:
    """Canonical casing of a vault ARM id built from the request's path segments."""
    provider = (
        "Microsoft.DataProtection/backupVaults"
        if backup_vault
        else "Microsoft.RecoveryServices/vaults"
    )
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{provider}/{vault}"


def canonical_vault_id(vault_id: str) -> str:
    """A vault ARM id (either kind) in canonical casing; anything else is bad input."""
    found = VAULT_RE.match(vault_id.rstrip("/"))
    if found is not None:
        return vault_arm_id(found["sub"], found["rg"], found["vault"])
    found = BACKUP_VAULT_RE.match(vault_id.rstrip("/"))
    if found is not None:
        return vault_arm_id(found["sub"], found["rg"], found["vault"], backup_vault=True)
    raise ValidationError(
        f"vault_id {vault_id!r} is neither a Recovery Services vault nor a Backup vault ARM id"
    )


def is_backup_vault(vault_id: str) -> bool:
    return "/microsoft.dataprotection/" in vault_id.lower()


def subscription_of(path: str) -> str:
    found = SUBSCRIPTION_RE.match(path)
    return found[1].lower() if found else ""


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
    #: A cross-region restore's job: its secondary region (it is read there, not in the vault).
    region: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.vault_id.lower(), self.job_id.lower())

    @property
    def backup_vault(self) -> bool:
        return is_backup_vault(self.vault_id)

    @property
    def arm_id(self) -> str:
        """The job's ARM id: under its vault, or location-scoped for a cross-region restore."""
        return job_arm_id(self.vault_id, self.job_id, self.region)

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
    #: A cross-region restore's secondary region, or a Backup vault operation's location.
    region: str | None = None

    @property
    def crr(self) -> bool:
        return self.region is not None and not is_backup_vault(self.vault_id)

    @property
    def done_at(self) -> float:
        return self.created_at + self.delay_seconds


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
    # List pages served for a start-time window (`startTime eq … and endTime eq …`).
    window_list_pages: int = 0


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
        read_others_per_second: float = 0.0,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        self.clock = clock
        self.page_size = page_size
        self.required_token = required_token
        self.read_budget: ReadBudget | None = None
        self.write_budget: ReadBudget | None = None
        self.read_refill_per_second = read_refill_per_second
        self.read_others_per_second = read_others_per_second
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
        #: Job ids announced by pending operations, counted against ``admin.MAX_JOBS``.
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
        region: str | None = None,
    ) -> EmulatedJob:
        """Create a job whose lifecycle starts now (or at ``created_at``); with ``region`` a
        cross-region restore's job of that (Recovery Services) vault."""
        if region is not None and (is_backup_vault(vault_id) or not REGION_RE.match(region)):
            raise ValidationError(
                "region: a lower-case Azure region, for a Recovery Services vault"
            )
        job = EmulatedJob(
            vault_id=vault_id,
            job_id=job_id or str(uuid.uuid4()),
            spec=spec or JobSpec(),
            created_at=self.now() if created_at is None else created_at,
            seq=next(self._seq),
            activity_id=str(uuid.uuid4()),
            region=region,
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
        """Visible jobs of a vault in creation order, which keeps paging stable (a cross-
        region restore's jobs are listed in their secondary region, not here)."""
        now = self.now()
        # Insertion order is sequence order, so no sort is needed.
        vault = self._by_vault.get(vault_id.lower(), {})
        return [j for j in vault.values() if j.region is None and self._visible(j, now)]

    def find_crr_job(self, subscription: str, region: str, job_id: str) -> EmulatedJob | None:
        """A cross-region restore's job as `backupCrrJob` finds it: by name in the region."""
        now = self.now()
        wanted, where = job_id.lower(), region.lower()
        for job in self._jobs.values():
            if (
                job.key[1] == wanted
                and job.region == where
                and subscription_of(job.vault_id) == subscription.lower()
                and self._visible(job, now)
            ):
                return job
        return None

    # ---- vaults

    def add_vault(self, vault_id: str) -> str:
        """Make a vault known (jobs add theirs), so subscription vault lists include it."""
        canonical = canonical_vault_id(vault_id)
        return self._vaults.setdefault(canonical.lower(), canonical)

    def is_known_vault(self, vault_id: str) -> bool:
        return vault_id.lower() in self._vaults

    def sizes(self) -> tuple[int, int, int, int]:
        """(jobs held or announced, operations, vaults, queued faults), to bound admin input."""
        self.now()
        held = len(self._jobs) + self._pending_jobs
        return held, len(self._operations), len(self._vaults), len(self._faults)

    def vaults_in_subscription(
        self, subscription_id: str, *, backup_vaults: bool = False
    ) -> list[str]:
        """The subscription's known vaults of one kind in the order they became known
        (stable paging)."""
        prefix = f"/subscriptions/{subscription_id.lower()}/"
        return [
            v
            for key, v in self._vaults.items()
            if key.startswith(prefix) and is_backup_vault(key) is backup_vaults
        ]

    @staticmethod
    def _visible(job: EmulatedJob, now: float) -> bool:
        return now >= job.created_at + job.spec.not_found_seconds

    def job_end(self, job: EmulatedJob) -> float | None:
        """Clock time the job finished (or will finish); ``None`` if it never does."""
        if job.cancel_requested_at is not None:
            return job.cancel_requested_at + CANCELLING_SECONDS
        if job.spec.final_status.lower() in RUNNING_STATUSES:
            return None
        return job.created_at + job.spec.duration_seconds

    def job_status(self, job: EmulatedJob, now: float | None = None) -> str:
        now = self.now() if now is None else now
        if job.cancel_requested_at is not None:
            cancelled_at = job.cancel_requested_at + CANCELLING_SECONDS
            return "Cancelling" if now < cancelled_at else "Cancelled"
        end = self.job_end(job)
        if end is None or now < end:
            return running_status(job) if end is not None else job.spec.final_status
        return job.spec.final_status

    def cancel_job(self, job: EmulatedJob) -> bool:
        """Start cancelling a running job; finished jobs are left alone (returns False)."""
        now = self.now()
        if job.backup_vault or job.region is not None:
            return False  # Azure cancels neither Backup vault nor secondary-region jobs
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
        region: str | None = None,
    ) -> EmulatedOperation:
        """Queue an async operation; its job ids are allocated now, its jobs appear later.
        A Backup vault's operation is at the vault's location; with ``region`` a Recovery
        Services vault's operation is a cross-region restore (its id base64, as Azure's)."""
        succeeded = result == "Succeeded"
        backup_vault = is_backup_vault(vault_id)
        if region is not None and not REGION_RE.match(region):
            raise ValidationError("region must be a lower-case Azure region name")
        if backup_vault:
            region = BACKUP_VAULT_LOCATION
        op_id = str(uuid.uuid4())
        if region is not None and not backup_vault:
            op_id = base64.b64encode(f"{time.time_ns()};{op_id}".encode()).decode()
        op = EmulatedOperation(
            operation_id=op_id,
            vault_id=vault_id,
            created_at=self.clock(),
            delay_seconds=delay_seconds,
            result=result,
            job_ids=[str(uuid.uuid4()) for _ in range(job_count)] if succeeded else [],
            job_spec=job_spec or JobSpec(),
            container_name=container_name,
            protected_item_name=protected_item_name,
            region=region,
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

    def find_located_operation(
        self, subscription: str, region: str, operation_id: str, *, crr: bool
    ) -> EmulatedOperation | None:
        """An operation addressed by location: a cross-region restore's, or a Backup vault
        operation's `operationStatus`/`operationResults` at the vault's location."""
        self.now()
        op = self._operations.get(operation_id.lower())
        if (
            op is None
            or op.crr is not crr
            or op.region != region.lower()
            or subscription_of(op.vault_id) != subscription.lower()
        ):
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
                        region=op.region if op.crr else None,
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

    def configure_reads(
        self,
        burst: int | None,
        refill_per_second: float | None = None,
        others_per_second: float | None = None,
    ) -> None:
        """Enable (or with ``None`` disable) the per-subscription read budget; buckets refill.
        ``others_per_second``: reads other clients take from every subscription's bucket; a
        change of it alone keeps the buckets as they are."""
        if refill_per_second is not None:
            self.read_refill_per_second = refill_per_second
        if others_per_second is not None:
            self.read_others_per_second = others_per_second
        budget = self.read_budget
        if (
            budget is not None
            and budget.burst == burst
            and budget.refill_per_second == self.read_refill_per_second
        ):
            budget.others_per_second = self.read_others_per_second
            return
        self.read_budget = (
            None
            if burst is None
            else ReadBudget(burst, self.read_refill_per_second, self.read_others_per_second)
        )

    def configure_writes(self, burst: int | None, refill_per_second: float = 10.0) -> None:
        """The per-subscription write budget (None disables it): what cross-region-restore
        job reads (POST backupCrrJob) draw on, as Azure counts them."""
        self.write_budget = None if burst is None else ReadBudget(burst, refill_per_second)

    def take_write(self, path: str) -> tuple[bool, int, int] | None:
        """Charge one write to the path's subscription; None when no write budget is set."""
        if self.write_budget is None:
            return None
        verdict = self.write_budget.take(subscription_of(path), self.clock())
        if not verdict[0]:
            self._stats.throttled += 1
        return verdict

    def take_read(self, path: str) -> tuple[bool, int, int] | None:
        """Charge one read to the path's subscription; None when no budget is set."""
        found = SUBSCRIPTION_RE.match(path)
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

    def record_window_list_page(self) -> None:
        self._stats.window_list_pages += 1

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
            "window_list_pages": self._stats.window_list_pages,
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
        if self.write_budget is not None:
            self.write_budget.refill()
        if self.replay is not None:
            self.replay.rewind()
        self._stats = _Stats()

    # ---- rendering: methods, so a test's state can change what ARM answers

    def render_job(self, job: EmulatedJob, *, extended: bool = True) -> JSONDict:
        """JobResource as ARM returns it for the job's current state."""
        return render.render_job(self, job, extended=extended)

    def render_operation(self, op: EmulatedOperation) -> JSONDict:
        """OperationStatus body; jobs are only announced once the operation is done."""
        if is_backup_vault(op.vault_id):
            return render.render_backup_vault_operation(self, op)
        return render.render_operation(self, op)


def running_status(job: EmulatedJob) -> str:
    """What a running job says: Backup vaults say Started, Recovery Services InProgress."""
    return "Started" if job.backup_vault else "InProgress"


STATE_KEY: Final = web.AppKey("backupjobd_emulator_state", EmulatorState)
