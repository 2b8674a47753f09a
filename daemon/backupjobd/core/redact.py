"""Redaction of credentials from text that leaves the process (logs, `last_error`, API).

Error text is built from what a server answered, and a server may echo the request's
Authorization header back: whole, cut short, base64-encoded, or inside a JWT-shaped blob.
Matching only the exact token misses all but the first, so this also removes anything that
looks like a bearer token or a JWT, any long piece of the token, and its base64 forms.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable

REDACTED = "[redacted]"

# An echo this long of a piece of the token is treated as the token; shorter pieces of a
# random token do not occur by chance, longer ones are what a clipped echo leaves.
MIN_ECHO = 16
# Base64 fragments shorter than this (tokens of a few bytes) would match ordinary words.
_MIN_ENCODED = 8

# RFC 6750 b64token, taken whole (possessive) so that `realm="…"`-style parameters of a
# WWW-Authenticate header are recognised by the quote that follows them and kept.
_BEARER = re.compile(r"\bbearer\s+([A-Za-z0-9\-._~+/]++=*+)(?!\")", re.IGNORECASE)
# Header.payload.signature (the signature is empty when unsigned); JWE has two more parts.
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
# Words that follow "Bearer" in prose ("Bearer token is missing"); anything else is taken
# for a credential, however short.
_PROSE = re.compile(
    r"a|an|and|auth|authentication|authorization|error|header|is|missing|or|realm|required"
    r"|scheme|the|token|tokens|was",
    re.IGNORECASE,
)
# Characters of tokens and of base64 (no ".": a full stop after an echo is punctuation).
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~+/")


def redact_secrets(text: str, token: str | None = None) -> str:
    """`text` with every bearer token, JWT, echo of `token` and base64 of it replaced by
    "[redacted]". Ordinary error text (GUIDs, ARM ids, Azure error codes) is left alone."""
    if not text:
        return text
    spans: list[tuple[int, int]] = []
    for match in _BEARER.finditer(text):
        credential = match.group(1).rstrip(".")  # a full stop ends the sentence, not it
        if credential and not _PROSE.fullmatch(credential):
            spans.append((match.start(1), match.start(1) + len(credential)))
    spans.extend(match.span() for match in _JWT.finditer(text))
    if token:
        spans.extend(_token_spans(text, token))
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end in _merge(_widen(text, s, e) for s, e in spans):
        out += [text[last:start], REDACTED]
        last = end
    out.append(text[last:])
    return "".join(out)


def _token_spans(text: str, token: str) -> list[tuple[int, int]]:
    exact, windows = _needles(token)
    spans = []
    for needle in exact:
        start = text.find(needle)
        while start != -1:
            spans.append((start, start + len(needle)))
            start = text.find(needle, start + 1)
    for i in range(len(text) - MIN_ECHO + 1):
        if text[i : i + MIN_ECHO] in windows:
            spans.append((i, i + MIN_ECHO))
    return spans


@functools.lru_cache(maxsize=8)
def _needles(token: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """What an echo of `token` can look like: whole strings to find, and the set of every
    MIN_ECHO-long piece of the token and of its base64 forms (any piece of it gives it away)."""
    forms = [token, *_encoded_cores(token.encode("utf-8"))]
    exact = tuple(f for f in forms if f == token or len(f) >= _MIN_ENCODED)
    windows = frozenset(
        form[i : i + MIN_ECHO] for form in forms for i in range(len(form) - MIN_ECHO + 1)
    )
    return exact, windows


def _encoded_cores(raw: bytes) -> list[str]:
    """The base64 and base64url characters that encode `raw` alone, at each of the three
    alignments it can have inside longer data ("Bearer <token>", a whole header line): the
    characters at either end also carry bits of the neighbouring bytes and are left out."""
    cores = []
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + raw).decode("ascii")
        start = -(-8 * offset // 6)
        end = 8 * (offset + len(raw)) // 6
        core = encoded[start:end]
        cores += [core, core.replace("+", "-").replace("/", "_")]
    return list(dict.fromkeys(c for c in cores if c))


def _widen(text: str, start: int, end: int) -> tuple[int, int]:
    """Grow a match to the whole run of token characters (and `=` padding) around it, so
    that no edge of an encoded or clipped token is left behind."""
    while start > 0 and text[start - 1] in _TOKEN_CHARS:
        start -= 1
    while end < len(text) and (text[end] in _TOKEN_CHARS or text[end] == "="):
        end += 1
    return start, end


def _merge(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
