"""retrieval: each vector store records the embedder its vectors come from

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: no vector yet (the first ingestion binds the store to the default of that moment).
    # Existing stores are 'legacy': embedded by the default of their time (`Embedders.legacy_name`).
    with op.batch_alter_table("vector_stores") as batch:
        batch.add_column(sa.Column("embedder", sa.String(length=128), nullable=True))
    op.execute("UPDATE vector_stores SET embedder = 'legacy'")


def downgrade() -> None:
    with op.batch_alter_table("vector_stores") as batch:
        batch.drop_column("embedder")
