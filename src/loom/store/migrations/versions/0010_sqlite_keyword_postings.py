"""retrieval (SQLite): keyword columns per chunk (term hashes, frequencies, length) replace FTS5

Existing chunks are analysed from their text in batches; then the FTS5 table and its triggers are
dropped. PostgreSQL: nothing to do.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

from loom.retrieval.schema import sqlite_keyword_downgrade, sqlite_keyword_upgrade

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        sqlite_keyword_upgrade(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        sqlite_keyword_downgrade(op.get_bind())
