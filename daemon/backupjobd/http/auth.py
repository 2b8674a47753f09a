"""Who may do what on the API: the full bearer token (everything), the read-only one (GET
only), and the web page's session cookie.

A browser cannot put a bearer token on a page navigation, and a token in a URL ends up in
histories, proxies and logs. So the page's login form POSTs the token as JSON (same-origin,
through the browser guard) and gets back a session cookie: HttpOnly (no script reads it),
SameSite=Strict (no other site's page makes the browser send it), signed with the token
that logged in (rotating that token ends the sessions; nothing is stored server-side, so
every replica sharing the tokens accepts it). A session only ever reads, whichever token
opened it: a cookie the browser sends by itself can then never change anything.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = [
    "SESSION_COOKIE",
    "SESSION_LIFETIME",
    "Access",
    "ApiTokens",
]

SESSION_COOKIE = "backupjobd_session"
SESSION_LIFETIME = timedelta(hours=12)


class Access(enum.Enum):
    FULL = "full"
    READ = "read"


@dataclass(frozen=True, slots=True)
class ApiTokens:
    """The configured tokens; with no full token the API is open (loopback, unix socket)."""

    full: str | None
    read: str | None = None

    @property
    def required(self) -> bool:
        return self.full is not None

    def bearer(self, header: str) -> Access | None:
        """The rights an `Authorization` header carries (None: none, or a wrong token).
        Both tokens are compared, in constant time, whichever matches."""
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.match(given.strip())

    def match(self, given: str) -> Access | None:
        given_bytes = given.encode("utf-8", "surrogateescape")
        full = _equal(given_bytes, self.full)
        read = _equal(given_bytes, self.read)
        if full:
            return Access.FULL
        return Access.READ if read else None

    def open_session(self, access: Access, now: datetime) -> str:
        """A cookie value: `who.expiry.nonce.mac`, the mac keyed by the token that logged in."""
        expires = int((now + SESSION_LIFETIME).timestamp())
        payload = f"{access.value}.{expires}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._mac(access, payload)}"

    def session(self, cookie: str | None, now: datetime) -> Access | None:
        """READ for a valid, unexpired session cookie (whichever token opened it), else None."""
        if not cookie or cookie.count(".") != 3:
            return None
        payload, _, mac = cookie.rpartition(".")
        who, expires, _nonce = payload.split(".")
        try:
            access = Access(who)
            expiry = int(expires)
        except ValueError:
            return None
        expected = self._mac(access, payload)
        if not expected or not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        return Access.READ if now.timestamp() < expiry else None

    def _mac(self, access: Access, payload: str) -> str:
        key = self.full if access is Access.FULL else self.read
        if key is None:
            return ""
        digest = hmac.new(
            b"backupjobd-session:" + key.encode(), payload.encode(), hashlib.sha256
        ).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _equal(given: bytes, token: str | None) -> bool:
    if token is None:
        return False
    return hmac.compare_digest(given, token.encode("utf-8"))
