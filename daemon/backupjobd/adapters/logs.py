"""Logging setup: readable text for terminals, JSON lines for journald and containers.

Records carry structured fields (`job_id`, `vault`, `action`) through `extra=`; both
formats show them. Messages quote Azure text (job and entity names), so neither format lets
a control character, a line separator or a bidi override through raw: one record stays one
line (plus its traceback) and cannot drive the terminal of whoever reads the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from backupjobd.core.text import json_safe, printable

STRUCTURED_FIELDS = (
    "job_id",
    "vault_id",
    "action",
    "operation_id",
    "from_status",
    "to_status",
    "finished",
)

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json_safe(json.dumps(entry, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The record's own line, escaped as a whole; a traceback follows on its own lines."""
        line = super().formatMessage(record)
        action = getattr(record, "action", None)
        return printable(f"{line} [{action}]" if action else line)

    def formatException(self, ei: _ExcInfo) -> str:
        """A traceback keeps its line breaks, but each exception's message (which may quote
        Azure) is one escaped line, so it cannot forge the records that follow."""
        text = "".join(_escape_chunk(chunk) for chunk in traceback.format_exception(*ei))
        return text.removesuffix("\n")

    def formatStack(self, stack_info: str) -> str:
        return "\n".join(printable(line) for line in stack_info.split("\n"))


# The lines `traceback` puts between chained exceptions, kept as they are.
_TRACEBACK_HEADINGS = frozenset(
    {
        "Traceback (most recent call last):\n",
        "\nThe above exception was the direct cause of the following exception:\n\n",
        "\nDuring handling of the above exception, another exception occurred:\n\n",
    }
)


def _escape_chunk(chunk: str) -> str:
    """One piece of `traceback.format_exception`: indented frames (our own source) line by
    line, anything else (`Type: message`, notes) as a single line."""
    if chunk in _TRACEBACK_HEADINGS:
        return chunk
    if chunk.startswith(" "):
        return "\n".join(printable(line) for line in chunk.split("\n"))
    body = chunk.removesuffix("\n")
    return printable(body) + chunk[len(body) :]


def configure(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (request lines, scheduler internals) stays out of INFO output.
    for noisy in ("apscheduler", "azure", "aiosqlite", "sqlalchemy", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    executors = logging.getLogger("apscheduler.executors.default")
    if not any(isinstance(f, DropCancelledJobs) for f in executors.filters):
        executors.addFilter(DropCancelledJobs())


class DropCancelledJobs(logging.Filter):
    """A tick still running when `serve` stops is cancelled on purpose; APScheduler would
    report that as a failed job with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)
