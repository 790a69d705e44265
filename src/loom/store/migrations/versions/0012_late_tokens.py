"""retrieval: a nullable `late_tokens` column per chunk, the compact token vectors reranking reads

Chunks embedded by all-MiniLM-L6-v2 from now on store their compact contextual token vectors
(`loom.retrieval.rerank`); chunks already stored keep NULL (filling them would run the model over
every stored chunk again) and are not reranked until their file is indexed again. Both databases.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

from loom.retrieval.schema import late_tokens_downgrade, late_tokens_upgrade

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    late_tokens_upgrade(bind, bind.dialect.name)


def downgrade() -> None:
    bind = op.get_bind()
    late_tokens_downgrade(bind, bind.dialect.name)
