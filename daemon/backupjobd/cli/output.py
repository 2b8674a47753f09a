"""`-o/--output json|table|tsv|yaml` and `--query JMESPATH` on every read command, as in the
az CLI (`--json` stays, as `-o json`). A command hands over its JSON document and how it
draws its own table; the query (the jmespath library, as the az CLI uses) runs on the JSON
document, and a queried table is drawn from what the query returned."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from backupjobd.cli import render
from backupjobd.core.text import printable
from backupjobd.errors import InvalidInput

FORMATS = ("json", "table", "tsv", "yaml")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=None,
        help="output format (default table; --json is -o json)",
    )
    parser.add_argument("--json", action="store_true", help="the same as -o json")
    parser.add_argument(
        "--query", metavar="JMESPATH", help="a JMESPath query on the JSON output (as az)"
    )


def check_query(args: argparse.Namespace) -> None:
    """A query that does not compile is bad input: said before the database is opened."""
    if getattr(args, "query", None):
        import jmespath
        from jmespath.exceptions import JMESPathError

        try:
            jmespath.compile(args.query)
        except JMESPathError as exc:
            detail = " ".join(str(exc).split())
            raise InvalidInput(f"--query is not a valid JMESPath expression: {detail}") from None


def emit(args: argparse.Namespace, document: Any, draw_table: Callable[[], None]) -> None:
    """Print `document` in the chosen format; `draw_table` is the command's own table."""
    fmt = "json" if getattr(args, "json", False) else (getattr(args, "output", None) or "table")
    query = getattr(args, "query", None)
    if query:
        import jmespath

        document = jmespath.search(query, document)
    if fmt == "json":
        render.print_json(document)
    elif fmt == "yaml":
        import yaml

        # Non-ASCII as escapes: a value a terminal would act on (ESC, a bidi override) is
        # spelled out, and the YAML still reads back as the exact value.
        render.write(yaml.safe_dump(document, sort_keys=False, allow_unicode=False, width=100))
    elif fmt == "tsv":
        render.write("".join(line + "\n" for line in tsv_lines(document)))
    elif query:
        generic_table(document)
    else:
        draw_table()


def tsv_lines(document: Any) -> list[str]:
    """As az: one line per item of a list, the values of an object tab-separated in order,
    nested values as compact JSON; a scalar on its own line."""
    items = document if isinstance(document, list) else [document]
    return ["\t".join(_cell(v) for v in _values(item)) for item in items]


def _values(item: Any) -> list[Any]:
    return list(item.values()) if isinstance(item, dict) else [item]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return printable(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    return printable(str(value))


def generic_table(document: Any) -> None:
    """A query's result as a table: a list of objects by their keys, else one column."""
    items = document if isinstance(document, list) else [document]
    if items and all(isinstance(item, dict) for item in items):
        headers = list(dict.fromkeys(key for item in items for key in item))
        rows = [[_cell(item.get(key)) for key in headers] for item in items]
        render.table([h.upper() for h in headers], rows)
    else:
        render.table(["RESULT"], [[_cell(item)] for item in items])
