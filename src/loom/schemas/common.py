"""Building blocks of request models, and the translation of validation failures into OpenAI's errors.

Request models are strict (no coercion: "1" is not an integer) and forbid unknown fields, as OpenAI's
`additionalProperties: false` schemas do. Unions are tagged with names starting with `~` so that the
tag never shows in an error's `param` path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Tag, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from loom.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def openai_error(message: str, param: str | None, code: str | None) -> PydanticCustomError:
    """Raise inside a validator to give the client exactly this message, param and code."""
    return PydanticCustomError("openai", "{message}", {"message": message, "param": param, "code": code})


_JSON_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "list": "an array",
    "tuple": "an array",
    "dict": "an object",
    "NoneType": "null",
}
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


# What a union discriminator (by function name) accepts, for type errors on it.
UNION_EXPECTATIONS: dict[str, str] = {}


def json_type_name(value: object) -> str:
    return _JSON_NAMES.get(type(value).__name__, "an object")


def param_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("~"):
            continue
        else:
            path += f".{part}" if path else part
    return path


def _quote_list(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def translate(error: ErrorDetails) -> InvalidRequest:
    """One pydantic error → the InvalidRequest OpenAI would have answered."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    loc = tuple(error["loc"])
    path = param_path(loc)
    value = error.get("input")
    if kind == "openai":
        return InvalidRequest(ctx["message"], param=ctx["param"], code=ctx["code"])
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else path
        return InvalidRequest(f"Unrecognized request argument supplied: {name}", param=None, code="unknown_parameter")
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{path}'.", param=path, code="missing_required_parameter")
    if kind in _EXPECTED:
        return InvalidRequest(
            f"Invalid type for '{path}': expected {_EXPECTED[kind]}, but got {json_type_name(value)} instead.",
            param=path,
            code="invalid_type",
        )
    if kind == "string_too_long":
        return InvalidRequest(
            f"Invalid '{path}': string too long. Expected a string with maximum length {ctx['max_length']}, "
            f"but got a string with length {len(str(value))} instead.",
            param=path,
            code="string_above_max_length",
        )
    if kind == "string_too_short":
        return InvalidRequest(
            f"Invalid '{path}': string too short. Expected a string with minimum length {ctx['min_length']}, "
            f"but got a string with length {len(str(value))} instead.",
            param=path,
            code="string_below_min_length",
        )
    if kind == "too_long":
        return InvalidRequest(
            f"Invalid '{path}': array too long. Expected an array with maximum length {ctx['max_length']}, "
            f"but got an array with length {ctx.get('actual_length')} instead.",
            param=path,
            code="array_above_max_length",
        )
    if kind == "too_short":
        if ctx.get("actual_length") == 0:
            return InvalidRequest(
                f"Invalid '{path}': empty array. Expected an array with minimum length {ctx['min_length']}, "
                "but got an empty array instead.",
                param=path,
                code="empty_array",
            )
        return InvalidRequest(
            f"Invalid '{path}': array too short. Expected an array with minimum length {ctx['min_length']}, "
            f"but got an array with length {ctx.get('actual_length')} instead.",
            param=path,
            code="array_below_min_length",
        )
    if kind in ("less_than_equal", "less_than", "greater_than_equal", "greater_than"):
        bound = ctx.get("le", ctx.get("lt", ctx.get("ge", ctx.get("gt"))))
        number = "decimal" if isinstance(bound, float) else "integer"
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        above = kind.startswith("less")
        sign = {"less_than_equal": "<=", "less_than": "<", "greater_than_equal": ">=", "greater_than": ">"}[kind]
        return InvalidRequest(
            f"Invalid '{path}': {number} {'above maximum' if above else 'below minimum'} value. "
            f"Expected a value {sign} {bound}, but got {value} instead.",
            param=path,
            code=f"{number}_{'above_max' if above else 'below_min'}_value",
        )
    if kind in ("literal_error", "enum"):
        expected = ctx.get("expected", "")
        return InvalidRequest(
            f"Invalid value: '{value}'. Supported values are: {expected}.", param=path, code="invalid_value"
        )
    if kind == "union_tag_invalid":
        tags = [t.strip().strip("'").lstrip("~") for t in str(ctx.get("expected_tags", "")).split(",")]
        return InvalidRequest(
            f"Invalid value: '{str(ctx.get('tag')).lstrip('~')}'. Supported values are: {_quote_list(tags)}.",
            param=f"{path}.type" if path else "type",
            code="invalid_value",
        )
    if kind == "union_tag_not_found" and not isinstance(value, dict):
        discriminator = str(ctx.get("discriminator", ""))
        expected = next((v for k, v in UNION_EXPECTATIONS.items() if k in discriminator), "an object")
        return InvalidRequest(
            f"Invalid type for '{path}': expected {expected}, but got {json_type_name(value)} instead.",
            param=path,
            code="invalid_type",
        )
    if kind == "union_tag_not_found":
        return InvalidRequest(
            f"Missing required parameter: '{path}.type'.", param=f"{path}.type", code="missing_required_parameter"
        )
    if kind == "string_pattern_mismatch":
        return InvalidRequest(
            f"Invalid '{path}': string does not match pattern. Expected a string that matches the pattern "
            f"'{ctx.get('pattern')}'.",
            param=path,
            code="invalid_value",
        )
    return InvalidRequest(f"Invalid '{path}': {error['msg']}.", param=path or None, code="invalid_value")


def parse(model: type[M], data: object) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise translate(exc.errors(include_url=False)[0]) from None


def tagged(key: str = "type") -> Callable[[object], str | None]:
    """A discriminator reading `key` of a dict, tagged `~<value>`."""

    def pick(value: object) -> str | None:
        if isinstance(value, dict):
            tag = value.get(key)
            return f"~{tag}" if isinstance(tag, str) else None
        return None

    return pick


def key_value_map(field: str, allowed: tuple[type, ...], expected: str) -> Callable[[object], object]:
    """A validator for OpenAI's small key-value maps (`metadata`, vector-store file `attributes`):
    ≤16 pairs, keys ≤64 chars, values of the `allowed` types, strings ≤512 chars (CONFORMANCE §1.4 wording)."""

    def check(value: object) -> object:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise openai_error(
                f"Invalid type for '{field}': expected an object, but got {json_type_name(value)} instead.",
                field,
                "invalid_type",
            )
        if len(value) > 16:
            raise openai_error(
                f"Invalid '{field}': too many properties. Expected an object with at most 16 properties, "
                f"but got an object with {len(value)} properties instead.",
                field,
                "object_above_max_properties",
            )
        for key, item in value.items():
            if len(key) > 64:
                raise openai_error(
                    f"Invalid property name in '{field}': '{key}' is too long. Expected a string with maximum "
                    f"length 64, but got a string with length {len(key)} instead.",
                    f"{field}.{key}",
                    "string_above_max_length",
                )
            if not isinstance(item, allowed):
                raise openai_error(
                    f"Invalid type for '{field}.{key}': expected {expected}, but got {json_type_name(item)} instead.",
                    f"{field}.{key}",
                    "invalid_type",
                )
            if isinstance(item, str) and len(item) > 512:
                raise openai_error(
                    f"Invalid '{field}.{key}': string too long. Expected a string with maximum length 512, "
                    f"but got a string with length {len(item)} instead.",
                    f"{field}.{key}",
                    "string_above_max_length",
                )
        return value

    return check


Metadata = Annotated[dict[str, str] | None, BeforeValidator(key_value_map("metadata", (str,), "a string"))]

__all__ = ["Discriminator", "Literal", "Metadata", "Request", "Tag", "openai_error", "parse", "tagged", "translate"]
