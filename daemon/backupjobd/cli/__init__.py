"""The `backupjobd` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input,
141 stdout closed early (`| head`).

Every text (non-JSON) line goes through `printable`: job and entity names come from Azure
and are whatever someone named a VM, so they must not reach the terminal as control codes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, NoReturn, TextIO

from backupjobd import __version__, bootstrap, config
from backupjobd.adapters import logs
from backupjobd.core import azure, registration
from backupjobd.core.model import JobRecord, iso
from backupjobd.core.registration import Registration
from backupjobd.core.text import json_safe, printable
from backupjobd.errors import BackupJobdError, ConfigError, InvalidInput
from backupjobd.service import waiter
from backupjobd.store import Store

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_STDOUT_CLOSED = 128 + 13  # what a shell shows for a program killed by SIGPIPE
MAX_LIST_LIMIT = 1_000_000
# A registration waits this long in all for a database that other writers hold locked.
REGISTER_RETRY_SECONDS = 60.0
MAX_ERROR_CHARS = 2000  # an error line echoes input; a huge argument must not become a huge line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, like every other refusal: scripts read the last line of stderr."""
        self.exit(EXIT_USAGE, _error_line(f"{message} (see {self.prog} --help)", self.prog))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backupjobd", description="Track Azure Backup jobs until they finish.")
    parser.add_argument("--config", metavar="FILE", help="TOML config (default $BACKUPJOBD_CONFIG)")
    parser.add_argument("--version", action="version", version=f"backupjobd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("serve", help="run the daemon in the foreground (logs to stderr)")
    sub.add_parser("migrate", help="bring the database schema to head")

    reg = sub.add_parser("register", help="start tracking jobs or operations")
    reg.add_argument("stdin", nargs="?", choices=["-"], help="read JSON document(s) from stdin")
    reg.add_argument("--job-id", action="append", default=[], metavar="ID", help="job GUID")
    reg.add_argument("--vault", metavar="VAULT_ID", help="vault ARM id for --job-id or bodies")
    reg.add_argument("--operation-url", action="append", default=[], metavar="URL")
    reg.add_argument("--job", action="append", default=[], metavar="ARM_ID", help="job ARM id")
    reg.add_argument("--json", action="store_true", help="print results as JSON")

    jobs = sub.add_parser("jobs", help="inspect tracked jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    lst = jobs_sub.add_parser("list", help="list tracked jobs")
    lst.add_argument("--status", help="an Azure status, or active / finished / lost")
    lst.add_argument("--limit", type=_limit, help=f"at most this many jobs (<= {MAX_LIST_LIMIT})")
    lst.add_argument("--stuck", action="store_true", help="only jobs flagged stuck")
    lst.add_argument("--json", action="store_true")
    for name, text in (("show", "one job's current state"), ("history", "transitions, snapshots")):
        cmd = jobs_sub.add_parser(name, help=text)
        cmd.add_argument("job_id", metavar="JOB_ID", help="job GUID or job ARM id")
        cmd.add_argument("--vault", metavar="VAULT_ID", help="when the GUID is in several vaults")
        cmd.add_argument("--json", action="store_true")

    wait = sub.add_parser(
        "wait",
        help="block until jobs are terminal (exit 0 Completed, 3 CompletedWithWarnings, "
        "4 Failed, 5 Cancelled, 6 lost, 124 timeout; the worst of several)",
    )
    wait.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="job GUID or job ARM id")
    wait.add_argument("--vault", metavar="VAULT_ID", help="vault of GUIDs (tracks them if new)")
    wait.add_argument("--timeout", type=_seconds, metavar="S", help="give up after S seconds")
    wait.add_argument("--json", action="store_true", help="print the final jobs as JSON")

    cancel = sub.add_parser("cancel", help="ask Azure to cancel a tracked job")
    cancel.add_argument("job_id", metavar="JOB_ID", help="job GUID or job ARM id")
    cancel.add_argument("--vault", metavar="VAULT_ID", help="when the GUID is in several vaults")
    cancel.add_argument(
        "--follow",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="follow Azure's 202 for at most S seconds (default 60)",
    )

    notify = sub.add_parser("notify", help="webhook deliveries")
    notify_sub = notify.add_subparsers(dest="notify_command", required=True, parser_class=_Parser)
    failed = notify_sub.add_parser("failed", help="list dead letters (deliveries given up)")
    failed.add_argument("--json", action="store_true")
    notify_sub.add_parser("retry", help="give every dead letter a fresh set of attempts")

    ops = sub.add_parser("operations", help="inspect operations waiting to name their jobs")
    ops_sub = ops.add_subparsers(dest="operations_command", required=True, parser_class=_Parser)
    ops_list = ops_sub.add_parser("list", help="list registered operations")
    ops_list.add_argument("--json", action="store_true")

    emu = sub.add_parser("emulator", help="run the bundled Azure Backup jobs API emulator")
    emu.add_argument("--port", type=_port, default=8443)
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--token", help="accept only this bearer token (default: any)")
    emu.add_argument("--read-burst", type=int, metavar="N", help="per-subscription read budget")
    emu.add_argument("--read-refill", type=float, default=25.0, metavar="R", help="reads/s back")
    emu.add_argument(
        "--replay", action="append", default=[], metavar="FILE", help="serve this recording"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code.

    When stdout is closed early (`backupjobd jobs list | head -1`) the command stops quietly
    with exit 141, 128 + SIGPIPE, the status a shell already shows for any program whose
    reader went away, and writes nothing to stderr: the reader asked for less, nothing failed.
    """
    try:
        try:
            return _main(argv)
        finally:
            _flush_stdout()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_STDOUT_CLOSED
    except _OutputError as exc:
        sys.stderr.write(_error_line(str(exc)))
        return EXIT_FAILURE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    try:
        if args.command == "emulator":
            return _run_emulator(args)
        cfg = config.load(config.resolve_path(args.config, env), env)
        logs.configure(cfg.log.level, cfg.log.format)
        if args.command == "serve":
            return asyncio.run(bootstrap.serve(cfg, env))
        return asyncio.run(_dispatch(args, cfg, env))
    except _OutputError:
        raise
    except (InvalidInput, ConfigError) as exc:
        sys.stderr.write(_error_line(str(exc)))
        return EXIT_USAGE
    except BackupJobdError as exc:
        sys.stderr.write(_error_line(str(exc)))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


class _OutputError(BackupJobdError):
    """stdout refused the output (a full disk, say); a closed pipe is not an error."""


def _say(*lines: str) -> None:
    """Write lines of text output, each escaped: no caller can forget to."""
    _write("".join(printable(line) + "\n" for line in lines or [""]))


def _write(text: str) -> None:
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
        raise _OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def _discard_stdout() -> None:
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


def _flush_stdout() -> None:
    if sys.stdout is None:
        return
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def _error_line(message: str, prog: str = "backupjobd") -> str:
    """`prog: error: message` as one escaped, bounded line (messages quote Azure and input)."""
    text = printable(message)
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "…"
    return f"{prog}: error: {text}\n"


async def _dispatch(args: argparse.Namespace, cfg: config.Config, env: Mapping[str, str]) -> int:
    if args.command == "register":
        regs = _registrations(args, cfg, sys.stdin)
    store = await bootstrap.open_store(cfg, read_only=_reads_only(args))
    try:
        if args.command == "migrate":
            _say("database schema is at head")
            return EXIT_OK
        if args.command == "register":
            return await _register(store, regs, args.json)
        if args.command == "operations":
            return await _operations(store, args.json)
        if args.command == "wait":
            return await _wait(args, cfg, env, store)
        if args.command == "notify":
            return await _notify(args, store)
        if args.command == "cancel":
            job = await _one_job(store, args.job_id, args.vault)
            async with bootstrap.arm_client(cfg, env) as arm:
                outcome = await arm.cancel_job(
                    azure.vault_from_id(job.vault_id), job.job_id, follow_seconds=args.follow
                )
            _say(f"cancel of job {job.job_id} {outcome}; its status follows in the history")
            return EXIT_OK
        if args.jobs_command == "list":
            jobs = await store.list_jobs(status=args.status, limit=args.limit, stuck=args.stuck)
            if args.json:
                _print_json([job.to_json() for job in jobs])
            else:
                _print_table(jobs)
            return EXIT_OK
        job = await _one_job(store, args.job_id, args.vault)
        if args.jobs_command == "show":
            if args.json:
                _print_json(job.to_json())
            else:
                _print_job(job)
            return EXIT_OK
        transitions, snapshots = await store.history(job.pk)
        if args.json:
            _print_json(
                {
                    "job": job.to_json(),
                    "transitions": [t.to_json() for t in transitions],
                    "snapshots": [s.to_json() for s in snapshots],
                }
            )
        else:
            _print_history(job, transitions, snapshots)
        return EXIT_OK
    finally:
        await store.close()


def _reads_only(args: argparse.Namespace) -> bool:
    """Commands that only read open the database read-only: they work on a read-only mount
    and never create an empty database where the configured one is missing."""
    if args.command in ("jobs", "operations", "cancel"):
        return True
    return bool(args.command == "notify" and args.notify_command == "failed")


def _registrations(
    args: argparse.Namespace, cfg: config.Config, stdin: TextIO | None
) -> list[Registration]:
    """Everything given on the command line, validated before anything is stored."""
    endpoint = bootstrap.management_endpoint(cfg)
    vault = azure.vault_from_id(args.vault) if args.vault else None
    regs: list[Registration] = []
    if args.stdin == "-":
        docs = registration.parse_json_documents(_read_document(stdin))
        regs.extend(registration.parse_documents(docs, endpoint, vault))
    for job_id in args.job_id:
        if vault is None:
            raise InvalidInput("--job-id needs --vault")
        regs.append(registration.JobRegistration(vault, azure.validate_job_id(job_id), "job-id"))
    for url in args.operation_url:
        regs.append(registration.operation_from_url(url, endpoint, "operation-url"))
    for arm_id in args.job:
        regs.append(registration.job_from_arm_id(arm_id))
    if not regs:
        raise InvalidInput(
            "nothing to register: give -, --job-id/--vault, --operation-url or --job"
        )
    return registration.dedupe(regs)


def _read_document(stdin: TextIO | None) -> str:
    """stdin, refused once it passes the size limit without reading on (200 MB piped in must
    not become 200 MB, and more, in memory)."""
    limit = registration.MAX_DOCUMENT_BYTES
    too_large = InvalidInput(f"input is larger than {limit} bytes")
    if stdin is None:
        raise InvalidInput("stdin is closed: nothing to read for -")
    raw: BinaryIO | None = getattr(stdin, "buffer", None)
    if raw is None:  # a text stream with no bytes below it; a character is at least a byte
        text = stdin.read(limit + 1)
        if len(text) > limit:
            raise too_large
        return text
    data = raw.read(limit + 1)
    if len(data) > limit:
        raise too_large
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input is not valid UTF-8 (at byte {exc.start})") from None


async def _register(store: Store, regs: list[Registration], as_json: bool) -> int:
    results = await bootstrap.retry_transient(
        lambda: store.register(regs, bootstrap.utcnow()), "registering", REGISTER_RETRY_SECONDS
    )
    if as_json:
        _print_json([dataclasses.asdict(r) for r in results])
        return EXIT_OK
    for r in results:
        vault = r.vault_id.rsplit("/", 1)[-1]
        if r.kind == "job":
            verb = "registered" if r.created else "already tracked:"
            _say(f"{verb} job {r.ident} in vault {vault}")
        elif r.created:
            _say(f"registered operation {r.ident} in vault {vault}: jobs follow once it names them")
        else:
            _say(f"already tracked: operation {r.ident} in vault {vault}")
    return EXIT_OK


async def _notify(args: argparse.Namespace, store: Store) -> int:
    if args.notify_command == "retry":
        count = await store.outbox_requeue_dead(bootstrap.utcnow())
        _say(f"requeued {count} dead letter(s)")
        return EXIT_OK
    dead = await store.outbox_list("dead")
    if args.json:
        _print_json([record.to_json() for record in dead])
        return EXIT_OK
    rows = [
        [
            r.event_id,
            r.webhook,
            r.event_type.rsplit(".", 1)[-1],
            str(r.attempts),
            _short(iso(r.created_at)),
            r.last_error or "-",
        ]
        for r in dead
    ]
    _table(["EVENT ID", "WEBHOOK", "EVENT", "ATTEMPTS", "CREATED", "LAST ERROR"], rows)
    _say(f"{len(dead)} dead letter(s)")
    return EXIT_OK


async def _operations(store: Store, as_json: bool) -> int:
    ops = await store.list_operations()
    if as_json:
        _print_json([op.to_json() for op in ops])
        return EXIT_OK
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
    _table(["OPERATION", "STATUS", "TRACKING", "JOBS", "POLLS", "VAULT"], rows)
    return EXIT_OK


async def _one_job(store: Store, job_ref: str, vault_arg: str | None) -> JobRecord:
    vault: azure.VaultRef | None
    if "/" in job_ref:
        vault, job_id = azure.parse_job_arm_id(job_ref)
    else:
        job_id = azure.validate_job_id(job_ref)
        vault = azure.vault_from_id(vault_arg) if vault_arg else None
    found = await store.find_jobs(job_id)
    if vault is not None:
        found = [j for j in found if j.vault_id.lower() == vault.key]
    if not found:
        raise InvalidInput(f"job {job_id} is not tracked")
    if len(found) > 1:
        raise InvalidInput(f"job {job_id} is tracked in {len(found)} vaults: give --vault")
    return found[0]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {_quote(text)}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {_quote(text)}")
    return value


def _limit(text: str) -> int:
    """A whole number the database can take: SQLite reads a negative LIMIT as "no limit",
    PostgreSQL refuses it, and neither takes more than 64 bits."""
    return _bounded_int(text, 0, MAX_LIST_LIMIT)


def _port(text: str) -> int:
    return _bounded_int(text, 0, 65535)


def _bounded_int(text: str, low: int, high: int) -> int:
    refusal = argparse.ArgumentTypeError(f"not a whole number from {low} to {high}: {_quote(text)}")
    try:
        value = int(text)
    except ValueError:  # also digits past Python's int conversion limit
        raise refusal from None
    if not low <= value <= high:
        raise refusal
    return value


def _quote(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}…"


async def _wait(
    args: argparse.Namespace, cfg: config.Config, env: Mapping[str, str], store: Store
) -> int:
    vault = azure.vault_from_id(args.vault) if args.vault else None
    targets = []
    for ref in args.job_ids:
        if "/" in ref:
            job_vault, job_id = azure.parse_job_arm_id(ref)
            targets.append(waiter.Target(job_vault, job_id))
        else:
            targets.append(waiter.Target(vault, azure.validate_job_id(ref)))
    code, jobs = await waiter.wait(
        store,
        targets,
        args.timeout,
        own_tracker=lambda: bootstrap.tracker_for(cfg, env, store),
        now=bootstrap.utcnow,
        liveness_window=bootstrap.LIVENESS_WINDOW,
    )
    if args.json:
        _print_json([job.to_json() for job in jobs])
    else:
        for job in jobs:
            outcome = waiter.outcome_code(job)
            state = job.tracking.value if job.tracking.value == "lost" else job.status or "unseen"
            suffix = "" if outcome is not None else " (still running: timed out waiting)"
            _say(f"job {job.job_id}: {state}{suffix}")
    if code == waiter.EXIT_TIMEOUT:
        _flush_stdout()  # the jobs first, then why they are incomplete
        print(
            f"backupjobd: timed out after {args.timeout:g} s waiting for "
            f"{sum(1 for j in jobs if waiter.outcome_code(j) is None)} job(s)",
            file=sys.stderr,
        )
    return code


def _print_json(value: Any) -> None:
    """Exact values; only characters a terminal would act on are spelled as `\\uXXXX`."""
    _write(json_safe(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)) + "\n")


def _print_table(jobs: list[JobRecord]) -> None:
    rows = [
        [
            job.job_id,
            job.status or "-",
            job.tracking.value,
            job.operation or "-",
            job.entity_friendly_name or "-",
            job.vault_id.rsplit("/", 1)[-1],
            str(job.poll_count),
            _short(iso(job.start_time)),
            _short(iso(job.end_time)),
        ]
        for job in jobs
    ]
    _table(
        ["JOB ID", "STATUS", "TRACKING", "OPERATION", "ENTITY", "VAULT", "POLLS", "START", "END"],
        rows,
    )
    _say(f"{len(jobs)} job(s)")


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Cells are escaped before widths are measured, so columns stay aligned."""
    lines = [[printable(cell) for cell in line] for line in [headers, *rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    _say(
        *(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines
        )
    )


def _print_job(job: JobRecord) -> None:
    _say(*(f"{key + ':':24}{'-' if v is None else v}" for key, v in job.to_json().items()))


def _print_history(job: JobRecord, transitions: list[Any], snapshots: list[Any]) -> None:
    _say(
        f"job {job.job_id} ({job.operation or '?'} of {job.entity_friendly_name or '?'})",
        f"vault {job.vault_id}",
        f"status {job.status or '-'}, tracking {job.tracking.value}, {job.poll_count} polls",
        "",
    )
    _table(
        ["OBSERVED", "FROM", "TO"],
        [[_short(iso(t.observed_at)), t.from_status or "(new)", t.to_status] for t in transitions],
    )
    lines = ["", f"{len(snapshots)} distinct snapshot(s):"]
    for snap in snapshots:
        ext = snap.properties.get("extendedInfo") or {}
        tasks = ext.get("tasksList") or [] if isinstance(ext, dict) else []
        summary = ", ".join(
            f"{t.get('taskId')}={t.get('status')}" for t in tasks if isinstance(t, dict)
        )
        lines.append(f"  {_short(iso(snap.observed_at))}  {printable(snap.status):<22} {summary}")
    _say(*lines)


def _short(value: str | None) -> str:
    return value[:19].replace("T", " ") if value else "-"


def _run_emulator(args: argparse.Namespace) -> int:
    from backupjobd.emulator.server import run_emulator

    logs.configure("INFO", "text")
    try:
        asyncio.run(
            run_emulator(
                args.host,
                args.port,
                required_token=args.token,
                replay_files=args.replay,
                read_burst=args.read_burst,
                read_refill_per_second=args.read_refill,
            )
        )
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # a recording that cannot be loaded, a bad budget
        sys.stderr.write(_error_line(str(exc)))
        return EXIT_USAGE
    except OSError as exc:
        sys.stderr.write(_error_line(f"emulator cannot listen on {args.host}:{args.port}: {exc}"))
        return EXIT_FAILURE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
