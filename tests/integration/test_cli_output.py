"""`-o json|table|tsv|yaml`, `--query` and the `jobs list` filters, in process on a real SQLite
database: every read command in every format, the same document whatever the format, a query
that does not compile or a status nobody knows refused (exit 2) before the database is read."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from backupjobd.adapters.sql.store import SqlStore
from backupjobd.cli import main
from backupjobd.core.azure import parse_job_resource, vault_from_id
from backupjobd.core.decisions import PollPolicy, Seen, decide_job
from backupjobd.core.registration import JobRegistration
from tests.integration.test_store_contract import job_body

SUB = "11111111-2222-3333-4444-555555555555"
VAULT = vault_from_id(
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.RecoveryServices/vaults/v-one"
)
OTHER = vault_from_id(VAULT.id.replace("v-one", "v-two"))
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
JOBS = [f"{n:08x}-0000-4000-8000-{n:012x}" for n in range(1, 5)]

READ_COMMANDS = [
    ["jobs", "list"],
    ["jobs", "show", JOBS[0]],
    ["jobs", "history", JOBS[0]],
    ["operations", "list"],
    ["notify", "failed"],
    ["replicas"],
]


async def _populate(url: str) -> None:
    store = SqlStore.from_url(url)
    try:
        await store.migrate()
        for n, job_id in enumerate(JOBS):
            vault = VAULT if n < 3 else OTHER
            [result] = await store.register(
                [JobRegistration(vault, job_id, "cli")], T0 + n * timedelta(hours=1)
            )
            [record] = [r for r in await store.find_jobs(job_id)]
            body = job_body(vault, job_id, "Failed" if n == 0 else "InProgress")
            if n == 2:
                body["properties"]["operation"] = "Restore"
            if n == 0:
                body["properties"]["errorDetails"] = [
                    {"errorCode": 400230, "errorString": "Snapshot failed", "recommendations": []}
                ]
            seen = Seen(parse_job_resource(body), full=True)
            decision = decide_job(record.state(), seen, T0, PollPolicy(), 0.5)
            assert await store.apply_job(record, decision, T0)
            assert result.created
    finally:
        await store.close()


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    url = f"sqlite+aiosqlite:///{tmp_path}/jobs.db"
    asyncio.run(_populate(url))
    config = tmp_path / "backupjobd.toml"
    config.write_text(f'[database]\nurl = "{url}"\n')

    def run(*args: str) -> tuple[int, str, str]:
        try:
            code = main(["--config", str(config), *args])
        except SystemExit as exc:  # argparse refuses a bad argument so
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_read_command_prints_one_document_in_every_format(
    cli: Any, command: list[str]
) -> None:
    code, out, err = cli(*command, "-o", "json")
    assert code == 0, err
    document = json.loads(out)
    assert cli(*command, "--json")[1] == out  # --json is -o json
    code, out, err = cli(*command, "-o", "yaml")
    assert code == 0, err
    assert yaml.safe_load(out) == document
    code, out, err = cli(*command, "-o", "tsv")
    assert code == 0, err
    items = document if isinstance(document, list) else [document]
    assert len(out.splitlines()) == len(items)
    code, out, err = cli(*command, "-o", "table")
    assert code == 0, err
    assert out == cli(*command)[1]  # table is the default


def test_query_selects_as_in_az(cli: Any) -> None:
    code, out, _ = cli("jobs", "list", "--query", "[?status=='Failed'].job_id", "-o", "json")
    assert code == 0 and json.loads(out) == [JOBS[0]]
    code, out, _ = cli("jobs", "list", "--query", "[].{id: job_id, s: status}", "-o", "tsv")
    assert out.splitlines()[-1] == f"{JOBS[0]}\tFailed"
    code, out, _ = cli("jobs", "list", "--query", "length(@)", "-o", "tsv")
    assert out == "4\n"
    code, out, _ = cli("jobs", "show", JOBS[0], "--query", "{id: job_id, status: status}")
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS"] and lines[1].split() == [JOBS[0], "Failed"]


def test_errors_show_in_every_format(cli: Any) -> None:
    code, out, _ = cli("jobs", "show", JOBS[0], "--query", "error_details[0].code", "-o", "tsv")
    assert (code, out) == (0, "400230\n")
    code, out, _ = cli("jobs", "show", JOBS[0])
    assert "error:                  400230: Snapshot failed" in out


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "list", "--query", "[?status=="],
        ["jobs", "list", "--status", "Bogus"],
        ["jobs", "list", "--since", "yesterday-ish"],
        ["jobs", "list", "--vault", "not-a-vault"],
        ["jobs", "list", "-o", "xml"],
    ],
)
def test_bad_read_arguments_exit_2_with_one_line(cli: Any, args: list[str]) -> None:
    code, out, err = cli(*args)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err


def test_jobs_list_filters_and_is_newest_first(cli: Any) -> None:
    def ids(*args: str) -> list[str]:
        code, out, err = cli("jobs", "list", "-o", "json", *args)
        assert code == 0, err
        return [j["job_id"] for j in json.loads(out)]

    assert ids() == JOBS[::-1]
    assert ids("--limit", "2") == [JOBS[3], JOBS[2]]  # the newest two, not the oldest
    assert ids("--vault", OTHER.id) == [JOBS[3]]
    assert ids("--operation", "restore") == [JOBS[2]]
    assert ids("--status", "failed") == [JOBS[0]]
    assert ids("--since", "2026-03-01T13:00:00Z", "--until", "2026-03-01T14:00:00") == [
        JOBS[2],
        JOBS[1],
    ]
    assert ids("--since", "1d") == []  # registered in March
