"""Where `backupjobd healthcheck` probes, and how it reads the answer (pure)."""

from __future__ import annotations

import json

import pytest

from backupjobd.core.healthcheck import ProbeTarget, probe_target, read_answer


@pytest.mark.parametrize(
    ("bind", "host"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "::1"),
        ("0:0::0", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.5", "127.0.0.5"),
        ("::1", "::1"),
        ("10.1.2.3", "10.1.2.3"),
        ("localhost", "localhost"),
    ],
)
def test_tcp_target(bind: str, host: str) -> None:
    assert probe_target(bind, 18089, "", ready=False) == ProbeTarget(
        path="/healthz", host=host, port=18089
    )


def test_ready_probes_readyz() -> None:
    assert probe_target("0.0.0.0", 8080, "", ready=True).path == "/readyz"


def test_unix_socket_wins_over_bind() -> None:
    target = probe_target("0.0.0.0", 8080, "/run/backupjobd/api.sock", ready=False)
    assert target == ProbeTarget(path="/healthz", unix_socket="/run/backupjobd/api.sock")
    assert target.describe() == "unix:/run/backupjobd/api.sock:/healthz"


def test_ipv6_described_with_brackets() -> None:
    assert probe_target("::", 9000, "", ready=False).describe() == "http://[::1]:9000/healthz"


def test_200_is_healthy_with_the_tick_age() -> None:
    target = probe_target("127.0.0.1", 8080, "", ready=False)
    body = json.dumps({"status": "ok", "last_tick_age_seconds": 0.25}).encode()

    verdict = read_answer(target, 200, body)

    assert verdict.healthy
    assert verdict.reason == "http://127.0.0.1:8080/healthz answered 200 (last tick 0.2 s ago)"


def test_503_is_unhealthy_and_names_the_failing_checks() -> None:
    target = probe_target("127.0.0.1", 8080, "", ready=True)
    body = json.dumps(
        {
            "status": "not_ready",
            "checks": {
                "database": {"ok": True, "error": None},
                "credential": {"ok": False, "error": "no answer within 2 s"},
            },
        }
    ).encode()

    verdict = read_answer(target, 503, body)

    assert not verdict.healthy
    assert verdict.reason == (
        "http://127.0.0.1:8080/readyz answered 503 (credential: no answer within 2 s)"
    )


@pytest.mark.parametrize("body", [b"", b"<html>", b"[1]", b"\xff\xfe", b'{"x": 1}'])
def test_any_other_body_is_read_by_status_alone(body: bytes) -> None:
    target = probe_target("127.0.0.1", 8080, "", ready=False)
    assert read_answer(target, 200, body).healthy
    assert read_answer(target, 404, body).reason == "http://127.0.0.1:8080/healthz answered 404"
