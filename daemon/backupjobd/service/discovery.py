"""Job discovery: the jobs that backup policies start on schedule are registered by nobody, so
the daemon finds them itself by listing each vault's jobs in a time window and registering
the ones it does not track yet (source "discovery"); the tracker then follows them like any
other job (a job that is already finished is recorded with its final state by its first poll).

Per vault, the store keeps how far the listing got (`discovery_state`): the first run looks
back `lookback_hours`, every later run lists from the previous run's end minus
`overlap_seconds` (jobs Azure shows late, or stamps with an earlier start, are not missed),
so a restart continues where it left off. Registration is idempotent, so a crash between
registering and saving the cursor only means the same window is listed again.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from backupjobd.adapters.arm import ArmClient
from backupjobd.config import DiscoveryConfig
from backupjobd.core import azure
from backupjobd.core.azure import JobObservation, VaultKind, VaultRef, window_filter
from backupjobd.core.registration import JobRegistration
from backupjobd.errors import BackupJobdError
from backupjobd.store import Store

logger = logging.getLogger(__name__)

SOURCE = "discovery"
# "Backup (Full)", "Backup (Log)": SQL jobs add the kind of backup to the operation.
_OPERATION_SUFFIX_RE = re.compile(r"\s*\([^)]*\)\s*$")


def base_operation(operation: str) -> str:
    """`Backup (Full)` -> `Backup`: the operation as the filter enum names it."""
    return _OPERATION_SUFFIX_RE.sub("", operation).strip()


def job_wanted(
    job: JobObservation, operations: Iterable[str], management_types: Iterable[str]
) -> bool:
    """Client-side filter (one list request per vault instead of one per combination);
    empty lists match everything, comparisons ignore case. Backup vault jobs have no
    backup management type: that filter is for Recovery Services jobs only."""
    ops = {o.casefold() for o in operations}
    if ops and base_operation(job.operation or "").casefold() not in ops:
        return False
    if job.vault is not None and job.vault.kind is VaultKind.DATA_PROTECTION:
        return True
    types = {t.casefold() for t in management_types}
    return not types or (job.backup_management_type or "").casefold() in types


def in_window(job: JobObservation, since: datetime, until: datetime) -> bool:
    """A Backup vault's list has no filter: the window is applied here, to the start time
    (a job Azure shows without one is kept: registering it twice is harmless)."""
    return job.start_time is None or since <= job.start_time <= until + timedelta(seconds=1)


def window(
    listed_until: datetime | None,
    now: datetime,
    lookback: timedelta,
    overlap: timedelta,
) -> tuple[datetime, datetime]:
    """The window a run lists: from the previous run's end minus the overlap (or `lookback`
    before now for a vault never listed) to now, both cut to whole seconds as the filter is."""
    until = now.astimezone(UTC).replace(microsecond=0)
    since = until - lookback if listed_until is None else listed_until - overlap
    return min(since.astimezone(UTC).replace(microsecond=0), until), until


@dataclass(frozen=True, slots=True)
class VaultRun:
    """What one listing of one vault found."""

    vault: VaultRef
    since: datetime
    until: datetime
    listed: int
    matched: int
    registered: int


class Discoverer:
    """Lists the configured vaults (and every vault of the configured subscriptions) and
    registers the jobs nobody registered. `tick` is meant to run every `interval_seconds`."""

    def __init__(
        self,
        store: Store,
        arm: ArmClient,
        config: DiscoveryConfig,
        clock: Callable[[], datetime],
        owns: Callable[[str], bool] = lambda subscription: True,
    ) -> None:
        """`owns`: with several replicas, whether this one holds a subscription's lease;
        it discovers only there."""
        self._store = store
        self._owns = owns
        self._arm = arm
        self._config = config
        self._clock = clock
        self._lookback = timedelta(hours=config.lookback_hours)
        self._overlap = timedelta(seconds=config.overlap_seconds)
        self._refresh = timedelta(seconds=config.vault_refresh_seconds)
        self._configured = [azure.vault_from_id(v) for v in config.vault]
        self._enumerated: dict[str, list[VaultRef]] = {}
        self._enumerated_at: dict[str, datetime] = {}
        self._errors: dict[str, str] = {}  # what failed last, by vault key or subscription
        self._lock = asyncio.Lock()
        self.last_runs: dict[str, VaultRun] = {}

    async def tick(self) -> int:
        """One discovery pass over every vault; returns how many jobs it newly registered.

        Never raises: a vault (or subscription) that fails is logged and tried again on the
        next tick, from the same cursor, and does not stop the others.
        """
        async with self._lock:
            try:
                return await self._discover()
            except BackupJobdError as exc:
                logger.warning(
                    "discovery pass failed, will retry: %s",
                    exc,
                    extra={"action": "discovery_error"},
                )
                return 0
            except Exception:
                logger.exception("discovery pass failed", extra={"action": "discovery_error"})
                return 0

    async def vaults(self) -> list[VaultRef]:
        """The configured vaults plus those enumerated in the configured subscriptions."""
        now = self._clock()
        for subscription in self._config.subscription:
            if not self._owns(subscription):
                continue
            fetched = self._enumerated_at.get(subscription)
            if fetched is None or now - fetched >= self._refresh:
                await self._enumerate(subscription, now)
        found: dict[str, VaultRef] = {}
        for vault in [*self._configured, *_flatten(self._enumerated.values())]:
            if self._owns(vault.subscription_id):
                found.setdefault(vault.key, vault)
        return list(found.values())

    async def _enumerate(self, subscription: str, now: datetime) -> None:
        """Refresh one subscription's vault list; on failure keep the last one, retry next tick."""
        what = f"the vault list of subscription {subscription}"
        try:
            vaults = await self._arm.list_vaults(subscription)
            vaults += await self._arm.list_vaults(subscription, VaultKind.DATA_PROTECTION)
        except BackupJobdError as exc:
            self._failed(subscription, what, exc)
            return
        self._recovered(subscription, what)
        before = {v.key for v in self._enumerated.get(subscription, [])}
        self._enumerated[subscription] = vaults
        self._enumerated_at[subscription] = now
        added = [v for v in vaults if v.key not in before]
        if added or len(vaults) != len(before):
            logger.info(
                "discovery: subscription %s has %d vaults (Recovery Services and Backup; %d new)",
                subscription,
                len(vaults),
                len(added),
                extra={"action": "discovery_vaults"},
            )

    async def _discover(self) -> int:
        vaults = await self.vaults()
        cursors = {
            s.vault_id.lower(): s.last_listed_until for s in await self._store.discovery_states()
        }
        total = 0
        for vault in vaults:
            try:
                run = await self._discover_vault(vault, cursors.get(vault.key))
            except BackupJobdError as exc:
                self._failed(vault.key, f"the jobs of vault {vault.id}", exc, vault.id)
                continue
            self._recovered(vault.key, f"the jobs of vault {vault.id}", vault.id)
            self.last_runs[vault.key] = run
            total += run.registered
        return total

    async def _discover_vault(self, vault: VaultRef, listed_until: datetime | None) -> VaultRun:
        now = self._clock()
        since, until = window(listed_until, now, self._lookback, self._overlap)
        listed = matched = registered = 0
        backup_vault = vault.kind is VaultKind.DATA_PROTECTION
        # A Backup vault's list takes no $filter: all its jobs are paged through and the
        # window applied here (see README: what the Backup vault list costs).
        odata = None if backup_vault else window_filter(since, until)
        async for page in self._arm.list_jobs(vault, odata):
            listed += len(page)
            wanted = [
                JobRegistration(vault, job.job_id, SOURCE)
                for job in page
                if job_wanted(job, self._config.operations, self._config.backup_management_types)
                and (not backup_vault or in_window(job, since, until))
            ]
            matched += len(wanted)
            if wanted:
                results = await self._store.register(wanted, self._clock())
                registered += sum(1 for r in results if r.created)
        await self._store.save_discovery_state(vault, until, self._clock(), registered)
        logger.info(
            "discovery in vault %s: %d jobs started %s..%s, %d wanted, %d newly registered",
            vault.id,
            listed,
            since.isoformat(),
            until.isoformat(),
            matched,
            registered,
            extra={"action": "discovery", "vault_id": vault.id},
        )
        return VaultRun(vault, since, until, listed, matched, registered)

    def _failed(
        self, key: str, what: str, exc: BackupJobdError, vault_id: str | None = None
    ) -> None:
        """A new error is a warning; the same error again (every tick) only a debug line."""
        message = str(exc)
        level = logging.DEBUG if self._errors.get(key) == message else logging.WARNING
        self._errors[key] = message
        logger.log(
            level,
            "discovery could not read %s, will retry: %s",
            what,
            message,
            extra={"action": "discovery_error", "vault_id": vault_id},
        )

    def _recovered(self, key: str, what: str, vault_id: str | None = None) -> None:
        if self._errors.pop(key, None) is not None:
            logger.info(
                "discovery reads %s again",
                what,
                extra={"action": "discovery", "vault_id": vault_id},
            )


def _flatten(groups: Iterable[Sequence[VaultRef]]) -> list[VaultRef]:
    return [vault for group in groups for vault in group]
