"""Only the coordination seam knows the database (issue 14, point 4): `is_sqlite` checks, raw advisory
locks, `NOTIFY`/`LISTEN` and dialect tests live in `loom.store.coordination`'s implementations and
`loom.store.db`'s engine setup, and nowhere else in src/loom but the places listed with their reason."""

from __future__ import annotations

from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "loom"
FORBIDDEN = ("is_sqlite", "pg_try_advisory", "pg_advisory", "pg_notify", "add_listener", "dialect.name")

# The seam itself: the protocol's factory and its two implementations, and the engine setup.
SEAM = ("store/coordination/", "store/db.py")

# Other places allowed one of the strings, with why ("module prefix", "string"): reason.
ALLOW = {
    # A migration's DDL differs per database; Alembic hands it the connection to ask.
    ("store/migrations/", "dialect.name"): "DDL per dialect in migrations",
    # The PostgreSQL chunk index's per-store lock is part of its own statements (a two-key lock space of
    # its own, apart from the coordinator's one-key named locks).
    ("retrieval/pg_index.py", "pg_advisory"): "the PostgreSQL index's per-store statistics lock",
}


def _found() -> set[tuple[str, str]]:
    hits: set[tuple[str, str]] = set()
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        text = path.read_text()
        hits.update((name, needle) for needle in FORBIDDEN if needle in text)
    return hits


def _allowed(name: str, needle: str) -> bool:
    return name.startswith(SEAM) or any(name.startswith(prefix) and needle == s for prefix, s in ALLOW)


def test_nothing_outside_the_seam_knows_the_database() -> None:
    outside = sorted(f"{name}: {needle}" for name, needle in _found() if not _allowed(name, needle))
    assert not outside, f"database-specific code outside loom.store.coordination: {outside}"


def test_the_allow_list_is_still_true() -> None:
    found = _found()
    stale = [key for key in ALLOW if not any(n.startswith(key[0]) and s == key[1] for n, s in found)]
    assert not stale, f"allowed entries that no longer occur (remove them from ALLOW): {stale}"


def test_the_seam_is_where_the_database_is_known() -> None:
    # The check looks where the seam is: were it moved, the prefixes above would guard nothing.
    found = {name for name, _needle in _found()}
    for module in ("store/coordination/postgres.py", "store/coordination/__init__.py", "store/db.py"):
        assert module in found
