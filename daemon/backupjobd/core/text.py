"""Untrusted text (Azure fields such as entityFriendlyName, user input) made safe to show.

Job and operation names come from whoever named the VM or the item, so printing them raw
lets an ESC sequence drive the reader's terminal, a CR/LF forge a table row or a log line,
and a bidi override reorder what is displayed. This module has no imports beyond the
standard library so that both the CLI and the logging setup can use it.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, line/paragraph separators, bidi embeddings/overrides and
# isolates, and lone surrogates (undecodable bytes from argv or the environment, which a
# strict UTF-8 stdout would refuse with a traceback).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
# What json.dumps(ensure_ascii=False) leaves raw; it already escapes C0 itself, and a raw
# newline outside strings is indentation, so C0 must not be touched in JSON text.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def printable(text: str) -> str:
    """`text` with every unsafe character as a visible escape (`\\x1b`, `\\n`, `\\u202e`).

    Everything else, other scripts included, is kept. Backslashes are not doubled: this is
    for people reading a terminal or a log line; machines get JSON.
    """
    return _UNSAFE.sub(_escape, text)


def json_safe(document: str) -> str:
    """Serialized JSON with DEL, C1, separators, bidi controls and surrogates as `\\uXXXX`.

    The decoded value is unchanged; only these characters, which can only occur inside
    strings, are spelled differently, so a terminal or a line splitter never sees them raw.
    """
    return _UNSAFE_IN_JSON.sub(_json_escape, document)
