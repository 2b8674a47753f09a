"""A scheduler job cancelled because `serve` stops is not an error worth a traceback."""

from __future__ import annotations

import asyncio
import io
import logging

from backupjobd.adapters import logs


def _report(exc: BaseException) -> None:
    try:
        raise exc
    except BaseException:
        logging.getLogger("apscheduler.executors.default").exception('Job "tick" raised')


def test_cancelled_jobs_are_not_reported_and_failures_still_are() -> None:
    stream = io.StringIO()
    logs.configure("INFO", "text", stream)
    logs.configure("INFO", "text", stream)  # twice: still one filter
    _report(asyncio.CancelledError())
    assert stream.getvalue() == ""
    _report(ValueError("boom"))
    assert 'Job "tick" raised' in stream.getvalue()
    assert "ValueError: boom" in stream.getvalue()
    executors = logging.getLogger("apscheduler.executors.default")
    assert sum(isinstance(f, logs.DropCancelledJobs) for f in executors.filters) == 1
