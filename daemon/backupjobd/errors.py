"""One root exception; every error the daemon raises on purpose derives from it.

Adapters translate library errors (aiohttp, SQLAlchemy) at their edge into
`TransientError` (worth retrying) or `PermanentError` (retrying will not help).
"""

from __future__ import annotations


class BackupJobdError(Exception):
    """backupjobd failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(BackupJobdError):
    """The configuration is not valid."""


class InvalidInput(BackupJobdError):
    """The input was rejected; nothing was stored."""


class TransientError(BackupJobdError):
    """A temporary failure; the same request may succeed later."""

    def __init__(self, message: str | None = None, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyPages(TransientError):
    """A job list went on past the pages its caller would read."""


class PermanentError(BackupJobdError):
    """A failure that retrying will not fix."""

    def __init__(
        self, message: str | None = None, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class NotFound(PermanentError):
    """Azure answered 404 for the resource."""


class StoreError(BackupJobdError):
    """The database could not complete the request."""

    def __init__(self, message: str | None = None, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class CredentialError(BackupJobdError):
    """No access token could be obtained."""
