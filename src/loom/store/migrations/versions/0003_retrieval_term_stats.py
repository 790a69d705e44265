"""retrieval: BM25 statistics kept at ingest (per-store lexeme document frequencies, chunk counts)

PostgreSQL only; existing chunks are counted into the new tables. SQLite: nothing to do (FTS5).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

from loom.retrieval.schema import term_stats_drop_statements, term_stats_statements

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in term_stats_statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in term_stats_drop_statements(op.get_bind().dialect.name):
        op.execute(statement)
