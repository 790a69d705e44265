"""Tables. Each API object is one row: the columns Loom queries on, and `data`, the object as the wire shows it.

Keeping the wire object whole in `data` makes a read one row fetch with no re-assembly; the indexed columns
(project, parents, status, created_at) carry everything the API filters or orders on. `data` holds exactly
the wire object: Loom's own bookkeeping of a run, a step, an upload or a vector-store file is in its
`state` column (`loom.records.state`), never in `data`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for a growing sequence.
Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _resource(
    name: str, *extra: sa.Column[object] | sa.Index | sa.UniqueConstraint, unique_id: bool = True
) -> sa.Table:
    """A table of API objects: `seq` orders rows that share a `created_at` second, so pages never skip."""
    return sa.Table(
        name,
        metadata,
        sa.Column("seq", Seq, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=unique_id, index=not unique_id),
        sa.Column("project", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("data", Json, nullable=False),
        *extra,
    )


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("project", sa.String(128), nullable=False),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("hint", sa.String(32), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
)

assistants = _resource("assistants", sa.Index("ix_assistants_list", "project", "created_at", "seq"))

threads = _resource("threads", sa.Index("ix_threads_list", "project", "created_at", "seq"))

messages = _resource(
    "messages",
    sa.Column("thread_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Index("ix_messages_list", "thread_id", "created_at", "seq"),
)

runs = _resource(
    "runs",
    sa.Column("thread_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    # The replica executing the run holds a lease it renews; a lapsed lease means its executor died.
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_expires_at", sa.Float, nullable=True),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("state", Json, nullable=True),
    sa.Index("ix_runs_list", "thread_id", "created_at", "seq"),
    sa.Index("ix_runs_status", "status"),
)

run_steps = _resource(
    "run_steps",
    sa.Column("thread_id", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("state", Json, nullable=True),
    sa.Index("ix_run_steps_list", "run_id", "created_at", "seq"),
)

files = _resource(
    "files",
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    # The key of its bytes in the blob store (`loom.store.blobstore.file_key`), never a host path.
    sa.Column("path", sa.String(512), nullable=False),
    sa.Index("ix_files_list", "project", "created_at", "seq"),
)

uploads = _resource(
    "uploads",
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("state", Json, nullable=True),
)

upload_parts = _resource(
    "upload_parts",
    sa.Column("upload_id", sa.String(64), nullable=False, index=True),
    # The key of the part's bytes in the blob store (`loom.store.blobstore.part_key`).
    sa.Column("path", sa.String(512), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
)

vector_stores = _resource(
    "vector_stores",
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    # The embedder of the store's vectors (`Embedder.name`), bound by its first ingestion; NULL: not yet;
    # 'legacy': made before migration 0009 (see `loom.retrieval.embedding.Embedders`).
    sa.Column("embedder", sa.String(128), nullable=True),
    sa.Index("ix_vector_stores_list", "project", "created_at", "seq"),
)

# A vector-store file's id is the File's id, so it is unique only within its store.
vector_store_files = _resource(
    "vector_store_files",
    sa.Column("vector_store_id", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("batch_id", sa.String(64), nullable=True),
    sa.Column("state", Json, nullable=True),
    sa.UniqueConstraint("vector_store_id", "id", name="uq_vector_store_files"),
    sa.Index("ix_vector_store_files_list", "vector_store_id", "created_at", "seq"),
    unique_id=False,
)

vector_store_file_batches = _resource(
    "vector_store_file_batches",
    sa.Column("vector_store_id", sa.String(64), nullable=False, index=True),
)

# Scale-out (loom.scaleout.affinity): which replica owns each thread's code-interpreter session, at which
# internal address, under a lease it renews; and the replicas' shared secret for their internal channel.
sandbox_owners = sa.Table(
    "sandbox_owners",
    metadata,
    sa.Column("thread_id", sa.String(64), primary_key=True),
    sa.Column("replica", sa.String(64), nullable=False, index=True),
    sa.Column("address", sa.String(512), nullable=False),
    sa.Column("lease_expires_at", sa.Float, nullable=False),
)

internal_secrets = sa.Table(
    "internal_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(128), nullable=False),
)
