from __future__ import annotations

from typing import Any

import pytest

from loom.errors import InvalidRequest
from loom.retrieval.filters import matches, parse_filter

ATTRS: dict[str, Any] = {"author": "ada", "year": 2021, "score": 4.5, "draft": False}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"type": "eq", "key": "author", "value": "ada"}, True),
        ({"key": "author", "value": "ada"}, True),  # type defaults to eq
        ({"type": "eq", "key": "author", "value": "grace"}, False),
        ({"type": "ne", "key": "author", "value": "grace"}, True),
        ({"type": "ne", "key": "missing", "value": "x"}, True),
        ({"type": "eq", "key": "missing", "value": "x"}, False),
        ({"type": "gt", "key": "year", "value": 2020}, True),
        ({"type": "gt", "key": "year", "value": 2021}, False),
        ({"type": "gte", "key": "year", "value": 2021}, True),
        ({"type": "lt", "key": "score", "value": 5}, True),
        ({"type": "lte", "key": "score", "value": 4.5}, True),
        ({"type": "lt", "key": "author", "value": 3}, False),  # a string is not comparable to a number
        ({"type": "in", "key": "author", "value": ["ada", "grace"]}, True),
        ({"type": "in", "key": "year", "value": [2020, 2022]}, False),
        ({"type": "nin", "key": "author", "value": ["grace"]}, True),
        ({"type": "eq", "key": "draft", "value": False}, True),
        ({"type": "eq", "key": "year", "value": True}, False),  # booleans are not numbers
        (
            {
                "type": "and",
                "filters": [
                    {"type": "eq", "key": "author", "value": "ada"},
                    {
                        "type": "or",
                        "filters": [{"type": "lt", "key": "year", "value": 2000}, {"key": "draft", "value": False}],
                    },
                ],
            },
            True,
        ),
        ({"type": "or", "filters": [{"key": "author", "value": "x"}, {"key": "year", "value": 1}]}, False),
    ],
)
def test_matches(flt: dict[str, Any], expected: bool) -> None:
    assert matches(parse_filter(flt), ATTRS) is expected


@pytest.mark.parametrize(
    "flt",
    [
        {"type": "like", "key": "a", "value": "b"},
        {"type": "eq", "value": "b"},
        {"type": "eq", "key": "a"},
        {"type": "in", "key": "a", "value": "not-a-list"},
        {"type": "eq", "key": "a", "value": {"nested": 1}},
        {"type": "and", "filters": "nope"},
        "not an object",
    ],
)
def test_invalid_filters(flt: Any) -> None:
    with pytest.raises(InvalidRequest):
        parse_filter(flt)
