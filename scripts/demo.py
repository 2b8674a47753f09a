"""The demo: start the bundled emulator and the daemon, register ~30 short jobs in every
registration form (Recovery Services vault jobs, Backup vault jobs and cross-region
restores), watch them reach their end, then print the table and one job's history.

Run it with `make demo` (which builds the virtual environment first). Everything it
writes goes to ./demo-run/; it stops both processes on the way out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backupjobd.emulator import EmulatorClient, EmulatorProcess, EmulatorStartError

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "demo-run"
BIN = Path(sys.executable).parent / "backupjobd"
VAULT = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo"
    "/providers/Microsoft.RecoveryServices/vaults/vault-demo"
)
BACKUP_VAULT = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-demo"
    "/providers/Microsoft.DataProtection/backupVaults/backupvault-demo"
)
SECONDARY_REGION = "northeurope"
DEADLINE_SECONDS = 90


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise SystemExit(f"demo: gave up waiting for {what} after {timeout:.0f} s")


def cli(*args: str, stdin: str | None = None, env: dict[str, str]) -> str:
    cmd = [str(BIN), "--config", str(RUN / "backupjobd.toml"), *args]
    shown = " ".join(a if len(a) < 60 else a[:57] + "..." for a in args)
    print(f"$ backupjobd {shown}" + (" < document" if stdin else ""))
    out = subprocess.run(cmd, input=stdin, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"demo: backupjobd {args[0]} failed: {out.stderr.strip()}")
    if out.stdout.strip() and args[0] == "register":
        print("  " + out.stdout.strip().replace("\n", "\n  "))
    return out.stdout


def main() -> int:
    RUN.mkdir(exist_ok=True)
    for old in RUN.glob("backupjobd.db*"):
        old.unlink()
    token = "demo-token"
    emulator = EmulatorProcess(
        RUN / "emulator.log", token=token, vault_id=VAULT, executable=BIN, start_timeout=15
    )
    (RUN / "backupjobd.toml").write_text(
        f"""# written by scripts/demo.py
[azure]
management_endpoint = "{emulator.base}"
credential = "static-token"

[database]
url = "sqlite+aiosqlite:///{RUN}/backupjobd.db"

[polling]
interval_seconds = 2
min_interval_seconds = 1
operation_interval_seconds = 1
not_found_grace_seconds = 30
"""
    )
    env = {**os.environ, "BACKUPJOBD_STATIC_TOKEN": token}
    env.pop("BACKUPJOBD_CONFIG", None)
    started = time.monotonic()
    daemon_log = (RUN / "daemon.log").open("w")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        try:
            emulator.start()
        except EmulatorStartError as exc:
            raise SystemExit(f"demo: {exc}") from exc
        print(f"emulator listening on {emulator.base}")
        daemon = subprocess.Popen(
            [str(BIN), "--config", str(RUN / "backupjobd.toml"), "serve"],
            stdout=daemon_log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        print(f"daemon started (pid {daemon.pid}); its log: {RUN / 'daemon.log'}\n")
        register_everything(emulator, env)
        print("\nwaiting for every job to reach its end ...")
        last = ""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            jobs = json.loads(cli_quiet("jobs", "list", "--json", env=env))
            done = sum(1 for j in jobs if j["tracking"] != "active")
            line = f"  {done}/{len(jobs)} finished: " + ", ".join(
                f"{s}={n}" for s, n in sorted(_count(j["status"] or "unseen" for j in jobs).items())
            )
            if line != last:
                print(line)
                last = line
            ops = json.loads(cli_quiet("operations", "list", "--json", env=env))
            if jobs and done == len(jobs) and all(o["tracking"] != "active" for o in ops):
                break
            if time.monotonic() > deadline:
                raise SystemExit("demo: jobs did not finish in time; see demo-run/daemon.log")
            time.sleep(1)
        print()
        print(cli("jobs", "list", env=env))
        failed = next((j for j in jobs if j["status"] == "Failed"), jobs[0])
        print(cli("jobs", "history", failed["job_id"], env=env))
        print(cli("jobs", "list", "--kind", "DataProtection", "-o", "tsv", env=env))
        print(f"demo finished in {time.monotonic() - started:.0f} s; files in {RUN}")
        return 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        emulator.stop(timeout=15)


def cli_quiet(*args: str, env: dict[str, str]) -> str:
    cmd = [str(BIN), "--config", str(RUN / "backupjobd.toml"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout


def register_everything(emulator: EmulatorClient, env: dict[str, str]) -> None:
    """~20 jobs, each form of the brief at least once, with mixed final statuses."""
    finals = ["Completed", "Completed", "CompletedWithWarnings", "Failed", "Completed", "Cancelled"]

    def jobs(n: int, offset: int, **extra: Any) -> list[dict[str, Any]]:
        specs = [
            {
                "final_status": finals[(offset + i) % len(finals)],
                "duration_seconds": 4 + (offset + i) % 9,
                **extra,
            }
            for i in range(n)
        ]
        return emulator.create_jobs(specs)

    print("1. job ARM ids (--job)")
    for job in jobs(5, 0):
        cli("register", "--job", job["id"], env=env)
    print("2. job id plus vault (--job-id --vault), one that Azure answers 404 for a while")
    for job in jobs(4, 5) + jobs(1, 7, not_found_seconds=3):
        cli("register", "--job-id", job["job_id"], "--vault", VAULT, env=env)
    print("3. Azure-AsyncOperation URLs (--operation-url): the daemon resolves the job ids")
    for i in range(3):
        op = _operation(emulator, i, job_count=1)
        cli("register", "--operation-url", op["azure_async_operation"], env=env)
    print("4. a 202 response's headers on stdin (what a trigger-backup call returns)")
    item = (
        f"{VAULT}/backupFabrics/Azure/protectionContainers/"
        "IaasVMContainer;iaasvmcontainerv2;rg-demo;vm-web/protectedItems/"
        "VM;iaasvmcontainerv2;rg-demo;vm-web/backup?api-version=2025-08-01"
    )
    _, trigger_headers, _ = emulator.arm_post(item)
    headers = {
        k: v
        for k, v in trigger_headers.items()
        if k.lower() in ("azure-asyncoperation", "location")
    }
    cli("register", "-", stdin=json.dumps({"headers": headers}), env=env)
    print("5. final operation-status bodies (jobId and jobIds) on stdin, with --vault")
    for count in (1, 2):
        op = _operation(emulator, 3 + count, job_count=count, delay=0.2)
        body = wait_for(
            "the operation to succeed",
            lambda op=op: _succeeded(emulator, op["azure_async_operation"]),
            15,
        )
        cli("register", "-", "--vault", VAULT, stdin=json.dumps(body), env=env)
    print("6. JobResource bodies, as `az backup protection backup-now` prints them (an array)")
    bodies = []
    for job in jobs(2, 9):
        bodies.append(emulator.arm_get(f"{job['id']}?api-version=2025-08-01")[2])
    cli("register", "-", stdin=json.dumps(bodies), env=env)
    print("7. registering a job twice is a no-op that says so")
    cli("register", "--job", bodies[0]["id"], env=env)
    register_other_kinds(emulator, env)


def register_other_kinds(emulator: EmulatorClient, env: dict[str, str]) -> None:
    """A few Backup vault (Microsoft.DataProtection) and cross-region-restore jobs, in each
    of their forms."""

    def created(n: int, vault: str, **extra: Any) -> list[dict[str, Any]]:
        specs = [{"vault_id": vault, "duration_seconds": 5 + 2 * i, **extra} for i in range(n)]
        return emulator.create_jobs(specs)

    print("8. Backup vault jobs: ARM id, job id + Backup vault id, OperationJobExtendedInfo")
    bv = created(2, BACKUP_VAULT) + created(1, BACKUP_VAULT, final_status="Failed")
    cli("register", "--job", bv[0]["id"], "--job", bv[2]["id"], env=env)
    [extra] = created(1, BACKUP_VAULT)
    cli("register", "--job-id", bv[1]["job_id"], "--vault", BACKUP_VAULT, env=env)
    info = {"objectType": "OperationJobExtendedInfo", "jobId": extra["job_id"]}
    cli("register", "-", "--vault", BACKUP_VAULT, stdin=json.dumps(info), env=env)
    print("9. a Backup vault trigger's 202 headers: operationStatus, then operationResults")
    trigger = f"{BACKUP_VAULT}/backupInstances/disk-demo/backup?api-version=2025-07-01"
    _, trigger_headers, _ = emulator.arm_post(trigger)
    headers = {
        k: v
        for k, v in trigger_headers.items()
        if k.lower() in ("azure-asyncoperation", "location")
    }
    cli("register", "-", stdin=json.dumps({"headers": headers}), env=env)
    print("10. cross-region restores: a location-scoped job id, and a trigger's 202 headers")
    crr = created(1, VAULT, region=SECONDARY_REGION) + created(
        1, VAULT, region=SECONDARY_REGION, final_status="Failed"
    )
    cli("register", "--vault", VAULT, "--job", crr[0]["id"], "--job", crr[1]["id"], env=env)
    op = emulator.create_operation(
        vault_id=VAULT, region=SECONDARY_REGION, delay_seconds=1, jobs={"duration_seconds": 6}
    )
    crr_headers = {"Azure-AsyncOperation": op["azure_async_operation"], "Location": op["location"]}
    cli("register", "-", "--vault", VAULT, stdin=json.dumps({"headers": crr_headers}), env=env)


def _operation(
    emulator: EmulatorClient, i: int, job_count: int, delay: float = 1.0
) -> dict[str, Any]:
    finals = ["Completed", "Failed", "CompletedWithWarnings", "Completed", "Completed"]
    return emulator.create_operation(
        delay_seconds=delay,
        job_count=job_count,
        jobs={"final_status": finals[i % len(finals)], "duration_seconds": 5 + i},
    )


def _succeeded(emulator: EmulatorClient, url: str) -> Any:
    body = emulator.arm_get(url)[2]
    return body if body.get("status") == "Succeeded" else None


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


if __name__ == "__main__":
    sys.exit(main())
