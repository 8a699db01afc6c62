"""Row counting of /invocations bodies and the request budget, without a server."""

from __future__ import annotations

import io
import json
import time

import pandas as pd
import pytest

from tunery.serving.limits import BUDGET, Budget, RequestAborted, check
from tunery.serving.server import count_rows

JSON = "application/json"


@pytest.mark.parametrize(
    ("payload", "rows"),
    [
        ({"dataframe_split": {"columns": ["text"], "data": [["a"], ["b"], ["c"]]}}, 3),
        ({"dataframe_records": [{"text": "a"}, {"text": "b"}]}, 2),
        ({"instances": ["a", "b", "c", "d"]}, 4),
        ({"inputs": ["a"]}, 1),
        ({"inputs": {"text": ["a", "b"]}}, 2),
        ({"inputs": "a"}, 1),
        ({"something": 1}, None),
    ],
)
def test_json_rows_are_counted_in_every_format(payload, rows):
    assert count_rows(json.dumps(payload).encode(), f"{JSON}; charset=utf-8") == rows


def test_csv_and_parquet_rows_are_counted_and_malformed_bodies_left_to_mlflow():
    assert count_rows(b'text\n"a\nb"\nc\n', "text/csv") == 2
    buffer = io.BytesIO()
    pd.DataFrame({"text": ["a"] * 7}).to_parquet(buffer)
    assert count_rows(buffer.getvalue(), "application/x-parquet") == 7
    assert count_rows(b"{not json", JSON) is None


def test_check_raises_once_the_deadline_passed_or_the_budget_is_cancelled():
    check()  # outside a request: nothing to check
    budget = Budget(0.05)
    token = BUDGET.set(budget)
    try:
        check()
        time.sleep(0.06)
        with pytest.raises(RequestAborted, match="timeout"):
            check()
    finally:
        BUDGET.reset(token)
    gone = Budget(None)
    gone.cancel("client_disconnected")
    token = BUDGET.set(gone)
    try:
        with pytest.raises(RequestAborted, match="client_disconnected"):
            check()
    finally:
        BUDGET.reset(token)
