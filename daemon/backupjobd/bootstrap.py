"""The composition root: config → store → token provider → ARM client → tracker → scheduler.

Only this module (and the CLI entry point) touches the process environment, signals and
the real clock; every component gets its collaborators as arguments.
The heavy parts (aiohttp, APScheduler, the HTTP API, the loops) are imported inside the
functions that build them: a CLI command that only reads the store starts without them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, TYPE_CHECKING, TypeVar

from backupjobd.adapters.budget import ReadBudget
from backupjobd.adapters.credentials import build_token_provider
from backupjobd.adapters.sdnotify import SdNotifier, watchdog_interval
from backupjobd.adapters.sql.leases import hold_sqlite_serve_lock
from backupjobd.adapters.sql.store import SchemaBehind, SqlStore
from backupjobd.config import Config, check_api_token, check_serve_database
from backupjobd.core import azure
from backupjobd.core.decisions import PollPolicy, StuckRules
from backupjobd.core.leases import LEASE_SPAN
from backupjobd.core.registration import Endpoint
from backupjobd.errors import ConfigError, StoreError
from backupjobd.service.ownership import Heartbeat, Ownership
from backupjobd.store import Store

if TYPE_CHECKING:
    import aiohttp

    from backupjobd.adapters.arm import ArmClient
    from backupjobd.adapters.credentials import TokenProvider
    from backupjobd.adapters.metrics import Metrics
    from backupjobd.service.tracker import Tracker

logger = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_LOG_SECONDS = 60.0
# A daemon records a heartbeat this often; `wait` treats one silent for 3 beats as gone.
HEARTBEAT_SECONDS = 3.0
LIVENESS_WINDOW = timedelta(seconds=3 * HEARTBEAT_SECONDS)
# How long a replica's subscription lease lasts without a heartbeat renewing it: after a
# kill -9, its subscriptions are polled again within this plus one heartbeat and one tick.
LEASE = LEASE_SPAN
# SIGHUP is what closing the terminal of a foreground `serve` sends: drain, as on SIGTERM.
DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def utcnow() -> datetime:
    return datetime.now(UTC)


def poll_policy(config: Config) -> PollPolicy:
    p = config.polling
    return PollPolicy(
        interval=timedelta(seconds=p.interval_seconds),
        min_interval=timedelta(seconds=p.min_interval_seconds),
        early_polls=p.early_polls,
        not_found_grace=timedelta(seconds=p.not_found_grace_seconds),
        max_backoff=timedelta(seconds=p.max_backoff_seconds),
        operation_interval=timedelta(seconds=p.operation_interval_seconds),
        max_detection_lag=timedelta(seconds=p.max_detection_lag_seconds),
        stuck=StuckRules(
            default=timedelta(seconds=config.stuck.after_seconds),
            by_key=tuple(
                (key, timedelta(seconds=value)) for key, value in config.stuck.thresholds.items()
            ),
        ),
    )


def read_budget(config: Config) -> ReadBudget | None:
    t = config.throttle
    if not t.enabled:
        return None
    return ReadBudget(
        t.reads_burst, t.reads_per_second, reserve=t.reserve_reads, max_share=t.max_share
    )


def write_budget(config: Config) -> ReadBudget | None:
    """The bucket cross-region-restore job reads (POSTs) draw on: the subscription's writes."""
    t = config.throttle
    if not t.enabled:
        return None
    return ReadBudget(
        t.writes_burst, t.writes_per_second, reserve=t.reserve_reads, max_share=t.max_share
    )


def api_token(config: Config, env: Mapping[str, str]) -> str | None:
    """The API's bearer token: required unless it listens on loopback or a unix socket."""
    from backupjobd.http import api_token_required

    if not config.api.enabled:
        return None
    token = env.get(config.api.token_env, "").strip() or None
    if token is None and api_token_required(config.api):
        raise ConfigError(
            f"api.bind {config.api.bind} is not loopback: set ${config.api.token_env} "
            "to the bearer token clients must send"
        )
    if token is not None:
        check_api_token(token, config.api.token_env)
    return token


def api_read_token(config: Config, env: Mapping[str, str], full_token: str | None) -> str | None:
    """The API's read-only bearer token (GET only), if one is set. It needs the full token
    beside it: without one the API is open to every local client and a read-only token
    would restrict nothing."""
    if not config.api.enabled:
        return None
    token = env.get(config.api.read_token_env, "").strip() or None
    if token is None:
        return None
    check_api_token(token, config.api.read_token_env)
    if full_token is None:
        raise ConfigError(
            f"${config.api.read_token_env} is set but ${config.api.token_env} is not: "
            "a read-only token needs the full token beside it"
        )
    if hmac.compare_digest(token.encode(), full_token.encode()):
        raise ConfigError(f"${config.api.read_token_env} must differ from ${config.api.token_env}")
    return token


def webhook_secrets(config: Config, env: Mapping[str, str]) -> dict[str, bytes]:
    """HMAC keys by webhook name, from the environment variables the config names."""
    secrets = {}
    for hook in config.notify.webhook:
        if hook.secret_env:
            value = env.get(hook.secret_env, "")
            if not value:
                raise ConfigError(f"webhook {hook.name}: ${hook.secret_env} is empty")
            secrets[hook.name] = value.encode("utf-8")
    return secrets


def management_endpoint(config: Config) -> Endpoint:
    return Endpoint.from_url(config.azure.endpoint)


async def open_store(config: Config, *, read_only: bool = False) -> SqlStore:
    """A store whose schema is at head (migrations are idempotent and serialised).
    `read_only` (commands that only read): nothing is created or written, unless the schema
    is behind, when the database is opened for writing once to migrate it."""
    try:
        store = SqlStore.from_url(
            config.database.url, config.database.busy_timeout_ms, read_only=read_only
        )
    except StoreError as exc:
        if exc.transient:
            raise
        # Reading the wrong database is the usual cause: say where the URL came from.
        where = (
            f"config file {config.source}"
            if config.origins and config.source != "built-in defaults"
            else "no config file (--config, $BACKUPJOBD_CONFIG, /etc/backupjobd/backupjobd.toml)"
        )
        raise StoreError(f"{exc}; database.url: {config.origin('database.url')}; {where}") from None
    try:
        await store.migrate()
    except SchemaBehind:
        await store.close()
        return await open_store(config)
    except BaseException:
        await store.close()
        raise
    return store


async def retry_transient(
    work: Callable[[], Awaitable[T]], doing: str, deadline_seconds: float
) -> T:
    """`work` again after a transient store error (a database locked by other writers) with
    backoff and jitter, until `deadline_seconds` have passed; then the last error."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + deadline_seconds
    delay = 0.05
    while True:
        try:
            return await work()
        except StoreError as exc:
            if not exc.transient or loop.time() + delay > give_up_at:
                raise
            logger.debug("%s: %s; retrying in %.2f s", doing, exc, delay)
        await asyncio.sleep(delay * (0.5 + random.random() / 2))
        delay = min(2.0, delay * 2)


async def open_store_retrying(
    config: Config, stop: asyncio.Event, *, first_delay: float = 1.0, max_delay: float = 30.0
) -> SqlStore | None:
    """`serve` waits out a database that is full, locked or unreachable at start (the same
    faults it waits out while running) instead of exiting; None when stopped meanwhile.
    A fault that waiting cannot fix (bad URL, wrong schema) fails at once."""
    delay = first_delay
    while True:
        try:
            return await open_store(config)
        except StoreError as exc:
            if not exc.transient:
                raise
            logger.warning(
                "database unavailable at start (%s); retrying in %.0f s",
                exc,
                delay,
                extra={"action": "start_retry"},
            )
        try:
            await asyncio.wait_for(stop.wait(), delay * (0.5 + random.random() / 2))
            return None
        except TimeoutError:
            delay = min(max_delay, delay * 2)


@dataclass
class Runtime:
    config: Config
    store: SqlStore
    tokens: TokenProvider
    arm: ArmClient
    tracker: Tracker
    metrics: Metrics
    session: aiohttp.ClientSession


@asynccontextmanager
async def arm_client(
    config: Config, env: Mapping[str, str], metrics: Metrics | None = None
) -> AsyncIterator[ArmClient]:
    """The ARM client with its token provider and HTTP session, closed on exit."""
    import aiohttp

    from backupjobd.adapters.arm import ApiVersions, ArmClient

    tokens = build_token_provider(config.azure, env)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=config.polling.concurrency * 2),
        trust_env=False,
    )
    try:
        yield ArmClient(
            session,
            tokens,
            config.azure.endpoint,
            config.azure.api_version,
            config.azure.request_timeout_seconds,
            budget=read_budget(config),
            write_budget=write_budget(config),
            max_concurrent_requests=config.polling.concurrency,
            metrics=metrics,
            api_versions=ApiVersions(
                config.azure.data_protection_api_version, config.azure.crr_api_version
            ),
        )
    finally:
        await session.close()
        await tokens.close()


def build_tracker(
    config: Config,
    store: Store,
    arm: ArmClient,
    metrics: Metrics | None = None,
    ownership: Ownership | None = None,
) -> Tracker:
    """The one way a tracker is made: `serve` and `wait` (with no daemon running) record and
    announce to webhooks exactly the same things."""
    from backupjobd.service.tracker import Tracker

    return Tracker(
        store,
        arm,
        poll_policy(config),
        utcnow,
        concurrency=config.polling.concurrency,
        batch_size=config.polling.batch_size,
        metrics=metrics,
        webhooks=config.notify.webhook,
        sweep_min_jobs=config.polling.sweep_min_jobs,
        detail_interval_seconds=config.polling.detail_interval_seconds,
        ownership=ownership,
    )


@asynccontextmanager
async def tracker_for(
    config: Config, env: Mapping[str, str], store: Store
) -> AsyncIterator[Tracker]:
    """A tracker over the caller's store with its own ARM client (for `wait`)."""
    async with arm_client(config, env) as arm:
        yield build_tracker(config, store, arm)


@asynccontextmanager
async def runtime(
    config: Config,
    env: Mapping[str, str],
    store: SqlStore | None = None,
    ownership: Ownership | None = None,
) -> AsyncIterator[Runtime]:
    """Everything `serve` runs on; it closes the store, also one that was passed in."""
    from backupjobd.adapters.metrics import Metrics

    metrics = Metrics()
    if store is None:
        store = await open_store(config)
    try:
        async with arm_client(config, env, metrics) as arm:
            tracker = build_tracker(config, store, arm, metrics, ownership)
            yield Runtime(config, store, arm.tokens, arm, tracker, metrics, arm.session)
    finally:
        await store.close()


async def serve(config: Config, env: Mapping[str, str]) -> int:
    """Run until SIGTERM/SIGINT/SIGHUP; the first signal drains, a second one aborts.
    SIGUSR1/SIGUSR2 are logged and otherwise ignored (their default action would kill us).
    Only this path loads APScheduler, the HTTP API and the service loops: the CLI's other
    commands start without them."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from backupjobd.http import (
        AcceptFailureLog,
        build_api_app,
        connection_guard,
        start_api,
    )
    from backupjobd.service.discovery import Discoverer
    from backupjobd.service.notify import Notifier

    check_serve_database(config.database.url)  # fail before starting anything
    secrets = webhook_secrets(config, env)
    token = api_token(config, env)
    read_token = api_read_token(config, env, token)
    systemd = SdNotifier.from_env(env)
    watchdog_every = watchdog_interval(env, os.getpid())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            logger.info("received %s: draining", signal.Signals(signum).name)
            systemd.stopping("draining in-flight polls")
            stop.set()
        else:
            logger.warning("received a second signal: aborting")
            if main_task is not None:
                main_task.cancel()

    def on_ignored_signal(signum: int) -> None:
        logger.info("received %s: ignored", signal.Signals(signum).name)

    for signum in DRAIN_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    for signum in IGNORED_SIGNALS:
        loop.add_signal_handler(signum, on_ignored_signal, signum)
    previous_handler = loop.get_exception_handler()
    accept_failures = AcceptFailureLog()
    loop.set_exception_handler(accept_failures)
    try:
        store = await open_store_retrying(config, stop)
        if store is None:
            logger.info("stopped before the database became available", extra={"action": "stop"})
            return 0
        try:
            sole = hold_sqlite_serve_lock(config.database.url)
        except StoreError:
            await store.close()
            raise
        ownership = Ownership(uuid.uuid4().hex, utcnow)
        async with runtime(config, env, store, ownership) as rt, _closing(sole):
            counts = await rt.store.counts()
            logger.info(
                "backupjobd serving %s with %s; resuming %d jobs and %d operations",
                config.azure.endpoint,
                _redact_url(config.database.url),
                counts.get("jobs_active", 0),
                counts.get("operations_active", 0),
                extra={"action": "start"},
            )
            scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
            scheduler.add_job(
                rt.tracker.tick,
                "interval",
                seconds=config.polling.tick_seconds,
                max_instances=1,
                coalesce=True,
                next_run_time=utcnow(),
                id="dispatch",
            )
            scheduler.add_job(
                _status_line,
                "interval",
                args=[rt],
                seconds=STATUS_LOG_SECONDS,
                max_instances=1,
                coalesce=True,
                id="status",
            )
            heartbeat = Heartbeat(
                rt.store,
                ownership,
                (socket.gethostname(), os.getpid(), utcnow()),
                lease_for=LEASE,
                budgets=lambda: budget_views(rt.arm.budget),
                wanted=discovery_subscriptions(config),
                sole=sole is not None,
            )
            await heartbeat.beat()  # the first tick polls what this replica owns
            scheduler.add_job(
                heartbeat.beat,
                "interval",
                seconds=HEARTBEAT_SECONDS,
                max_instances=1,
                coalesce=True,
                id="heartbeat",
            )
            notifier: Notifier | None = None
            if config.notify.webhook:
                notifier = Notifier(
                    rt.store,
                    rt.session,
                    config.notify.webhook,
                    secrets,
                    utcnow,
                    max_attempts=config.notify.max_attempts,
                    max_backoff=timedelta(seconds=config.notify.max_backoff_seconds),
                    metrics=rt.metrics,
                    # A tick waits this long for quick receivers; it must end before the next.
                    settle_seconds=min(0.5, config.polling.tick_seconds / 2),
                )
                scheduler.add_job(
                    notifier.tick,
                    "interval",
                    seconds=config.polling.tick_seconds,
                    max_instances=1,
                    coalesce=True,
                    next_run_time=utcnow(),
                    id="notify",
                )
            if watchdog_every is not None:
                # Pinged from the loop itself: a wedged event loop stops the pings and
                # systemd restarts us; a failing dispatch tick alone does not.
                scheduler.add_job(
                    systemd.watchdog,
                    "interval",
                    seconds=watchdog_every,
                    max_instances=1,
                    coalesce=True,
                    id="watchdog",
                )
            api_runner = None
            if config.api.enabled:
                api_app = build_api_app(
                    store=rt.store,
                    arm=rt.arm,
                    tokens=rt.tokens,
                    endpoint=management_endpoint(config),
                    metrics=rt.metrics,
                    config=config.api,
                    api_token=token,
                    read_token=read_token,
                    last_tick_age=rt.tracker.last_tick_age,
                    clock=utcnow,
                    durations=rt.tracker.durations,
                )
                api_runner = await start_api(api_app, config.api)
                accept_failures.on_exhausted = connection_guard(api_app).shed_idle
            if config.discovery.enabled:
                discoverer = Discoverer(
                    rt.store, rt.arm, config.discovery, utcnow, owns=ownership.owns
                )
                scheduler.add_job(
                    discoverer.tick,
                    "interval",
                    seconds=config.discovery.interval_seconds,
                    max_instances=1,
                    coalesce=True,
                    next_run_time=utcnow(),
                    id="discovery",
                )
            rt.tracker.start()
            scheduler.start()
            systemd.ready(f"tracking {counts.get('jobs_active', 0)} jobs")
            try:
                await stop.wait()
            finally:
                scheduler.shutdown(wait=False)
                grace = config.polling.shutdown_timeout_seconds
                drained, _ = await asyncio.gather(
                    rt.tracker.drain(grace),
                    notifier.drain(grace) if notifier is not None else _nothing_to_drain(),
                )
                await heartbeat.beat(stopped=True)  # the others take over at once
                if api_runner is not None:
                    await api_runner.cleanup()
            if drained:
                logger.info("stopped cleanly", extra={"action": "stop"})
            else:
                logger.warning("stopped with polls still in flight; they will be repeated")
        return 0
    except asyncio.CancelledError:
        return 1
    finally:
        loop.set_exception_handler(previous_handler)
        for signum in (*DRAIN_SIGNALS, *IGNORED_SIGNALS):
            loop.remove_signal_handler(signum)


async def _nothing_to_drain() -> bool:
    return True


@asynccontextmanager
async def _closing(handle: IO[bytes] | None) -> AsyncIterator[None]:
    """Holds the SQLite serve lock until `serve` is done."""
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def budget_views(budget: ReadBudget | None) -> tuple[dict[str, object], ...]:
    """What the read budget learned, per subscription, as the heartbeat stores it."""
    if budget is None:
        return ()
    return tuple(
        {
            "subscription_id": b.subscription_id,
            "rate": round(b.rate, 3),
            "burst": round(b.burst, 1),
            "remaining": b.remaining,
            "reads": b.reads,
            "throttled": b.throttled,
        }
        for b in budget.snapshot()
    )


def discovery_subscriptions(config: Config) -> tuple[str, ...]:
    """Subscriptions discovery lists: a replica must own them even with no job in them."""
    if not config.discovery.enabled:
        return ()
    vaults = (azure.vault_from_id(v).subscription_id for v in config.discovery.vault)
    return tuple(sorted({*config.discovery.subscription, *vaults}))


async def _status_line(rt: Runtime) -> None:
    try:
        counts = await rt.store.counts()
    except Exception as exc:
        logger.warning("heartbeat could not read the store: %s", exc)
        return
    logger.info(
        "tracking %d jobs (%d finished, %d lost), %d operations pending, %d polls so far",
        counts.get("jobs_active", 0),
        counts.get("jobs_finished", 0),
        counts.get("jobs_lost", 0),
        counts.get("operations_active", 0),
        rt.tracker.polls,
        extra={"action": "heartbeat"},
    )


def _redact_url(url: str) -> str:
    """Database URLs may carry a password; logs get the scheme and location only."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
