"""Generic access to a table of API objects: get, insert, replace, delete, and cursor pagination."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from loom.errors import InvalidRequest

Order = Literal["asc", "desc"]
Obj = dict[str, Any]


class PageParams(Protocol):
    """`limit`, `order`, `after`, `before` of a list request."""

    @property
    def limit(self) -> int: ...
    @property
    def order(self) -> Order: ...
    @property
    def after(self) -> str | None: ...
    @property
    def before(self) -> str | None: ...


@dataclass(frozen=True)
class Page:
    data: list[Obj]
    has_more: bool

    def wire(self) -> Obj:
        return {
            "object": "list",
            "data": self.data,
            "first_id": self.data[0]["id"] if self.data else None,
            "last_id": self.data[-1]["id"] if self.data else None,
            "has_more": self.has_more,
        }


class Collection:
    """One table of objects of one kind, scoped to a project (and, for child objects, to a parent)."""

    def __init__(self, table: sa.Table, parent_column: str | None = None) -> None:
        self.table = table
        self.parent_column = parent_column
        # Reads by id and writes, built once per shape with bound parameters: constructing a statement and
        # its cache key costs more than SQLite's own work for a one-row write (about 70 µs of 110 µs per insert).
        self._statements: dict[tuple[object, ...], sa.Executable] = {}

    def _scope(self, project: str, parent: str | None) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = [self.table.c.project == project]
        if self.parent_column is not None and parent is not None:
            clauses.append(self.table.c[self.parent_column] == parent)
        return clauses

    def _by_id(self, project: str, object_id: str, parent: str | None) -> tuple[bool, dict[str, Any]]:
        """Whether the parent is part of the lookup, and the parameters of `_where_id`'s clauses."""
        params = {"w_id": object_id, "w_project": project}
        in_parent = self.parent_column is not None and parent is not None
        if in_parent:
            params["w_parent"] = str(parent)
        return in_parent, params

    def _where_id(self, in_parent: bool) -> list[sa.ColumnElement[bool]]:
        t = self.table
        where = [t.c.id == sa.bindparam("w_id"), t.c.project == sa.bindparam("w_project")]
        if in_parent:
            where.append(t.c[str(self.parent_column)] == sa.bindparam("w_parent"))
        return where

    def _values(self, columns: Any) -> dict[str, sa.BindParameter[Any]]:
        return {name: sa.bindparam(f"v_{name}", type_=self.table.c[name].type) for name in columns}

    async def get(self, conn: AsyncConnection, project: str, object_id: str, parent: str | None = None) -> Obj | None:
        in_parent, params = self._by_id(project, object_id, parent)
        key = ("get", in_parent)
        query = self._statements.get(key)
        if query is None:
            query = self._statements[key] = sa.select(self.table.c.data).where(*self._where_id(in_parent))
        row = (await conn.execute(query, params)).first()
        return dict(row[0]) if row is not None else None

    async def get_row(
        self,
        conn: AsyncConnection,
        project: str,
        object_id: str,
        parent: str | None = None,
        *,
        lock: bool = False,
    ) -> sa.Row[Any] | None:
        in_parent, params = self._by_id(project, object_id, parent)
        key = ("get_row", in_parent, lock)
        query = self._statements.get(key)
        if query is None:
            select = sa.select(self.table).where(*self._where_id(in_parent))
            # FOR UPDATE is PostgreSQL's row lock; SQLite (one writer at a time) renders none.
            query = self._statements[key] = select.with_for_update() if lock else select
        return (await conn.execute(query, params)).first()

    async def insert(self, conn: AsyncConnection, project: str, obj: Obj, **columns: Any) -> None:
        key = ("insert", *columns)
        stmt = self._statements.get(key)
        if stmt is None:
            names = ("id", "project", "created_at", "data", *columns)
            stmt = self._statements[key] = self.table.insert().values(**self._values(names))
        params = {f"v_{name}": value for name, value in columns.items()}
        params.update(v_id=obj["id"], v_project=project, v_created_at=obj["created_at"], v_data=obj)
        await conn.execute(stmt, params)

    async def replace(
        self, conn: AsyncConnection, project: str, obj: Obj, parent: str | None = None, **columns: Any
    ) -> None:
        in_parent, params = self._by_id(project, obj["id"], parent)
        key = ("replace", in_parent, *columns)
        stmt = self._statements.get(key)
        if stmt is None:
            update = self.table.update().where(*self._where_id(in_parent))
            stmt = self._statements[key] = update.values(**self._values(("data", *columns)))
        params.update({f"v_{name}": value for name, value in columns.items()}, v_data=obj)
        await conn.execute(stmt, params)

    async def delete(self, conn: AsyncConnection, project: str, object_id: str, parent: str | None = None) -> bool:
        t = self.table
        result = await conn.execute(t.delete().where(t.c.id == object_id, *self._scope(project, parent)))
        return bool(result.rowcount)

    async def list(
        self,
        conn: AsyncConnection,
        project: str,
        params: PageParams,
        *,
        parent: str | None = None,
        where: Sequence[sa.ColumnElement[bool]] = (),
    ) -> Page:
        """A page ordered by (created_at, seq): `seq` breaks ties so no object is skipped or repeated."""
        limit, order, after, before = params.limit, params.order, params.after, params.before
        t = self.table
        scope = [*self._scope(project, parent), *where]
        key = sa.tuple_(t.c.created_at, t.c.seq)
        ascending = order == "asc"
        query = sa.select(t.c.data).where(*scope)
        reverse = False
        if after is not None:
            cursor = await self._cursor(conn, scope, after, "after")
            query = query.where(key > cursor if ascending else key < cursor)
        if before is not None:
            cursor = await self._cursor(conn, scope, before, "before")
            query = query.where(key < cursor if ascending else key > cursor)
            if after is None:
                # The page right before the cursor: walk away from it, then restore the order.
                ascending = not ascending
                reverse = True
        if ascending:
            query = query.order_by(t.c.created_at.asc(), t.c.seq.asc())
        else:
            query = query.order_by(t.c.created_at.desc(), t.c.seq.desc())
        rows = (await conn.execute(query.limit(limit + 1))).all()
        data = [dict(r[0]) for r in rows[:limit]]
        if reverse:
            data.reverse()
        return Page(data=data, has_more=len(rows) > limit)

    async def _cursor(
        self, conn: AsyncConnection, scope: Sequence[sa.ColumnElement[bool]], object_id: str, param: str
    ) -> sa.Tuple:
        t = self.table
        row = (await conn.execute(sa.select(t.c.created_at, t.c.seq).where(t.c.id == object_id, *scope))).first()
        if row is None:
            raise InvalidRequest(
                f"Invalid '{param}': no object with id '{object_id}' in this list.",
                param=param,
                code="invalid_value",
            )
        return sa.tuple_(sa.literal(row[0]), sa.literal(row[1]))
