"""retrieval tables: chunks with vectors, keyword index (FTS5 / tsvector), per-file attributes

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from loom.retrieval.schema import drop_statements, schema_statements

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in schema_statements(dialect):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in drop_statements(dialect):
        op.execute(statement)
