"""Alembic environment: migrations run on a connection Loom hands over (see `loom.store.migrate`)."""

from __future__ import annotations

from alembic import context

from loom.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `loom migrate` (loom.store.migrate), not the alembic CLI")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
