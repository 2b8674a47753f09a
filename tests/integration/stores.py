"""The store backends the integration tests run on, and a look under the store interface.

Imported by `conftest.py` (the fixtures) and by the tests that check rows the interface does
not return (transitions, snapshots, the outbox, heartbeats).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from backupjobd.adapters.sql import schema
from backupjobd.adapters.sql.store import SqlStore
from backupjobd.store import Store
from backupjobd.testing import MemoryStore

SQL_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
BACKENDS = ["memory", *SQL_BACKENDS]


async def table_rows(store: Store, table: str) -> list[Any]:
    """Every row of a table of the schema, in primary-key order, with attribute access."""
    if isinstance(store, MemoryStore):
        return [SimpleNamespace(**row) for row in store.rows(table)]
    assert isinstance(store, SqlStore), type(store)
    t = schema.metadata.tables[table]
    async with store.engine.connect() as conn:
        result = await conn.execute(select(t).order_by(*t.primary_key.columns))
        return list(result.fetchall())
