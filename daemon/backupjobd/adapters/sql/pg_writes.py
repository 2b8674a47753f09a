"""PostgreSQL's write of a batch of decisions: set operations instead of a statement per job.

asyncpg reports no row counts for executemany, so a compare-and-set batch could only go
write by write: three statements per job, and the round trips and SQLAlchemy's per-statement
work capped a batch at ~2,000 transitions/s. Here every column travels as one array: one
`UPDATE jobs ... FROM unnest(...) ... RETURNING jobs.pk` tells which compare-and-sets won,
and one `INSERT ... SELECT FROM unnest(...)` per table adds the winners' rows. The statements
are the same whatever the batch size, so asyncpg prepares each once per connection.

Imported only when the store runs on PostgreSQL (it loads the PostgreSQL dialect).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Table,
    Text,
    any_,
    bindparam,
    column,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from backupjobd.adapters.sql import schema
from backupjobd.adapters.sql.jobs import JOB_COLUMNS, snapshot_rows, transition_rows
from backupjobd.adapters.sql.outbox import outbox_rows
from backupjobd.core.model import JobWrite

# The columns each array fills: the job's key, the version its decision was computed from,
# then every column the decision sets.
_UPDATE_COLUMNS = ("pk", "expected_version", *JOB_COLUMNS)


def _unnest(columns: Sequence[tuple[str, Column[Any]]], name: str) -> Any:
    """`unnest($1::type[], $2::type[], ...) AS name(columns)`: one array parameter per column,
    typed as the column so that the column's own conversion (UTC datetimes) applies. JSON
    columns go as text arrays, their values encoded before: an array of tuples would be read
    as a multi-dimensional array."""
    arrays = [
        bindparam(
            f"a_{key}",
            type_=ARRAY(Text() if isinstance(col.type, schema.ErrorDetailsJSON) else col.type),
        )
        for key, col in columns
    ]
    typed = [column(key, col.type) for key, col in columns]
    return func.unnest(*arrays).table_valued(*typed).render_derived(name=name)


def _jobs_update() -> Any:
    t = schema.jobs
    pks = bindparam("a_pk", type_=ARRAY(t.c.pk.type))
    v = _unnest(
        [(c, t.c["version" if c == "expected_version" else c]) for c in _UPDATE_COLUMNS], "v"
    )
    return (
        update(t)
        # `pk = ANY(the pk array)` besides the join: the rows are found through the primary
        # key whatever the planner guesses of the arrays' length (else a seq scan of jobs).
        .where(t.c.pk == any_(pks), t.c.pk == v.c.pk, t.c.version == v.c.expected_version)
        .values({c: v.c[c] for c in JOB_COLUMNS})
        .returning(t.c.pk)
    )


def _insert(table: Table, columns: Sequence[str]) -> Any:
    rows = _unnest([(c, table.c[c]) for c in columns], "r")
    return pg_insert(table).from_select(list(columns), select(*rows.c))


_JOBS_UPDATE = _jobs_update()
_TRANSITIONS = ("job_pk", "seq", "from_status", "to_status", "observed_at")
_SNAPSHOTS = ("job_pk", "content_hash", "observed_at", "status", "properties")
_OUTBOX = (
    "event_id",
    "webhook",
    "event_type",
    "job_pk",
    "payload",
    "state",
    "created_at",
    "next_attempt_at",
    "attempts",
)
_INSERT_TRANSITIONS = _insert(schema.transitions, _TRANSITIONS)
_INSERT_SNAPSHOTS = _insert(schema.snapshots, _SNAPSHOTS).on_conflict_do_nothing(
    index_elements=["job_pk", "content_hash"]
)
_INSERT_OUTBOX = _insert(schema.outbox, _OUTBOX)


def apply_set(writes: Sequence[JobWrite], conn: Connection) -> list[bool]:
    """Each write's compare-and-set result, as write by write would give them: writes for
    distinct jobs are independent, and a job's later writes go in later rounds, so each is
    checked against the version its predecessors in the batch left."""
    applied = [False] * len(writes)
    for indices in _rounds(writes):
        batch = [writes[i] for i in indices]
        won = _update_jobs(conn, batch)
        winners = [w for w in batch if w.record.pk in won]
        _insert_rows(conn, _INSERT_TRANSITIONS, _TRANSITIONS, transition_rows(winners))
        _insert_rows(conn, _INSERT_SNAPSHOTS, _SNAPSHOTS, snapshot_rows(winners))
        _insert_rows(conn, _INSERT_OUTBOX, _OUTBOX, outbox_rows(winners))
        for i in indices:
            applied[i] = writes[i].record.pk in won
    return applied


def _rounds(writes: Sequence[JobWrite]) -> list[list[int]]:
    """Indices of the writes, split so that no round holds a job twice: round n has every
    job's n-th write (one round unless a batch repeats a job)."""
    seen: dict[int, int] = {}
    rounds: list[list[int]] = []
    for i, write in enumerate(writes):
        n = seen.get(write.record.pk, 0)
        seen[write.record.pk] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(i)
    return rounds


def _update_jobs(conn: Connection, writes: Sequence[JobWrite]) -> set[int]:
    """The pks whose row still had the version its decision was computed from, now set."""
    arrays: dict[str, list[Any]] = {c: [] for c in _UPDATE_COLUMNS}
    # In pk order, the order the plans seen here lock rows in: two batches over the same
    # jobs then seldom deadlock (and Database.run retries a deadlock).
    for write in sorted(writes, key=lambda w: w.record.pk):
        after = write.committed
        arrays["pk"].append(write.record.pk)
        arrays["expected_version"].append(write.record.version)
        for c in JOB_COLUMNS:
            arrays[c].append(getattr(after, c))
    arrays["tracking"] = [tracking.value for tracking in arrays["tracking"]]
    encode = schema.ErrorDetailsJSON().process_bind_param
    arrays["error_details"] = [encode(v, conn.dialect) for v in arrays["error_details"]]
    params = {f"a_{c}": values for c, values in arrays.items()}
    return set(conn.execute(_JOBS_UPDATE, params).scalars())


def _insert_rows(
    conn: Connection, statement: Any, columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    if rows:
        conn.execute(statement, {f"a_{c}": [row[c] for row in rows] for c in columns})
