"""The Azure Backup jobs API stand-in: an aiohttp app for tests, bench and the demo.

The names below are the emulator's public surface; its modules are ``state`` (the model),
``faults``, ``render`` (the bodies Azure sends), ``arm_routes``, ``admin``, ``replay``,
``server`` (the app and its runner) and ``client`` (the subprocess and a stdlib client).
"""

from __future__ import annotations

from backupjobd.emulator.client import (
    EmulatorClient,
    EmulatorProcess,
    EmulatorStartError,
    free_port,
    listening,
    request,
)
from backupjobd.emulator.faults import FAULT_KINDS, Fault
from backupjobd.emulator.replay import (
    ExpectedJob,
    ReplayError,
    load_recording,
    load_replay,
    normalise_path,
)
from backupjobd.emulator.server import build_emulator_app, run_emulator
from backupjobd.emulator.state import (
    DEFAULT_VAULT_ID,
    EmulatedJob,
    EmulatedOperation,
    EmulatorState,
    JobSpec,
    ValidationError,
)

__all__ = [
    "DEFAULT_VAULT_ID",
    "FAULT_KINDS",
    "EmulatedJob",
    "EmulatedOperation",
    "EmulatorClient",
    "EmulatorProcess",
    "EmulatorStartError",
    "EmulatorState",
    "ExpectedJob",
    "Fault",
    "JobSpec",
    "ReplayError",
    "ValidationError",
    "build_emulator_app",
    "free_port",
    "listening",
    "load_recording",
    "load_replay",
    "normalise_path",
    "request",
    "run_emulator",
]
