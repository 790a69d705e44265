"""SQL over the JSON `data` column that each database writes its own way (SQLAlchemy compiles it per
dialect, so callers write one query)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement


class JsonListHas(ColumnElement[bool]):
    """True where the JSON list at `path` of the document in `column` may hold the string `value`.

    On PostgreSQL that is exact (jsonb's `?` on the list); elsewhere it is a text match of the
    quoted string anywhere in the document, which can also be true for the string elsewhere, so the
    caller confirms on the parsed object. Either way a scan of the rows the other conditions leave.
    """

    type = sa.Boolean()
    inherit_cache = False  # compiled per use: a delete of a vector store is rare
    _is_implicitly_boolean = True  # a condition already: no "= 1" after it on SQLite

    def __init__(self, column: sa.ColumnElement[Any], path: tuple[str, ...], value: str) -> None:
        self.column = column
        self.path = path
        self.value = value


def json_list_has(column: sa.ColumnElement[Any], path: tuple[str, ...], value: str) -> JsonListHas:
    return JsonListHas(column, path, value)


@compiles(JsonListHas)
def _text_match(element: JsonListHas, compiler: SQLCompiler, **kw: Any) -> str:
    needle = f'"{element.value}"'
    return compiler.process(sa.cast(element.column, sa.Text).contains(needle, autoescape=True), **kw)


@compiles(JsonListHas, "postgresql")
def _jsonb_has(element: JsonListHas, compiler: SQLCompiler, **kw: Any) -> str:
    listed = sa.type_coerce(element.column, JSONB)[element.path]
    return compiler.process(listed.has_key(element.value), **kw)
