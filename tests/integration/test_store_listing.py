"""`list_jobs` filters the CLI's `jobs list` uses, on every store: newest first, registration
time bounds and the operation name (case-insensitive)."""

from __future__ import annotations

from datetime import timedelta

from backupjobd.core.azure import parse_job_resource
from backupjobd.core.decisions import PollPolicy, Seen, decide_job
from backupjobd.store import Store
from tests.integration.test_store_contract import T0, VAULT, jid, job_body, register_job


async def test_newest_first_until_and_operation(store: Store) -> None:
    for n in range(1, 5):
        record = await register_job(store, jid(n), T0 + n * timedelta(minutes=10))
        body = job_body(VAULT, jid(n), "InProgress")
        body["properties"]["operation"] = "Restore" if n % 2 else "Backup"
        decision = decide_job(record.state(), Seen(parse_job_resource(body)), T0, PollPolicy(), 0.5)
        assert await store.apply_job(record, decision, T0)

    async def ids(**filters: object) -> list[str]:
        return [j.job_id for j in await store.list_jobs(**filters)]  # type: ignore[arg-type]

    assert await ids() == [jid(n) for n in (1, 2, 3, 4)]
    assert await ids(newest_first=True) == [jid(n) for n in (4, 3, 2, 1)]
    assert await ids(newest_first=True, limit=2) == [jid(4), jid(3)]
    assert await ids(until=T0 + timedelta(minutes=20)) == [jid(1), jid(2)]
    assert await ids(since=T0 + timedelta(minutes=20), until=T0 + timedelta(minutes=30)) == [
        jid(2),
        jid(3),
    ]
    assert await ids(operation="RESTORE") == [jid(1), jid(3)]
    assert await ids(operation="Nothing") == []


async def test_a_job_an_operation_named_carries_its_operation_id(store: Store) -> None:
    from backupjobd.core.decisions import decide_operation
    from tests.integration.test_store_contract import op_registration, op_seen, reload_op

    [result] = await store.register([op_registration(VAULT, "op-42")], T0)
    assert result.created
    record = await reload_op(store, "op-42")
    decision = decide_operation(
        record.state(), op_seen("Succeeded", [jid(7)]), T0, PollPolicy(), 0.5
    )
    assert await store.apply_operation(record, decision, T0) is not None
    [job] = await store.find_jobs(jid(7))
    assert job.operation_id == "op-42"
    assert job.to_json()["operation_id"] == "op-42"
    own = await register_job(store, jid(8), T0)
    assert own.operation_id is None
