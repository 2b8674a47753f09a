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
