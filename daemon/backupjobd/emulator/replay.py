"""Replay of recorded Azure Backup traffic (`shared/recordings/*.json`) by the emulator.

Synthetic lifecycles only show what we thought Azure does; the recordings show what it did
(HTTP 500 and 429 in the middle of polling, operation relabelling, PowerShell-era shapes).
Serving each recorded resource's answers in order lets the real daemon be checked against
them: per resource, the n-th request gets the n-th recorded answer, and the last one repeats.
"""

from __future__ import annotations

import email.utils
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

from aiohttp import web

from backupjobd.core import azure
from backupjobd.errors import InvalidInput

logger = logging.getLogger(__name__)

#: Default ceiling for recorded ``Retry-After`` values: Azure said 60 s, replays run in seconds.
DEFAULT_RETRY_AFTER_CAP: Final = 1

_URL_HEADERS: Final = frozenset({"location", "azure-asyncoperation"})
_GUID: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_VAULT: Final = r"(?P<vault>/subscriptions/[^/]+/resourcegroups/[^/]+/providers/[^/]+/vaults/[^/]+)"
_JOB_GET_RE: Final = re.compile(rf"^{_VAULT}/backupjobs/(?P<job>{_GUID})$")
_JOB_LIST_RE: Final = re.compile(rf"^{_VAULT}/backupjobs$")
# Operation-status resources: the vault-level one and the per-protected-item one. Azure
# answers both for the same operation id, so they are aliases of each other when replaying.
_OP_STATUS_RE: Final = re.compile(
    rf"^{_VAULT}(?:/backupoperations"
    r"|/backupfabrics/[^/]+/protectioncontainers/[^/]+/protecteditems/[^/]+/operationsstatus)"
    r"/(?P<op>[^/]+)$"
)
_CRR_JOB_SUFFIX: Final = "/backupcrrjob"
_CRR_JOB_KEY_RE: Final = re.compile(
    rf"^/subscriptions/[^/]+/providers/microsoft\.recoveryservices/locations/[^/]+"
    rf"/backupcrrjob#(?P<job>{_GUID})$"
)
_CRR_OP_STATUS_RE: Final = re.compile(
    r"^/subscriptions/[^/]+/providers/microsoft\.recoveryservices/locations/[^/]+"
    r"/backupcrroperationsstatus/(?P<op>[^/]+)$"
)
_ANY_VAULT_RE: Final = re.compile(
    r"/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.recoveryservices"
    r"/vaults/[^/?]+",
    re.IGNORECASE,
)


def crr_job_key(path: str, job_id: str) -> str:
    """Replay key of a cross-region restore's job reads: one path (POST backupCrrJob) for
    every job, told apart by the job name in the request body (the answer's job id)."""
    return f"{normalise_path(path)}#{job_id.lower()}"


Key = tuple[str, str]


def normalise_path(path: str) -> str:
    """Key form of a request path: no query, percent-decoded, lower-case, no trailing slash.

    aiohttp hands handlers the decoded path, while recordings keep ``%3B`` and friends, and
    ARM paths are case-insensitive (PowerShell writes ``/Subscriptions/``).
    """
    return unquote(path.split("?", 1)[0]).rstrip("/").lower()


@dataclass(frozen=True, slots=True)
class RecordedAnswer:
    """One recorded HTTP answer; ``headers`` keep the recorder's names and order."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: Any
    date: datetime | None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def job_status(self) -> str | None:
        """``properties.status`` of a 200 JobResource answer, else None."""
        if self.status != 200 or not isinstance(self.body, dict):
            return None
        props = self.body.get("properties")
        status = props.get("status") if isinstance(props, dict) else None
        return status if isinstance(status, str) and status else None


@dataclass(frozen=True, slots=True)
class ExpectedJob:
    """What a client following the recording should end up knowing about one job."""

    job_id: str
    vault_id: str
    registered_by: str  # "operation" | "job-id", as the recorded client learnt the job
    operation_path: str | None  # path + query of the operation URL to register, host-less
    statuses: tuple[str, ...]  # distinct statuses in recorded order (repeats collapsed)
    final_status: str
    answers: int  # recorded answers of GET backupJobs/{id}, errors included
    #: Answers a client reads before it knows the final status: up to the first terminal
    #: answer, or all of them when the recording ends with the job still running.
    answers_to_final: int
    #: A cross-region restore's job: its secondary region (registered with --vault).
    region: str | None = None
    #: The replay key of its reads (`resource_path`), when not `{vault}/backupJobs/{id}`.
    resource: str | None = None

    @property
    def resource_path(self) -> str:
        """The key its reads are served under (`/admin/replay` progress `path`)."""
        return self.resource or normalise_path(f"{self.vault_id}/backupJobs/{self.job_id}")

    def operation_url(self, base_url: str) -> str | None:
        """The operation URL on an emulator at ``base_url``."""
        return None if self.operation_path is None else base_url.rstrip("/") + self.operation_path


@dataclass(slots=True)
class Recording:
    """A recording grouped by resource: key (METHOD, normalised path) -> ordered answers."""

    path: Path
    source: str
    powershell: bool
    sequences: dict[Key, list[RecordedAnswer]]
    interactions: list[Mapping[str, Any]]
    skipped: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.stem

    def expected_jobs(self) -> list[ExpectedJob]:
        """Every vault job read through GET backupJobs/{id}, and every cross-region
        restore's job read through POST locations/{l}/backupCrrJob, in first-read order.

        A CRR job is registered through its `backupCrrOperationsStatus` URL with the
        recording's (source) vault as `--vault`. Jobs under a vault path
        ``backupjobd.core.azure`` rejects (the 2016 dogfood provider
        ``Microsoft.RecoveryServicesBVTD``) are left out as the daemon cannot track them either.
        """
        namers = self._operations_naming_jobs()
        jobs: list[ExpectedJob] = []
        for (method, path), answers in self.sequences.items():
            crr = _CRR_JOB_KEY_RE.match(path)
            if method == "POST" and crr is not None:
                expected = self._crr_expected(path, crr["job"], answers, namers)
                if expected is not None:
                    jobs.append(expected)
                continue
            found = _JOB_GET_RE.match(path)
            if method != "GET" or found is None:
                continue
            original = self._original_path(method, path)
            try:
                vault, job_id = azure.parse_job_arm_id(original)
            except InvalidInput:
                continue
            statuses = _collapse(a.job_status for a in answers)
            if not statuses:
                continue
            op_path = namers.get(job_id)
            final = statuses[-1]
            to_final = len(answers)
            if final in azure.TERMINAL_STATUSES:
                to_final = next(i for i, a in enumerate(answers, 1) if a.job_status == final)
            jobs.append(
                ExpectedJob(
                    job_id=job_id,
                    vault_id=vault.id,
                    registered_by="operation" if op_path is not None else "job-id",
                    operation_path=op_path,
                    statuses=statuses,
                    final_status=final,
                    answers=len(answers),
                    answers_to_final=to_final,
                )
            )
        return jobs

    def _crr_expected(
        self, key: str, job_id: str, answers: list[RecordedAnswer], namers: dict[str, str]
    ) -> ExpectedJob | None:
        statuses = _collapse(a.job_status for a in answers)
        vault = self._source_vault()
        if not statuses or vault is None:
            return None
        final = statuses[-1]
        to_final = len(answers)
        if final in azure.TERMINAL_STATUSES:
            to_final = next(i for i, a in enumerate(answers, 1) if a.job_status == final)
        body = next((a.body for a in answers if isinstance(a.body, dict)), {})
        crr = azure.parse_crr_job_id(str(body.get("id", "")))
        op_path = namers.get(job_id)
        return ExpectedJob(
            job_id=job_id,
            vault_id=vault,
            registered_by="operation" if op_path is not None else "job-id",
            operation_path=op_path,
            statuses=statuses,
            final_status=final,
            answers=len(answers),
            answers_to_final=to_final,
            region=crr.region if crr is not None else None,
            resource=key,
        )

    def _source_vault(self) -> str | None:
        """The Recovery Services vault the recording works in (a CRR job's source vault: the
        recordings keep no request bodies, so the first vault path or body mention stands
        for it; a recording of CRR calls only names none, and a stand-in vault of its
        subscription is used, which replay does not check)."""
        for item in self.interactions:
            for text in (unquote(str(item["url"])), json.dumps(item.get("body"))):
                found = _ANY_VAULT_RE.search(text)
                if found is None:
                    continue
                try:
                    return azure.vault_from_id(found.group(0)).id
                except InvalidInput:
                    continue
        for item in self.interactions:
            sub = azure.subscription_in_path(unquote(str(item["url"])))
            if sub is not None:
                return azure.VaultRef(sub, "replay", "crr-source-vault").id
        return None

    def _original_path(self, method: str, key_path: str) -> str:
        """The path of the first interaction with this key, in the recorder's spelling."""
        for item in self.interactions:
            url = str(item["url"])
            if item["method"] == method and normalise_path(url) == key_path:
                return unquote(url.split("?", 1)[0])
        raise KeyError(key_path)  # pragma: no cover - keys come from these interactions

    def _operations_naming_jobs(self) -> dict[str, str]:
        """job id -> operation URL path (host-less) of the first operation that named it."""
        named: dict[str, str] = {}
        for item in self.interactions:
            url = str(item["url"])
            if item["method"] != "GET" or item["status"] != 200:
                continue
            found = _OP_STATUS_RE.match(normalise_path(url)) or _CRR_OP_STATUS_RE.match(
                normalise_path(url)
            )
            if found is None:
                continue
            try:
                job_ids = azure.parse_operation_status(item["body"]).job_ids
            except azure.BodyError:
                continue
            for job_id in job_ids:
                named.setdefault(job_id, self._operation_url_for(found["op"], url))
        return named

    def _operation_url_for(self, op_id: str, polled_url: str) -> str:
        """The trigger's ``Azure-AsyncOperation`` for this operation, else the polled URL."""
        for item in self.interactions:
            if item["method"] == "GET":
                continue
            for name, value in _header_items(item.get("headers") or {}):
                if name.lower() != "azure-asyncoperation":
                    continue
                parts = urlsplit(value)
                try:
                    found_op = azure.parse_operation_target(unquote(parts.path)).operation_id
                except InvalidInput:
                    continue
                if found_op.lower() == op_id.lower():
                    return parts.path + (f"?{parts.query}" if parts.query else "")
        return polled_url


class ReplayError(ValueError):
    """A recording cannot be read or does not have the recording shape."""


def load_recording(path: str | Path) -> Recording:
    """Parse one recording file and group its answers by resource."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReplayError(f"cannot read recording {path}: {exc}") from exc
    interactions = doc.get("interactions") if isinstance(doc, dict) else None
    if not isinstance(interactions, list) or not all(
        isinstance(i, dict)
        and {"method", "url", "status"} <= i.keys()
        and isinstance(i["status"], int)
        and isinstance(i.get("headers") or {}, dict)
        for i in interactions
    ):
        raise ReplayError(f"{path} is not a recording: no list of method/url/status entries")
    source = str(doc.get("source") or "")
    powershell = "azure-powershell" in source.lower() or any(
        name != name.lower() for item in interactions for name in (item.get("headers") or {})
    )
    sequences: dict[Key, list[RecordedAnswer]] = {}
    skipped: list[str] = []
    for item in interactions:
        method = str(item["method"]).upper()
        key_path = normalise_path(str(item["url"]))
        if key_path.endswith(_CRR_JOB_SUFFIX):
            # CRR job reads differ by request body (the job name), which recordings do not
            # keep: each answer is keyed by the job it names instead.
            job = _answer_job_id(item.get("body"))
            if job is None:
                skipped.append(f"{method} {key_path}")
                continue
            key_path = crr_job_key(key_path, job)
        if _JOB_LIST_RE.match(key_path):
            # Lists differ by $filter: one path, many resources, so serving them in path
            # order would be wrong.
            skipped.append(f"{method} {key_path}")
            continue
        headers = tuple(_header_items(item.get("headers") or {}))
        date = next((v for k, v in headers if k.lower() == "date"), None)
        sequences.setdefault((method, key_path), []).append(
            RecordedAnswer(int(item["status"]), headers, item.get("body"), _parse_date(date))
        )
    if powershell:
        # The PowerShell mock recorder stores entries of different URLs out of time order
        # (README caveat: TestAzureVMCancelJob keeps its "Cancelling" GET before the cancel
        # polling it came after), so one job's GETs are put back in order by their Date
        # header. The sort is stable: answers within the same second keep the file order.
        for (method, key_path), answers in sequences.items():
            if method == "GET" and _JOB_GET_RE.match(key_path) and all(a.date for a in answers):
                answers.sort(key=lambda a: a.date or datetime.min)
    logger.debug("loaded recording %s: %d resources", path.name, len(sequences))
    return Recording(path, source, powershell, sequences, interactions, skipped)


@dataclass(slots=True)
class _Track:
    source: str
    answers: list[RecordedAnswer]
    served: int = 0


class ReplayServer:
    """Serves several recordings at once; each key keeps its own cursor.

    Keys are full ARM paths, so recordings of different vaults never collide. When two
    recordings do hold the same key, the first recording given wins and the later one's
    answers for that key are ignored (logged and counted as ``shadowed``).
    """

    def __init__(
        self,
        recordings: Sequence[Recording],
        *,
        retry_after_cap: int | None = DEFAULT_RETRY_AFTER_CAP,
    ) -> None:
        self.recordings = list(recordings)
        self.retry_after_cap = retry_after_cap
        self._tracks: dict[Key, _Track] = {}
        self._aliases: dict[tuple[str, str], Key] = {}
        self.shadowed: list[tuple[str, str, str]] = []
        self.retry_after_capped = 0
        for rec in self.recordings:
            for key, answers in rec.sequences.items():
                if key in self._tracks:
                    self.shadowed.append((rec.name, *key))
                    logger.debug(
                        "replay key %s %s of %s already served from %s; ignored",
                        key[0],
                        key[1],
                        rec.name,
                        self._tracks[key].source,
                    )
                    continue
                self._tracks[key] = _Track(rec.name, answers)
                found = _OP_STATUS_RE.match(key[1])
                if key[0] == "GET" and found is not None:
                    self._aliases.setdefault((found["vault"], found["op"]), key)
        if self.shadowed:
            # CLI cassettes reuse names (clitest-vault000002, clitest-vm000003), so their
            # trigger requests share paths; job and operation keys carry GUIDs and do not.
            logger.warning(
                "%d replay key(s) recorded in several files; the first file given wins "
                "(details at debug level)",
                len(self.shadowed),
            )

    def next_answer(
        self, method: str, path: str, job_name: str | None = None
    ) -> RecordedAnswer | None:
        """The next recorded answer for this request (the last repeats), None if unknown.
        `job_name`: the job a `backupCrrJob` POST asks for (its body's `jobName`)."""
        key_path = crr_job_key(path, job_name) if job_name else normalise_path(path)
        key = (method.upper(), key_path)
        track = self._tracks.get(key)
        if track is None and key[0] == "GET":
            # The daemon polls backupOperations/{op} whatever URL it was given; a recording
            # of the per-item operationsStatus/{op} (or the reverse) is the same resource.
            found = _OP_STATUS_RE.match(key[1])
            alias = self._aliases.get((found["vault"], found["op"])) if found else None
            track = self._tracks.get(alias) if alias is not None else None
        if track is None:
            return None
        answer = track.answers[min(track.served, len(track.answers) - 1)]
        track.served += 1
        return answer

    def render(self, answer: RecordedAnswer, base_url: str) -> web.Response:
        """The recorded answer as an aiohttp response, URLs pointed at this emulator."""
        headers: list[tuple[str, str]] = []
        for name, value in answer.headers:
            lower = name.lower()
            if lower == "date":
                continue  # aiohttp writes the real one
            if lower in _URL_HEADERS:
                value = rebase_url(value, base_url)
            elif lower == "retry-after" and self.retry_after_cap is not None:
                value = self._cap_retry_after(value)
            headers.append((name, value))
        resp = web.Response(status=answer.status)
        for name, value in headers:
            resp.headers.add(name, value)
        if answer.body is not None and answer.status != 204:
            resp.body = json.dumps(answer.body).encode("utf-8")
            resp.content_type = "application/json"
        return resp

    def _cap_retry_after(self, value: str) -> str:
        assert self.retry_after_cap is not None
        if value.strip().isdigit() and int(value) > self.retry_after_cap:
            self.retry_after_capped += 1
            return str(self.retry_after_cap)
        return value

    def rewind(self) -> None:
        """Start every sequence again (admin reset)."""
        for track in self._tracks.values():
            track.served = 0
        self.retry_after_capped = 0

    def progress(self) -> list[dict[str, Any]]:
        """Per key: how many answers were recorded and how many requests were served."""
        return [
            {
                "method": method,
                "path": path,
                "recording": track.source,
                "recorded": len(track.answers),
                "served": track.served,
            }
            for (method, path), track in self._tracks.items()
        ]

    def summary(self) -> dict[str, Any]:
        served = [t for t in self._tracks.values() if t.served]
        return {
            "recordings": [r.name for r in self.recordings],
            "keys": len(self._tracks),
            "keys_served": len(served),
            "keys_exhausted": sum(1 for t in served if t.served >= len(t.answers)),
            "requests_served": sum(t.served for t in served),
            "shadowed": len(self.shadowed),
            "retry_after_capped": self.retry_after_capped,
        }


def load_replay(
    paths: Iterable[str | Path], *, retry_after_cap: int | None = DEFAULT_RETRY_AFTER_CAP
) -> ReplayServer:
    """Load recordings in the given order (the first one wins a shared key)."""
    return ReplayServer([load_recording(p) for p in paths], retry_after_cap=retry_after_cap)


def rebase_url(value: str, base_url: str) -> str:
    """An absolute URL moved onto ``base_url`` (scheme and host), path and query kept."""
    parts = urlsplit(value)
    if not parts.scheme or not parts.netloc:
        return value
    base = urlsplit(base_url)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, parts.fragment))


def _header_items(headers: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """Recorded header values are strings, or lists when the header repeated."""
    for name, value in headers.items():
        for one in value if isinstance(value, list) else [value]:
            yield str(name), str(one)


def _parse_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else None


def _answer_job_id(body: Any) -> str | None:
    """The job id a recorded job answer names (its `name`, else its id's last segment)."""
    if not isinstance(body, dict):
        return None
    name = body.get("name")
    if isinstance(name, str) and azure.GUID_RE.match(name):
        return name.lower()
    raw = body.get("id")
    tail = raw.rstrip("/").rsplit("/", 1)[-1] if isinstance(raw, str) else ""
    return tail.lower() if azure.GUID_RE.match(tail) else None


def _collapse(statuses: Iterable[str | None]) -> tuple[str, ...]:
    out: list[str] = []
    for status in statuses:
        if status is not None and (not out or out[-1] != status):
            out.append(status)
    return tuple(out)
