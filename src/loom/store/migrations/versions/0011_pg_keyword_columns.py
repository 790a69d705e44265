"""retrieval: PostgreSQL keyword search from per-chunk term blobs and per-store generations

Adds `kw_terms`, `kw_tfs`, `kw_len`, `kw_generation` to retrieval_chunks (existing chunks encoded in
Python batches) and `generation`, `deleted_generation` to retrieval_store_stats
(`loom.retrieval.pg_keywords`). SQLite: nothing to do.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

from loom.retrieval.schema import keyword_columns_downgrade, keyword_columns_upgrade

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    keyword_columns_upgrade(op.get_bind())


def downgrade() -> None:
    keyword_columns_downgrade(op.get_bind())
