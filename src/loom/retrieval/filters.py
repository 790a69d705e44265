"""Attribute filters: OpenAI's `ComparisonFilter` and `CompoundFilter`, over per-file attributes.

A filter is validated once (`parse_filter`) into a small tree, then evaluated against each file's
`attributes` in Python; the indexes turn the result into a set of allowed file ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loom.errors import InvalidRequest

Scalar = str | int | float | bool
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin")
COMPOUNDS = ("and", "or")


@dataclass(frozen=True, slots=True)
class Comparison:
    op: str
    key: str
    value: Scalar | tuple[Scalar, ...]


@dataclass(frozen=True, slots=True)
class Compound:
    op: str
    filters: tuple[Filter, ...]


Filter = Comparison | Compound


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def parse_filter(raw: Any, *, param: str = "filters") -> Filter:
    if not isinstance(raw, Mapping):
        raise _bad(f"Invalid type for '{param}': expected an object.", param, "invalid_type")
    kind = raw.get("type", "eq")
    if kind in COMPOUNDS:
        subs = raw.get("filters")
        if not isinstance(subs, list):
            raise _bad(f"Invalid type for '{param}.filters': expected an array.", f"{param}.filters", "invalid_type")
        return Compound(kind, tuple(parse_filter(s, param=f"{param}.filters[{i}]") for i, s in enumerate(subs)))
    if kind not in COMPARISONS:
        allowed = ", ".join(f"'{c}'" for c in (*COMPARISONS, *COMPOUNDS))
        raise _bad(f"Invalid value: '{kind}'. Supported values are: {allowed}.", f"{param}.type")
    key = raw.get("key")
    if not isinstance(key, str):
        raise _bad(f"Missing required parameter: '{param}.key'.", f"{param}.key", "missing_required_parameter")
    if "value" not in raw:
        raise _bad(f"Missing required parameter: '{param}.value'.", f"{param}.value", "missing_required_parameter")
    value = raw["value"]
    if kind in ("in", "nin"):
        if not isinstance(value, list) or not all(_is_scalar(v) for v in value):
            raise _bad(
                f"Invalid type for '{param}.value': expected an array of strings or numbers.",
                f"{param}.value",
                "invalid_type",
            )
        return Comparison(kind, key, tuple(value))
    if not _is_scalar(value):
        raise _bad(
            f"Invalid type for '{param}.value': expected a string, number or boolean.",
            f"{param}.value",
            "invalid_type",
        )
    return Comparison(kind, key, value)


def _same_kind(a: Any, b: Any) -> bool:
    """bool is not a number here; int and float compare with each other."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str)
    return True


def _equal(a: Any, b: Any) -> bool:
    return _same_kind(a, b) and bool(a == b)


def matches(flt: Filter, attributes: Mapping[str, Any] | None) -> bool:
    """Whether a file with these attributes passes the filter. A missing key fails every comparison
    except `ne` and `nin` (as SQL would treat an absent value that is "not equal")."""
    attrs = attributes or {}
    if isinstance(flt, Compound):
        results = (matches(f, attrs) for f in flt.filters)
        return all(results) if flt.op == "and" else any(results)
    present = flt.key in attrs and attrs[flt.key] is not None
    actual = attrs.get(flt.key)
    op, expected = flt.op, flt.value
    if op == "eq":
        return present and _equal(actual, expected)
    if op == "ne":
        return not (present and _equal(actual, expected))
    if op == "in":
        return present and any(_equal(actual, v) for v in expected)  # type: ignore[union-attr]
    if op == "nin":
        return not (present and any(_equal(actual, v) for v in expected))  # type: ignore[union-attr]
    if not present or not _same_kind(actual, expected) or isinstance(actual, bool):
        return False
    if op == "gt":
        return bool(actual > expected)  # type: ignore[operator]
    if op == "gte":
        return bool(actual >= expected)  # type: ignore[operator]
    if op == "lt":
        return bool(actual < expected)  # type: ignore[operator]
    return bool(actual <= expected)  # type: ignore[operator]
