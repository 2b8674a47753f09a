"""The real `backupjobd` CLI against hostile data and hostile pipes.

Azure job fields (entityFriendlyName, operation, even status) are whatever someone named a
VM or an item: the text outputs must show them escaped, one table row per job, while JSON
keeps them exact. `register -` must refuse a huge stdin without holding it in memory, a
reader that stops early (`| head -1`) must not get a traceback, and bad `--limit` values
are one-line usage errors.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from tests.acceptance.conftest import BIN, VAULT, Daemon, Emulator, wait_until

# Anything a terminal acts on or a line splitter breaks at; only "\n" ends a line of output.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORGED_ROW = (
    "00000000-0000-0000-0000-000000000000  Completed  finished  Backup  vm-forged"
    "  vault-accept  1  2026-01-01 00:00:00  2026-01-01 00:01:00"
)
ENTITY = "vm\x1b[2J\x1b[H\x1b[31mred\r\n" + FORGED_ROW + "\n\x9b1A\u202egnp.exe\u2028\x7fend\x07"
OPERATION = "Backup\r\n" + FORGED_ROW + "\x1b]0;title\x07"
STATUS = "Completed\x1b[8m\r\nhidden"  # not a known status: the job stays active with it
CLI_TIMEOUT_S = 60


def run(daemon: Daemon, *args: str) -> tuple[int, str, str]:
    """The CLI with bytes checked as strict UTF-8, so no raw byte hides behind decoding."""
    out = subprocess.run(
        [str(BIN), "--config", str(daemon.config_path), *args],
        env=daemon.env,
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return out.returncode, out.stdout.decode("utf-8"), out.stderr.decode("utf-8")


def assert_clean(text: str) -> None:
    found = RAW_CONTROL.search(text)
    assert found is None, f"raw {found.group()!r} in output: {text!r}"


def test_hostile_azure_text_is_escaped_in_every_text_output(
    emulator: Emulator, daemon: Daemon
) -> None:
    hostile, odd_status = emulator.create_jobs(
        [
            {"entity_friendly_name": ENTITY, "operation": OPERATION, "duration_seconds": 1},
            {"entity_friendly_name": "vm-plain", "final_status": STATUS, "duration_seconds": 1},
        ]
    )
    daemon.ok("register", "--job", hostile["id"], "--job", odd_status["id"])
    daemon.start()

    def seen() -> bool:
        by_id = {j["job_id"]: j for j in daemon.jobs()}
        return bool(
            by_id[hostile["job_id"]]["status"] == "Completed"
            and by_id[odd_status["job_id"]]["status"] == STATUS
        )

    wait_until("both jobs to reach their final status", seen, 30)

    # JSON stays exact.
    shown = json.loads(daemon.ok("jobs", "show", hostile["job_id"], "--json"))
    assert (shown["entity_friendly_name"], shown["operation"]) == (ENTITY, OPERATION)

    code, out, err = run(daemon, "jobs", "list")
    assert code == 0, err
    assert_clean(out)
    lines = out.splitlines()  # also splits at \x1c-\x1e, \x85, U+2028: a forged row would show
    assert len(lines) == 1 + 2 + 1, out  # header, one row per job, "2 job(s)"
    assert lines[-1] == "2 job(s)"
    row = next(line for line in lines if line.startswith(hostile["job_id"]))
    assert "vm\\x1b[2J\\x1b[H\\x1b[31mred\\r\\n00000000-" in row
    assert "\\u202egnp.exe\\u2028\\x7fend\\x07" in row
    assert "Backup\\r\\n00000000-" in row
    assert "Completed\\x1b[8m\\r\\nhidden" in out
    assert not any(line.startswith("00000000-") for line in lines)

    code, out, err = run(daemon, "jobs", "show", hostile["job_id"])
    assert code == 0, err
    assert_clean(out)
    # One line per field; error_details (none here) are lines of their own.
    assert shown["error_details"] == []
    assert len(out.splitlines()) == len(shown) - 1, out

    for job in (hostile, odd_status):
        history = daemon.history(job["job_id"])
        code, out, err = run(daemon, "jobs", "history", job["job_id"])
        assert code == 0, err
        assert_clean(out)
        # 3 heading lines, a blank, the transitions table (with its header), a blank,
        # the snapshot count, one line per snapshot.
        expected = 3 + 1 + 1 + len(history["transitions"]) + 1 + 1 + len(history["snapshots"])
        assert len(out.splitlines()) == expected, out

    # wait's own lines: the job with the odd status is still active, so --timeout 0 reports it.
    code, out, err = run(daemon, "wait", odd_status["job_id"], "--timeout", "0")
    assert code == 124, (out, err)
    assert_clean(out)
    assert out.splitlines() == [
        f"job {odd_status['job_id']}: Completed\\x1b[8m\\r\\nhidden"
        " (still running: timed out waiting)"
    ]

    assert_clean(daemon.log_text().replace("\n", " "))


# Runs the command given and writes its peak RSS (KiB) to the file given first. A child's
# ru_maxrss starts from its parent's high-water mark when it execs, so measured straight from
# pytest (hundreds of MiB by then) it would say more about pytest than about the CLI.
PEAK_RSS_LAUNCHER = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[2:]).returncode
with open(sys.argv[1], "w") as out:
    out.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def test_register_refuses_200_mb_on_stdin_without_reading_it_all(
    daemon: Daemon, tmp_path: Path
) -> None:
    daemon.ok("migrate")  # the database exists, so that "nothing stored" can be read below
    total, chunk = 200 * 1000 * 1000, b" " * (1 << 20)
    peak_file = tmp_path / "peak-rss-kib"
    cli = [str(BIN), "--config", str(daemon.config_path), "register", "-"]
    proc = subprocess.Popen(
        [sys.executable, "-c", PEAK_RSS_LAUNCHER, str(peak_file), *cli],
        env=daemon.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # so a hung run can be killed with the CLI under it
    )
    assert proc.stdin is not None
    written = 0

    def feed() -> None:
        nonlocal written
        assert proc.stdin is not None
        try:
            while written < total:
                proc.stdin.write(chunk)
                written += len(chunk)
            proc.stdin.close()
        except BrokenPipeError:  # the CLI stopped reading: the point of the test
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        # Not communicate(): it would write stdin itself; the thread above does.
        code = proc.wait(timeout=CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    writer.join(timeout=CLI_TIMEOUT_S)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.stdout.close()
    proc.stderr.close()

    assert code == 2, (out, err)
    assert out == ""
    assert err == "backupjobd: error: input is larger than 4194304 bytes\n", err
    peak_mib = int(peak_file.read_text()) / 1024  # KiB on Linux
    assert peak_mib < 150, f"register - peaked at {peak_mib:.0f} MiB for 200 MB of stdin"
    assert written < 100 * 1000 * 1000, f"{written} bytes were taken from the pipe"
    assert daemon.jobs() == []


def _register_many(daemon: Daemon, count: int) -> None:
    docs = [{"job_id": str(uuid.uuid4()), "vault_id": VAULT} for _ in range(count)]
    daemon.ok("register", "-", stdin=json.dumps(docs))


def test_a_reader_that_stops_early_gets_no_traceback(daemon: Daemon) -> None:
    _register_many(daemon, 4000)  # ~400 KB of table, ~3 MB of JSON: far past a pipe's buffer
    for extra in ([], ["--json"]):
        cli = subprocess.Popen(
            [str(BIN), "--config", str(daemon.config_path), "jobs", "list", *extra],
            env=daemon.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        head = subprocess.Popen(
            ["head", "-1"], stdin=cli.stdout, stdout=subprocess.PIPE, env=daemon.env
        )
        assert cli.stdout is not None and cli.stderr is not None
        cli.stdout.close()  # only head reads it now, as in `backupjobd jobs list | head -1`
        first, _ = head.communicate(timeout=CLI_TIMEOUT_S)
        err = cli.stderr.read().decode()
        cli.stderr.close()
        code = cli.wait(timeout=CLI_TIMEOUT_S)
        assert first.decode().startswith("[" if extra else "JOB ID"), first
        assert "Traceback" not in err, err
        assert err == "", err
        assert code == 141, (extra, code, err)


def test_bad_limits_are_one_line_usage_errors(daemon: Daemon) -> None:
    _register_many(daemon, 3)
    for bad in ("1e30", "-1", "99999999999999999999", "1000001", "ten", "", "1" * 5000):
        code, out, err = run(daemon, "jobs", "list", "--limit", bad)
        assert code == 2, (bad, code, out, err)
        assert out == "", (bad, out)
        assert "Traceback" not in err, (bad, err)
        assert err.count("\n") == 1 and err.endswith("\n"), (bad, err)
        assert err.startswith("backupjobd jobs list: error: argument --limit:"), (bad, err)
        assert len(err) < 300, (bad, len(err))
    for good, rows in (("0", 0), ("2", 2), ("1000000", 3)):
        code, out, err = run(daemon, "jobs", "list", "--limit", good)
        assert code == 0, (good, err)
        assert out.splitlines()[-1] == f"{rows} job(s)", (good, out)
