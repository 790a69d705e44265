"""blob keys: `files.path` and `upload_parts.path` hold keys of the blob store, not paths of one host

Earlier versions stored the absolute path of the bytes under the data directory's `files` folder
(`<files>/<xx>/<id>`), which no other machine can open. That folder's layout is exactly the local
store's keys (`<xx>/<id>`), so each path becomes its last two components; a value that is already a
key is left as it is. The columns keep their names. Downgrade turns keys back into paths under the
`files` folder of `LOOM_DATA_DIR` (or the default data directory), for a local store only.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import posixpath

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("files", "upload_parts")


def _table(name: str) -> sa.TableClause:
    return sa.table(name, sa.column("seq", sa.BigInteger), sa.column("path", sa.String(512)))


def key_of(path: str) -> str:
    """The key of a stored path: its folder and name (`/data/files/ab/file-…ab` → `ab/file-…ab`)."""
    if not path.startswith("/"):
        return path  # already a key
    normal = posixpath.normpath(path)
    return f"{posixpath.basename(posixpath.dirname(normal))}/{posixpath.basename(normal)}"


def upgrade() -> None:
    conn = op.get_bind()
    for name in TABLES:
        t = _table(name)
        for seq, path in conn.execute(sa.select(t.c.seq, t.c.path).where(t.c.path.like("/%"))).all():
            conn.execute(t.update().where(t.c.seq == seq).values(path=key_of(path)))


def downgrade() -> None:
    from loom.config import Settings

    root = Settings().files_dir.absolute()
    conn = op.get_bind()
    for name in TABLES:
        t = _table(name)
        for seq, key in conn.execute(sa.select(t.c.seq, t.c.path).where(t.c.path.not_like("/%"))).all():
            conn.execute(t.update().where(t.c.seq == seq).values(path=str(root.joinpath(*key.split("/")))))
