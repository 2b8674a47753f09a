"""Webhooks from the real daemon process: jobs with mixed final statuses on the emulator are
announced to a receiver run by the test (signed, one event id per event), and events
pending when the daemon is killed with -9 while the receiver is down are delivered after a
restart, with their original ids."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.acceptance.conftest import VAULT, Daemon, Emulator, wait_until

SECRET = "acceptance-webhook-secret"
SECRET_ENV = "BJD_ACCEPT_HOOK_SECRET"
TYPE = "com.backupjobd.job."
FAILURES = {"Failed", "CompletedWithWarnings"}
FINALS = ["Completed", "CompletedWithWarnings", "Failed", "Cancelled"]


@dataclass(frozen=True)
class Received:
    hook: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def event_id(self) -> str:
        return self.headers["X-Backupjobd-Event-Id"]

    @property
    def signed_ok(self) -> bool:
        scheme, _, given = self.headers.get("X-Backupjobd-Signature-256", "").partition("=")
        expected = hmac.new(SECRET.encode(), self.body, hashlib.sha256).hexdigest()
        return scheme == "sha256" and hmac.compare_digest(given, expected)


@dataclass
class Receiver:
    """An HTTP webhook endpoint in a thread; `stop()` closes the port (connections are
    refused) and `start()` opens the same port again."""

    port: int = 0
    requests: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                hook = self.path.rsplit("/", 1)[-1]
                with receiver._lock:
                    receiver.requests.append(Received(hook, dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{hook}"

    def got(self, hook: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.hook == hook]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    try:
        yield r
    finally:
        r.stop()


def configure_webhooks(daemon: Daemon, receiver: Receiver) -> None:
    with daemon.config_path.open("a", encoding="utf-8") as config:
        config.write(
            f"""
[notify]
max_attempts = 1000
max_backoff_seconds = 1

[[notify.webhook]]
name = "everything"
url = "{receiver.url("everything")}"
events = ["all"]
secret_env = "{SECRET_ENV}"
timeout_seconds = 5

[[notify.webhook]]
name = "pager"
url = "{receiver.url("pager")}"
events = ["failures"]
"""
        )
    daemon.env[SECRET_ENV] = SECRET


def outbox(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's outbox table, read straight from its SQLite file."""
    db = daemon.config_path.parent / "backupjobd.db"
    conn = sqlite3.connect(db, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT event_id, webhook, event_type, payload, state, attempts FROM outbox"
        ).fetchall()
    finally:
        conn.close()
    return [dict(row) for row in rows]


def create_and_register(
    emulator: Emulator, daemon: Daemon, finals: list[str], duration: float
) -> dict[str, str]:
    specs = [
        {"final_status": final, "duration_seconds": duration + (i % 3) * 0.5}
        for i, final in enumerate(finals)
    ]
    jobs = emulator.create_jobs(specs)
    daemon.ok("register", "--vault", VAULT, *[a for j in jobs for a in ("--job-id", j["job_id"])])
    return {j["job_id"]: final for j, final in zip(jobs, finals, strict=True)}


def finished(daemon: Daemon, job_ids: set[str]) -> bool:
    jobs = {j["job_id"]: j for j in daemon.jobs()}
    return all(jobs[job_id]["finished"] for job_id in job_ids)


def types_by_job(received: list[Received]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in received:
        out.setdefault(r.event["data"]["job"]["job_id"], set()).add(r.event["type"])
    return out


def expected_types(
    daemon: Daemon, jobs: dict[str, str]
) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """What the "all" and the "failures" webhooks should receive, by job: one event per
    committed transition (from `jobs history`)."""
    everything = {
        job_id: {TYPE + t["to_status"].lower() for t in daemon.history(job_id)["transitions"]}
        for job_id in jobs
    }
    pager = {j: {TYPE + final.lower()} for j, final in jobs.items() if final in FAILURES}
    return everything, pager


def test_webhooks_announce_every_job_and_survive_a_kill_9(
    emulator: Emulator, daemon: Daemon, receiver: Receiver
) -> None:
    configure_webhooks(daemon, receiver)
    daemon.start()
    wait_until("the daemon to serve", lambda: "backupjobd serving" in daemon.log_text(), 20)

    # ---------------------------------------------------------------- live delivery
    jobs = create_and_register(emulator, daemon, FINALS * 2, duration=4.0)
    wait_until("every job to finish", lambda: finished(daemon, set(jobs)), 25)
    want_all, want_pager = expected_types(daemon, jobs)
    # Registered well before they end: every job was seen running, then finished.
    assert want_all == {j: {TYPE + "inprogress", TYPE + f.lower()} for j, f in jobs.items()}
    wait_until(
        "every event to reach both webhooks",
        lambda: (
            types_by_job(receiver.got("everything")) == want_all
            and types_by_job(receiver.got("pager")) == want_pager
        ),
        15,
    )

    everything, pager = receiver.got("everything"), receiver.got("pager")
    for r in everything + pager:
        event = r.event
        assert r.event_id == event["id"]
        assert r.headers["Content-Type"].startswith("application/cloudevents+json")
        assert event["specversion"] == "1.0"
        assert event["source"] == "backupjobd"
        job = event["data"]["job"]
        assert event["subject"].lower() == f"{VAULT}/backupJobs/{job['job_id']}".lower()
        assert event["data"]["transition"]["to_status"] == job["status"]
    assert all(r.signed_ok for r in everything), "a bad signature on the 'all' webhook"
    assert all("X-Backupjobd-Signature-256" not in r.headers for r in pager)
    # The "failures" webhook got only Failed / CompletedWithWarnings, and the very same events
    # (same id, same bytes) as the "all" webhook.
    assert {r.event["data"]["job"]["status"] for r in pager} == FAILURES
    by_id = {r.event_id: r.body for r in everything}
    assert all(by_id[r.event_id] == r.body for r in pager)
    # One event id per (job, type), whatever was retried.
    ids = {(r.event["data"]["job"]["job_id"], r.event["type"]): r.event_id for r in everything}
    assert len(set(ids.values())) == len(ids) == 2 * len(jobs)

    rows = outbox(daemon)
    assert {row["state"] for row in rows} == {"delivered"}
    assert {(row["event_id"], row["webhook"]) for row in rows} == {
        (r.event_id, r.hook) for r in everything + pager
    }

    # ---------------------------------------------------------------- down, kill -9, restart
    receiver.stop()
    late_jobs = create_and_register(emulator, daemon, FINALS, duration=2.0)
    wait_until("the late jobs to finish", lambda: finished(daemon, set(late_jobs)), 20)
    late_all, late_pager = expected_types(daemon, late_jobs)
    assert all(TYPE + f.lower() in late_all[j] for j, f in late_jobs.items())
    expected_pending = sum(map(len, late_all.values())) + sum(map(len, late_pager.values()))

    def retried_while_down() -> list[dict[str, Any]] | None:
        pending = [row for row in outbox(daemon) if row["state"] == "pending"]
        if len(pending) == expected_pending and all(row["attempts"] >= 1 for row in pending):
            return pending
        return None

    wait_until("the late events to be tried and kept pending", retried_while_down, 15)
    daemon.kill9()
    pending = {(row["event_id"], row["webhook"]): row for row in outbox(daemon)}
    pending = {key: row for key, row in pending.items() if row["state"] == "pending"}
    assert len(pending) == expected_pending
    assert all(row["state"] != "dead" for row in outbox(daemon))
    before_restart = len(receiver.requests)

    receiver.start()  # the same port again
    daemon.start()

    def all_pending_received() -> bool:
        got = {(r.event_id, r.hook) for r in receiver.requests[before_restart:]}
        return set(pending) <= got

    wait_until("the pending events after the restart", all_pending_received, 20)
    after = receiver.requests[before_restart:]
    # Delivered after the restart with their original ids and bytes (duplicates allowed).
    for r in after:
        row = pending.get((r.event_id, r.hook))
        assert row is not None, f"unexpected delivery {r.event_id} to {r.hook}"
        assert r.body == row["payload"].encode()
        assert r.event["id"] == r.event_id
        if r.hook == "everything":
            assert r.signed_ok
    assert types_by_job([r for r in after if r.hook == "everything"]) == late_all
    assert types_by_job([r for r in after if r.hook == "pager"]) == late_pager

    def outbox_settled() -> bool:
        return {row["state"] for row in outbox(daemon)} == {"delivered"}

    wait_until("the outbox to be all delivered", outbox_settled, 10)
    assert len(outbox(daemon)) == len(rows) + expected_pending
    assert json.loads(daemon.ok("notify", "failed", "--json")) == []
    assert daemon.stop() == 0


def test_wait_without_a_daemon_writes_the_events_serve_delivers_later(
    emulator: Emulator, daemon: Daemon, receiver: Receiver
) -> None:
    """`wait` polls on its own when no daemon runs; it gets its tracker from the same
    composition root as `serve`, so the job's events land in the outbox and a `serve`
    started later delivers them (before: `wait` wrote no events at all)."""
    configure_webhooks(daemon, receiver)
    jobs = create_and_register(emulator, daemon, ["Failed"], duration=2.0)
    [job_id] = jobs
    out = daemon.cli("wait", job_id, "--timeout", "60")
    assert out.returncode == 4, (out.stdout, out.stderr)
    rows = outbox(daemon)
    assert {(r["webhook"], r["event_type"]) for r in rows} >= {
        ("everything", TYPE + "failed"),
        ("pager", TYPE + "failed"),
    }
    assert all(r["state"] == "pending" for r in rows)
    want_all, want_pager = expected_types(daemon, jobs)
    daemon.start()
    wait_until(
        "serve to deliver what wait recorded",
        lambda: types_by_job(receiver.got("everything")) == want_all
        and types_by_job(receiver.got("pager")) == want_pager,
        30,
    )
    assert daemon.stop() == 0
    delivered = receiver.got("everything") + receiver.got("pager")
    assert sorted(r.event_id for r in delivered) == sorted(r["event_id"] for r in rows)
    assert all(r.signed_ok for r in receiver.got("everything"))
