"""Azure's errorDetails on a job, through every store (memory, SQLite, PostgreSQL), one write
at a time and in a batch: kept as read, and not wiped by a list item that carries none."""

from __future__ import annotations

from datetime import timedelta

from backupjobd.core.azure import ErrorDetail, parse_job_resource
from backupjobd.core.decisions import PollPolicy, Seen, decide_job
from backupjobd.core.model import JobWrite
from backupjobd.store import Store
from tests.integration.test_store_contract import T0, VAULT, jid, job_body, register_job, reload

POLICY = PollPolicy()
ERRORS = [
    {
        "errorCode": 400230,
        "errorTitle": "",
        "errorString": "Snapshot operation failed",
        "recommendations": ["Make sure the VM agent is running", "Retry the operation"],
    },
    {"errorString": "DPM says no", "recommendations": []},
]
EXPECTED = (
    ErrorDetail(
        "400230",
        "Snapshot operation failed",
        ("Make sure the VM agent is running", "Retry the operation"),
    ),
    ErrorDetail(None, "DPM says no"),
)


def failed(job_id: str, *, errors: bool = True, full: bool = True) -> Seen:
    body = job_body(VAULT, job_id, "Failed", end_time="2026-03-01T12:05:00Z")
    if errors:
        body["properties"]["errorDetails"] = ERRORS
    return Seen(parse_job_resource(body), full=full)


async def test_error_details_are_kept_one_write_and_in_a_batch(store: Store) -> None:
    one = await register_job(store, jid(1), T0)
    assert one.error_details == ()
    decision = decide_job(one.state(), failed(jid(1)), T0, POLICY, 0.5)
    assert await store.apply_job(one, decision, T0)
    assert (await reload(store, jid(1))).error_details == EXPECTED
    batch = [await register_job(store, jid(n), T0) for n in (2, 3)]
    writes = [
        JobWrite(r, decide_job(r.state(), failed(r.job_id), T0, POLICY, 0.5), T0) for r in batch
    ]
    assert await store.apply_jobs(writes) == [True, True]
    for n in (2, 3):
        job = await reload(store, jid(n))
        assert job.error_details == EXPECTED
        assert job.error_details[0].to_json()["code"] == "400230"


async def test_a_list_item_without_errors_keeps_them_a_full_read_replaces_them(
    store: Store,
) -> None:
    record = await register_job(store, jid(4), T0)
    running = job_body(VAULT, jid(4), "InProgress")
    running["properties"]["errorDetails"] = ERRORS[:1]
    seen = Seen(parse_job_resource(running), full=True)
    assert await store.apply_job(record, decide_job(record.state(), seen, T0, POLICY, 0.5), T0)
    record = await reload(store, jid(4))
    assert record.error_details == EXPECTED[:1]
    later = T0 + timedelta(seconds=30)
    listed = Seen(parse_job_resource(job_body(VAULT, jid(4), "InProgress")), full=False)
    decision = decide_job(record.state(), listed, later, POLICY, 0.5)
    assert await store.apply_job(record, decision, later)
    record = await reload(store, jid(4))
    assert record.error_details == EXPECTED[:1]
    full = Seen(parse_job_resource(job_body(VAULT, jid(4), "Completed")), full=True)
    decision = decide_job(record.state(), full, later, POLICY, 0.5)
    assert await store.apply_job(record, decision, later)
    assert (await reload(store, jid(4))).error_details == ()


async def test_progress_is_kept_as_last_read(store: Store) -> None:
    record = await register_job(store, jid(9), T0)
    body = job_body(VAULT, jid(9), "InProgress")
    body["properties"]["extendedInfo"]["progressPercentage"] = 37.0
    decision = decide_job(record.state(), Seen(parse_job_resource(body)), T0, POLICY, 0.5)
    assert await store.apply_job(record, decision, T0)
    record = await reload(store, jid(9))
    assert record.progress_percent == 37.0
    assert record.to_json()["progress_percent"] == 37.0
    later = T0 + timedelta(seconds=30)
    body["properties"]["extendedInfo"]["progressPercentage"] = 64.0
    listed = Seen(parse_job_resource(body), full=False)
    decision = decide_job(record.state(), listed, later, POLICY, 0.5)
    assert not record.schedule_only(decision, later)  # new progress is written
    assert await store.apply_jobs([JobWrite(record, decision, later)]) == [True]
    assert (await reload(store, jid(9))).progress_percent == 64.0
