"""A thin Azure Resource Manager client for the backup jobs API (aiohttp + a token provider).

aiohttp errors and HTTP statuses are translated here into the daemon's errors:
`TransientError` (retry later, maybe after `retry_after`), `NotFound`, `PermanentError`.
The token only ever goes to the configured endpoint.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import yarl

from backupjobd.adapters.budget import ReadBudget
from backupjobd.adapters.credentials import TokenProvider
from backupjobd.adapters.metrics import Metrics
from backupjobd.core import azure
from backupjobd.core.azure import (
    JobKind,
    JobObservation,
    OperationObservation,
    VaultKind,
    VaultRef,
)
from backupjobd.core.decisions import MAX_RETRY_AFTER_SECONDS
from backupjobd.core.redact import redact_secrets
from backupjobd.core.registration import Endpoint
from backupjobd.errors import (
    BackupJobdError,
    InvalidInput,
    NotFound,
    PermanentError,
    TooManyPages,
    TransientError,
)

logger = logging.getLogger(__name__)

_MAX_BODY_BYTES = 16 * 1024 * 1024
VAULTS_API_VERSION = "2025-08-01"
REMAINING_READS_HEADER = "x-ms-ratelimit-remaining-subscription-reads"
REMAINING_WRITES_HEADER = "x-ms-ratelimit-remaining-subscription-writes"


@dataclass(frozen=True, slots=True)
class ApiVersions:
    """The api-versions of the other providers' paths (the main one is Recovery Services')."""

    data_protection: str = "2025-07-01"
    crr: str = "2021-11-15"


class ArmClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        tokens: TokenProvider,
        endpoint: str,
        api_version: str,
        timeout_seconds: float = 30.0,
        wall_clock: Callable[[], float] = time.time,
        *,
        budget: ReadBudget | None = None,
        write_budget: ReadBudget | None = None,
        max_concurrent_requests: int = 16,
        metrics: Metrics | None = None,
        api_versions: ApiVersions = ApiVersions(),
    ) -> None:
        self._session = session
        self._metrics = metrics
        self._budget = budget
        self._write_budget = write_budget
        self._versions = api_versions
        self._in_flight = asyncio.Semaphore(max_concurrent_requests)
        self._tokens = tokens
        self._endpoint = endpoint.rstrip("/")
        self._allowed = Endpoint.from_url(self._endpoint)
        self._api_version = api_version
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._wall_clock = wall_clock

    @property
    def endpoint(self) -> Endpoint:
        return self._allowed

    def job_url(self, vault: VaultRef, job_id: str) -> str:
        return f"{self._vault_url(vault)}/backupJobs/{quote(azure.validate_job_id(job_id))}"

    def operation_url(self, vault: VaultRef, operation_id: str) -> str:
        op = quote(azure.validate_operation_id(operation_id), safe="")
        return f"{self._vault_url(vault)}/backupOperations/{op}"

    @property
    def tokens(self) -> TokenProvider:
        return self._tokens

    @property
    def session(self) -> aiohttp.ClientSession:
        return self._session

    @property
    def budget(self) -> ReadBudget | None:
        return self._budget

    @property
    def write_budget(self) -> ReadBudget | None:
        """The bucket cross-region-restore job reads (POSTs) draw on."""
        return self._write_budget

    def budget_for(self, kind: JobKind) -> ReadBudget | None:
        """The bucket one read of a job of this kind draws on."""
        return self._write_budget if kind is JobKind.CROSS_REGION_RESTORE else self._budget

    def read_job(
        self, kind: JobKind, vault: VaultRef, job_id: str, region: str | None = None
    ) -> Awaitable[JobObservation]:
        """One read of a job, by the API its kind is read through; every kind comes back as
        the same JobObservation."""
        if kind is JobKind.CROSS_REGION_RESTORE:
            if region is None:
                raise InvalidInput("a cross-region-restore job needs its region")
            return self.get_crr_job(vault, region, job_id)
        if kind is JobKind.DATA_PROTECTION:
            return self.get_backup_vault_job(vault, job_id)
        return self.get_job(vault, job_id)

    def read_operation(
        self, vault: VaultRef, operation_id: str, region: str | None = None
    ) -> Awaitable[OperationObservation]:
        """One read of an operation, by the API its vault kind (and region) say."""
        if vault.kind is VaultKind.DATA_PROTECTION:
            return self.get_backup_vault_operation(vault, operation_id, region)
        if region is not None:
            return self.get_crr_operation(vault, region, operation_id)
        return self.get_operation(vault, operation_id)

    async def get_job(self, vault: VaultRef, job_id: str) -> JobObservation:
        answer = await self._send("GET", self.job_url(vault, job_id), vault.subscription_id)
        return self._job_from(answer, job_id)

    async def get_backup_vault_job(self, vault: VaultRef, job_id: str) -> JobObservation:
        """`GET …/backupVaults/{v}/backupJobs/{id}` (an AzureBackupJobResource)."""
        answer = await self._send(
            "GET",
            self.job_url(vault, job_id),
            vault.subscription_id,
            extra_params={"api-version": self._versions.data_protection},
        )
        return self._job_from(answer, job_id)

    async def get_crr_job(self, vault: VaultRef, region: str, job_id: str) -> JobObservation:
        """`POST …/locations/{region}/backupCrrJob` with the source vault and the job name: a
        POST, so it draws on the subscription's write budget."""
        url = f"{self._location_url(vault, region)}/backupCrrJob"
        body = {"resourceId": vault.id, "jobName": azure.validate_job_id(job_id)}
        answer = await self._send(
            "POST",
            url,
            vault.subscription_id,
            extra_params={"api-version": self._versions.crr},
            json_body=body,
        )
        return self._job_from(answer, job_id)

    def _job_from(self, answer: _Answer, job_id: str) -> JobObservation:
        body = self._raise_for(answer)
        try:
            job = azure.parse_job_resource(body)
        except azure.BodyError as exc:
            raise TransientError(_redacted(f"unexpected job body: {exc}", answer)) from None
        if job.job_id != job_id.lower():
            raise TransientError(
                _redacted(f"asked for job {job_id}, Azure answered with {job.job_id}", answer)
            )
        return job

    async def get_crr_operation(
        self, vault: VaultRef, region: str, operation_id: str
    ) -> OperationObservation:
        """`GET …/locations/{region}/backupCrrOperationsStatus/{op}` of a cross-region restore."""
        op = quote(azure.validate_operation_id(operation_id), safe="")
        url = f"{self._location_url(vault, region)}/backupCrrOperationsStatus/{op}"
        answer = await self._send(
            "GET", url, vault.subscription_id, extra_params={"api-version": self._versions.crr}
        )
        return self._operation_from(answer)

    async def get_backup_vault_operation(
        self, vault: VaultRef, operation_id: str, region: str | None
    ) -> OperationObservation:
        """A Backup vault trigger: `operationStatus/{op}` until it ends, then (when it names
        no job and the 202's Location gave its region) `locations/{region}/operationResults/
        {op}`, whose 200 is the `OperationJobExtendedInfo` naming the job; its 202 means
        not yet (reported as InProgress)."""
        op = quote(azure.validate_operation_id(operation_id), safe="")
        version = {"api-version": self._versions.data_protection}
        url = f"{self._vault_url(vault)}/operationStatus/{op}"
        status = self._operation_from(
            await self._send("GET", url, vault.subscription_id, extra_params=version)
        )
        if region is None or not azure.needs_operation_result(status, region):
            return status
        sub = quote(vault.subscription_id, safe="")
        result_url = (
            f"{self._endpoint}/subscriptions/{sub}/providers/Microsoft.DataProtection"
            f"/locations/{quote(azure.validate_region(region), safe='')}/operationResults/{op}"
        )
        answer = await self._send("GET", result_url, vault.subscription_id, extra_params=version)
        if answer.status == 202:
            return azure.OperationObservation(azure.OPERATION_RUNNING, (), None, None)
        if answer.status == 204:
            return status
        body = self._raise_for(answer)
        try:
            job_id, _ = azure.parse_operation_job_info(body)
        except azure.BodyError as exc:
            raise TransientError(_redacted(f"unexpected operation result: {exc}", answer)) from None
        return azure.OperationObservation(status.status, (job_id,), None, None)

    def _operation_from(self, answer: _Answer) -> OperationObservation:
        body = self._raise_for(answer)
        try:
            return azure.parse_operation_status(body)
        except azure.BodyError as exc:
            raise TransientError(_redacted(f"unexpected operation body: {exc}", answer)) from None

    def _location_url(self, vault: VaultRef, region: str) -> str:
        return (
            f"{self._endpoint}/subscriptions/{quote(vault.subscription_id, safe='')}"
            f"/providers/Microsoft.RecoveryServices/locations/"
            f"{quote(azure.validate_region(region), safe='')}"
        )

    async def get_operation(self, vault: VaultRef, operation_id: str) -> OperationObservation:
        url = self.operation_url(vault, operation_id)
        answer = await self._send("GET", url, vault.subscription_id)
        return self._operation_from(answer)

    async def list_jobs(
        self, vault: VaultRef, odata_filter: str | None = None, *, max_pages: int = 1000
    ) -> AsyncIterator[list[JobObservation]]:
        """Pages of `backupJobs?$filter=…`, following `nextLink` verbatim (it carries an
        opaque continuation token and its own api-version). Items without `extendedInfo`."""
        url = f"{self._vault_url(vault)}/backupJobs"
        query: dict[str, str] | None = {"$filter": odata_filter} if odata_filter else {}
        if vault.kind is VaultKind.DATA_PROTECTION:
            # A Backup vault's list has no $filter: every job, page by page.
            query = {"api-version": self._versions.data_protection}
            if odata_filter:
                raise InvalidInput("a Backup vault's job list takes no $filter")
        target: str | yarl.URL = url
        for _ in range(max_pages):
            answer = await self._send("GET", target, vault.subscription_id, extra_params=query)
            body = self._raise_for(answer)
            if not isinstance(body, dict) or not isinstance(body.get("value", []), list):
                raise TransientError("unexpected list body: no value array")
            page = []
            for item in body.get("value", []):
                try:
                    page.append(azure.parse_job_resource(item))
                except azure.BodyError as exc:
                    logger.debug(
                        "skipping an unparseable list item: %s", _redacted(str(exc), answer)
                    )
            yield page
            next_link = body.get("nextLink")
            if not next_link:
                return
            if not isinstance(next_link, str) or not self._allowed.allows(next_link):
                raise PermanentError("nextLink points away from the management endpoint")
            target, query = yarl.URL(next_link, encoded=True), None
        raise TooManyPages(f"more than {max_pages} pages of jobs; stopping")

    async def list_vaults(
        self, subscription_id: str, kind: VaultKind = VaultKind.RECOVERY_SERVICES
    ) -> list[VaultRef]:
        """The subscription's vaults of one kind (for discovery)."""
        sub = quote(azure.validate_subscription_id(subscription_id), safe="")
        provider = (
            "Microsoft.DataProtection/backupVaults"
            if kind is VaultKind.DATA_PROTECTION
            else "Microsoft.RecoveryServices/vaults"
        )
        target: str | yarl.URL = f"{self._endpoint}/subscriptions/{sub}/providers/{provider}"
        # The vaults API has its own versions; pin one both it and Backup have (2025-08-01).
        version = (
            self._versions.data_protection
            if kind is VaultKind.DATA_PROTECTION
            else VAULTS_API_VERSION
        )
        query: dict[str, str] | None = {"api-version": version}
        vaults: list[VaultRef] = []
        for _ in range(1000):
            answer = await self._send("GET", target, subscription_id, extra_params=query)
            body = self._raise_for(answer)
            for item in body.get("value", []) if isinstance(body, dict) else []:
                vault_id = item.get("id") if isinstance(item, dict) else None
                if isinstance(vault_id, str):
                    try:
                        found = azure.vault_from_id(vault_id)
                    except InvalidInput:
                        logger.debug("skipping a vault id that does not parse")
                        continue
                    if found.kind is kind:
                        vaults.append(found)
            next_link = body.get("nextLink") if isinstance(body, dict) else None
            if not next_link:
                return vaults
            if not isinstance(next_link, str) or not self._allowed.allows(next_link):
                raise PermanentError("nextLink points away from the management endpoint")
            target, query = yarl.URL(next_link, encoded=True), None
        return vaults

    def _vault_url(self, vault: VaultRef) -> str:
        provider = (
            "Microsoft.DataProtection/backupVaults"
            if vault.kind is VaultKind.DATA_PROTECTION
            else "Microsoft.RecoveryServices/vaults"
        )
        return (
            f"{self._endpoint}/subscriptions/{quote(vault.subscription_id, safe='')}"
            f"/resourceGroups/{quote(vault.resource_group, safe='')}"
            f"/providers/{provider}/{quote(vault.name, safe='')}"
        )

    async def cancel_job(
        self, vault: VaultRef, job_id: str, *, follow_seconds: float = 60.0
    ) -> str:
        """Ask Azure to cancel a job (`POST backupJobs/{id}/cancel`) and follow the 202's
        Location until the request is accepted. Returns "completed" or "accepted" (still
        running when `follow_seconds` ran out); the job's own polls then show Cancelling."""
        url = f"{self.job_url(vault, job_id)}/cancel"
        answer = await self._send("POST", url, vault.subscription_id)
        if answer.status not in (200, 202, 204):
            self._raise_for(answer)
        location = answer.location
        deadline = time.monotonic() + follow_seconds
        while answer.status == 202 and location:
            if not self._allowed.allows(location):
                logger.warning("cancel of job %s: not following a foreign Location", job_id)
                return "accepted"
            pause = min(answer.retry_after or 1.0, 10.0)
            if time.monotonic() + pause > deadline:
                return "accepted"
            await asyncio.sleep(pause)
            answer = await self._send("GET", location, vault.subscription_id, params=False)
            if answer.status not in (200, 202, 204):
                self._raise_for(answer)
            location = answer.location or location
        return "completed" if answer.status in (200, 204) else "accepted"

    def _raise_for(self, answer: _Answer) -> Any:
        """The parsed 200 body, or the error the answer stands for (token redacted)."""
        try:
            return self._interpret(answer.status, answer.raw, answer.retry_after)
        except BackupJobdError as exc:
            _scrub(exc, answer.token)
            raise

    async def _send(
        self,
        method: str,
        url: str | yarl.URL,
        subscription_id: str,
        *,
        params: bool = True,
        extra_params: dict[str, str] | None = None,
        json_body: dict[str, Any] | None = None,
    ) -> _Answer:
        """One request with the token, the read budget (the write budget for a POST that
        reads: a cross-region-restore job) and one token refresh on 401.
        `extra_params=None` means the URL is used verbatim (a nextLink)."""
        if not self._allowed.allows(str(url)):  # defence in depth: URLs come from the endpoint
            raise PermanentError("refusing to send the token to a host other than the endpoint")
        query: dict[str, str] | None = {"api-version": self._api_version} if params else None
        if extra_params is None and isinstance(url, yarl.URL):
            query = None
        elif extra_params and query is not None:
            query = {**query, **extra_params}
        for attempt in (1, 2):
            token = await self._tokens.token(force_refresh=attempt == 2)
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            bucket = self._budget if method == "GET" else None
            if json_body is not None:
                bucket = self._write_budget
            if bucket is not None:
                await bucket.acquire(subscription_id)
            started = time.monotonic()
            try:
                async with (
                    self._in_flight,
                    self._session.request(
                        method,
                        url,
                        params=query,
                        headers=headers,
                        timeout=self._timeout,
                        allow_redirects=False,
                        json=json_body,
                    ) as resp,
                ):
                    raw = await _read_body(resp)
                    answer = _Answer(
                        resp.status,
                        raw,
                        self._retry_after(resp.headers.get("Retry-After")),
                        resp.headers.get("Location"),
                        token,
                    )
                    remaining = resp.headers.get(
                        REMAINING_READS_HEADER if json_body is None else REMAINING_WRITES_HEADER
                    )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                if self._metrics is not None:
                    self._metrics.arm_request(method, None, time.monotonic() - started)
                raise TransientError(f"request failed: {type(exc).__name__}") from None
            if self._metrics is not None:
                self._metrics.arm_request(method, answer.status, time.monotonic() - started)
                if answer.status == 429:
                    self._metrics.throttled(subscription_id)
            if bucket is not None:
                if remaining is not None and remaining.strip().isdigit():
                    bucket.observe_remaining(subscription_id, int(remaining))
                if answer.status == 429:
                    bucket.throttled(subscription_id, answer.retry_after)
            if answer.status == 401 and attempt == 1:
                logger.info("ARM answered 401; refreshing the token once")
                continue
            return answer
        raise AssertionError("unreachable")  # pragma: no cover

    def _interpret(self, status: int, raw: bytes, retry_after: float | None) -> Any:
        if status == 200:
            if len(raw) > _MAX_BODY_BYTES:
                raise TransientError("answer body too large")
            try:
                return orjson.loads(raw)
            except (ValueError, RecursionError):
                raise TransientError("garbled answer: body is not JSON") from None
        code, message = _arm_error(raw)
        detail = (
            f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        )
        if status == 404:
            raise NotFound(detail, status=status, code=code)
        if status == 429 or status >= 500 or status == 408:
            raise TransientError(detail, retry_after=retry_after)
        raise PermanentError(detail, status=status, code=code)

    def _retry_after(self, value: str | None) -> float | None:
        """`Retry-After` in seconds or as an HTTP-date."""
        if not value:
            return None
        value = value.strip()
        if value.isdigit():
            return min(float(value), MAX_RETRY_AFTER_SECONDS)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        return min(max(0.0, when.timestamp() - self._wall_clock()), MAX_RETRY_AFTER_SECONDS)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    raw: bytes
    retry_after: float | None
    location: str | None
    token: str = field(repr=False)


def _scrub(exc: BackupJobdError, token: str) -> None:
    """A server that echoes the Authorization header must not put our token into a log line
    or the database: errors carry text from Azure's body (message and code), so redact
    anything token-like there, including clipped or base64-encoded echoes of our token."""
    if exc.args and isinstance(exc.args[0], str):
        exc.args = (redact_secrets(exc.args[0], token), *exc.args[1:])
    if isinstance(exc, PermanentError) and exc.code is not None:
        exc.code = redact_secrets(exc.code, token)


def _redacted(text: str, answer: _Answer) -> str:
    """`text` built from the body of `answer`, safe to log or store."""
    return redact_secrets(text, answer.token)


async def _read_body(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, but never more than the cap (plus one byte, to detect overflow)."""
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        if len(buf) > _MAX_BODY_BYTES:
            break
    return bytes(buf)


def _arm_error(raw: bytes) -> tuple[str | None, str | None]:
    try:
        body = orjson.loads(raw) if raw else None
    except (ValueError, RecursionError):
        return None, None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, None
    code = error.get("code") if isinstance(error.get("code"), str) else None
    message = error.get("message") if isinstance(error.get("message"), str) else None
    if message:
        message = azure._clip(message.splitlines()[0] if message else message, 300)
    return code, message
