"""In-process emulator of the Azure Resource Manager Azure Backup jobs API.

Like Azurite for Storage: a real HTTP server speaking the ARM wire shapes, so tests, the demo
and benchmarks exercise the real client code (auth headers, api-version, async-operation
polling, paging, throttling and broken responses) without an Azure subscription. This module
wires the app and serves it; the model is in ``state``, the answers in ``arm_routes`` and
``render``, the scene-setting in ``admin``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from aiohttp import web

from backupjobd.emulator.admin import MAX_BODY_BYTES, add_admin_routes
from backupjobd.emulator.arm_routes import arm_entry
from backupjobd.emulator.faults import ARM_READ_REFILL_PER_SECOND
from backupjobd.emulator.state import STATE_KEY, EmulatorState

logger = logging.getLogger(__name__)

# As a container's PID 1 the process has no default action for these: without a handler
# `docker stop` would wait out its timeout and kill it.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
    add_admin_routes(app)
    app.router.add_route("*", "/{tail:.*}", arm_entry)
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
    read_others_per_second: float = 0.0,
    stop_on_signals: bool = False,
) -> None:
    """Serve the emulator until cancelled; ``ready`` receives the bound port (for port 0).

    With ``replay_files`` ARM requests are answered from those recordings; a file that
    cannot be loaded raises ``ReplayError`` before anything listens. With ``stop_on_signals``
    (the main thread only: `backupjobd emulator`) SIGTERM and SIGINT stop it cleanly.
    """
    stopped = asyncio.Event()
    if stop_on_signals:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, _stop, signum, stopped)
    try:
        await _serve(
            host,
            port,
            stopped,
            EmulatorState(
                required_token=required_token,
                read_burst=read_burst,
                read_refill_per_second=read_refill_per_second,
                read_others_per_second=read_others_per_second,
            ),
            list(replay_files),
            ready,
        )
    finally:
        if stop_on_signals:
            for signum in STOP_SIGNALS:
                loop.remove_signal_handler(signum)


def _stop(signum: int, stopped: asyncio.Event) -> None:
    logger.info("received %s: stopping", signal.Signals(signum).name)
    stopped.set()


async def _serve(
    host: str,
    port: int,
    stopped: asyncio.Event,
    state: EmulatorState,
    files: list[str | Path],
    ready: Callable[[int], None] | None,
) -> None:
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
        _warn_if_exposed(bound or [host], state.required_token)
        if ready is not None:
            ready(actual_port)
        await stopped.wait()
    finally:
        await runner.cleanup()
    logger.info("emulator stopped")
