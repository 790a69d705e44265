"""retrieval: PostgreSQL keyword search from per-chunk term blobs and per-store generations

Adds `kw_terms`, `kw_tfs`, `kw_len`, `kw_generation` to retrieval_chunks (existing chunks encoded in
Python batches) and `generation`, `deleted_generation` to retrieval_store_stats
(`loom.retrieval.pg_keywords`). First drops what ranking no longer reads: the tsvector column `tsv`,
its GIN index, `term_freqs`, `doc_len`, `retrieval_terms` and stores' `total_len`, so the backfill's
UPDATEs neither recompute `tsv` nor re-index GIN (downgrade recomputes them as 0002/0003 made them).
Measured on a loaded 2-core machine: 20k chunks 114 s (before this drop: 105k chunks 1187 s, about
twice the time a chunk). SQLite: nothing to do.

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
    if op.get_bind().dialect.name == "postgresql":
        keyword_columns_upgrade(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        keyword_columns_downgrade(op.get_bind())
