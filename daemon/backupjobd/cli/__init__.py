"""The `backupjobd` command line. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input,
141 stdout closed early (`| head`).

Each subcommand's parser is built by its own `configure_<command>_parser`, which names the
function that runs it with `set_defaults(func=...)` (the functions are in `commands`, the
output in `render`). Nothing here imports aiohttp, APScheduler or the HTTP API: a read
command starts with only what it reads the database with.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from backupjobd import __version__
from backupjobd.cli import commands
from backupjobd.cli.output import add_output_options, check_query
from backupjobd.cli.render import OutputError, discard_stdout, error_line, flush_stdout
from backupjobd.core import azure
from backupjobd.errors import BackupJobdError, ConfigError, InvalidInput

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = commands.EXIT_OK, commands.EXIT_FAILURE, commands.EXIT_USAGE
EXIT_STDOUT_CLOSED = 128 + 13  # what a shell shows for a program killed by SIGPIPE
EXIT_INTERRUPTED = 130
MAX_LIST_LIMIT = 1_000_000


class _Parser(argparse.ArgumentParser):
    """One-line errors, and an epilog (examples, exit codes) printed as written."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """One line, like every other refusal: scripts read the last line of stderr."""
        self.exit(EXIT_USAGE, error_line(f"{message} (see {self.prog} --help)", self.prog))


if TYPE_CHECKING:
    _Subparsers = argparse._SubParsersAction[_Parser]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="backupjobd", description="Track Azure Backup jobs until they finish.")
    parser.add_argument("--config", metavar="FILE", help="TOML config (default $BACKUPJOBD_CONFIG)")
    parser.add_argument("--version", action="version", version=f"backupjobd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    configure_serve_parser(sub)
    configure_migrate_parser(sub)
    configure_register_parser(sub)
    configure_jobs_parser(sub)
    configure_wait_parser(sub)
    configure_top_parser(sub)
    configure_cancel_parser(sub)
    configure_notify_parser(sub)
    configure_operations_parser(sub)
    configure_replicas_parser(sub)
    configure_config_parser(sub)
    configure_completion_parser(sub)
    configure_healthcheck_parser(sub)
    configure_emulator_parser(sub)
    return parser


def configure_serve_parser(sub: _Subparsers) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the daemon in the foreground (logs to stderr)",
        epilog=_examples(
            "backupjobd --config /etc/backupjobd/backupjobd.toml serve",
            "BACKUPJOBD_DATABASE__URL=postgresql+asyncpg://… backupjobd serve  # one replica",
        ),
    )
    serve.set_defaults(func=commands.serve)


def configure_migrate_parser(sub: _Subparsers) -> None:
    migrate = sub.add_parser(
        "migrate",
        help="bring the database schema to head",
        epilog=_examples("backupjobd --config /etc/backupjobd/backupjobd.toml migrate"),
    )
    migrate.set_defaults(func=commands.migrate)


def configure_register_parser(sub: _Subparsers) -> None:
    reg = sub.add_parser(
        "register",
        help="start tracking jobs or operations",
        epilog=_examples(
            "az backup protection backup-now … | backupjobd register -",
            "backupjobd register --job /subscriptions/…/vaults/v1/backupJobs/0b5b2c1e-…",
            "backupjobd register --job-id 0b5b2c1e-… --vault /subscriptions/…/vaults/v1",
            'backupjobd register --operation-url "$ASYNC_OP_URL" --wait --timeout 7200',
            'echo \'{"headers": {"Azure-AsyncOperation": "https://…"}}\' | backupjobd register -',
        ),
    )
    reg.add_argument("stdin", nargs="?", choices=["-"], help="read JSON document(s) from stdin")
    reg.add_argument("--job-id", action="append", default=[], metavar="ID", help="job GUID")
    reg.add_argument("--vault", metavar="VAULT_ID", help="vault ARM id for --job-id or bodies")
    reg.add_argument("--operation-url", action="append", default=[], metavar="URL")
    reg.add_argument("--job", action="append", default=[], metavar="ARM_ID", help="job ARM id")
    reg.add_argument("--json", action="store_true", help="print results as JSON")
    reg.add_argument(
        "--wait",
        action="store_true",
        help="then wait for what was registered, as `wait` does (its exit codes)",
    )
    reg.add_argument(
        "--timeout", type=_seconds, metavar="S", help="with --wait: give up after S seconds"
    )
    add_quiet_option(reg)
    reg.set_defaults(func=commands.register)


def add_quiet_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="while waiting, show nothing on stderr (by default: a live line per job on a"
        " terminal, a line per status or progress change elsewhere)",
    )


def configure_top_parser(sub: _Subparsers) -> None:
    top = sub.add_parser(
        "top",
        help="a live view of the jobs in flight (progress, elapsed, expected end, stuck and"
        " overdue flags) and the failures of the last 24 hours",
        description="Redraws from the database every --interval seconds until Ctrl-C. It"
        " reads only: run it anywhere the database is reachable, with or without a daemon.",
        epilog=_examples(
            "backupjobd top",
            "backupjobd top --vault /subscriptions/…/vaults/v1 --interval 5",
            "backupjobd top --once > status.txt",
        ),
    )
    top.add_argument("--vault", metavar="VAULT_ID", help="only this vault's jobs")
    top.add_argument(
        "--interval",
        type=_positive_seconds,
        default=2.0,
        metavar="S",
        help="seconds between refreshes (default 2)",
    )
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.set_defaults(func=commands.top)


def configure_jobs_parser(sub: _Subparsers) -> None:
    jobs = sub.add_parser("jobs", help="inspect tracked jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, parser_class=_Parser)
    lst = jobs_sub.add_parser(
        "list",
        help="list tracked jobs",
        epilog=_examples(
            "backupjobd jobs list --status failed --since 1d",
            "backupjobd jobs list --vault /subscriptions/…/vaults/v1 --operation Restore -o tsv",
            "backupjobd jobs list --query \"[?status=='InProgress'].entity_friendly_name\"",
            "backupjobd jobs list --stuck -o yaml",
            "backupjobd jobs list --kind DataProtection --status Started",
        ),
    )
    lst.add_argument(
        "--status",
        type=_status,
        help="an Azure status (InProgress, Completed, Failed …) or active / finished / lost /"
        " stopped, case-insensitive",
    )
    lst.add_argument("--limit", type=_limit, help=f"at most this many jobs (<= {MAX_LIST_LIMIT})")
    lst.add_argument("--stuck", action="store_true", help="only jobs flagged stuck")
    lst.add_argument("--vault", metavar="VAULT_ID", help="only the jobs of this vault")
    lst.add_argument("--operation", metavar="NAME", help="only this operation (Backup, Restore …)")
    lst.add_argument(
        "--kind",
        type=_kind,
        help="only this kind: RecoveryServices (vault jobs), DataProtection (Backup vault"
        " jobs) or CrossRegionRestore (read in the secondary region), case-insensitive",
    )
    lst.add_argument(
        "--since", type=_when, metavar="TIME", help="registered at or after TIME (ISO or 2h, 3d)"
    )
    lst.add_argument("--until", type=_when, metavar="TIME", help="registered at or before TIME")
    add_output_options(lst)
    lst.set_defaults(func=commands.jobs_list)
    for name, text, func in (
        ("show", "one job's current state", commands.jobs_show),
        ("history", "transitions, snapshots", commands.jobs_history),
    ):
        cmd = jobs_sub.add_parser(
            name,
            help=text,
            epilog=_examples(
                f"backupjobd jobs {name} 0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e",
                f"backupjobd jobs {name} /subscriptions/…/vaults/v1/backupJobs/0b5b2c1e-… -o json",
                "backupjobd jobs show 0b5b2c1e-… --query error_details"
                if name == "show"
                else "backupjobd jobs history 0b5b2c1e-… --query 'transitions[].to_status'",
            ),
        )
        cmd.add_argument("job_id", metavar="JOB_ID", help="job GUID or job ARM id")
        cmd.add_argument("--vault", metavar="VAULT_ID", help="when the GUID is in several vaults")
        add_output_options(cmd)
        cmd.set_defaults(func=func)


def configure_wait_parser(sub: _Subparsers) -> None:
    wait = sub.add_parser(
        "wait",
        help="block until jobs are terminal (exit 0 Completed, 3 CompletedWithWarnings, "
        "4 Failed, 5 Cancelled, 6 lost, 124 timeout; the worst of several)",
        description="Block until every job is terminal. With no daemon running (no heartbeat"
        " in the last 9 s) it polls the jobs itself and records what it sees.",
        epilog=_examples(
            "backupjobd wait 0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
            " --vault /subscriptions/…/vaults/v1",
            "backupjobd wait /subscriptions/…/vaults/v1/backupJobs/0b5b2c1e-… --timeout 7200",
        )
        + "\n\nexit codes (several jobs: the worst of them):\n"
        "  0    Completed\n"
        "  3    CompletedWithWarnings\n"
        "  4    Failed\n"
        "  5    Cancelled\n"
        "  6    lost (Azure never showed the job)\n"
        "  1    runtime failure (database, Azure unreachable)\n"
        "  2    bad usage or input\n"
        "  124  --timeout passed (the jobs stay tracked)",
    )
    wait.add_argument("job_ids", nargs="+", metavar="JOB_ID", help="job GUID or job ARM id")
    wait.add_argument("--vault", metavar="VAULT_ID", help="vault of GUIDs (tracks them if new)")
    wait.add_argument("--timeout", type=_seconds, metavar="S", help="give up after S seconds")
    wait.add_argument("--json", action="store_true", help="print the final jobs as JSON")
    add_quiet_option(wait)
    wait.set_defaults(func=commands.wait)


def configure_cancel_parser(sub: _Subparsers) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="ask Azure to cancel a tracked job",
        epilog=_examples(
            "backupjobd cancel 0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e",
            "backupjobd cancel /subscriptions/…/vaults/v1/backupJobs/0b5b2c1e-… --follow 0",
        ),
    )
    cancel.add_argument("job_id", metavar="JOB_ID", help="job GUID or job ARM id")
    cancel.add_argument("--vault", metavar="VAULT_ID", help="when the GUID is in several vaults")
    cancel.add_argument(
        "--follow",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="follow Azure's 202 for at most S seconds (default 60)",
    )
    cancel.set_defaults(func=commands.cancel)


def configure_notify_parser(sub: _Subparsers) -> None:
    notify = sub.add_parser("notify", help="webhook deliveries")
    notify_sub = notify.add_subparsers(dest="notify_command", required=True, parser_class=_Parser)
    failed = notify_sub.add_parser(
        "failed",
        help="list dead letters (deliveries given up)",
        epilog=_examples("backupjobd notify failed -o json", "backupjobd notify retry"),
    )
    add_output_options(failed)
    failed.set_defaults(func=commands.notify_failed)
    retry = notify_sub.add_parser(
        "retry",
        help="give every dead letter a fresh set of attempts",
        epilog=_examples("backupjobd notify failed && backupjobd notify retry"),
    )
    retry.set_defaults(func=commands.notify_retry)


def configure_replicas_parser(sub: _Subparsers) -> None:
    replicas = sub.add_parser(
        "replicas",
        help="list the live serve replicas, the subscriptions each polls and the read"
        " budget each learned",
        epilog=_examples(
            "backupjobd replicas",
            "backupjobd replicas --query '[].budgets[].rate' -o tsv",
        ),
    )
    add_output_options(replicas)
    replicas.set_defaults(func=commands.replicas)


def configure_config_parser(sub: _Subparsers) -> None:
    cfg = sub.add_parser("config", help="the effective configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True, parser_class=_Parser)
    show = cfg_sub.add_parser(
        "show",
        help="every key's value and where it came from (file, environment, default);"
        " secrets only as set or unset",
        epilog=_examples(
            "backupjobd --config /etc/backupjobd/backupjobd.toml config show",
            "backupjobd config show --query '\"database.url\"' -o json",
        ),
    )
    add_output_options(show)
    show.set_defaults(func=commands.config_show)


def configure_completion_parser(sub: _Subparsers) -> None:
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        epilog=_examples(
            "backupjobd completion bash > /etc/bash_completion.d/backupjobd",
            'backupjobd completion zsh > "${fpath[1]}/_backupjobd"',
        ),
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(func=_completion)


def _completion(args: argparse.Namespace, env: Any) -> int:
    """shtab writes the script from this very parser, so it never drifts from the CLI."""
    import shtab

    from backupjobd.cli.render import write

    write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def configure_operations_parser(sub: _Subparsers) -> None:
    ops = sub.add_parser("operations", help="inspect operations waiting to name their jobs")
    ops_sub = ops.add_subparsers(dest="operations_command", required=True, parser_class=_Parser)
    ops_list = ops_sub.add_parser(
        "list",
        help="list registered operations",
        epilog=_examples(
            "backupjobd operations list",
            "backupjobd operations list --query \"[?status=='Failed']\" -o json",
        ),
    )
    add_output_options(ops_list)
    ops_list.set_defaults(func=commands.operations_list)


def configure_healthcheck_parser(sub: _Subparsers) -> None:
    check = sub.add_parser(
        "healthcheck",
        help="probe the running daemon's /healthz where the config puts the API (exit 0"
        " healthy, 1 not)",
        description="GET /healthz (or /readyz) of the `serve` that this config describes:"
        " api.bind (0.0.0.0 and :: are asked on loopback) and api.port, or api.unix_socket."
        " For container HEALTHCHECKs and Kubernetes exec probes.",
        epilog=_examples(
            "backupjobd healthcheck",
            "BACKUPJOBD_API__PORT=18089 backupjobd healthcheck --timeout 2",
            "backupjobd --config /etc/backupjobd/backupjobd.toml healthcheck --ready",
        )
        + "\n\nexit codes:\n"
        "  0    healthy (ready, with --ready)\n"
        "  1    not healthy, not answering, or the API is disabled\n"
        "  2    bad usage or config",
    )
    check.add_argument(
        "--ready", action="store_true", help="probe /readyz (database and credential) instead"
    )
    check.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=3.0,
        metavar="S",
        help="give up on an answer after S seconds (default 3)",
    )
    check.set_defaults(func=commands.healthcheck)


def configure_emulator_parser(sub: _Subparsers) -> None:
    emu = sub.add_parser(
        "emulator",
        help="run the bundled Azure Backup jobs API emulator",
        epilog=_examples(
            "backupjobd emulator --port 8443 --read-burst 250 --read-refill 25",
            "backupjobd emulator --replay ../shared/recordings/az-backup-job-wait.json",
        ),
    )
    emu.add_argument("--port", type=_port, default=8443)
    emu.add_argument("--host", default="127.0.0.1")
    emu.add_argument("--token", help="accept only this bearer token (default: any)")
    emu.add_argument("--read-burst", type=int, metavar="N", help="per-subscription read budget")
    emu.add_argument("--read-refill", type=float, default=25.0, metavar="R", help="reads/s back")
    emu.add_argument(
        "--read-others",
        type=float,
        default=0.0,
        metavar="R",
        help="reads/s other clients take from every subscription's budget",
    )
    emu.add_argument(
        "--replay", action="append", default=[], metavar="FILE", help="serve this recording"
    )
    emu.set_defaults(func=commands.emulator)


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
            flush_stdout()
    except BrokenPipeError:
        discard_stdout()
        return EXIT_STDOUT_CLOSED
    except OutputError as exc:
        sys.stderr.write(error_line(str(exc)))
        return EXIT_FAILURE


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    command: commands.Command = args.func
    try:
        check_query(args)
        return command(args, dict(os.environ))
    except OutputError:
        raise
    except (InvalidInput, ConfigError) as exc:
        sys.stderr.write(error_line(str(exc)))
        return EXIT_USAGE
    except BackupJobdError as exc:
        sys.stderr.write(error_line(str(exc)))
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {_quote(text)}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {_quote(text)}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {_quote(text)}")
    return value


JOB_KINDS = {kind.value.lower(): kind.value for kind in azure.JobKind}


def _kind(text: str) -> str:
    kind = JOB_KINDS.get(text.strip().lower())
    if kind is None:
        raise argparse.ArgumentTypeError(
            f"unknown kind {_quote(text)}: one of {', '.join(sorted(JOB_KINDS.values()))}"
        )
    return kind


# What `jobs list --status` takes: every status Azure documents for Recovery Services and
# Backup vault jobs, and the tracking states. Anything else is a typo, refused (exit 2)
# rather than answered with an empty list that reads as "no failures".
LIST_STATUSES = {
    s.lower(): s
    for s in (
        *sorted(azure.KNOWN_STATUSES),
        "Started",
        "Succeeded",
        "Paused",
        "Canceled",
        "active",
        "finished",
        "lost",
        "stopped",
    )
}


def _status(text: str) -> str:
    if text.strip().lower() not in LIST_STATUSES:
        raise argparse.ArgumentTypeError(
            f"unknown status {_quote(text)}: one of {', '.join(LIST_STATUSES.values())}"
        )
    return text.strip()


_AGO_RE = re.compile(r"^([0-9]{1,6})([smhd])$")
_AGO_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _when(text: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset), or a span ago: 90s, 30m, 2h, 7d."""
    ago = _AGO_RE.match(text.strip())
    if ago:
        return datetime.now(UTC) - timedelta(seconds=int(ago[1]) * _AGO_UNITS[ago[2]])
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a time: {_quote(text)} (ISO 8601, or 90s, 30m, 2h, 7d ago)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


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


if __name__ == "__main__":
    sys.exit(main())
