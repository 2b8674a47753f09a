"""Azure's errorDetails in every job type's shape (int codes, no code, title only)."""

from __future__ import annotations

import pytest

from backupjobd.core import azure


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (None, ()),
        ("oops", ()),
        ([], ()),
        (
            [{"errorCode": 400230, "errorString": "Snapshot failed", "recommendations": ["a"]}],
            (azure.ErrorDetail("400230", "Snapshot failed", ("a",)),),
        ),
        ([{"errorString": "no code"}], (azure.ErrorDetail(None, "no code"),)),
        ([{"errorCode": 7, "errorTitle": "Title only"}], (azure.ErrorDetail("7", "Title only"),)),
        ([{"errorCode": 7}], (azure.ErrorDetail("7", "error 7"),)),
        ([{"errorCode": True}, 3, {}], ()),
        (
            [{"errorString": "x", "recommendations": ["ok", 5, None]}],
            (azure.ErrorDetail(None, "x", ("ok",)),),
        ),
    ],
)
def test_error_details_are_read_from_every_job_type_s_shape(
    items: object, expected: object
) -> None:
    assert azure.parse_error_details({"errorDetails": items}) == expected


def test_a_recommendation_alone_says_so() -> None:
    [detail] = azure.parse_error_details({"errorDetails": [{"recommendations": ["Retry"]}]})
    assert detail == azure.ErrorDetail(None, "see the recommendations", ("Retry",))


@pytest.mark.parametrize("blank", ["\xa0", "\u2003", "\u3000"])
def test_a_unicode_blank_around_an_id_is_a_look_alike_not_forgiven(blank: str) -> None:
    """str.strip() would remove it and name another vault (hypothesis found it)."""
    vault = (
        "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/rg"
        "/providers/Microsoft.RecoveryServices/vaults/v1"
    )
    assert azure.vault_from_id(f" {vault}\n").id == vault  # ASCII blanks are fine
    with pytest.raises(azure.InvalidInput):
        azure.vault_from_id(vault + blank)
    with pytest.raises(azure.InvalidInput):
        azure.validate_job_id("0b5b2c1e-9a1d-4d43-8d3e-2f0b1a2c3d4e" + blank)


@pytest.mark.parametrize(
    ("ext", "expected"),
    [
        (None, None),
        ({}, None),
        ({"progressPercentage": 42.5}, 42.5),
        ({"progressPercentage": 0}, 0.0),
        ({"progressPercentage": 250}, None),
        ({"progressPercentage": True, "tasksList": []}, None),
        (
            {"tasksList": [{"status": "Completed"}, {"status": "InProgress"}, "junk"]},
            50.0,
        ),
        ({"progressPercentage": None, "tasksList": [{"status": "NotStarted"}]}, 0.0),
    ],
)
def test_progress_from_azure_or_the_task_list(ext: object, expected: float | None) -> None:
    props = {} if ext is None else {"extendedInfo": ext}
    assert azure.parse_progress(props) == expected
