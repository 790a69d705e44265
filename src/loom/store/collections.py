"""The collections of API objects, one per table: the repositories services and the run engine read and write."""

from __future__ import annotations

from loom.store import tables
from loom.store.repo import Collection

assistants = Collection(tables.assistants)
threads = Collection(tables.threads)
messages = Collection(tables.messages, parent_column="thread_id")
runs = Collection(tables.runs, parent_column="thread_id")
run_steps = Collection(tables.run_steps, parent_column="run_id")
files = Collection(tables.files)
uploads = Collection(tables.uploads)
vector_stores = Collection(tables.vector_stores)
