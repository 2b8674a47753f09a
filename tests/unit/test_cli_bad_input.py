"""Property tests of the registration CLI, in process: every bad input exits 2 with exactly one
printable `backupjobd: error: ...` line on stderr, prints nothing on stdout, and stores nothing.

Each form of the brief is first shown to register when it is left intact (so the refusals below
are refusals of the mutation, not of the form), then mutated: wrong JSON types, huge documents,
non-GUID ids, path traversal, foreign or odd operation URLs, control characters and look-alikes.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from backupjobd.cli import main

PREFIX = "backupjobd: error:"
ENDPOINT = "http://127.0.0.1:8443"
SUB = "11111111-2222-3333-4444-555555555555"
RG = "rg-bad-input"
VAULT_NAME = "vault-bad-input"
JOB = "0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e"
OP = "4f2d0a7c-6b1e-4c8d-9e3f-a1b2c3d4e5f6"
API = "?api-version=2025-08-01"
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
MAX_ERROR_LINE = 20_000  # one bounded line, never an echo of a megabyte of input

FUZZ = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    max_examples=60,
    deadline=None,
)


# --------------------------------------------------------------------------- the CLI harness


@dataclass
class Result:
    rc: int
    out: str
    err: str


@dataclass
class Cli:
    config: Path
    db: Path
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch
    expect_empty: bool = True  # checked once more through the CLI at teardown

    def run(self, argv: list[str], stdin: str = "") -> Result:
        self.capsys.readouterr()
        self.monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            rc = main(["--config", str(self.config), *argv])
        except SystemExit as exc:  # argparse usage errors; the assertions below then fail
            rc = exc.code if isinstance(exc.code, int) else 1
        out, err = self.capsys.readouterr()
        return Result(rc, out, err)

    def stored_rows(self) -> dict[str, int]:
        """Row counts of every non-empty table except Alembic's, read from the file directly."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            tables = [
                name
                for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if name != "alembic_version"
            ]
            counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        conn.close()
        assert {"jobs", "operations"} <= set(counts), counts
        return {t: n for t, n in counts.items() if n}

    def refused(self, argv: list[str], stdin: str = "") -> str:
        """Assert the contract for bad input; returns the error line."""
        r = self.run(argv, stdin)
        what = f"argv={_short(argv)} stdin={_short(stdin)}"
        assert r.rc == 2, (what, r.rc, _short(r.out), _short(r.err))
        assert "Traceback" not in r.err, (what, _short(r.err))
        assert r.err.endswith("\n") and r.err.count("\n") == 1, (what, _short(r.err))
        line = r.err[:-1]
        assert line.startswith(PREFIX) and line[len(PREFIX) :].strip(), (what, _short(line))
        assert line.isprintable(), (what, _short(line))
        assert len(line) <= MAX_ERROR_LINE, (what, len(line))
        assert r.out == "", (what, _short(r.out))
        assert self.stored_rows() == {}, what
        return line

    def registered(self, argv: list[str], stdin: str = "") -> Result:
        r = self.run(argv, stdin)
        assert r.rc == 0, (_short(argv), _short(stdin), r.err)
        assert r.err == "", r.err
        return r

    def listed(self, *what: str) -> Any:
        r = self.run([*what, "--json"])
        assert r.rc == 0, r.err
        return json.loads(r.out)


def _short(value: object, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


@pytest.fixture
def cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cli]:
    for var in [v for v in os.environ if v.startswith("BACKUPJOBD_")]:
        monkeypatch.delenv(var)
    db = tmp_path / "backupjobd.db"
    config = tmp_path / "backupjobd.toml"
    config.write_text(
        f"""
[azure]
management_endpoint = "{ENDPOINT}"
credential = "static-token"

[database]
url = "sqlite+aiosqlite:///{db}"
""",
        encoding="utf-8",
    )
    harness = Cli(config, db, capsys, monkeypatch)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # main() points the root logger at capsys
    try:
        assert harness.run(["migrate"]).rc == 0  # the database exists: "stores nothing" is real
        yield harness
        # Afterwards the CLI agrees that nothing at all is tracked.
        if harness.expect_empty:
            assert harness.listed("jobs", "list") == []
            assert harness.listed("operations", "list") == []
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


# --------------------------------------------------------------------------- the forms

FIELDS: dict[str, str] = {
    "subscriptions": "subscriptions",
    "sub": SUB,
    "resourceGroups": "resourceGroups",
    "rg": RG,
    "providers": "providers",
    "namespace": "Microsoft.RecoveryServices",
    "vaults": "vaults",
    "vault": VAULT_NAME,
    "backupJobs": "backupJobs",
    "job": JOB,
    "backupOperations": "backupOperations",
    "op": OP,
    "scheme": "http",
    "host": "127.0.0.1",
    "port": "8443",
}
VAULT_FIELDS = ("subscriptions", "sub", "resourceGroups", "rg", "providers", "namespace")
VAULT_FIELDS += ("vaults", "vault")
JOB_ARM_FIELDS = (*VAULT_FIELDS, "backupJobs", "job")
URL_FIELDS = ("scheme", "host", "port", *VAULT_FIELDS, "backupOperations", "op")


def vault_id(f: dict[str, str]) -> str:
    return (
        f"/{f['subscriptions']}/{f['sub']}/{f['resourceGroups']}/{f['rg']}"
        f"/{f['providers']}/{f['namespace']}/{f['vaults']}/{f['vault']}"
    )


def job_arm_id(f: dict[str, str]) -> str:
    return f"{vault_id(f)}/{f['backupJobs']}/{f['job']}"


def op_url(f: dict[str, str]) -> str:
    return (
        f"{f['scheme']}://{f['host']}:{f['port']}{vault_id(f)}/{f['backupOperations']}/{f['op']}"
        + API
    )


def _stdin(doc: Any) -> tuple[list[str], str]:
    return ["register", "-"], json.dumps(doc)


Form = Callable[[dict[str, str]], tuple[list[str], str]]

# name -> (builder, the fields it is made of, what a good one registers)
FORMS: dict[str, tuple[Form, tuple[str, ...], str]] = {
    "--job-id/--vault": (
        lambda f: (["register", f"--job-id={f['job']}", f"--vault={vault_id(f)}"], ""),
        (*VAULT_FIELDS, "job"),
        "job",
    ),
    "--job": (lambda f: (["register", f"--job={job_arm_id(f)}"], ""), JOB_ARM_FIELDS, "job"),
    "--operation-url": (
        lambda f: (["register", f"--operation-url={op_url(f)}"], ""),
        URL_FIELDS,
        "operation",
    ),
    "stdin job_id+vault_id": (
        lambda f: _stdin({"job_id": f["job"], "vault_id": vault_id(f)}),
        (*VAULT_FIELDS, "job"),
        "job",
    ),
    "stdin job ARM id string": (lambda f: _stdin(job_arm_id(f)), JOB_ARM_FIELDS, "job"),
    "stdin {id}": (lambda f: _stdin({"id": job_arm_id(f)}), JOB_ARM_FIELDS, "job"),
    "stdin job resource": (
        lambda f: _stdin(
            {
                "id": job_arm_id(f),
                "name": f["job"],
                "properties": {"jobType": "AzureIaaSVMJob", "status": "InProgress"},
            }
        ),
        JOB_ARM_FIELDS,
        "job",
    ),
    "stdin operation status": (
        lambda f: _stdin(
            {
                "id": f"{vault_id(f)}/backupOperations/{OP}",
                "name": OP,
                "status": "Succeeded",
                "properties": {"objectType": "OperationStatusJobExtendedInfo", "jobId": f["job"]},
            }
        ),
        (*VAULT_FIELDS, "job"),
        "job",
    ),
    "stdin 202 headers": (
        lambda f: _stdin({"headers": {"Azure-AsyncOperation": op_url(f)}}),
        URL_FIELDS,
        "operation",
    ),
    "stdin Location list": (
        lambda f: _stdin({"headers": {"Location": [op_url(f)]}}),
        URL_FIELDS,
        "operation",
    ),
    "stdin operation_url": (
        lambda f: _stdin({"operation_url": op_url(f)}),
        URL_FIELDS,
        "operation",
    ),
    "stdin URL string": (lambda f: _stdin(op_url(f)), URL_FIELDS, "operation"),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_registers_when_left_intact(cli: Cli, form: str) -> None:
    cli.expect_empty = False
    build, _, kind = FORMS[form]
    argv, stdin = build(dict(FIELDS))
    out = cli.registered(argv, stdin).out
    assert out.startswith(f"registered {kind} "), out
    jobs, ops = cli.listed("jobs", "list"), cli.listed("operations", "list")
    if kind == "job":
        assert [(j["job_id"], j["vault_id"].lower()) for j in jobs] == [
            (JOB, vault_id(FIELDS).lower())
        ]
        assert ops == []
    else:
        assert jobs == [] and [o["operation_id"] for o in ops] == [OP]
    # Registering it again is a no-op that says so.
    assert cli.registered(argv, stdin).out.startswith("already tracked")


def test_good_batch_registers_every_form_in_one_call(cli: Cli) -> None:
    cli.expect_empty = False
    other = "c22eca5d-0c1c-48a0-a40d-69bef708d92a"
    docs = [
        {"job_id": JOB.upper(), "vault_id": vault_id(FIELDS).lower()},
        job_arm_id(FIELDS).replace(JOB, other),
        {"headers": {"Location": op_url(FIELDS)}},
    ]
    out = cli.registered(["register", "-"], json.dumps(docs)).out.splitlines()
    assert [line.split()[:2] for line in out] == [
        ["registered", "job"],
        ["registered", "job"],
        ["registered", "operation"],
    ], out
    assert sorted(j["job_id"] for j in cli.listed("jobs", "list")) == sorted([JOB, other])
    assert [o["operation_id"] for o in cli.listed("operations", "list")] == [OP]


def test_register_json_prints_one_result_per_registration(cli: Cli) -> None:
    cli.expect_empty = False
    r = cli.registered(["register", f"--job={job_arm_id(FIELDS)}", "--json"])
    assert json.loads(r.out) == [
        {"kind": "job", "id": JOB, "vault_id": vault_id(FIELDS), "new": True, "created": True}
    ]


# --------------------------------------------------------------------------- random JSON

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Values of the wrong type where a string is expected (the strings are printable: control
# characters have their own tests below).
WRONG_TYPES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
PRINTABLE = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"]), max_size=20)
STRING_KEYS = [
    "job_id",
    "jobId",
    "JobID",
    "vault_id",
    "vaultId",
    "vault",
    "id",
    "name",
    "Azure-AsyncOperation",
    "Location",
    "operation_url",
    "operationUrl",
]


@FUZZ
@given(doc=JSON_VALUES)
def test_random_json_documents_are_refused(cli: Cli, doc: Any) -> None:
    cli.refused(["register", "-"], json.dumps(doc))


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_on_stdin_is_refused(cli: Cli, text: str) -> None:
    cli.refused(["register", "-"], text)


@st.composite
def wrong_typed_documents(draw: st.DrawFn) -> Any:
    """Known keys of every form, with a value of the wrong type in at least one of them."""
    doc: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(STRING_KEYS), min_size=1, max_size=4, unique=True)):
        doc[key] = draw(WRONG_TYPES | PRINTABLE)
    shape = draw(st.sampled_from(["flat", "headers", "operation status", "job resource"]))
    if shape == "headers":
        name = draw(st.sampled_from(["Azure-AsyncOperation", "Location", "location"]))
        value = draw(WRONG_TYPES | st.lists(WRONG_TYPES, min_size=1, max_size=2))
        doc["headers"] = {name: value}
    elif shape == "operation status":
        doc["status"] = draw(st.sampled_from(["Succeeded", "InProgress"]) | WRONG_TYPES)
        doc["properties"] = {
            "objectType": draw(st.sampled_from(["OperationStatusJobExtendedInfo"]) | WRONG_TYPES),
            draw(st.sampled_from(["jobId", "jobIds"])): draw(WRONG_TYPES | PRINTABLE),
        }
    elif shape == "job resource":
        doc["properties"] = {"jobType": draw(WRONG_TYPES | PRINTABLE), "status": "InProgress"}
    # A document whose only string-typed fields happen to be valid is not a bad input.
    assume(not any(isinstance(v, str) and GUID_RE.match(v.strip()) for v in doc.values()))
    return draw(st.sampled_from([doc, [doc], [{"job_id": JOB, "vault_id": vault_id(FIELDS)}, doc]]))


@FUZZ
@given(doc=wrong_typed_documents(), with_vault=st.booleans())
def test_wrong_types_where_strings_are_expected_are_refused(
    cli: Cli, doc: Any, with_vault: bool
) -> None:
    argv = ["register", "-"] + ([f"--vault={vault_id(FIELDS)}"] if with_vault else [])
    cli.refused(argv, json.dumps(doc))


@pytest.mark.parametrize(
    "doc",
    [
        {"job_id": 5, "vault_id": vault_id(FIELDS)},
        {"job_id": JOB, "vault_id": []},
        {"job_id": [JOB], "vault_id": vault_id(FIELDS)},
        {"job_id": JOB, "vault_id": {"id": vault_id(FIELDS)}},
        {"headers": {"Location": [1]}},
        {"headers": {"Azure-AsyncOperation": {"url": op_url(FIELDS)}}},
        {"headers": {"Location": []}},
        {"operation_url": 1.5},
        {"operationUrl": [op_url(FIELDS)]},
        {"id": 7},
        {"id": None, "name": 5, "properties": {"jobType": "x"}},
        {"status": "Succeeded", "properties": {"jobId": 1}, "id": vault_id(FIELDS)},
        {"status": "Succeeded", "properties": {"jobIds": JOB}, "id": vault_id(FIELDS)},
        {"status": "Succeeded", "properties": {"jobIds": [JOB, None]}, "id": vault_id(FIELDS)},
        {"status": 1, "properties": {"jobId": JOB}, "id": vault_id(FIELDS)},
        {"status": "Succeeded", "properties": {"jobIds": {"0": JOB}}, "id": 3},
        {"status": "Succeeded", "properties": {"jobIds": []}, "id": vault_id(FIELDS)},
        {"properties": {"jobType": "x"}, "name": 5},
        True,
        None,
        3,
        [],
        [[]],
        [None],
        "",
        {},
    ],
    ids=repr,
)
def test_documented_wrong_types_are_refused(cli: Cli, doc: Any) -> None:
    cli.refused(["register", "-", f"--vault={vault_id(FIELDS)}"], json.dumps(doc))


# --------------------------------------------------------------------------- huge documents

MIB = 1024 * 1024
VALID_DOC = {"job_id": JOB, "vault_id": vault_id(FIELDS)}


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (["register", "-"], json.dumps({**VALID_DOC, "pad": "x" * (4 * MIB)})),
        (["register", "-"], json.dumps("x" * (4 * MIB + 1))),
        # 1.5 M characters but 4.5 MiB of UTF-8: the limit is on bytes.
        (
            ["register", "-"],
            json.dumps({**VALID_DOC, "pad": "€" * (3 * MIB // 2)}, ensure_ascii=False),
        ),
        (["register", "-"], json.dumps([VALID_DOC] * 10_001)),
        (["register", "-"], json.dumps(list(range(10_001)))),
        (["register", "-"], "[" * 100_000 + "]" * 100_000),
        (["register", "-"], '{"a":' * 100_000 + "1" + "}" * 100_000),
        (
            ["register", "-"],
            json.dumps(VALID_DOC)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        ),
        (["register", "-"], " " * (4 * MIB + 1)),
        (["register", f"--job={job_arm_id(FIELDS)}{'x' * 5 * MIB}"], ""),
        (["register", f"--job-id={JOB}{'0' * 5 * MIB}", f"--vault={vault_id(FIELDS)}"], ""),
        (["register", f"--job-id={JOB}", f"--vault={vault_id(FIELDS)}{'a' * 5 * MIB}"], ""),
        (["register", f"--operation-url={op_url(FIELDS)}&x={'a' * 5 * MIB}"], ""),
        (["register", "-"], json.dumps({"headers": {"Location": op_url(FIELDS) + "a" * 9000}})),
    ],
    ids=[
        "4MiB-padded-doc",
        "4MiB-string",
        "4.5MiB-utf8-in-1.5M-chars",
        "10001-valid-docs",
        "10001-ints",
        "100k-deep-arrays",
        "100k-deep-objects",
        "100k-deep-inside-valid-doc",
        "4MiB-whitespace",
        "5MiB--job",
        "5MiB--job-id",
        "5MiB--vault",
        "5MiB--operation-url",
        "9000-char-Location",
    ],
)
def test_huge_inputs_are_refused(cli: Cli, argv: list[str], stdin: str) -> None:
    line = cli.refused(argv, stdin)
    assert len(line) < 1000, _short(line)


# --------------------------------------------------------------------------- non-GUID ids

GUID_MUTATIONS = st.one_of(
    st.text(max_size=40),
    st.just(JOB).map(lambda g: g.replace("-", "")),
    st.just(JOB).map(lambda g: "{" + g + "}"),
    st.just(JOB).map(lambda g: "urn:uuid:" + g),
    st.just(JOB).map(lambda g: g[:-1]),
    st.just(JOB).map(lambda g: g + "0"),
    st.just(JOB).map(lambda g: g.replace("b", "g")),
    st.just(JOB).map(lambda g: g.replace("-", "_")),
    st.just(JOB).map(lambda g: g.replace("-", "--", 1)),
    st.tuples(st.integers(0, len(JOB) - 1), st.characters(codec="utf-8")).map(
        lambda t: JOB[: t[0]] + t[1] + JOB[t[0] + 1 :]
    ),
)


@FUZZ
@given(job_id=GUID_MUTATIONS, how=st.sampled_from(["--job-id", "--job", "stdin", "stdin-arm"]))
def test_non_guid_job_ids_are_refused(cli: Cli, job_id: str, how: str) -> None:
    assume(not GUID_RE.match(job_id.strip()))
    fields = {**FIELDS, "job": job_id}
    if how == "--job-id":
        cli.refused(["register", f"--job-id={job_id}", f"--vault={vault_id(FIELDS)}"])
    elif how == "--job":
        cli.refused(["register", f"--job={job_arm_id(fields)}"])
    elif how == "stdin":
        cli.refused(["register", "-"], json.dumps({"job_id": job_id, "vault_id": vault_id(FIELDS)}))
    else:
        cli.refused(["register", "-"], json.dumps({"id": job_arm_id(fields)}))


# --------------------------------------------------------------------------- path traversal

TRAVERSAL = ["..", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "/", "%2f", "%2F", "\\", "%5c", "/..", "../"]


@st.composite
def traversal_fields(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, str]:
    name = draw(st.sampled_from(names))
    value = FIELDS[name]
    if draw(st.booleans()):
        new = draw(st.sampled_from(["..", ".", "%2e%2e", "%2e", "/", "%2f", "", "./x", "../x"]))
    else:
        token = draw(st.sampled_from(TRAVERSAL))
        # A "/" at a segment's very end would only be a trailing slash (or an empty segment).
        low = 1 if token == "/" else 0
        high = len(value) - 1 if token == "/" else len(value)
        pos = draw(st.integers(low, high))
        new = value[:pos] + token + value[pos:]
    return {**FIELDS, name: new}


@FUZZ
@given(fields=traversal_fields(VAULT_FIELDS), how=st.sampled_from(["--vault", "stdin", "status"]))
def test_traversal_in_vault_ids_is_refused(cli: Cli, fields: dict[str, str], how: str) -> None:
    if how == "--vault":
        cli.refused(["register", f"--job-id={JOB}", f"--vault={vault_id(fields)}"])
    elif how == "stdin":
        cli.refused(["register", "-"], json.dumps({"job_id": JOB, "vault_id": vault_id(fields)}))
    else:
        # An operation status names its vault by the prefix of its ARM id and ignores the rest,
        # so a "/" inside the vault name only makes a shorter, valid vault name: not traversal.
        assume("/" not in fields["vault"])
        argv, stdin = FORMS["stdin operation status"][0](fields)
        cli.refused(argv, stdin)


@FUZZ
@given(
    fields=traversal_fields(JOB_ARM_FIELDS),
    form=st.sampled_from(["--job", "stdin job ARM id string", "stdin {id}", "stdin job resource"]),
)
def test_traversal_in_job_arm_ids_is_refused(cli: Cli, fields: dict[str, str], form: str) -> None:
    argv, stdin = FORMS[form][0](fields)
    cli.refused(argv, stdin)


@FUZZ
@given(
    fields=traversal_fields(("subscriptions", "sub", "rg", "vault", "backupOperations", "op")),
    form=st.sampled_from(["--operation-url", "stdin 202 headers", "stdin URL string"]),
)
def test_traversal_in_operation_urls_is_refused(
    cli: Cli, fields: dict[str, str], form: str
) -> None:
    argv, stdin = FORMS[form][0](fields)
    cli.refused(argv, stdin)


# --------------------------------------------------------------------------- operation URLs

PATH = f"{vault_id(FIELDS)}/backupOperations/{OP}{API}"
OTHER_HOSTS = [
    "attacker.example.com",
    "management.azure.com",
    "10.0.0.1",
    "192.168.1.10",
    "localhost",
    "127.0.0.2",
    "127.1",
    "2130706433",
    "0x7f000001",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
    "127.0.0.1.",
    "127.0.0.1.nip.io",
]
URL_TRANSPORTS = [
    "--operation-url",
    "stdin 202 headers",
    "stdin Location list",
    "stdin operation_url",
    "stdin URL string",
]


def _through(form: str, url: str) -> tuple[list[str], str]:
    if form == "--operation-url":
        return ["register", f"--operation-url={url}"], ""
    if form == "stdin 202 headers":
        return _stdin({"headers": {"Azure-AsyncOperation": url}})
    if form == "stdin Location list":
        return _stdin({"headers": {"Location": [url]}})
    if form == "stdin operation_url":
        return _stdin({"operation_url": url})
    return _stdin(url)


HOSTNAMES = st.from_regex(r"\A[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z")


@st.composite
def foreign_urls(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["host", "scheme", "userinfo", "port", "opaque"]))
    if kind == "host":
        host = draw(st.sampled_from(OTHER_HOSTS) | HOSTNAMES)
        scheme = draw(st.sampled_from(["http", "https"]))
        port = draw(st.sampled_from(["", ":8443", ":443", ":80"]))
        return f"{scheme}://{host}{port}{PATH}"
    if kind == "scheme":
        scheme = draw(
            st.sampled_from(["https", "ftp", "file", "javascript", "ws", "gopher", "HTTPS"])
        )
        return f"{scheme}://127.0.0.1:8443{PATH}"
    if kind == "userinfo":
        user = draw(st.from_regex(r"\A[a-z]{1,8}\Z"))
        password = draw(st.none() | st.from_regex(r"\A[A-Za-z0-9]{0,12}\Z"))
        info = user if password is None else f"{user}:{password}"
        host = draw(st.sampled_from(["127.0.0.1:8443", "attacker.example.com"]))
        return f"http://{info}@{host}{PATH}"
    if kind == "port":
        port = draw(st.integers(0, 65535).filter(lambda p: p != 8443))
        return f"http://127.0.0.1:{port}{PATH}"
    return draw(
        st.sampled_from(
            [
                "javascript:alert(document.cookie)",
                "file:///etc/passwd",
                "file://127.0.0.1:8443" + PATH,
                "data:text/plain," + PATH,
                "http:" + PATH,
                "//127.0.0.1:8443" + PATH,
                "http:///127.0.0.1:8443" + PATH,
                "http://127.0.0.1:8443@attacker.example.com" + PATH,
                "http://attacker.example.com#@127.0.0.1:8443" + PATH,
                "http://attacker.example.com\\@127.0.0.1:8443" + PATH,
                "http://127.0.0.1:8443" + PATH.replace("/subscriptions", "//attacker.example.com"),
            ]
        )
    )


@FUZZ
@given(url=foreign_urls(), form=st.sampled_from(URL_TRANSPORTS))
def test_operation_urls_off_the_endpoint_are_refused(cli: Cli, url: str, form: str) -> None:
    argv, stdin = _through(form, url)
    cli.refused(argv, stdin)


@pytest.mark.parametrize("form", URL_TRANSPORTS)
def test_https_userinfo_is_refused_without_echoing_the_password(cli: Cli, form: str) -> None:
    secret = "Pa55-w0rd-in-url-7f3a"
    for host in ("127.0.0.1:8443", "attacker.example.com"):
        for scheme in ("http", "https"):
            argv, stdin = _through(form, f"{scheme}://backup:{secret}@{host}{PATH}")
            assert secret not in cli.refused(argv, stdin)


# --------------------------------------------------------------------------- control characters

# Every C0/C1 control, DEL, and the Unicode line/paragraph separators.
CONTROLS = st.characters(codec="utf-8", categories=["Cc", "Zl", "Zp"])
# Look-alikes of the ASCII characters ids and URLs are made of (none of them is case-folded to
# ASCII by the regex engine; those four are tested separately below).
LOOKALIKES = st.sampled_from(
    list(
        "\u0430\u0435\u043e\u0440\u0441\u0445\u0456\u0455\u03bf\u03b1\u0391\u0392"  # Cyrillic/Greek
        "\uff10\uff11\uff18\uff41\uff42\uff0f\uff1a\uff0e\uff0d"  # fullwidth 0 1 8 a b / : . -
        "\u2215\u2044\u2024\u2010\u2011\u2212\u00ad\u200b\u200d\ufeff\u202e\u00a0\u3000"
        "\u0660\u06f1\u0967\u1d00\u0261\u01c0"
    )
)
# The resource group is the one ARM segment that may hold Unicode letters, so look-alikes are
# legitimate there (control characters are not).
ASCII_ONLY = {form: tuple(f for f in names if f != "rg") for form, (_, names, _) in FORMS.items()}


@st.composite
def mutated_forms(
    draw: st.DrawFn, chars: st.SearchStrategy[str], ascii_only: bool
) -> tuple[list[str], str]:
    form = draw(st.sampled_from(sorted(FORMS)))
    build, names, _ = FORMS[form]
    name = draw(st.sampled_from(ASCII_ONLY[form] if ascii_only else names))
    value = FIELDS[name]
    ch = draw(chars)
    # Leading/trailing whitespace around an id is trimmed on purpose (`$(cat file)` adds a
    # newline), so whitespace goes strictly inside the field.
    interior = ch.isspace() or ch in "\ufeff\u200b"
    pos = draw(st.integers(1, len(value) - 1) if interior else st.integers(0, len(value)))
    replace = draw(st.booleans()) and pos < len(value)
    new = value[:pos] + ch + value[pos + (1 if replace else 0) :]
    return build({**FIELDS, name: new})


@FUZZ
@given(case=mutated_forms(CONTROLS, ascii_only=False))
def test_control_characters_in_any_field_are_refused(cli: Cli, case: tuple[list[str], str]) -> None:
    cli.refused(*case)


@FUZZ
@given(case=mutated_forms(st.just("\x00"), ascii_only=False))
def test_nul_bytes_in_any_field_are_refused(cli: Cli, case: tuple[list[str], str]) -> None:
    cli.refused(*case)


@FUZZ
@given(case=mutated_forms(LOOKALIKES, ascii_only=True))
def test_unicode_lookalikes_in_ascii_fields_are_refused(
    cli: Cli, case: tuple[list[str], str]
) -> None:
    cli.refused(*case)


# --------------------------------------------------------------------------- found bugs, now fixed

FOLDED = {"\u212a": "k", "\u017f": "s", "\u0131": "i", "\u0130": "i"}


@pytest.mark.parametrize(
    ("field", "char"),
    [
        ("vault", "\u212a"),
        ("vault", "\u017f"),
        ("vault", "\u0131"),
        ("vault", "\u0130"),
        ("subscriptions", "\u017f"),
        ("namespace", "\u0131"),
    ],
    ids=["vault-KELVIN", "vault-LONG-S", "vault-DOTLESS-I", "vault-I-WITH-DOT", "sub-lit", "ns"],
)
@pytest.mark.parametrize("form", ["--job-id/--vault", "--job", "--operation-url"])
def test_case_folded_lookalikes_in_vault_ids_are_refused(
    cli: Cli, field: str, char: str, form: str
) -> None:
    cli.expect_empty = False
    value = FIELDS[field] if field != "vault" else "vault-kis"
    fields = {**FIELDS, field: value.replace(FOLDED[char], char, 1)}
    assert fields[field] != value
    argv, stdin = FORMS[form][0](fields)
    cli.refused(argv, stdin)


@pytest.mark.parametrize(
    "doc",
    [
        {"status": "Failed", "error": {"code": "UserError", "message": "first\nsecond"}},
        {"status": "Failed", "error": {"code": "X\x1b[2J\x1b[31m", "message": "m"}},
        {"status": "Canceled", "error": {"code": "X", "message": "m" * MIB}},
        {"status": "In\nProgress"},
        {"status": "Queued\r\x1b[1A" + "q" * MIB},
    ],
    ids=["newline-in-message", "escape-in-code", "1MiB-message", "newline-in-status", "status"],
)
def test_operation_status_text_is_one_clean_bounded_line(cli: Cli, doc: dict[str, Any]) -> None:
    body = {
        "id": f"{vault_id(FIELDS)}/backupOperations/{OP}",
        "properties": {"objectType": "OperationStatusJobExtendedInfo"},
        **doc,
    }
    line = cli.refused(["register", "-"], json.dumps(body))
    assert len(line) < 1000, len(line)


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://backup:S3cret-in-url@127.0.0.1:8443{PATH}",
        f"file://backup:S3cret-in-url@127.0.0.1{PATH}",
        f"http://backup:S3cret-in-url@127.0.0.1:99999{PATH}",
        f"https://backup:S3cret-in-url@127.0.0.1:8443x{PATH}",
    ],
    ids=["ftp", "file", "bad-port", "garbled-port"],
)
def test_userinfo_password_is_never_echoed(cli: Cli, url: str) -> None:
    assert "S3cret-in-url" not in cli.refused(["register", f"--operation-url={url}"])


@pytest.mark.parametrize("key", ["jobId", "jobIds"])
def test_trailing_newline_in_an_operation_status_job_id_is_not_stored(cli: Cli, key: str) -> None:
    cli.expect_empty = False
    value: Any = JOB + "\n" if key == "jobId" else [JOB + "\n"]
    body = {
        "id": f"{vault_id(FIELDS)}/backupOperations/{OP}",
        "status": "Succeeded",
        "properties": {"objectType": "OperationStatusJobExtendedInfo", key: value},
    }
    r = cli.run(["register", "-"], json.dumps(body))
    stored = [j["job_id"] for j in cli.listed("jobs", "list")]
    # Refusing it or trimming it are both fine; keeping the newline is not.
    assert (r.rc == 2 and stored == []) or (r.rc == 0 and stored == [JOB]), (r, stored)
