"""What the CLI writes: escaped text lines, aligned tables, exact JSON, one-line errors.

Every text (non-JSON) line goes through `printable`: job and entity names come from Azure
and are whatever someone named a VM, so they must not reach the terminal as control codes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO

from backupjobd.core.leases import ReplicaRecord
from backupjobd.core.model import (
    JobRecord,
    OperationRecord,
    OutboxRecord,
    SnapshotRecord,
    TransitionRecord,
    iso,
)
from backupjobd.core.text import json_safe, printable
from backupjobd.errors import BackupJobdError

#: The one word for a job Azure has not shown yet (tables, wait, metrics labels).
UNSEEN = "unseen"
MAX_ERROR_CHARS = 2000  # an error line echoes input; a huge argument must not become a huge line


class OutputError(BackupJobdError):
    """stdout refused the output (a full disk, say); a closed pipe is not an error."""


def say(*lines: str) -> None:
    """Write lines of text output, each escaped: no caller can forget to."""
    write("".join(printable(line) + "\n" for line in lines or [""]))


def write(text: str) -> None:
    """All of `text` or an exception. CPython's BufferedWriter returns early from a write
    larger than its buffer when the pipe's reader leaves mid-way, and TextIOWrapper drops the
    rest silently: `jobs list --json | head -1` would exit 0 with truncated output. So the
    bytes go in below the text layer, in a loop that sees every short write."""
    out = sys.stdout
    if out is None:  # started with stdout closed: there is no one to tell
        return
    try:
        binary: BinaryIO | None = getattr(out, "buffer", None)
        if binary is None:
            out.write(text)
            return
        out.flush()  # anything written through the text layer comes first
        data = memoryview(text.encode(out.encoding, out.errors or "strict"))
        while data:
            data = data[binary.write(data) :]
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def discard_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered goes nowhere, so the interpreter's
    own flush at exit does not fail again and print a traceback of its own."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture stdout)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def flush_stdout() -> None:
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def error_line(message: str, prog: str = "backupjobd") -> str:
    """`prog: error: message` as one escaped, bounded line (messages quote Azure and input)."""
    text = printable(message)
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "…"
    return f"{prog}: error: {text}\n"


def print_json(value: Any) -> None:
    """Exact values; only characters a terminal would act on are spelled as `\\uXXXX`."""
    write(json_safe(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)) + "\n")


def table(headers: list[str], rows: list[list[str]]) -> None:
    """Cells are escaped before widths are measured, so columns stay aligned."""
    lines = [[printable(cell) for cell in line] for line in [headers, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    say(
        *(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )
    )


def jobs_table(jobs: list[JobRecord]) -> None:
    rows = [
        [
            job.job_id,
            job.status or ("not visible yet" if job.not_found_since else UNSEEN),
            job.tracking.value,
            job.operation or "-",
            job.entity_friendly_name or "-",
            job.vault_id.rsplit("/", 1)[-1],
            str(job.poll_count),
            percent(job.progress_percent),
            short(iso(job.start_time)),
            end_cell(job),
            job.vault_kind.value,
            job.region or "-",
        ]
        for job in jobs
    ]
    table(
        [
            *("JOB ID", "STATUS", "TRACKING", "OPERATION", "ENTITY", "VAULT", "POLLS"),
            *("PROGRESS", "START", "END (~ EXPECTED)", "VAULT KIND", "REGION"),
        ],
        rows,
    )
    say(f"{len(jobs)} job(s)")


def job_details(job: JobRecord) -> None:
    """Every field, Azure's errors as lines of their own, and an unseen job's reason."""
    lines = []
    for key, value in job.to_json().items():
        if key == "error_details":
            continue
        if key == "status" and value is None:
            value = seen_state(job)
        lines.append(f"{key + ':':24}{'-' if value is None else value}")
    lines.extend(error_lines(job))
    say(*lines)


def seen_state(job: JobRecord) -> str:
    """What to say of a job's status before Azure showed it: not read yet, or not visible
    yet (Azure answers 404 for a new job for a while) with the reads since."""
    if job.status is not None:
        return job.status
    if job.not_found_since is not None:
        return f"not visible yet, {job.poll_count} reads since {short(iso(job.not_found_since))}"
    return UNSEEN


def error_lines(job: JobRecord, aligned: bool = True) -> list[str]:
    """Azure's errorDetails, one line per error and per recommendation (labels padded to
    the `jobs show` column, or not)."""

    def label(text: str) -> str:
        return f"{text:24}" if aligned else f"{text.strip()} "

    lines = []
    for detail in job.error_details:
        code = f"{detail.code}: " if detail.code else ""
        lines.append(f"{label('error:')}{code}{detail.message}")
        lines.extend(f"{label('  recommendation:')}{r}" for r in detail.recommendations)
    return lines


def job_history(
    job: JobRecord, transitions: list[TransitionRecord], snapshots: list[SnapshotRecord]
) -> None:
    say(
        f"job {job.job_id} ({job.operation or '?'} of {job.entity_friendly_name or '?'})",
        f"vault {job.vault_id}",
        f"status {job.status or '-'}, tracking {job.tracking.value}, {job.poll_count} polls",
        "",
    )
    table(
        ["OBSERVED", "FROM", "TO"],
        [[short(iso(t.observed_at)), t.from_status or "(new)", t.to_status] for t in transitions],
    )
    lines = ["", f"{len(snapshots)} distinct snapshot(s):"]
    for snap in snapshots:
        ext = snap.properties.get("extendedInfo") or {}
        tasks = ext.get("tasksList") or [] if isinstance(ext, dict) else []
        summary = ", ".join(
            f"{t.get('taskId')}={t.get('status')}" for t in tasks if isinstance(t, dict)
        )
        if isinstance(ext, dict) and not tasks:  # a Backup vault job's subTasks
            summary = ", ".join(
                f"{t.get('taskName')}={t.get('taskStatus')}"
                for t in ext.get("subTasks") or []
                if isinstance(t, dict)
            )
        lines.append(f"  {short(iso(snap.observed_at))}  {printable(snap.status):<22} {summary}")
    say(*lines)


def dead_letters_table(dead: list[OutboxRecord]) -> None:
    rows = [
        [
            r.event_id,
            r.webhook,
            r.event_type.rsplit(".", 1)[-1],
            str(r.attempts),
            short(iso(r.created_at)),
            r.last_error or "-",
        ]
        for r in dead
    ]
    table(["EVENT ID", "WEBHOOK", "EVENT", "ATTEMPTS", "CREATED", "LAST ERROR"], rows)
    say(f"{len(dead)} dead letter(s)")


def operations_table(ops: list[OperationRecord]) -> None:
    rows = [
        [
            op.operation_id,
            op.status or "-",
            op.tracking.value,
            ",".join(op.job_ids) or "-",
            str(op.poll_count),
            op.vault_id.rsplit("/", 1)[-1],
        ]
        for op in ops
    ]
    table(["OPERATION", "STATUS", "TRACKING", "JOBS", "POLLS", "VAULT"], rows)


def replicas_table(replicas: list[ReplicaRecord]) -> None:
    """One row per replica: what it polls and, per subscription, the rate it learned."""
    rows = []
    for r in replicas:
        rates = {str(b.get("subscription_id")): b.get("rate") for b in r.budgets}
        owns = ", ".join(f"{s} ({_rate(rates.get(s))})" for s in r.owns) or "-"
        rows.append([r.instance_id[:12], f"{r.hostname}:{r.pid}", short(iso(r.started_at)), owns])
    table(["REPLICA", "HOST:PID", "STARTED", "POLLS SUBSCRIPTIONS (LEARNED READS/S)"], rows)
    say(f"{len(replicas)} replica(s)")


def _rate(value: object) -> str:
    return f"{value:.1f}/s" if isinstance(value, int | float) else "-"


def end_cell(job: JobRecord) -> str:
    """Azure's end time, else the expected one marked `~`."""
    if job.end_time is None and job.expected_end_at is not None:
        return "~" + short(iso(job.expected_end_at))
    return short(iso(job.end_time))


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def short(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"
