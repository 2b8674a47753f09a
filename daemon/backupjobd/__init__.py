"""backupjobd: follows Azure Backup jobs until they finish and keeps every state change."""

from __future__ import annotations

__version__ = "0.1.0"
