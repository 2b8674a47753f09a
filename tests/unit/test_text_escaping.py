"""Escaping of untrusted text for terminals and line-based logs.

Azure fields such as entityFriendlyName and operation carry whatever someone named a VM or
an item. Shown raw, an ESC sequence drives the reader's terminal, CR/LF forges a table row
or a log record, and a bidi override reorders what the reader sees.
"""

from __future__ import annotations

import json
import logging
import sys

import pytest

from backupjobd.adapters.logs import JsonFormatter, TextFormatter
from backupjobd.core.text import json_safe, printable

# The characters that must never reach a terminal or a log line raw, defined here
# independently of the implementation.
UNSAFE = (
    set(range(0x20))
    | {0x7F}
    | set(range(0x80, 0xA0))
    | {0x2028, 0x2029}
    | set(range(0x202A, 0x202F))
    | set(range(0x2066, 0x206A))
    | set(range(0xD800, 0xE000))  # lone surrogates: a strict UTF-8 stdout refuses them
)
FORGED_ROW = "00000000-0000-0000-0000-000000000000  Completed  finished  Backup  vm-fake"

HOSTILE = [
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
    ("vm\r\n" + FORGED_ROW, "vm\\r\\n" + FORGED_ROW),
    ("nul\x00byte", "nul\\x00byte"),
    ("del\x7f", "del\\x7f"),
    ("c1 csi \x9b2J", "c1 csi \\x9b2J"),
    ("nel\x85", "nel\\x85"),
    ("tab\there", "tab\\there"),
    ("bell\x07", "bell\\x07"),
    ("\x1b]0;window title\x07", "\\x1b]0;window title\\x07"),
    ("\u202egnp.exe", "\\u202egnp.exe"),
    ("ltr\u202dembed\u202c", "ltr\\u202dembed\\u202c"),
    ("\u2066isolate\u2069", "\\u2066isolate\\u2069"),
    ("line\u2028sep", "line\\u2028sep"),
    ("para\u2029sep", "para\\u2029sep"),
    ("bad byte \udcff", "bad byte \\udcff"),
]
ORDINARY = [
    "",
    "vm-prod-01",
    "Backup (Full)",
    "é",
    "café crème",
    "日本",
    "サーバー01",
    "مرحبا",
    "Ωmega ß ñ",
    "🙂 emoji",
    "C:\\path\\not\\escaped",
    "spaces   and  more",
]


@pytest.mark.parametrize(("raw", "shown"), HOSTILE, ids=[repr(raw)[:24] for raw, _ in HOSTILE])
def test_hostile_strings_become_visible_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert "\n" not in printable(raw) and len(printable(raw).splitlines()) == 1


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_unicode_is_untouched(text: str) -> None:
    assert printable(text) == text


def test_every_code_point_is_either_kept_or_escaped_to_printable_ascii() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        shown = printable(char)
        if code in UNSAFE:
            assert shown.startswith("\\") and shown.isascii() and shown.isprintable(), hex(code)
        else:
            assert shown == char, hex(code)


def test_escaping_is_idempotent() -> None:
    for raw, shown in HOSTILE:
        assert printable(shown) == shown, raw


@pytest.mark.parametrize("raw", [raw for raw, _ in HOSTILE] + ORDINARY)
def test_json_keeps_values_exact_and_spells_unsafe_characters_as_escapes(raw: str) -> None:
    value = {"entity_friendly_name": raw, "list": [raw, 1, None]}
    text = json_safe(json.dumps(value, indent=2, ensure_ascii=False))
    assert json.loads(text) == value
    assert not {ord(c) for c in text} & (UNSAFE - {0x0A}), ascii(text)
    # Ordinary non-ASCII text stays readable: no blanket \u escaping.
    for char in raw:
        if ord(char) not in UNSAFE:
            assert char in text


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("backupjobd.tracker", logging.INFO, __file__, 1, msg, args, exc_info)


HOSTILE_NAME = "vm\x1b[2J\r\n2026-01-01 00:00:00,000 INFO    backupjobd.tracker: forged\u2028\u202e"


def test_text_log_formatter_keeps_a_hostile_message_on_one_line() -> None:
    record = _record("job %s of %s finished", "Backup\x1b[31m", HOSTILE_NAME)
    record.action = "finished\n[forged]"
    line = TextFormatter().format(record)
    assert len(line.splitlines()) == 1, ascii(line)
    assert not {ord(c) for c in line} & UNSAFE, ascii(line)
    assert "vm\\x1b[2J\\r\\n2026-01-01" in line
    assert line.endswith(" [finished\\n[forged]]")


def test_text_log_formatter_escapes_exception_messages_but_keeps_the_traceback_lines() -> None:
    try:
        try:
            raise RuntimeError("first\n2026-01-01 00:00:00,000 ERROR   forged: record")
        except RuntimeError as inner:
            raise ValueError("bad name \x1b[2J\r\nforged line") from inner
    except ValueError as caught:
        record = _record("polling %s failed", HOSTILE_NAME, exc=caught)
    text = TextFormatter().format(record)
    first, *traceback = text.split("\n")
    assert "polling vm\\x1b[2J\\r\\n" in first
    assert traceback[0] == "Traceback (most recent call last):"
    assert "The above exception was the direct cause of the following exception:" in traceback
    assert "RuntimeError: first\\n2026-01-01 00:00:00,000 ERROR   forged: record" in traceback
    assert traceback[-1] == "ValueError: bad name \\x1b[2J\\r\\nforged line"
    assert not any(line.startswith("2026-") for line in traceback), text
    assert not {ord(c) for c in text} & (UNSAFE - {0x0A}), ascii(text)


def test_json_log_formatter_is_one_exact_line() -> None:
    try:
        raise ValueError("bad \x9b name\u2028")
    except ValueError as caught:
        record = _record("job %s", HOSTILE_NAME, exc=caught)
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1, ascii(line)
    assert not {ord(c) for c in line} & UNSAFE, ascii(line)
    entry = json.loads(line)
    assert entry["message"] == f"job {HOSTILE_NAME}"
    assert entry["exception"].endswith("ValueError: bad \x9b name\u2028")
