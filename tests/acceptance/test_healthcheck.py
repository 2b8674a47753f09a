"""`backupjobd healthcheck` against a real `serve` configured as in the image (0.0.0.0, a
token) on a non-default port: the probe follows the config, so the container is healthy
exactly while that daemon answers."""

from __future__ import annotations

import subprocess

from tests.acceptance.conftest import Daemon, free_port, wait_until


def test_healthcheck_follows_the_configured_port(daemon: Daemon) -> None:
    port = free_port()
    daemon.env.update(
        {
            "BACKUPJOBD_API__ENABLED": "true",
            "BACKUPJOBD_API__BIND": "0.0.0.0",
            "BACKUPJOBD_API__PORT": str(port),
            "BACKUPJOBD_API_TOKEN": "healthcheck-acceptance-token-0123456789",
        }
    )
    daemon.start()

    healthy: subprocess.CompletedProcess[str] = wait_until(
        "healthcheck to pass",
        lambda: next((r for r in [daemon.cli("healthcheck")] if r.returncode == 0), None),
        timeout=30,
    )
    assert healthy.stdout.startswith(f"healthy: http://127.0.0.1:{port}/healthz answered 200")
    ready = daemon.cli("healthcheck", "--ready")
    assert ready.returncode == 0, ready.stderr

    daemon.env["BACKUPJOBD_API__PORT"] = str(free_port())
    elsewhere = daemon.cli("healthcheck")
    assert elsewhere.returncode == 1
    assert "Connection refused" in elsewhere.stderr

    daemon.env["BACKUPJOBD_API__PORT"] = str(port)
    assert daemon.stop() == 0
    stopped = daemon.cli("healthcheck")
    assert stopped.returncode == 1, stopped.stdout
