"""state columns: Loom's bookkeeping moves out of the wire objects

Runs, run steps, uploads and vector-store files get a `state` JSON column; the keys starting with `_`
that earlier versions kept inside `data` (`_usage`, `_include`, `_citations`, `_pending_images`,
`_calls`, `_mime_type`, `_file_ttl`, `_claim`, `_attempts`) move into it without the underscore, so
`data` holds exactly the wire object. Downgrade puts them back.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("runs", "run_steps", "uploads", "vector_store_files")
_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _table(name: str) -> sa.TableClause:
    return sa.table(name, sa.column("seq", sa.BigInteger), sa.column("data", _JSON), sa.column("state", _JSON))


def split(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An old-format `data` as the wire object and the state its `_` keys held."""
    wire = {k: v for k, v in data.items() if not k.startswith("_")}
    state = {k[1:]: v for k, v in data.items() if k.startswith("_") and v is not None}
    return wire, state


def upgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(sa.Column("state", _JSON, nullable=True))
    conn = op.get_bind()
    for name in TABLES:
        t = _table(name)
        for seq, data in conn.execute(sa.select(t.c.seq, t.c.data)).all():
            if not any(k.startswith("_") for k in data):
                continue
            wire, state = split(dict(data))
            conn.execute(t.update().where(t.c.seq == seq).values(data=wire, state=state or None))


def downgrade() -> None:
    conn = op.get_bind()
    for name in TABLES:
        t = _table(name)
        for seq, data, state in conn.execute(sa.select(t.c.seq, t.c.data, t.c.state)).all():
            if state:
                merged = {**dict(data), **{f"_{k}": v for k, v in dict(state).items()}}
                conn.execute(t.update().where(t.c.seq == seq).values(data=merged))
    for name in TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("state")
