"""Test doubles for the daemon's ports; nothing in the daemon imports this package.

`MemoryStore` implements the `Store` interface in memory (like procrastinate's
InMemoryConnector): tests of the loops run on it without files or sockets, and its
`fail_next` makes it fail the way a database does. `FakeClock` is the one fake time of the
tests and `policy(...)` their poll policy on that time scale.
"""

from __future__ import annotations

from backupjobd.testing.clock import BASE, TEST_POLICY, FakeClock, policy
from backupjobd.testing.memory import MemoryStore

__all__ = ["BASE", "TEST_POLICY", "FakeClock", "MemoryStore", "policy"]
