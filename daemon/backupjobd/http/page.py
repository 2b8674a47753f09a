"""The read-only web page: `GET /` (jobs in flight, recent failures, vaults, the 24-hour
timeline) and `GET /jobs/{job_id}` (one job's transitions, progress and task list), served
as HTML from the daemon itself with its CSS, script and icon from the package's `static/`.

Everything is rendered here, on the server, and every value is escaped on the way out
(entity and vault names come from Azure and are user-controlled). No inline script or
style exists, so the Content-Security-Policy allows the daemon's own files only; the
script just refreshes the page's content and submits the filters. Charts are SVG drawn
here (no library, no CDN).
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from backupjobd.core import overview
from backupjobd.core.model import JobRecord
from backupjobd.core.overview import Filters, Flight, TimelineBar, VaultStats
from backupjobd.http import keys
from backupjobd.http.auth import SESSION_COOKIE, SESSION_LIFETIME
from backupjobd.http.params import ApiError, bad_param, job_id_param

logger = logging.getLogger(__name__)

__all__ = ["add_page_routes", "is_page_path", "login_page"]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {
    "page.css": "text/css",
    "page.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
# How many jobs the page reads: those in flight, and those registered in the last 7 days.
IN_FLIGHT_LIMIT = 500
RECENT_LIMIT = 5000
RECENT_SPAN = timedelta(days=7)
TIMELINE_ROWS = 150
FAILURES_SHOWN = 20
FINISHED_SHOWN = 50
MAX_FILTER_LENGTH = 400
LOGIN_BODY_LIMIT = 4096


def add_page_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/", _index, allow_head=False)
    router.add_get("/jobs/{job_id}", _job_page, allow_head=False)
    router.add_get("/ui/static/{name}", _static, allow_head=False)
    router.add_post("/ui/session", _login)
    router.add_delete("/ui/session", _logout)


def is_page_path(path: str) -> bool:
    """The pages that show data (behind the token); their static files are public."""
    return path == "/" or path.startswith("/jobs/")


# ---- handlers --------------------------------------------------------------------------


async def _index(request: web.Request) -> web.StreamResponse:
    filters = _filters(request)
    now = request.app[keys.CLOCK]()
    store = request.app[keys.STORE]
    flying = await store.list_jobs(finished=False, limit=IN_FLIGHT_LIMIT)
    recent = await store.list_jobs(since=now - RECENT_SPAN, limit=RECENT_LIMIT, newest_first=True)
    # Rendering thousands of rows takes a while: in a thread, the event loop (the pollers,
    # the other requests) keeps its turns.
    body = await asyncio.to_thread(
        _index_body,
        await request.app[keys.DURATIONS].annotated(store, [*flying, *recent]),
        filters,
        now,
        logged_in=_has_session(request),
        refresh_seconds=request.app[keys.CONFIG].page_refresh_seconds,
    )
    return _html(body)


def _index_body(
    records: list[JobRecord],
    filters: Filters,
    now: datetime,
    *,
    logged_in: bool,
    refresh_seconds: float,
) -> str:
    seen: dict[tuple[str, str], Mapping[str, Any]] = {}
    for record in records:
        view = record.to_json()
        seen[(view["vault_id"], view["job_id"])] = view
    return _render_index(
        list(seen.values()), filters, now, logged_in=logged_in, refresh_seconds=refresh_seconds
    )


async def _job_page(request: web.Request) -> web.StreamResponse:
    job_id = job_id_param(request)
    unknown = sorted(set(request.query) - {"vault"})
    if unknown:
        raise bad_param(unknown[0][:40], "is not a parameter of this page")
    vault = _text_param(request, "vault")
    found = await request.app[keys.STORE].find_jobs(job_id)
    if vault:
        found = [j for j in found if j.vault_id.lower().rstrip("/") == vault.lower().rstrip("/")]
    if not found:
        raise ApiError(404, "not_found", f"job {job_id} is not tracked")
    if len(found) > 1:
        raise ApiError(409, "ambiguous", f"job {job_id} is tracked in several vaults: give ?vault=")
    store = request.app[keys.STORE]
    (job,) = await request.app[keys.DURATIONS].annotated(store, found[:1])
    transitions, snapshots = await store.history(job.pk)
    body = _render_job(
        job.to_json(),
        [t.to_json() for t in transitions],
        [s.to_json() for s in snapshots],
        request.app[keys.CLOCK](),
        logged_in=_has_session(request),
        refresh_seconds=request.app[keys.CONFIG].page_refresh_seconds,
    )
    return _html(body)


async def _static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    content_type = STATIC_TYPES.get(name)
    if content_type is None:
        raise ApiError(404, "not_found", "no such file")
    data = resources.files("backupjobd.http").joinpath("static", name).read_bytes()
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "Content-Type": content_type}
    return web.Response(body=data, headers=headers)


async def _login(request: web.Request) -> web.StreamResponse:
    """`{"token": "…"}` (the full or the read-only token) → a read-only session cookie."""
    tokens = request.app[keys.API_TOKENS]
    if not tokens.required:
        raise ApiError(400, "no_token", "this API has no token: the page needs no login")
    if request.content_length is not None and request.content_length > LOGIN_BODY_LIMIT:
        raise ApiError(413, "payload_too_large", "request body is too large")
    try:
        async with asyncio.timeout(request.app[keys.CONFIG].body_timeout_seconds):
            raw = await request.read()
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the request body did not arrive in time") from None
    if len(raw) > LOGIN_BODY_LIMIT:
        raise ApiError(413, "payload_too_large", "request body is too large")
    try:
        given = json.loads(raw)["token"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, "invalid_input", 'the body must be {"token": "..."}') from None
    access = tokens.match(given) if isinstance(given, str) else None
    if access is None:
        # DEBUG, as every other 401: whoever can connect could otherwise fill the log.
        logger.debug("web page sign-in refused", extra={"action": "page_login_refused"})
        raise ApiError(401, "unauthorized", "wrong token")
    logger.info(
        "web page session opened with the %s token", access.value, extra={"action": "page_login"}
    )
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        SESSION_COOKIE,
        tokens.open_session(access, request.app[keys.CLOCK]()),
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


async def _logout(request: web.Request) -> web.StreamResponse:
    response = web.Response(status=204, headers={"Cache-Control": "no-store"})
    response.del_cookie(SESSION_COOKIE, path="/", samesite="Strict")
    return response


def login_page() -> web.Response:
    """What a browser gets instead of the page without a session: the sign-in form, at the
    page's own address (so signing in reloads where the user was). It is a 200: a browser
    reports a page loaded as 401 as a console error."""
    body = _document(
        "backupjobd — sign in",
        '<main class="login"><h1>backupjobd</h1>'
        '<form id="login" autocomplete="off">'
        '<label for="token">API token (full or read-only)</label>'
        '<input id="token" name="token" type="password" required autocomplete="current-password">'
        '<button type="submit">Sign in</button>'
        '<p id="login-error" role="alert"></p></form>'
        '<p class="hint">The token is sent once, in the body of a same-origin request; the '
        "page then keeps a read-only session cookie.</p></main>",
    )
    return _html(body)


# ---- parameters --------------------------------------------------------------------------


def _filters(request: web.Request) -> Filters:
    unknown = sorted(set(request.query) - {"vault", "status", "kind"})
    if unknown:
        raise bad_param(unknown[0][:40], "is not a parameter of this page")
    kind = _text_param(request, "kind")
    if kind and kind not in overview.KINDS:
        raise bad_param("kind", f"must be one of {', '.join(overview.KINDS)}")
    return Filters(_text_param(request, "vault"), _text_param(request, "status"), kind)


def _text_param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise bad_param(name, "is given more than once")
    value = values[0].strip() if values else ""
    if len(value) > MAX_FILTER_LENGTH or not value.isprintable():
        raise bad_param(name, f"must be printable and at most {MAX_FILTER_LENGTH} characters")
    return value or None


def _has_session(request: web.Request) -> bool:
    return SESSION_COOKIE in request.cookies and request.app[keys.API_TOKENS].required


# ---- rendering ---------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escaped text for element content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(
        body=body.encode("utf-8"),
        status=status,
        headers={**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"},
    )


def _document(
    title: str, content: str, *, logged_in: bool = False, refresh_seconds: float = 0
) -> str:
    logout = (
        '<button id="logout" type="button" class="logout">Sign out</button>' if logged_in else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>"
        '<link rel="icon" href="/ui/static/icon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/ui/static/page.css">'
        '<script src="/ui/static/page.js" defer></script></head>'
        f'<body data-refresh="{refresh_seconds:g}">{logout}{content}</body></html>'
    )


def _time(value: datetime | str | None) -> str:
    when = overview.parse_time(value) if isinstance(value, str) else value
    if when is None:
        return "—"
    return when.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s"


def _job_href(job: Mapping[str, Any]) -> str:
    return f"/jobs/{_e(job['job_id'])}?{_e(urlencode({'vault': job['vault_id']}))}"


def _name(job: Mapping[str, Any]) -> str:
    return str(job.get("entity_friendly_name") or job.get("job_id"))


def _progress(value: float | None) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    return f'<progress max="100" value="{value:.1f}">{value:.0f}%</progress> {value:.0f}%'


def _render_index(
    jobs: Sequence[Mapping[str, Any]],
    filters: Filters,
    now: datetime,
    *,
    logged_in: bool,
    refresh_seconds: float,
) -> str:
    shown = filters.apply(jobs)
    flights = overview.in_flight(shown, now)
    failures = overview.recent_failures(shown, FAILURES_SHOWN)
    finished = overview.recently_finished(shown, FINISHED_SHOWN)
    vaults = overview.vault_stats(shown, now)
    bars = overview.timeline(shown, now)[-TIMELINE_ROWS:]
    content = (
        '<header><h1>backupjobd</h1><p class="updated">updated <time id="updated">'
        f"{_time(now)}</time> · {len(shown)} jobs (in flight, or registered in the last 7 days)"
        f"</p>{_filter_form(jobs, filters)}</header>"
        f'<main id="content">{_flights_section(flights)}{_failures_section(failures)}'
        f"{_finished_section(finished)}{_vaults_section(vaults)}"
        f"{_timeline_section(bars, now)}</main>"
    )
    return _document("backupjobd", content, logged_in=logged_in, refresh_seconds=refresh_seconds)


def _options(name: str, label: str, values: Iterable[tuple[str, str]], chosen: str | None) -> str:
    options = [f'<option value="">all {_e(label)}</option>']
    for value, text in values:
        selected = " selected" if chosen is not None and value.lower() == chosen.lower() else ""
        options.append(f'<option value="{_e(value)}"{selected}>{_e(text)}</option>')
    select = f'<select name="{name}" class="autosubmit">{"".join(options)}</select>'
    return f"<label>{_e(label)} {select}</label>"


def _filter_form(jobs: Sequence[Mapping[str, Any]], filters: Filters) -> str:
    vaults = sorted(
        {str(j["vault_id"]) for j in jobs}, key=lambda v: overview.vault_name(v).lower()
    )
    statuses = sorted({str(j.get("status") or "unseen") for j in jobs})
    return (
        '<form class="filters" method="get" action="/">'
        + _options("vault", "vaults", ((v, overview.vault_name(v)) for v in vaults), filters.vault)
        + _options("status", "statuses", ((s, s) for s in statuses), filters.status)
        + _options("kind", "kinds", ((k, k) for k in overview.KINDS), filters.kind)
        + '<button type="submit">Filter</button></form>'
    )


def _flights_section(flights: Sequence[Flight]) -> str:
    rows = []
    for flight in flights:
        job = flight.job
        marks = []
        if flight.stuck:
            marks.append('<span class="mark stuck">stuck</span>')
        if flight.overdue:
            marks.append('<span class="mark overdue">overdue</span>')
        classes = " ".join(
            c for c, on in (("stuck", flight.stuck), ("overdue", flight.overdue)) if on
        )
        rows.append(
            f'<tr class="{classes}"><td><a href="{_job_href(job)}">{_e(_name(job))}</a> '
            f"{''.join(marks)}</td>"
            f"<td>{_e(job.get('operation') or '—')}</td>"
            f"<td>{_e(overview.vault_name(str(job['vault_id'])))}</td>"
            f"<td>{_e(job.get('status') or 'unseen')}</td>"
            f"<td>{_progress(flight.progress)}</td>"
            f"<td>{_duration(flight.elapsed_seconds)}</td>"
            f"<td>{_time(flight.expected_end)}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="7" class="muted">No job in flight.</td></tr>'
    return (
        f'<section id="in-flight"><h2>In flight ({len(flights)})</h2><table>'
        "<thead><tr><th>Entity</th><th>Operation</th><th>Vault</th><th>Status</th>"
        "<th>Progress</th><th>Elapsed</th><th>Expected end</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def _error_list(details: Any) -> str:
    items = []
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        recommendations = "".join(f"<li>{_e(r)}</li>" for r in detail.get("recommendations") or [])
        items.append(
            f"<li><code>{_e(detail.get('code') or '—')}</code> {_e(detail.get('message'))}"
            + (f'<ul class="recommendations">{recommendations}</ul>' if recommendations else "")
            + "</li>"
        )
    return f'<ul class="errors">{"".join(items)}</ul>' if items else '<span class="muted">—</span>'


def _failures_section(failures: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        f'<tr><td><a href="{_job_href(job)}">{_e(_name(job))}</a></td>'
        f"<td>{_e(job.get('operation') or '—')}</td>"
        f"<td>{_e(overview.vault_name(str(job['vault_id'])))}</td>"
        f"<td>{_time(job.get('end_time') or job.get('finished_at'))}</td>"
        f"<td>{_error_list(job.get('error_details'))}</td></tr>"
        for job in failures
    ]
    body = "".join(rows) or '<tr><td colspan="5" class="muted">No failure.</td></tr>'
    return (
        f'<section id="failures"><h2>Recent failures ({len(failures)})</h2><table>'
        "<thead><tr><th>Entity</th><th>Operation</th><th>Vault</th><th>Ended</th>"
        f"<th>Azure's error</th></tr></thead><tbody>{body}</tbody></table></section>"
    )


def _finished_section(jobs: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        f'<tr class="{overview.outcome(job)}"><td><a href="{_job_href(job)}">{_e(_name(job))}</a>'
        f"</td><td>{_e(job.get('operation') or '—')}</td>"
        f"<td>{_e(overview.vault_name(str(job['vault_id'])))}</td>"
        f"<td>{_e(job.get('status') or job.get('tracking'))}</td>"
        f"<td>{_time(job.get('start_time'))}</td>"
        f"<td>{_time(job.get('end_time') or job.get('finished_at'))}</td></tr>"
        for job in jobs
    ]
    body = "".join(rows) or '<tr><td colspan="6" class="muted">No finished job.</td></tr>'
    return (
        f'<section id="finished"><h2>Recently finished ({len(jobs)})</h2><table>'
        "<thead><tr><th>Entity</th><th>Operation</th><th>Vault</th><th>Status</th>"
        f"<th>Started</th><th>Ended</th></tr></thead><tbody>{body}</tbody></table></section>"
    )


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _vaults_section(vaults: Sequence[VaultStats]) -> str:
    rows = []
    for stats in vaults:
        counts = " ".join(
            f'<span class="count">{_e(status)} {count}</span>'
            for status, count in sorted(stats.counts.items())
        )
        rows.append(
            f'<tr><td title="{_e(stats.vault_id)}">{_e(overview.vault_name(stats.vault_id))}</td>'
            f"<td>{_e(stats.kind)}</td><td>{counts}</td>"
            f"<td>{_rate(stats.success_rates.get('1d'))}</td>"
            f"<td>{_rate(stats.success_rates.get('7d'))}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="5" class="muted">No vault.</td></tr>'
    return (
        '<section id="vaults"><h2>Vaults</h2><table><thead><tr><th>Vault</th><th>Kind</th>'
        "<th>Jobs by status</th><th>Success, 1 day</th><th>Success, 7 days</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


CHART_WIDTH = 1000
ROW_HEIGHT = 14
AXIS_HEIGHT = 22
MIN_BAR_WIDTH = 3.0


def _timeline_section(bars: Sequence[TimelineBar], now: datetime) -> str:
    height = AXIS_HEIGHT + ROW_HEIGHT * max(1, len(bars)) + 4
    origin = now - overview.TIMELINE_SPAN
    parts = []
    for hour in range(0, 25, 3):
        x = CHART_WIDTH * hour / 24
        label = (origin + timedelta(hours=hour)).strftime("%H:%M")
        anchor = "start" if hour == 0 else "end" if hour == 24 else "middle"
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{AXIS_HEIGHT - 6}" x2="{x:.1f}" y2="{height}"/>'
            f'<text class="axis" x="{x:.1f}" y="12" text-anchor="{anchor}">{label}</text>'
        )
    for row, bar in enumerate(bars):
        job = bar.job
        width = max(MIN_BAR_WIDTH, CHART_WIDTH * (bar.end - bar.start))
        x = min(CHART_WIDTH * bar.start, CHART_WIDTH - width)  # a job just started stays inside
        y = AXIS_HEIGHT + row * ROW_HEIGHT
        tip = f"{_name(job)} — {job.get('operation') or ''} — {job.get('status') or 'unseen'}"
        parts.append(
            f'<a href="{_job_href(job)}"><rect class="bar {bar.outcome}" x="{x:.1f}" y="{y}" '
            f'width="{width:.1f}" height="{ROW_HEIGHT - 3}"><title>{_e(tip)}</title></rect></a>'
        )
    legend = "".join(
        f'<span class="legend {o}">{o}</span>'
        for o in ("running", "succeeded", "warning", "failed", "cancelled", "unseen")
    )
    return (
        f'<section id="timeline"><h2>Last 24 hours ({len(bars)} jobs)</h2>'
        f'<p class="legends">{legend}</p>'
        f'<svg class="chart" viewBox="0 0 {CHART_WIDTH} {height}" role="img" '
        f'aria-label="jobs of the last 24 hours on a time axis">{"".join(parts)}</svg></section>'
    )


def _render_job(
    job: Mapping[str, Any],
    transitions: Sequence[Mapping[str, Any]],
    snapshots: Sequence[Mapping[str, Any]],
    now: datetime,
    *,
    logged_in: bool,
    refresh_seconds: float,
) -> str:
    fields = [
        ("Job id", job.get("job_id")),
        ("Vault", job.get("vault_id")),
        ("Kind", overview.job_kind(job)),
        ("Region", job.get("region") or "—"),
        ("Status", job.get("status") or "unseen"),
        ("Operation", job.get("operation")),
        ("Job type", job.get("job_type")),
        ("Tracking", job.get("tracking")),
        ("Started", _time(job.get("start_time"))),
        ("Ended", _time(job.get("end_time"))),
        ("Expected end", _time(job.get("expected_end_at"))),
        ("Registered", _time(job.get("registered_at"))),
        ("Last polled", _time(job.get("last_polled_at"))),
        ("Polls", job.get("poll_count")),
        ("Stuck since", _time(job.get("stuck_since"))),
        ("Operation id", job.get("operation_id") or "—"),
        ("Last read error", job.get("last_error") or "—"),
    ]
    facts = "".join(
        f"<dt>{_e(k)}</dt><dd>{_e(v if v is not None else '—')}</dd>" for k, v in fields
    )
    progress = job.get("progress_percent")
    latest = snapshots[-1].get("properties") if snapshots else None
    content = (
        f'<header><p><a href="/">← all jobs</a></p><h1>{_e(_name(job))}</h1>'
        f'<p class="updated">updated <time id="updated">{_time(now)}</time></p></header>'
        f'<main id="content"><section id="job"><dl class="facts">{facts}</dl>'
        f"<p>Progress: {_progress(float(progress) if isinstance(progress, int | float) else None)}"
        f"</p><h2>Azure's error</h2>{_error_list(job.get('error_details'))}</section>"
        f"{_progress_chart(overview.progress_series(snapshots), now)}"
        f"{_tasks_section(overview.snapshot_tasks(latest))}"
        f"{_transitions_section(transitions)}{_snapshots_section(snapshots)}</main>"
    )
    title = f"backupjobd — {_name(job)}"
    return _document(title, content, logged_in=logged_in, refresh_seconds=refresh_seconds)


def _progress_chart(series: Sequence[tuple[datetime, float]], now: datetime) -> str:
    if not series:
        return (
            '<section id="progress"><h2>Progress over time</h2>'
            '<p class="muted">No snapshot says how far the job is.</p></section>'
        )
    start, end = series[0][0], max(series[-1][0], series[0][0] + timedelta(seconds=1))
    span = (end - start).total_seconds()
    height = 160
    xy = [
        (CHART_WIDTH * (at - start).total_seconds() / span, height - height * pct / 100)
        for at, pct in series
    ]
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    dots = "".join(f'<circle class="progress-dot" cx="{x:.1f}" cy="{y:.1f}" r="4"/>' for x, y in xy)
    return (
        '<section id="progress"><h2>Progress over time</h2>'
        f'<svg class="chart" viewBox="0 -4 {CHART_WIDTH} {height + 24}" role="img" '
        f'aria-label="progress from {_time(start)} to {_time(end)}">'
        f'<line class="grid" x1="0" y1="{height}" x2="{CHART_WIDTH}" y2="{height}"/>'
        f'<line class="grid" x1="0" y1="0" x2="{CHART_WIDTH}" y2="0"/>'
        f'<polyline class="progress-line" points="{points}"/>{dots}'
        f'<text class="axis" x="0" y="{height + 18}">{_time(start)}</text>'
        f'<text class="axis" x="{CHART_WIDTH}" y="{height + 18}" text-anchor="end">'
        f"{_time(end)}</text>"
        "</svg></section>"
    )


def _tasks_section(tasks: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(t.get('taskId'))}</td><td>{_e(t.get('status'))}</td>"
        f"<td>{_time(t.get('startTime'))}</td><td>{_time(t.get('endTime'))}</td>"
        f"<td>{_e(t.get('duration') or '—')}</td>"
        f"<td>{_e(_or_dash(t.get('progressPercentage')))}</td></tr>"
        for t in tasks
    )
    body = rows or '<tr><td colspan="6" class="muted">No task list.</td></tr>'
    return (
        '<section id="tasks"><h2>Tasks (latest snapshot)</h2><table><thead><tr><th>Task</th>'
        "<th>Status</th><th>Start</th><th>End</th><th>Duration</th><th>Progress</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def _or_dash(value: Any) -> Any:
    return "—" if value is None else value


def _transitions_section(transitions: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_time(t.get('observed_at'))}</td><td>{_e(t.get('from_status') or '—')}</td>"
        f"<td>{_e(t.get('to_status'))}</td></tr>"
        for t in transitions
    )
    body = rows or '<tr><td colspan="3" class="muted">Not seen yet.</td></tr>'
    return (
        '<section id="transitions"><h2>Transitions</h2><table><thead><tr><th>Observed</th>'
        f"<th>From</th><th>To</th></tr></thead><tbody>{body}</tbody></table></section>"
    )


def _snapshots_section(snapshots: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for snapshot in snapshots:
        props = snapshot.get("properties")
        tasks = overview.snapshot_tasks(props)
        done = sum(1 for t in tasks if str(t.get("status", "")).lower() in overview.SUCCESS)
        pct = overview.snapshot_progress(props)
        rows.append(
            f"<tr><td>{_time(snapshot.get('observed_at'))}</td>"
            f"<td>{_e(snapshot.get('status'))}</td>"
            f"<td>{'—' if pct is None else f'{pct:.0f}%'}</td>"
            f"<td>{f'{done}/{len(tasks)}' if tasks else '—'}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="4" class="muted">No snapshot.</td></tr>'
    return (
        f'<section id="snapshots"><h2>Snapshots ({len(snapshots)})</h2><table><thead><tr>'
        "<th>Observed</th><th>Status</th><th>Progress</th><th>Tasks done</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )
