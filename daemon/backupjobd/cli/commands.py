"""One function per subcommand, each `(args, env) -> exit code`, set on its parser with
`set_defaults(func=...)`.

A command imports what it needs when it runs: `jobs list` must not pay for aiohttp,
APScheduler or the HTTP API at start-up, only `serve`, `wait`, `cancel` and `emulator` use them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import BinaryIO, TextIO

from backupjobd import bootstrap, config
from backupjobd.adapters import logs
from backupjobd.adapters.durations import Durations, with_expected_end
from backupjobd.cli import output, render
from backupjobd.cli.render import say
from backupjobd.core import azure, registration, views
from backupjobd.core.leases import LEASE_SPAN
from backupjobd.core.model import JobRecord
from backupjobd.core.registration import Registration
from backupjobd.errors import InvalidInput
from backupjobd.store import Store

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# A registration waits this long in all for a database that other writers hold locked.
REGISTER_RETRY_SECONDS = 60.0

Env = Mapping[str, str]
Command = Callable[[argparse.Namespace, Env], int]


def _configured(args: argparse.Namespace, env: Env) -> config.Config:
    """The config of every command but `emulator`, with logging set up from it."""
    cfg = config.load(config.resolve_path(args.config, env), env)
    logs.configure(cfg.log.level, cfg.log.format)
    return cfg


def _on_store(
    cfg: config.Config, work: Callable[[Store], Awaitable[int]], *, read_only: bool
) -> int:
    """Run `work` on a store at head, closed afterwards. Commands that only read open the
    database read-only: they work on a read-only mount and never create an empty database
    where the configured one is missing."""

    async def run() -> int:
        store = await bootstrap.open_store(cfg, read_only=read_only)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def serve(args: argparse.Namespace, env: Env) -> int:
    cfg = _configured(args, env)
    return asyncio.run(bootstrap.serve(cfg, env))


def migrate(args: argparse.Namespace, env: Env) -> int:
    async def done(store: Store) -> int:
        say("database schema is at head")
        return EXIT_OK

    return _on_store(_configured(args, env), done, read_only=False)


def register(args: argparse.Namespace, env: Env) -> int:
    cfg = _configured(args, env)
    regs = _registrations(args, cfg, sys.stdin)  # all validated before anything is stored

    async def work(store: Store) -> int:
        results = await bootstrap.retry_transient(
            lambda: store.register(regs, bootstrap.utcnow()),
            "registering",
            REGISTER_RETRY_SECONDS,
        )
        if args.wait:
            refs = [
                f"{r.vault_id}/backupJobs/{r.ident}" if r.kind == "job" else r.ident
                for r in results
            ]
            return await _wait_for(store, cfg, env, refs, None, args)
        if args.json:
            render.print_json([r.to_json() for r in results])
            return EXIT_OK
        for r in results:
            vault = r.vault_id.rsplit("/", 1)[-1]
            if r.kind == "job":
                verb = "registered" if r.created else "already tracked:"
                say(f"{verb} job {r.ident} in vault {vault}")
            elif r.created:
                say(
                    f"registered operation {r.ident} in vault {vault}:"
                    " jobs follow once it names them"
                )
            else:
                say(f"already tracked: operation {r.ident} in vault {vault}")
        return EXIT_OK

    return _on_store(cfg, work, read_only=False)


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
        regs.append(registration.operation_from_url(url, endpoint, "operation-url", vault))
    for arm_id in args.job:
        regs.append(registration.job_from_arm_id(arm_id, vault))
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


def jobs_list(args: argparse.Namespace, env: Env) -> int:
    vault = azure.vault_from_id(args.vault).id if args.vault else None  # bad input: exit 2

    async def work(store: Store) -> int:
        jobs = await store.list_jobs(
            status=args.status,
            limit=args.limit,
            stuck=args.stuck,
            vault_id=vault,
            since=args.since,
            until=args.until,
            operation=args.operation,
            newest_first=True,
            kind=args.kind,
        )
        jobs = await with_expected_end(store, jobs)
        output.emit(args, [job.to_json() for job in jobs], lambda: render.jobs_table(jobs))
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=True)


def jobs_show(args: argparse.Namespace, env: Env) -> int:
    async def work(store: Store) -> int:
        (job,) = await with_expected_end(store, [await _one_job(store, args.job_id, args.vault)])
        output.emit(args, job.to_json(), lambda: render.job_details(job))
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=True)


def top(args: argparse.Namespace, env: Env) -> int:
    vault = azure.vault_from_id(args.vault).id if args.vault else None  # bad input: exit 2

    async def work(store: Store) -> int:
        from backupjobd.cli.live import run_top  # rich, for this command only

        await run_top(
            store,
            now=bootstrap.utcnow,
            vault_id=vault,
            interval=args.interval,
            once=args.once,
            liveness_window=bootstrap.LIVENESS_WINDOW,
        )
        return EXIT_OK

    try:
        return _on_store(_configured(args, env), work, read_only=True)
    except KeyboardInterrupt:  # how one leaves a live view
        return EXIT_OK


def jobs_history(args: argparse.Namespace, env: Env) -> int:
    async def work(store: Store) -> int:
        (job,) = await with_expected_end(store, [await _one_job(store, args.job_id, args.vault)])
        transitions, snapshots = await store.history(job.pk)
        document = {
            "job": job.to_json(),
            "transitions": [t.to_json() for t in transitions],
            "snapshots": [s.to_json() for s in snapshots],
        }
        output.emit(args, document, lambda: render.job_history(job, transitions, snapshots))
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=True)


async def _one_job(store: Store, job_ref: str, vault_arg: str | None) -> JobRecord:
    vault: azure.VaultRef | None
    crr = azure.parse_crr_job_id(job_ref)
    if crr is not None:  # a location-scoped id: the vault, if any, comes from --vault
        job_id = crr.job_id
        vault = azure.vault_from_id(vault_arg) if vault_arg else None
    elif "/" in job_ref:
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


def wait(args: argparse.Namespace, env: Env) -> int:
    cfg = _configured(args, env)

    async def work(store: Store) -> int:
        vault = azure.vault_from_id(args.vault) if args.vault else None
        return await _wait_for(store, cfg, env, args.job_ids, vault, args)

    return _on_store(cfg, work, read_only=False)


async def _wait_for(
    store: Store,
    cfg: config.Config,
    env: Env,
    refs: Sequence[str],
    vault: azure.VaultRef | None,
    args: argparse.Namespace,
) -> int:
    """`wait` (and `register --wait`): job GUIDs, job ARM ids and operation ids to the end;
    prints the jobs and returns the exit code. While waiting, stderr shows where the jobs
    stand (live lines on a terminal, a plain line per change elsewhere; not with -q)."""
    from backupjobd.service import waiter  # brings the tracker, and with it aiohttp

    give_up_after: float | None = args.timeout
    as_json: bool = args.json

    targets = []
    left = give_up_after
    for ref in refs:
        crr = azure.parse_crr_job_id(ref)
        if crr is not None:
            if vault is None:
                raise InvalidInput(
                    "a cross-region-restore job id names no vault: give --vault SOURCE_VAULT_ID"
                )
            targets.append(waiter.Target(vault, crr.job_id, crr.region))
            continue
        if "/" in ref:
            job_vault, job_id = azure.parse_job_arm_id(ref)
            targets.append(waiter.Target(job_vault, job_id))
            continue
        operation = await waiter.operation_of(store, ref)
        if operation is None:
            targets.append(waiter.Target(vault, azure.validate_job_id(ref)))
            continue
        try:
            named, left = await waiter.jobs_of_operation(
                store,
                operation,
                left,
                own_tracker=lambda: bootstrap.tracker_for(cfg, env, store),
                now=bootstrap.utcnow,
                liveness_window=bootstrap.LIVENESS_WINDOW,
            )
        except waiter.OperationFailed as exc:
            say(f"operation {operation.operation_id}: {exc.operation.status or 'failed'}")
            say(f"  error: {exc}")
            return waiter.EXIT_BY_STATUS["Failed"]
        except TimeoutError:
            print(
                f"backupjobd: timed out after {give_up_after:g} s waiting for operation"
                f" {operation.operation_id} to name its jobs",
                file=sys.stderr,
            )
            return waiter.EXIT_TIMEOUT
        targets.extend(named)
    progress = None
    watch: Callable[[Sequence[JobRecord]], None] | None = None
    if not args.quiet:
        from backupjobd.cli.live import WaitProgress  # rich, for this command only

        durations = Durations()
        await durations.refresh(store)
        shown = progress = WaitProgress(sys.stderr, sys.stderr.isatty(), bootstrap.utcnow)

        def watch(seen: Sequence[JobRecord]) -> None:
            shown.update(durations.annotate(seen))

    try:
        code, jobs = await waiter.wait(
            store,
            targets,
            left,
            own_tracker=lambda: bootstrap.tracker_for(cfg, env, store),
            now=bootstrap.utcnow,
            liveness_window=bootstrap.LIVENESS_WINDOW,
            watch=watch,
        )
    finally:
        if progress is not None:
            progress.close()
    if as_json:
        render.print_json([job.to_json() for job in jobs])
    else:
        for job in jobs:
            outcome = waiter.outcome_code(job)
            lost = job.tracking.value == "lost"
            state = job.tracking.value if lost else job.status or render.UNSEEN
            suffix = "" if outcome is not None else " (still running: timed out waiting)"
            say(f"job {job.job_id}: {state}{suffix}")
            errors = render.error_lines(job, aligned=False)
            if errors and job.status != "Completed":
                say(*(f"  {line}" for line in errors))
    if code == waiter.EXIT_TIMEOUT:
        render.flush_stdout()  # the jobs first, then why they are incomplete
        print(
            f"backupjobd: timed out after {give_up_after or 0:g} s waiting for "
            f"{sum(1 for j in jobs if waiter.outcome_code(j) is None)} job(s)",
            file=sys.stderr,
        )
    return code


def cancel(args: argparse.Namespace, env: Env) -> int:
    cfg = _configured(args, env)

    async def work(store: Store) -> int:
        job = await _one_job(store, args.job_id, args.vault)
        refusal = azure.cancel_refusal(job.kind)
        if refusal is not None:
            raise InvalidInput(f"cannot cancel job {job.job_id}: {refusal}")
        async with bootstrap.arm_client(cfg, env) as arm:
            outcome = await arm.cancel_job(
                azure.vault_from_id(job.vault_id), job.job_id, follow_seconds=args.follow
            )
        say(f"cancel of job {job.job_id} {outcome}; its status follows in the history")
        return EXIT_OK

    return _on_store(cfg, work, read_only=True)


def notify_failed(args: argparse.Namespace, env: Env) -> int:
    async def work(store: Store) -> int:
        dead = await store.outbox_list("dead")
        document = [record.to_json() for record in dead]
        output.emit(args, document, lambda: render.dead_letters_table(dead))
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=True)


def notify_retry(args: argparse.Namespace, env: Env) -> int:
    async def work(store: Store) -> int:
        count = await store.outbox_requeue_dead(bootstrap.utcnow())
        say(f"requeued {count} dead letter(s)")
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=False)


def operations_list(args: argparse.Namespace, env: Env) -> int:
    async def work(store: Store) -> int:
        ops = await store.list_operations()
        output.emit(args, [op.to_json() for op in ops], lambda: render.operations_table(ops))
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=True)


def config_show(args: argparse.Namespace, env: Env) -> int:
    """The effective config, key by key, with where each value came from. Secrets never
    appear: the config names environment variables, shown as set or unset."""
    cfg = _configured(args, env)
    document = config.effective(cfg, env)
    lines = [f"# config: {cfg.source}"]
    for key, item in document.items():
        shown = json.dumps(item["value"], ensure_ascii=False)
        secret = f" ({item['secret']})" if "secret" in item else ""
        lines.append(f"{key} = {shown}{secret}  # {item['from']}")
    output.emit(args, document, lambda: say(*lines))
    return EXIT_OK


def replicas(args: argparse.Namespace, env: Env) -> int:
    """Live `serve` replicas (heard from within a lease span), what each polls and the read
    budget each learned."""

    async def work(store: Store) -> int:
        now = bootstrap.utcnow()
        found = await store.replicas(now - LEASE_SPAN, now)
        document = [views.render(views.REPLICA_VIEW, r) for r in found]
        output.emit(args, document, lambda: render.replicas_table(found))
        return EXIT_OK

    return _on_store(_configured(args, env), work, read_only=True)


def healthcheck(args: argparse.Namespace, env: Env) -> int:
    """Probe the running daemon's /healthz (or /readyz) where the effective config puts the
    API: the container HEALTHCHECK and the Kubernetes/compose probes all run this."""
    from backupjobd.adapters import healthprobe
    from backupjobd.core.healthcheck import probe_target

    api = _configured(args, env).api
    if not api.enabled:
        sys.stderr.write(
            render.error_line("unhealthy: the HTTP API is disabled (api.enabled = false)")
        )
        return EXIT_FAILURE
    target = probe_target(api.bind, api.port, api.unix_socket, ready=args.ready)
    verdict = healthprobe.probe(target, args.timeout)
    if verdict.healthy:
        say(f"healthy: {verdict.reason}")
        return EXIT_OK
    sys.stderr.write(render.error_line(f"unhealthy: {verdict.reason}"))
    return EXIT_FAILURE


def emulator(args: argparse.Namespace, env: Env) -> int:
    """The bundled emulator reads no config: it stands in for Azure, not for the daemon."""
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
                read_others_per_second=args.read_others,
                stop_on_signals=True,
            )
        )
    except KeyboardInterrupt:
        pass
    except ValueError as exc:  # a recording that cannot be loaded, a bad budget
        sys.stderr.write(render.error_line(str(exc)))
        return EXIT_USAGE
    except OSError as exc:
        where = f"{args.host}:{args.port}"
        sys.stderr.write(render.error_line(f"emulator cannot listen on {where}: {exc}"))
        return EXIT_FAILURE
    return EXIT_OK
