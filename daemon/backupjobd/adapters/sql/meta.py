"""What the store keeps besides jobs: daemon heartbeats (live instances) and how far
discovery has listed each vault."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, func, insert, select, update

from backupjobd.adapters.sql import schema
from backupjobd.core.azure import VaultRef
from backupjobd.core.model import DiscoveryState


def live_instances(conn: Connection, seen_since: datetime) -> int:
    i = schema.instances
    n = conn.scalar(
        select(func.count()).where(i.c.last_seen_at >= seen_since, i.c.stopped_at.is_(None))
    )
    return int(n or 0)


def discovery_states(conn: Connection) -> list[DiscoveryState]:
    d = schema.discovery_state
    rows = conn.execute(select(d).order_by(d.c.vault_key))
    return [
        DiscoveryState(r.vault_id, r.last_listed_until, r.last_run_at, r.jobs_found) for r in rows
    ]


def save_discovery_state(
    conn: Connection, vault: VaultRef, listed_until: datetime, now: datetime, jobs_found: int
) -> None:
    d = schema.discovery_state
    result = conn.execute(
        update(d)
        .where(d.c.vault_key == vault.key)
        .values(
            vault_id=vault.id,
            last_listed_until=listed_until,
            last_run_at=now,
            jobs_found=d.c.jobs_found + jobs_found,
        )
    )
    if result.rowcount == 0:
        conn.execute(
            insert(d).values(
                vault_key=vault.key,
                vault_id=vault.id,
                last_listed_until=listed_until,
                last_run_at=now,
                jobs_found=jobs_found,
            )
        )
