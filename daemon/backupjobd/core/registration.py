"""Pure parsing of every registration form in the brief into job or operation registrations.

Everything a user hands us is validated here, before anything is stored or put into a
URL: job ids must be GUIDs, vault paths must be well formed, and an operation URL must
point at the configured management endpoint (otherwise registering it would send our
token to whoever owns that host).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from backupjobd.core import azure
from backupjobd.core.azure import VaultKind, VaultRef
from backupjobd.errors import InvalidInput

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_DOCUMENTS = 10_000
MAX_URL_LENGTH = 8192

_OPERATION_STATUS_TYPES = frozenset(
    {"OperationStatusJobExtendedInfo", "OperationStatusJobsExtendedInfo"}
)
_BACKUP_VAULT_JOB_INFO = "operationjobextendedinfo"


@dataclass(frozen=True, slots=True)
class JobRegistration:
    """A job to track. `region` is set for a cross-region-restore job only (its secondary
    region; `vault` is then the source Recovery Services vault)."""

    vault: VaultRef
    job_id: str
    source: str
    region: str | None = None


@dataclass(frozen=True, slots=True)
class OperationRegistration:
    """An operation to follow until it names its jobs. `region`: a cross-region restore's
    secondary region (its jobs get it too), or the location of a Backup vault operation's
    `operationResults`."""

    vault: VaultRef
    operation_id: str
    url: str
    source: str
    region: str | None = None

    @property
    def crr(self) -> bool:
        return self.region is not None and self.vault.kind is VaultKind.RECOVERY_SERVICES


Registration = JobRegistration | OperationRegistration


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The management endpoint the token may be sent to: scheme, host and port."""

    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput(f"not an http(s) URL: {_without_userinfo(url)}")
        try:
            explicit = parts.port
        except ValueError:
            raise InvalidInput(f"not a valid URL: {_without_userinfo(url)}") from None
        port = explicit or (443 if parts.scheme == "https" else 80)
        return cls(parts.scheme, parts.hostname.lower(), port)

    def allows(self, url: str) -> bool:
        try:
            other = Endpoint.from_url(url)
        except (InvalidInput, ValueError):
            return False
        return other == self


def parse_json_documents(text: str) -> list[Any]:
    """One JSON document, or an array of them, from stdin."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise InvalidInput(f"input is larger than {MAX_DOCUMENT_BYTES} bytes")
    if not text.strip():
        raise InvalidInput("no JSON document on stdin")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInput(f"malformed JSON: {exc}") from None
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise InvalidInput("empty JSON array: nothing to register")
    if len(docs) > MAX_DOCUMENTS:
        raise InvalidInput(f"more than {MAX_DOCUMENTS} documents in one request")
    return docs


def parse_documents(
    docs: list[Any], endpoint: Endpoint, vault_hint: VaultRef | None
) -> list[Registration]:
    """Every document must parse; one bad document rejects the whole batch."""
    out: list[Registration] = []
    for index, doc in enumerate(docs):
        try:
            out.extend(parse_document(doc, endpoint, vault_hint))
        except InvalidInput as exc:
            if len(docs) == 1:
                raise
            raise InvalidInput(f"document {index + 1}: {exc}") from None
    return dedupe(out)


def parse_document(doc: Any, endpoint: Endpoint, vault_hint: VaultRef | None) -> list[Registration]:
    """Recognise one registration form (see the brief) and validate it."""
    if isinstance(doc, str):
        return [_from_string(doc, endpoint, vault_hint)]
    if not isinstance(doc, dict):
        raise InvalidInput(f"expected a JSON object or string, got {type(doc).__name__}")
    lowered = {str(k).lower(): v for k, v in doc.items()}
    vault = _vault_field(lowered, vault_hint)
    headers = lowered.get("headers")
    if isinstance(headers, dict):
        return [_from_headers(headers, endpoint, vault)]
    if "azure-asyncoperation" in lowered or _is_url(lowered.get("location")):
        return [_from_headers(doc, endpoint, vault)]
    for key in ("operation_url", "operationurl"):
        if key in lowered:
            url = _need_str(lowered[key], key)
            return [operation_from_url(url, endpoint, "operation-url", vault)]
    if str(lowered.get("objecttype", "")).lower() == _BACKUP_VAULT_JOB_INFO:
        return [_from_job_info(doc, vault)]
    props = lowered.get("properties")
    if "status" in lowered and isinstance(props, dict | None) and _is_operation_status(doc):
        return _from_operation_status(doc, vault)
    if isinstance(props, dict) and {"jobtype", "datasourcetype", "backupinstanceid"} & {
        str(k).lower() for k in props
    }:
        return [_from_job_resource(doc, vault)]
    for key in ("job_id", "jobid"):
        if key in lowered:
            job_id = azure.validate_job_id(lowered[key])
            if vault is None:
                raise InvalidInput("a job id needs a vault: give --vault or a vault_id field")
            return [JobRegistration(vault, job_id, "job-id")]
    if "id" in lowered and isinstance(lowered["id"], str):
        return [_from_string(lowered["id"], endpoint, vault)]
    raise InvalidInput(
        "unrecognised document: expected an operation status, a job resource, a job ARM id, "
        "an operation URL or a job_id with a vault"
    )


def operation_from_url(
    url: str, endpoint: Endpoint, source: str, vault_hint: VaultRef | None = None
) -> OperationRegistration:
    """An `Azure-AsyncOperation`/`Location` URL, only on the configured endpoint. A URL
    that names no vault (a location-scoped one) takes `vault_hint` (`--vault`)."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("operation URL is empty")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"operation URL is longer than {MAX_URL_LENGTH} characters")
    if any(not ch.isprintable() or ch.isspace() for ch in url):
        raise InvalidInput("operation URL contains control or space characters")
    try:
        parts = urlsplit(url)
        target = Endpoint.from_url(url)
    except ValueError:
        raise InvalidInput(f"not a valid URL: {_without_userinfo(url)}") from None
    if parts.username or parts.password:
        raise InvalidInput("operation URL must not carry credentials")
    if target != endpoint:
        raise InvalidInput(
            f"operation URL host {target.scheme}://{target.host}:{target.port} is not the "
            f"configured management endpoint {endpoint.scheme}://{endpoint.host}:{endpoint.port}"
        )
    if "%2f" in parts.path.lower() or "/../" in parts.path + "/" or "/./" in parts.path + "/":
        raise InvalidInput("operation URL path contains traversal or encoded slashes")
    # Clients percent-encode a base64 id's `=` (a cross-region restore's operation ids).
    found = azure.parse_operation_target(unquote(parts.path))
    vault = _operation_vault(found, vault_hint, parts.path)
    return OperationRegistration(vault, found.operation_id, url, source, found.region)


def _operation_vault(target: azure.OperationTarget, hint: VaultRef | None, path: str) -> VaultRef:
    """The vault an operation belongs to: from its path, else `--vault` of the right kind."""
    if target.crr:
        if hint is None or hint.kind is not VaultKind.RECOVERY_SERVICES:
            raise InvalidInput(
                "a cross-region-restore operation names no vault: "
                "give --vault SOURCE_RECOVERY_SERVICES_VAULT_ID"
            )
    elif target.vault is None:
        if hint is None or hint.kind is not VaultKind.DATA_PROTECTION:
            raise InvalidInput(
                "a Data Protection location operation names no vault: give --vault BACKUP_VAULT_ID"
            )
    else:
        return target.vault
    sub = azure.subscription_in_path(path)
    if sub is not None and sub != hint.subscription_id:
        raise InvalidInput("the operation and --vault are in different subscriptions")
    return hint


def _without_userinfo(url: str) -> str:
    """URLs in error messages lose any `user:password@` part first."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, tail = rest.partition("/")
        rest = authority.rsplit("@", 1)[-1] + slash + tail
    return azure._clip(scheme + sep + rest)


def job_from_arm_id(
    value: str, vault_hint: VaultRef | None = None, source: str = "job-arm-id"
) -> JobRegistration:
    """A job ARM id of any kind. A cross-region-restore job's location-scoped id names no
    vault: it needs `vault_hint` (`--vault`, the source Recovery Services vault)."""
    if not isinstance(value, str):
        raise InvalidInput("a job ARM id must be a string")
    crr = azure.parse_crr_job_id(value)
    if crr is not None:
        if vault_hint is None:
            raise InvalidInput(
                "a cross-region-restore job id names no vault: give --vault SOURCE_VAULT_ID"
            )
        if vault_hint.kind is not VaultKind.RECOVERY_SERVICES:
            raise InvalidInput(
                "a cross-region-restore job needs its source Recovery Services vault as --vault,"
                " not a Backup vault"
            )
        if vault_hint.subscription_id != crr.subscription_id:
            raise InvalidInput(
                "the cross-region-restore job and --vault are in different subscriptions"
            )
        return JobRegistration(vault_hint, crr.job_id, source, crr.region)
    vault, job_id = azure.parse_job_arm_id(value)
    _check_hint(vault, vault_hint)
    return JobRegistration(vault, job_id, source)


def _check_hint(vault: VaultRef, hint: VaultRef | None) -> None:
    """A job id that names its vault wins over `--vault` (as it always did), but a vault of
    the other kind says the user mixed the two up: that is refused."""
    if hint is not None and hint.kind is not vault.kind:
        raise InvalidInput(
            f"the job is in a {_kind_words(vault.kind)}, but --vault is a {_kind_words(hint.kind)}"
        )


def _kind_words(kind: VaultKind) -> str:
    return "Backup vault" if kind is VaultKind.DATA_PROTECTION else "Recovery Services vault"


def dedupe(regs: list[Registration]) -> list[Registration]:
    seen: set[tuple[str, str, str]] = set()
    out: list[Registration] = []
    for reg in regs:
        ident = (
            ("job", reg.vault.key, reg.job_id)
            if isinstance(reg, JobRegistration)
            else ("op", reg.vault.key, reg.operation_id)
        )
        if ident not in seen:
            seen.add(ident)
            out.append(reg)
    return out


def _from_string(value: str, endpoint: Endpoint, vault: VaultRef | None = None) -> Registration:
    """A JSON string: an operation URL or a job ARM id (the source says which it was)."""
    text = value.strip()
    if text.lower().startswith(("http://", "https://")) or "://" in text:
        return operation_from_url(text, endpoint, "operation-url", vault)
    return job_from_arm_id(text, vault)


def _from_headers(
    headers: Mapping[Any, Any], endpoint: Endpoint, vault: VaultRef | None = None
) -> OperationRegistration:
    """A trigger's 202 headers. A Backup vault's `Azure-AsyncOperation` names the vault and
    its `Location` the region of `operationResults`: both are kept."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    found: list[OperationRegistration] = []
    for name in ("azure-asyncoperation", "location"):
        value = lowered.get(name)
        if isinstance(value, list) and value:
            value = value[0]
        if value is None:
            continue
        hint = found[0].vault if found else vault
        try:
            found.append(
                operation_from_url(_need_str(value, name), endpoint, "operation-headers", hint)
            )
        except InvalidInput:
            if not found:
                raise
            # The Location of an operation we already follow adds nothing we need.
    if not found:
        raise InvalidInput("headers carry neither Azure-AsyncOperation nor Location")
    first = found[0]
    region = next((f.region for f in found if f.region is not None), None)
    if first.vault.kind is VaultKind.DATA_PROTECTION and region != first.region:
        return OperationRegistration(
            first.vault, first.operation_id, first.url, first.source, region
        )
    return first


def _from_job_info(doc: dict[str, Any], vault: VaultRef | None) -> JobRegistration:
    """A Backup vault trigger's `OperationJobExtendedInfo` body: `jobId` is a GUID (then
    `--vault` names the Backup vault) or the job's ARM id."""
    try:
        job_id, found_vault = azure.parse_operation_job_info(doc)
    except azure.BodyError as exc:
        raise InvalidInput(f"bad OperationJobExtendedInfo: {exc}") from None
    if found_vault is not None:
        _check_hint(found_vault, vault)
        return JobRegistration(found_vault, job_id, "operation-job-info")
    if vault is None:
        raise InvalidInput(
            "an OperationJobExtendedInfo with a GUID jobId needs --vault BACKUP_VAULT_ID"
        )
    if vault.kind is not VaultKind.DATA_PROTECTION:
        raise InvalidInput(
            "an OperationJobExtendedInfo names a Backup vault job: --vault must be a Backup vault"
            " (Microsoft.DataProtection/backupVaults) id"
        )
    return JobRegistration(vault, job_id, "operation-job-info")


def _is_operation_status(doc: dict[str, Any]) -> bool:
    props = doc.get("properties")
    if isinstance(props, dict):
        object_type = props.get("objectType")
        return (isinstance(object_type, str) and object_type in _OPERATION_STATUS_TYPES) or (
            "jobId" in props or "jobIds" in props
        )
    return doc.get("status") in ("InProgress", "Succeeded", "Failed", "Canceled")


def _from_operation_status(doc: dict[str, Any], vault: VaultRef | None) -> list[Registration]:
    try:
        op = azure.parse_operation_status(doc)
    except azure.BodyError as exc:
        raise InvalidInput(f"bad operation status: {exc}") from None
    if op.status in azure.OPERATION_FAILED_STATUSES:
        detail = ": ".join(p for p in (op.error_code, op.error_message) if p)
        suffix = f" ({azure._clip(detail, 300)})" if detail else ""
        raise InvalidInput(f"the operation {azure._clip(op.status.lower(), 40)}{suffix}")
    if not op.job_ids:
        raise InvalidInput(
            f"the operation status is {azure._clip(op.status, 40)} and names no job; "
            "register its Azure-AsyncOperation URL instead"
        )
    op_vault = azure.vault_prefix(doc["id"]) if isinstance(doc.get("id"), str) else None
    vault = op_vault or vault
    if vault is None:
        raise InvalidInput("an operation status body needs a vault: give --vault")
    return [JobRegistration(vault, job_id, "operation-status") for job_id in op.job_ids]


def _from_job_resource(doc: dict[str, Any], vault: VaultRef | None) -> JobRegistration:
    raw_id = doc.get("id")
    if isinstance(raw_id, str) and raw_id:
        return job_from_arm_id(raw_id, vault, "job-resource")
    job_id = azure.validate_job_id(doc.get("name"))
    if vault is None:
        raise InvalidInput("a job resource without an ARM id needs a vault: give --vault")
    return JobRegistration(vault, job_id, "job-resource")


def _vault_field(lowered: dict[str, Any], hint: VaultRef | None) -> VaultRef | None:
    for key in ("vault_id", "vaultid", "vault"):
        if key in lowered and lowered[key] is not None:
            return azure.vault_from_id(_need_str(lowered[key], key))
    return hint


def _need_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    return value


def _is_url(value: object) -> bool:
    if isinstance(value, list) and value:
        value = value[0]
    return isinstance(value, str) and "://" in value
