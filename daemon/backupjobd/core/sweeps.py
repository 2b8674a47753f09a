"""Vault sweeps and leases, pure: which list a sweep reads (the vault's in-progress jobs, or
every job started in the swept jobs' window while they are ending), which tracked jobs it
settles, which jobs stay with their vault between sweeps (its members), what a sweep
changed, and how far the lease stored for the members reaches.

The service's pollers list and write; the `VaultRoster` here decides. No I/O and no clock:
`now` and the jitter draws are arguments, so every branch is a table test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from backupjobd.core import azure
from backupjobd.core.azure import JobKind, JobObservation, Phase, VaultKind
from backupjobd.core.decisions import JobDecision, PollPolicy, Seen, Tracking, decide_job
from backupjobd.core.model import Commit, JobRecord

SWEEP_FILTER = "status eq 'InProgress'"
# Azure pages job lists 200 at a time.
SWEEP_PAGE_SIZE = 200
# The running statuses a list settles: a Recovery Services vault's filtered list shows
# InProgress jobs; a Backup vault's list shows every job (Started, Paused while running).
SWEEPABLE_STATUSES = ("InProgress", "Started", "Paused")


def sweep_filter(vault_kind: VaultKind, window: Window | None = None) -> str | None:
    """The `$filter` of a vault's sweep: a Backup vault's list takes none (every job of the
    vault, paged: see `sweep_worthwhile` for when that is still cheaper than single GETs);
    a Recovery Services vault's lists its in-progress jobs, or every job started within
    `window` (see `window_worthwhile`)."""
    if vault_kind is VaultKind.DATA_PROTECTION:
        return None
    return SWEEP_FILTER if window is None else azure.window_filter(*window)


#: The start times a window list spans: (since, until), whole seconds.
Window = tuple[datetime, datetime]
#: A window list reaches this far past the swept jobs' starts on either side (Azure's
#: filter takes whole seconds).
WINDOW_SLACK = timedelta(seconds=1)
#: Jobs that left the in-progress list at a vault's last sweep before its sweeps list a
#: window instead.
WINDOW_MIN_ENDS = 2
#: Sweeps a vault lists its in-progress jobs again after a window list cost too much.
WINDOW_RETRY_SWEEPS = 20


def sweep_window(starts: Iterable[datetime | None]) -> Window | None:
    """The start-time window that lists every swept job, running or ended (None when a
    job's start is unknown: a window could miss it)."""
    known = list(starts)
    if not known or any(s is None for s in known):
        return None
    earliest = min(s for s in known if s is not None)
    latest = max(s for s in known if s is not None)
    since = earliest.replace(microsecond=0) - WINDOW_SLACK
    until = latest.replace(microsecond=0) + WINDOW_SLACK
    if latest.microsecond:
        until += timedelta(seconds=1)
    return since, until


def window_worthwhile(ends: int, window_pages: int, running_pages: int) -> bool:
    """Whether a sweep lists every job started in its jobs' window rather than the vault's
    in-progress ones. The window list shows the jobs that ended with their final status, so
    their ends are recorded at once instead of each waiting for its GET behind the others
    (which matters when reads are scarce); the GET that keeps each final snapshot follows
    either way. Worth it while jobs are ending, for at most the in-progress list's pages
    plus one page per four ends the list records at once."""
    return ends >= WINDOW_MIN_ENDS and window_pages <= running_pages + ends // 4


def pages_for(jobs: int) -> int:
    """Pages a list of this many jobs takes (at least one)."""
    return max(1, -(-jobs // SWEEP_PAGE_SIZE))


def sweeps_kind(kind: JobKind) -> bool:
    """Whether a vault's list settles jobs of this kind (a cross-region restore's jobs are
    not in their vault's list: they are read in the secondary region, one by one)."""
    return kind is not JobKind.CROSS_REGION_RESTORE


def sweep_observation(
    status: str | None,
    last_detail_at: datetime | None,
    listed: JobObservation | None,
    now: datetime,
    detail_interval: timedelta,
    *,
    detail_affordable: bool = True,
) -> JobObservation | None:
    """What a vault sweep settles for one tracked job: the list item to record (no
    extendedInfo), or None when the job needs one single GET — it left the in-progress list,
    its status differs from ours, or its detail snapshot is due and the read budget has room
    for it (detail waits when reads are scarce: detecting ends comes first). `last_detail_at`
    is the last full read, or registration for a job never read in full: a job shorter than
    the detail interval costs one GET, at its end.

    A job never seen yet is settled by the list too: that it runs is all the first look
    needs; its first snapshot comes with the next detail read."""
    if listed is None or sweep_status_changed(status, listed):
        return None
    settles = sweep_settles(
        status, last_detail_at, now, detail_interval, detail_affordable=detail_affordable
    )
    return listed if settles else None


def sweep_status_changed(status: str | None, listed: JobObservation | None) -> bool:
    """After a sweep: the job left the in-progress list, or its status differs from ours, so
    its new status needs a read now (a detail read that is merely due can wait)."""
    return (
        listed is None
        or listed.status != (status or listed.status)
        or listed.phase is not Phase.RUNNING
    )


def sweep_settles(
    status: str | None,
    last_detail_at: datetime | None,
    now: datetime,
    detail_interval: timedelta,
    *,
    detail_affordable: bool = True,
) -> bool:
    """Before listing: would a sweep settle this job if the list shows it in progress?
    (A Recovery Services sweep lists `status eq 'InProgress'` only; a Backup vault's lists
    every job, running ones as Started.)"""
    if status is None:
        return True
    if status not in SWEEPABLE_STATUSES:
        return False
    detail_due = last_detail_at is None or now - last_detail_at >= detail_interval
    return not (detail_due and detail_affordable)


def sweep_worthwhile(due_in_vault: int, expected_pages: int, min_jobs: int) -> bool:
    """A sweep costs one read per page; single GETs cost one read per due job."""
    return due_in_vault >= max(min_jobs, expected_pages + 1)


# The golden ratio's fractional part: the k-th vault's phase is k times it, modulo one
# interval, which spreads any number of vaults evenly without knowing their count.
_GOLDEN = 0.6180339887498949


def sweep_phase(vault_index: int, interval: timedelta) -> float:
    """Seconds into each interval at which the vault's sweeps run (its slot)."""
    return (vault_index * _GOLDEN) % 1.0 * interval.total_seconds()


def sweep_slot(
    listed_at: datetime, wanted: datetime, phase: float, interval: timedelta
) -> datetime:
    """When a vault's next sweep runs: the latest of its slots (every `interval`, offset
    by `phase`) not after `wanted`. Vaults then sweep spread over the interval, and so are
    the reads of the jobs each sweep finds ended; swept together, those reads queue behind
    each other in the subscription's budget. Never later than the jobs asked; gaps under
    one interval (a new job's first polls) stay as asked."""
    if wanted - listed_at < interval:
        return wanted
    into_slot = (wanted.timestamp() - phase) % interval.total_seconds()
    return wanted - timedelta(seconds=into_slot)


# The read budget's bucket (the part of it we may use) fuller than SPARE_FROM: vaults sweep
# sooner than `interval`, down to `min_interval` when it is SPARE_FULL or fuller.
SPARE_FROM, SPARE_FULL = 0.5, 0.9


def spare_sweep_interval(policy: PollPolicy, fullness: float | None) -> timedelta | None:
    """How soon a vault sweeps again when the read budget has room to spare: spare reads
    spent on sweeps lower the detection lag. None (the usual interval) without a budget or
    with a bucket at most half full; sweeps draw on the same bucket, so the more often
    they run, the emptier it is and the longer the next interval: it settles where the
    budget allows, never beyond the learned rate."""
    if fullness is None or fullness <= SPARE_FROM:
        return None
    share = min(1.0, (fullness - SPARE_FROM) / (SPARE_FULL - SPARE_FROM))
    return policy.interval - (policy.interval - policy.min_interval) * share


def lease_renewal_due(next_sweep: datetime, stored: datetime | None, policy: PollPolicy) -> bool:
    """Whether a vault's swept jobs need their lease stored again (to `next_sweep +
    lease_span`): the one stored must reach an interval past the next sweep.

    A lease (the stored next poll of jobs a sweep looks after) keeps every other process
    from polling them. Renewing it is a row write per job, so a renewal reaches further
    (`lease_span`) and sweeps write nothing until it runs short (their polls are counted at
    the next write). After a `kill -9` the jobs come due when it ends."""
    return stored is None or stored < next_sweep + policy.interval


# A renewed lease reaches this many intervals past the next sweep: renewed every third
# sweep, and a dead process's jobs wait at most four intervals.
LEASE_INTERVALS = 3


def lease_span(policy: PollPolicy) -> timedelta:
    """How far past the next sweep a lease reaches: `LEASE_INTERVALS` intervals, but not so
    far that a job ending just after a dead process's last sweep is detected later than
    `max_detection_lag` (and at least one interval)."""
    longest = max(policy.interval, policy.max_detection_lag - policy.interval)
    return min(LEASE_INTERVALS * policy.interval, longest)


def detail_room(spare_reads: int | None, queued_details: int) -> int | None:
    """How many detail reads a sweep may hand on now (None: no budget, no limit): the upper
    half of the subscription's bucket less the detail reads already queued, so that details
    never crowd out the reads that record ends."""
    return None if spare_reads is None else max(0, spare_reads - queued_details)


def subscription(vault_id: str) -> str:
    """The subscription a vault id belongs to (lower case): the read budget's key."""
    return vault_id.split("/")[2].lower()


@dataclass(frozen=True, slots=True)
class Sweep:
    """One paged list of a vault standing in for single GETs of its jobs: its in-progress
    jobs, or every job started within `window`."""

    vault_id: str
    records: tuple[JobRecord, ...]
    window: Window | None = None
    #: The most pages a window list may take (beyond them the in-progress list is cheaper).
    max_pages: int | None = None


@dataclass(slots=True)
class _Vault:
    """The jobs a vault's sweeps look after between sweeps. Members stay in memory (and in
    flight): a sweep that sees them unchanged costs no row read and no row write. Their
    stored next poll is a lease beyond the next sweep, so neither the dispatcher nor
    another replica polls them meanwhile; one bulk reschedule renews it every few sweeps
    (`lease_renewal_due`) and stores the polls counted since."""

    vault_id: str
    members: dict[int, JobRecord] = field(default_factory=dict)
    # Sweeps of a member since its record above was written (not in its poll count).
    uncounted: dict[int, int] = field(default_factory=dict)
    # Sweeps of a member not yet in its row's poll count (stored at the next renewal).
    unstored: dict[int, int] = field(default_factory=dict)
    # The earliest lease stored for the members (None: none stored yet).
    lease_until: datetime | None = None
    # Jobs that became due while the vault had members: they join its next sweep.
    pending: dict[int, JobRecord] = field(default_factory=dict)
    # Seconds into each interval at which this vault sweeps (see `sweep_slot`).
    phase: float = 0.0
    next_sweep: datetime | None = None
    last_sweep: datetime | None = None
    sweeping: bool = False
    # Swept jobs that ended (left the in-progress list, or listed ended) at the last sweep.
    ends: int = 0
    # Pages the last window list took (None: none yet, or to be tried afresh).
    window_pages: int | None = None
    # Sweeps left before a window list is tried again after one cost too much.
    window_backoff: int = 0

    def caught_up(self, record: JobRecord) -> JobRecord:
        """The member's record with its sweeps counted as polls: what its next write
        stores (so the polls not yet stored are stored by it)."""
        self.unstored.pop(record.pk, None)
        polls = self.uncounted.pop(record.pk, 0)
        if not polls:
            return record
        return dataclasses.replace(
            record, poll_count=record.poll_count + polls, last_polled_at=self.last_sweep
        )


class PlanKind(StrEnum):
    """What the dispatcher does with one vault's due jobs."""

    WAIT = "wait"  # the vault is being swept: they stay due and come with a later tick
    SINGLES = "singles"  # no sweep: a single GET each
    JOIN = "join"  # `joined` wait for the members' next sweep, `singles` get a GET each
    SWEEP = "sweep"  # list the vault: `sweepable` plus the jobs due before `horizon`


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    singles: tuple[JobRecord, ...] = ()
    joined: tuple[JobRecord, ...] = ()
    sweepable: tuple[JobRecord, ...] = ()
    horizon: datetime | None = None


@dataclass(frozen=True, slots=True)
class Settlement:
    """What one sweep's list settled. `changed` go to the store one row each (next poll:
    the lease), `unchanged` members only count the sweep as a poll (stored, with `polls`,
    when `renew`), `urgent` need their GET now and `background` a detail GET when reads
    are spare."""

    vault_id: str
    listed: int
    changed: tuple[tuple[JobRecord, JobDecision], ...] = ()
    unchanged: tuple[JobRecord, ...] = ()
    urgent: tuple[JobRecord, ...] = ()
    background: tuple[JobRecord, ...] = ()
    #: Jobs the list showed ended: committed as decided (their final GET due at once), and
    #: no longer members.
    finished: tuple[tuple[JobRecord, JobDecision], ...] = ()
    next_sweep: datetime | None = None
    lease: datetime | None = None
    renew: bool = False
    polls: tuple[int, ...] = ()
    #: The vault stops sweeping (a Backup vault whose list costs more than its members'
    #: GETs): `changed` are committed with their own next polls and do not join it.
    disband: bool = False


@dataclass(frozen=True, slots=True)
class Handback:
    """A vault's members handed back to the store's schedule (at drain): their polls not
    yet stored, and when they were last swept."""

    vault_id: str
    pks: tuple[int, ...]
    polls: tuple[int, ...]
    last_sweep: datetime | None


class VaultRoster:
    """Every vault's members, pending joiners, next sweep and lease: the sweep rules the
    tracker used to keep inside its loop. `plan` takes a vault's due jobs, `settle` a
    sweep's list, `joined` the commits of what changed, `rejoin` a member back from a
    detail read."""

    def __init__(self, policy: PollPolicy, detail_interval: timedelta, min_jobs: int) -> None:
        self._policy = policy
        self._detail = detail_interval
        self._min_jobs = min_jobs
        self._vaults: dict[str, _Vault] = {}
        self._sizes: dict[str, int] = {}
        self._pages: dict[str, int] = {}  # pages the vault's last list took

    # ------------------------------------------------------------------ views

    def held(self) -> set[int]:
        """Jobs the roster looks after (members and pending joiners): not due elsewhere."""
        out: set[int] = set()
        for vault in self._vaults.values():
            out.update(vault.members)
            out.update(vault.pending)
        return out

    def vault_ids(self) -> list[str]:
        """Vaults with members or pending joiners."""
        return [v.vault_id for v in self._vaults.values() if v.members or v.pending]

    def next_sweep_at(self, vault_id: str) -> datetime | None:
        vault = self._vaults.get(vault_id.lower())
        return None if vault is None else vault.next_sweep

    def members(self, vault_id: str) -> dict[int, JobRecord]:
        vault = self._vaults.get(vault_id.lower())
        return {} if vault is None else dict(vault.members)

    # ------------------------------------------------------------------ dispatch

    def plan(self, due: Sequence[JobRecord], now: datetime, detail_room: int | None = None) -> Plan:
        """Sweep the vault when that is cheaper than single GETs; the sweep also takes the
        vault's InProgress jobs due within half an interval (`horizon`), so their schedules
        line up. Between the vault's sweeps newcomers wait for its next one (at most an
        interval away) rather than each triggering a sweep of their own."""
        vault = self._vaults.get(due[0].vault_id.lower())
        if vault is not None and vault.sweeping:
            return Plan(PlanKind.WAIT)
        if self._min_jobs <= 0:
            return Plan(PlanKind.SINGLES, singles=tuple(due))
        affordable = detail_room is None or detail_room > 0
        sweepable = tuple(
            r
            for r in due
            # A cross-region restore's jobs are not in the vault's list: single reads.
            if sweeps_kind(r.kind)
            and sweep_settles(
                r.status,
                r.last_detail_at or r.registered_at,
                now,
                self._detail,
                detail_affordable=affordable,
            )
        )
        if vault is not None and vault.members:
            vault.pending.update((r.pk, r) for r in sweepable)
            rest = tuple(r for r in due if r.pk not in vault.pending)
            return Plan(PlanKind.JOIN, singles=rest, joined=sweepable)
        pages = self.pages(due[0].vault_id)
        if not sweep_worthwhile(len(sweepable), pages, self._min_jobs):
            return Plan(PlanKind.SINGLES, singles=tuple(due))
        return Plan(PlanKind.SWEEP, sweepable=sweepable, horizon=now + self._policy.interval / 2)

    def pages(self, vault_id: str) -> int:
        """Reads one sweep of the vault costs, from its last list (one page before any): for
        a Recovery Services vault its running jobs, for a Backup vault all its jobs."""
        key = vault_id.lower()
        if key in self._pages:
            return max(1, self._pages[key])
        return pages_for(self._sizes.get(key, 0))

    def begin(
        self, vault_id: str, sweepable: Iterable[JobRecord], ahead: Iterable[JobRecord] = ()
    ) -> Sweep:
        """Start a planned sweep: the sweepable due jobs and those due soon (`ahead`)."""
        records = {r.pk: r for r in sweepable}
        records.update((r.pk, r) for r in ahead)
        vault = self._vault(vault_id)
        vault.sweeping = bool(records)
        swept = tuple(records.values())
        return self._sweep(vault, swept)

    def due_sweeps(self, now: datetime) -> list[Sweep]:
        """The sweeps of every vault whose members are due (their own schedule), with the
        jobs that joined since."""
        sweeps = []
        for vault in self._vaults.values():
            if vault.sweeping or not vault.members or vault.next_sweep is None:
                continue
            if vault.next_sweep > now:
                continue
            records = (*vault.members.values(), *vault.pending.values())
            vault.pending.clear()
            vault.sweeping = True
            sweeps.append(self._sweep(vault, records))
        return sweeps

    # ------------------------------------------------------------------ a sweep

    def settle(
        self,
        sweep: Sweep,
        listed: Mapping[str, JobObservation],
        listed_at: datetime,
        now: datetime,
        *,
        detail_room: int | None = None,
        jitter: Callable[[], float] = lambda: 0.5,
        expected: Callable[[JobRecord], timedelta | None] = lambda _: None,
        sooner: timedelta | None = None,
        pages_read: int | None = None,
    ) -> Settlement:
        """Sort the swept jobs by what the list says of them (`listed`: job id → item).
        Jobs handed on to a GET leave the members; the next sweep is on the vault's slot,
        an interval after this one's list (or `sooner`, `spare_sweep_interval`, when the
        budget has room); the lease reaches `lease_span` past it. A job the list shows
        ended is recorded from the list and leaves (`finished`): the GET that keeps its final
        snapshot is due at once."""
        vault = self._vault(sweep.vault_id)
        self._count_pages(sweep, listed, pages_read)
        room = detail_room
        finished: list[tuple[JobRecord, JobDecision]] = []
        changed: list[tuple[JobRecord, JobDecision]] = []
        unchanged: list[JobRecord] = []
        urgent: list[JobRecord] = []
        background: list[JobRecord] = []
        wanted: datetime | None = None

        def decide(record: JobRecord, item: JobObservation) -> JobDecision:
            """What a list item tells of a swept job (sweeps not yet stored count as polls)."""
            return decide_job(
                record.state(vault.uncounted.get(record.pk, 0)),
                Seen(item, full=False),
                now,
                self._policy,
                jitter(),
                expected(record),
            )

        for record in sweep.records:
            seen = listed.get(record.job_id)
            if seen is not None and seen.is_terminal:
                finished.append((record, decide(record, seen)))
                continue
            obs = sweep_observation(
                record.status,
                record.last_detail_at or record.registered_at,
                seen,
                now,
                self._detail,
                detail_affordable=room is None or room > 0,
            )
            if obs is None:
                if sweep_status_changed(record.status, seen):
                    urgent.append(record)
                else:
                    background.append(record)
                    room = None if room is None else room - 1
                continue
            decision = decide(record, obs)
            if decision.next_poll_at is not None and (
                wanted is None or decision.next_poll_at < wanted
            ):
                wanted = decision.next_poll_at
            if record.pk in vault.members and record.schedule_only(decision, now):
                unchanged.append(record)
            else:
                changed.append((vault.caught_up(record), decision))
        vault.ends = len(finished) + sum(1 for r in urgent if r.job_id not in listed)
        self._after_window(vault, sweep, listed, pages_read)
        ended = tuple(
            zip(
                self.leave(sweep.vault_id, [r for r, _ in finished]),
                [d for _, d in finished],
                strict=True,
            )
        )
        urgent_out = tuple(self.leave(sweep.vault_id, urgent))
        background_out = tuple(self.leave(sweep.vault_id, background))
        kept = len(changed) + len(unchanged)
        if (
            wanted is not None
            and azure.vault_kind_of(sweep.vault_id) is VaultKind.DATA_PROTECTION
            and not sweep_worthwhile(kept, self.pages(sweep.vault_id), self._min_jobs)
        ):
            # A Backup vault's list pages through all its jobs: once fewer of them run than
            # the list has pages, single GETs are cheaper. The jobs leave the vault, each
            # with its own next poll (not a lease), and the vault sweeps no more.
            everyone = [(r, d) for r, d in changed] + [
                (r, decide(r, listed[r.job_id])) for r in unchanged
            ]
            records = self.leave(sweep.vault_id, [r for r, _ in everyone])
            return Settlement(
                sweep.vault_id,
                len(listed),
                changed=tuple((r, d) for r, (_, d) in zip(records, everyone, strict=True)),
                finished=ended,
                urgent=urgent_out,
                background=background_out,
                disband=True,
            )
        if wanted is None:
            vault.next_sweep = None
            return Settlement(
                sweep.vault_id,
                len(listed),
                finished=ended,
                urgent=urgent_out,
                background=background_out,
            )
        next_sweep = sweep_slot(
            listed_at, wanted - (now - listed_at), vault.phase, self._policy.interval
        )
        if sooner is not None:
            next_sweep = min(next_sweep, listed_at + sooner)
        vault.next_sweep, vault.last_sweep = next_sweep, now
        # The stored next poll is a lease beyond the next sweep: if this process dies, the
        # jobs come due again by themselves.
        lease = next_sweep + lease_span(self._policy)
        renew = lease_renewal_due(next_sweep, vault.lease_until, self._policy)
        for record in unchanged:
            vault.uncounted[record.pk] = vault.uncounted.get(record.pk, 0) + 1
            vault.unstored[record.pk] = vault.unstored.get(record.pk, 0) + 1
        polls = tuple(vault.unstored.pop(r.pk) for r in unchanged) if renew else ()
        return Settlement(
            sweep.vault_id,
            len(listed),
            changed=tuple((r, dataclasses.replace(d, next_poll_at=lease)) for r, d in changed),
            unchanged=tuple(unchanged),
            next_sweep=next_sweep,
            lease=lease,
            renew=renew,
            polls=polls,
            finished=ended,
            urgent=urgent_out,
            background=background_out,
        )

    def _count_pages(
        self, sweep: Sweep, listed: Mapping[str, JobObservation], pages_read: int | None
    ) -> None:
        """What one in-progress list of the vault costs, its pages and size (a window list's
        are counted in `_after_window`)."""
        if sweep.window is not None:
            return
        self._sizes[sweep.vault_id.lower()] = len(listed)
        if pages_read is not None:
            self._pages[sweep.vault_id.lower()] = pages_read

    def _after_window(
        self,
        vault: _Vault,
        sweep: Sweep,
        listed: Mapping[str, JobObservation],
        pages_read: int | None,
    ) -> None:
        """What the in-progress list would have cost, from the running jobs a window list
        showed (at least those); a window list that cost more than it was worth: the vault
        lists its in-progress jobs for a while, then tries a window afresh."""
        if sweep.window is None or pages_read is None:
            return
        vault.window_pages = pages_read
        running = sum(1 for obs in listed.values() if obs.phase is Phase.RUNNING)
        running_pages = max(1, -(-pages_read * running // max(1, len(listed))))
        self._pages[vault.vault_id.lower()] = running_pages
        if not window_worthwhile(max(vault.ends, WINDOW_MIN_ENDS), pages_read, running_pages):
            vault.window_backoff = WINDOW_RETRY_SWEEPS

    def _sweep(self, vault: _Vault, records: tuple[JobRecord, ...]) -> Sweep:
        """The sweep of these records: of the window their starts span, or (None) of the
        vault's in-progress jobs. A window list may take the pages it is worth at most."""
        if not records or azure.vault_kind_of(vault.vault_id) is VaultKind.DATA_PROTECTION:
            return Sweep(vault.vault_id, records)
        if vault.window_backoff > 0:
            vault.window_backoff -= 1
            if vault.window_backoff == 0:
                vault.window_pages = None
            return Sweep(vault.vault_id, records)
        span = sweep_window(r.start_time for r in records)
        if span is None:
            return Sweep(vault.vault_id, records)
        estimate = vault.window_pages or pages_for(len(records))
        running_pages = self.pages(vault.vault_id)
        if not window_worthwhile(vault.ends, estimate, running_pages):
            return Sweep(vault.vault_id, records)
        return Sweep(vault.vault_id, records, span, running_pages + vault.ends // 4)

    def window_too_long(self, sweep: Sweep) -> Sweep:
        """The window list ran past its pages: the vault lists its in-progress jobs for a
        while (this sweep too: the sweep returned)."""
        vault = self._vault(sweep.vault_id)
        vault.window_backoff = WINDOW_RETRY_SWEEPS
        return Sweep(sweep.vault_id, sweep.records)

    def joined(self, vault_id: str, commits: Iterable[tuple[Commit, bool]]) -> None:
        """The store took (True) or refused (False: changed elsewhere) each changed job's
        commit: taken ones are members as committed, refused ones leave. (Taken ones join
        first: a refusal must not empty the vault, and so cancel its next sweep, while
        others are joining it.)"""
        vault = self._vault(vault_id)
        results = list(commits)
        for commit, ok in results:
            if ok:
                vault.members[commit.before.pk] = commit.after
        refused = [commit.before for commit, ok in results if not ok]
        if refused:
            self.leave(vault_id, refused)

    def renewed(self, vault_id: str, settlement: Settlement) -> None:
        """The sweep's writes are done: a renewed lease is the one stored now."""
        if settlement.renew:
            self._vault(vault_id).lease_until = settlement.lease

    def throttled(self, vault_id: str, until: datetime) -> None:
        """A 429 paused the subscription: its jobs stay due, the sweep comes again later."""
        self._vault(vault_id).next_sweep = until

    def finished(self, vault_id: str) -> None:
        """The sweep's work is over (whatever came of it)."""
        self._vault(vault_id).sweeping = False

    def rejoin(self, commit: Commit) -> bool:
        """A job of a swept vault read on its own (a detail read) and still running joins
        the vault's next sweep at once; back in the store it would wait for its next poll
        and then for the sweep after it."""
        vault = self._vaults.get(commit.before.vault_id.lower())
        decision = commit.decision
        if vault is None or not vault.members or decision.tracking is not Tracking.ACTIVE:
            return False
        if decision.status not in SWEEPABLE_STATUSES:
            return False
        vault.pending[commit.before.pk] = commit.after
        return True

    def leave(self, vault_id: str, records: Iterable[JobRecord]) -> list[JobRecord]:
        """Take jobs out of the vault's members; returns them as stored (polls counted).
        A vault left with no members plans no sweep: its pending joiners go back to the
        store's schedule."""
        vault = self._vault(vault_id)
        out = []
        for record in records:
            vault.members.pop(record.pk, None)
            vault.pending.pop(record.pk, None)
            out.append(vault.caught_up(record))
        if not vault.members:
            vault.next_sweep = vault.lease_until = None
            vault.pending.clear()
        return out

    def leave_all(self, vault_id: str) -> list[JobRecord]:
        return self.leave(vault_id, list(self._vault(vault_id).members.values()))

    def hand_back(self) -> list[Handback]:
        """Every vault's members leave (at drain); what the store must be told of them."""
        out = []
        for vault in self._vaults.values():
            pks = tuple(vault.members)
            polls = tuple(vault.unstored.get(pk, 0) for pk in pks)
            last_sweep = vault.last_sweep
            self.leave(vault.vault_id, list(vault.members.values()))
            if pks:
                out.append(Handback(vault.vault_id, pks, polls, last_sweep))
        return out

    def _vault(self, vault_id: str) -> _Vault:
        key = vault_id.lower()
        vault = self._vaults.get(key)
        if vault is None:
            phase = sweep_phase(len(self._vaults), self._policy.interval)
            vault = self._vaults[key] = _Vault(vault_id, phase=phase)
        return vault
