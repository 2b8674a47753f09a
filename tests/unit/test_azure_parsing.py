from __future__ import annotations

# Parsing of Azure identifiers, timestamps, durations and bodies (backupjobd.core.azure).
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from backupjobd.core import azure
from backupjobd.core.azure import BodyError
from backupjobd.errors import InvalidInput

SUB = "00000000-0000-0000-0000-000000000001"
GUID = "0bda1a53-73fa-427e-9a1c-72a2016adee3"
VAULT = (
    f"/subscriptions/{SUB}/resourceGroups/rg-1/providers/Microsoft.RecoveryServices/vaults/Vault1"
)
ITEM = (
    "/backupFabrics/Azure/protectionContainers/iaasvmcontainerv2;rg-1;vm1"
    "/protectedItems/vm;iaasvmcontainerv2;rg-1;vm1"
)

# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-12-21T04:56:55.3271607Z", datetime(2023, 12, 21, 4, 56, 55, 327160, tzinfo=UTC)),
        ("2023-10-19T09:01:07.11047Z", datetime(2023, 10, 19, 9, 1, 7, 110470, tzinfo=UTC)),
        ("2023-10-19T09:01:07Z", datetime(2023, 10, 19, 9, 1, 7, tzinfo=UTC)),
        ("2023-10-19T09:01:07z", datetime(2023, 10, 19, 9, 1, 7, tzinfo=UTC)),
        # No zone: Azure means UTC.
        ("2017-08-03T05:31:07.014604", datetime(2017, 8, 3, 5, 31, 7, 14604, tzinfo=UTC)),
        ("2017-08-03T05:31:07", datetime(2017, 8, 3, 5, 31, 7, tzinfo=UTC)),
        # Offsets are converted to UTC, also with 7 fractional digits.
        ("2024-01-01T05:30:00.1234567+05:30", datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2024-01-01T00:00:00-05:00", datetime(2024, 1, 1, 5, 0, 0, tzinfo=UTC)),
        ("2024-01-01T00:00:00+00:00", datetime(2024, 1, 1, tzinfo=UTC)),
        ("  2024-01-01T00:00:00Z  ", datetime(2024, 1, 1, tzinfo=UTC)),
        # The day after the 2001 sentinel is a real date.
        ("2001-01-02T00:00:00Z", datetime(2001, 1, 2, tzinfo=UTC)),
    ],
)
def test_parse_time(text: str, expected: datetime) -> None:
    parsed = azure.parse_time(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "0001-01-01T00:00:00",
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.00000Z",
        "2001-01-01T00:00:00Z",
        "2001-01-01T00:00:00",
    ],
)
def test_parse_time_sentinels_are_none(text: str | None) -> None:
    assert azure.parse_time(text) is None


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-01-32T00:00:00",
        "2024-01-01T25:00:00Z",
        "1/20/2024 12:00:00 AM",
        "2024-01-01T00:00:00+99:00",
        12345,
        1.5,
        ["2024-01-01T00:00:00Z"],
        {"t": 1},
        True,
    ],
)
def test_parse_time_garbage_is_body_error(value: Any) -> None:
    with pytest.raises(BodyError):
        azure.parse_time(value)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_parse_time_out_of_range_after_zone_shift_is_body_error_or_none(text: str) -> None:
    with contextlib.suppress(BodyError):
        azure.parse_time(text)


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:20:23.0896697", timedelta(minutes=20, seconds=23, microseconds=89670)),
        ("00:00:47.3083034", timedelta(seconds=47, microseconds=308303)),
        ("00:00:00", timedelta(0)),
        ("1.02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("26:00:00", timedelta(hours=26)),
        ("PT9.8782791S", timedelta(seconds=9, microseconds=878279)),
        ("PT2.2820137S", timedelta(seconds=2, microseconds=282014)),
        ("PT0S", timedelta(0)),
        ("PT5M", timedelta(minutes=5)),
        ("PT1H5M3.1234567S", timedelta(hours=1, minutes=5, seconds=3, microseconds=123457)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("P2D", timedelta(days=2)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert azure.parse_duration(text) == expected


@pytest.mark.parametrize("value", [None, ""])
def test_parse_duration_missing_is_none(value: str | None) -> None:
    assert azure.parse_duration(value) is None


@pytest.mark.parametrize(
    "value",
    ["abc", "P", "PT", "1:2:3", "00:20", "PT1X", "-PT5S", "5 minutes", "T5S", 5, 1.5, ["PT0S"]],
)
def test_parse_duration_garbage_is_body_error(value: Any) -> None:
    with pytest.raises(BodyError):
        azure.parse_duration(value)


# --------------------------------------------------------------------------- actionsInfo


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1], ["Cancellable"]),
        (["Cancellable"], ["Cancellable"]),
        ([0, 2], ["Invalid", "Retriable"]),
        (["Retriable", 1], ["Retriable", "Cancellable"]),
        ([7], ["7"]),
        ([], []),
        (None, []),
        ("Cancellable", []),
        ({"a": 1}, []),
    ],
)
def test_actions_info(raw: Any, expected: list[str]) -> None:
    assert azure.actions_info({"actionsInfo": raw}) == expected


def test_actions_info_absent() -> None:
    assert azure.actions_info({"status": "Completed"}) == []


# --------------------------------------------------------------------------- vault ids


def test_vault_from_id_round_trip() -> None:
    vault = azure.vault_from_id(VAULT)
    assert vault.subscription_id == SUB
    assert vault.resource_group == "rg-1"
    assert vault.name == "Vault1"
    assert vault.id == VAULT
    assert vault.key == VAULT.lower()


@pytest.mark.parametrize(
    "variant",
    [
        VAULT.replace("/subscriptions/", "/Subscriptions/"),
        VAULT.replace("Microsoft.RecoveryServices", "microsoft.recoveryservices"),
        VAULT.replace("resourceGroups", "resourcegroups"),
        VAULT.upper().replace("/VAULTS/VAULT1", "/vaults/Vault1"),
        VAULT + "/",
        f"  {VAULT}  ",
    ],
)
def test_vault_from_id_is_case_insensitive(variant: str) -> None:
    vault = azure.vault_from_id(variant)
    assert vault.key == VAULT.lower()
    assert vault.name == "Vault1"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "vault1",
        VAULT.replace(SUB, "not-a-guid"),
        VAULT.replace("rg-1", ".."),
        VAULT.replace("rg-1", "rg..x"),
        VAULT.replace("rg-1", "rg."),
        VAULT.replace("rg-1", "rg/../other"),
        VAULT.replace("Vault1", "a..b"),
        VAULT.replace("Vault1", "v/backupJobs"),
        VAULT.replace("Vault1", "-vault"),
        VAULT.replace("Vault1", "v%2f.."),
        VAULT.replace("Microsoft.RecoveryServices", "Microsoft.RecoveryServicesBVTD"),
        VAULT.replace("Microsoft.RecoveryServices", "MicrosoftXRecoveryServices"),
        VAULT + "/backupJobs",
        VAULT.replace("Vault1", "Vau\nlt1"),
        "https://management.azure.com" + VAULT,
    ],
)
def test_vault_from_id_rejects(bad: str) -> None:
    with pytest.raises(InvalidInput):
        azure.vault_from_id(bad)


def test_vault_prefix() -> None:
    vault = azure.vault_prefix(f"{VAULT}/backupOperations/abc")
    assert vault is not None
    assert vault.key == VAULT.lower()
    assert azure.vault_prefix(f"/subscriptions/{SUB}/providers/x") is None
    assert azure.vault_prefix(f"{VAULT}!/backupOperations/abc") is None


# --------------------------------------------------------------------------- job ids


def test_parse_job_arm_id() -> None:
    vault, job_id = azure.parse_job_arm_id(f"{VAULT}/backupJobs/{GUID.upper()}")
    assert vault.key == VAULT.lower()
    assert job_id == GUID


@pytest.mark.parametrize(
    "value",
    [
        f"{VAULT}/backupJobs/{GUID}".replace("/subscriptions/", "/Subscriptions/"),
        f"{VAULT}/backupjobs/{GUID}".replace(
            "Microsoft.RecoveryServices", "microsoft.recoveryservices"
        ),
        f"{VAULT}/backupJobs/{GUID}/",
    ],
)
def test_parse_job_arm_id_variants(value: str) -> None:
    vault, job_id = azure.parse_job_arm_id(value)
    assert (vault.key, job_id) == (VAULT.lower(), GUID)


@pytest.mark.parametrize(
    "bad",
    [
        f"{VAULT}/backupJobs/not-a-guid",
        f"{VAULT}/backupJobs/{GUID}/cancel",
        f"{VAULT}/backupJobs/../{GUID}",
        f"{VAULT}/backupJobs/{GUID}/..",
        f"{VAULT}/backupJobs/{GUID}%2f..",
        f"{VAULT}/backupJobs/{{{GUID}}}",
        f"{VAULT}/backupJobs",
        VAULT.replace("rg-1", "..") + f"/backupJobs/{GUID}",
        f"/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/eastus/backupJobs/{GUID}",
        GUID,
    ],
)
def test_parse_job_arm_id_rejects(bad: str) -> None:
    with pytest.raises(InvalidInput):
        azure.parse_job_arm_id(bad)


def test_validate_job_id() -> None:
    assert azure.validate_job_id(GUID.upper()) == GUID
    assert azure.validate_job_id(f" {GUID} ") == GUID


@pytest.mark.parametrize(
    "bad",
    [None, 12, "", "abc", GUID[:-1], GUID + "0", f"{GUID}/..", f"../{GUID}", GUID.replace("-", "")],
)
def test_validate_job_id_rejects(bad: Any) -> None:
    with pytest.raises(InvalidInput):
        azure.validate_job_id(bad)


def test_invalid_input_message_is_one_printable_line() -> None:
    with pytest.raises(InvalidInput) as excinfo:
        azure.validate_job_id("bad\nid\x1b[31m" + "x" * 500)
    message = str(excinfo.value)
    assert message.isprintable()
    assert len(message) < 200


# --------------------------------------------------------------------------- operation ids / paths


@pytest.mark.parametrize("good", [GUID, "MjYzMDc4MTY0N2FiYw==", "a", "op_1-2", "x" * 200])
def test_validate_operation_id(good: str) -> None:
    assert azure.validate_operation_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "..", "../x", "a/b", "a%2fb", "a b", "a?b", "-x", "_x", "x" * 201, "é"]
)
def test_validate_operation_id_rejects(bad: str) -> None:
    with pytest.raises(InvalidInput):
        azure.validate_operation_id(bad)


@pytest.mark.parametrize(
    "path",
    [
        f"{VAULT}{ITEM}/operationsStatus/{GUID}",
        f"{VAULT}{ITEM}/operationResults/{GUID}",
        f"{VAULT}/backupOperations/{GUID}",
        f"{VAULT}/backupOperationResults/{GUID}",
        f"{VAULT}/backupJobs/{'1' * 8}-2222-3333-4444-{'5' * 12}/operationResults/{GUID}",
        f"{VAULT}/backupOperations/{GUID}/",
        f"{VAULT}/BACKUPOPERATIONS/{GUID}".replace("/subscriptions/", "/Subscriptions/"),
        f"{VAULT}{ITEM}/OperationsStatus/{GUID}".replace(
            "Microsoft.RecoveryServices", "microsoft.recoveryservices"
        ),
    ],
    ids=[
        "item-operationsStatus",
        "item-operationResults",
        "backupOperations",
        "backupOperationResults",
        "job-operationResults",
        "trailing-slash",
        "upper-case",
        "lower-provider",
    ],
)
def test_parse_operation_path_kinds(path: str) -> None:
    vault, op_id = azure.parse_operation_path(path)
    assert vault.key == VAULT.lower()
    assert op_id == GUID


@pytest.mark.parametrize(
    "path",
    [
        f"{VAULT}/backupFabrics/Azure/operationResults/{GUID}",
        f"{VAULT}/backupFabrics/Azure/protectionContainers/c1/operationResults/{GUID}",
        f"{VAULT}/backupJobs/operationResults/{GUID}",
        f"{VAULT}/backupJobs/Azure/operationResults/{GUID}",
        f"{VAULT}/backupOperations",
        f"{VAULT}/backupOperations/",
        f"{VAULT}/backupOperations/{GUID}/extra",
        f"{VAULT}/backupOperations/..",
        f"{VAULT}/backupOperations/a%2fb",
        f"{VAULT}/vaultOperations/{GUID}",
        VAULT.replace("Microsoft.RecoveryServices", "Microsoft.RecoveryServicesBVTD")
        + f"/backupOperations/{GUID}",
        f"/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/eastus"
        f"/backupCrrOperationsStatus/{GUID}",
        f"/prefix{VAULT}/backupOperations/{GUID}",
        f"{VAULT}/backupOperations/{GUID}?api-version=2023-04-01",
    ],
)
def test_parse_operation_path_rejects(path: str) -> None:
    with pytest.raises(InvalidInput):
        azure.parse_operation_path(path)


# --------------------------------------------------------------------------- job bodies


def job_body(**props: Any) -> dict[str, Any]:
    return {
        "id": f"{VAULT}/backupJobs/{GUID}",
        "name": GUID,
        "type": "Microsoft.RecoveryServices/vaults/backupJobs",
        "properties": {"jobType": "AzureWorkloadJob", "status": "InProgress", **props},
    }


def test_parse_job_resource_fields() -> None:
    body = job_body(
        operation="Backup (Full)",
        entityFriendlyName="db1 [sqlvm]",
        backupManagementType="AzureWorkload",
        startTime="2023-12-21T04:56:55.3271607Z",
        endTime="0001-01-01T00:00:00",
        duration="00:02:03.5",
        status=" Completed ",
    )
    obs = azure.parse_job_resource(body)
    assert obs.job_id == GUID
    assert obs.vault is not None
    assert obs.vault.key == VAULT.lower()
    assert obs.status == "Completed"
    assert obs.is_terminal
    assert obs.job_type == "AzureWorkloadJob"
    assert obs.operation == "Backup (Full)"
    assert obs.entity_friendly_name == "db1 [sqlvm]"
    assert obs.backup_management_type == "AzureWorkload"
    assert obs.start_time == datetime(2023, 12, 21, 4, 56, 55, 327160, tzinfo=UTC)
    assert obs.end_time is None
    assert obs.duration == timedelta(minutes=2, seconds=3.5)
    assert obs.properties is body["properties"]


def test_parse_job_resource_empty_strings_become_none() -> None:
    obs = azure.parse_job_resource(job_body(operation="", entityFriendlyName=""))
    assert obs.operation is None
    assert obs.entity_friendly_name is None
    assert obs.start_time is None
    assert not obs.is_terminal


def test_parse_job_resource_crr_location_id_falls_back_to_name() -> None:
    body = job_body()
    body["id"] = (
        f"/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/locations/eastus"
        f"/backupJobs/{GUID}"
    )
    body["name"] = GUID.upper()
    obs = azure.parse_job_resource(body)
    assert obs.vault is None
    assert obs.job_id == GUID


def test_parse_job_resource_capital_subscriptions() -> None:
    body = job_body()
    body["id"] = body["id"].replace("/subscriptions/", "/Subscriptions/").upper()
    obs = azure.parse_job_resource(body)
    assert obs.job_id == GUID
    assert obs.vault is not None
    assert obs.vault.key == VAULT.lower()


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "text",
        {"id": f"{VAULT}/backupJobs/{GUID}"},
        {"id": f"{VAULT}/backupJobs/{GUID}", "properties": []},
        {"id": f"{VAULT}/backupJobs/{GUID}", "properties": {"jobType": "X"}},
        {"id": f"{VAULT}/backupJobs/{GUID}", "properties": {"status": "  "}},
        {"id": f"{VAULT}/backupJobs/{GUID}", "properties": {"status": 3}},
        {"id": "x", "name": "not-a-guid", "properties": {"status": "Completed"}},
        {"properties": {"status": "Completed"}},
        {"name": GUID, "properties": {"status": "Completed", "startTime": "garbage"}},
        {"name": GUID, "properties": {"status": "Completed", "duration": "garbage"}},
    ],
)
def test_parse_job_resource_rejects(body: Any) -> None:
    with pytest.raises(BodyError):
        azure.parse_job_resource(body)


# --------------------------------------------------------------------------- operation bodies


def test_parse_operation_status_job_id() -> None:
    body = {
        "id": f"{VAULT}/backupOperations/{GUID}",
        "name": GUID,
        "status": "Succeeded",
        "properties": {"objectType": "OperationStatusJobExtendedInfo", "jobId": GUID.upper()},
    }
    obs = azure.parse_operation_status(body)
    assert obs.status == "Succeeded"
    assert obs.job_ids == (GUID,)
    assert obs.error_code is None
    assert obs.error_message is None


def test_parse_operation_status_job_ids_deduplicated_in_order() -> None:
    other = "11111111-2222-3333-4444-555555555555"
    body = {
        "status": "Succeeded",
        "properties": {
            "objectType": "OperationStatusJobsExtendedInfo",
            "jobIds": [other, GUID, other.upper()],
        },
    }
    assert azure.parse_operation_status(body).job_ids == (other, GUID)


def test_parse_operation_status_error() -> None:
    body = {"status": "Failed", "error": {"code": "UserError", "message": "went wrong"}}
    obs = azure.parse_operation_status(body)
    assert (obs.status, obs.error_code, obs.error_message) == ("Failed", "UserError", "went wrong")
    assert obs.job_ids == ()


def test_parse_operation_status_in_progress() -> None:
    body = {"status": "InProgress", "endTime": "0001-01-01T00:00:00", "properties": None}
    obs = azure.parse_operation_status(body)
    assert obs.status == "InProgress"
    assert obs.job_ids == ()


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {},
        {"status": ""},
        {"status": 1},
        {"status": "Succeeded", "properties": {"jobId": "nope"}},
        {"status": "Succeeded", "properties": {"jobId": 5}},
        {"status": "Succeeded", "properties": {"jobIds": GUID}},
        {"status": "Succeeded", "properties": {"jobIds": [GUID, "../x"]}},
    ],
)
def test_parse_operation_status_rejects(body: Any) -> None:
    with pytest.raises(BodyError):
        azure.parse_operation_status(body)


def test_operation_status_sets() -> None:
    assert azure.OPERATION_RUNNING == "InProgress"
    assert azure.OPERATION_SUCCEEDED == "Succeeded"
    assert {"Failed", "Canceled"} <= azure.OPERATION_FAILED_STATUSES
    assert "Succeeded" not in azure.OPERATION_FAILED_STATUSES
    assert "InProgress" not in azure.OPERATION_FAILED_STATUSES
    assert {"InProgress", "Cancelling"} == azure.RUNNING_STATUSES
