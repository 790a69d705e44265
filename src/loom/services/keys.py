"""API keys: hashed at rest, each bound to a project; env keys belong to the default project."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa

from loom.clock import now
from loom.errors import AuthenticationError
from loom.store import tables
from loom.store.db import Database

DEFAULT_PROJECT = "default"
# A cached answer is trusted this long: a key created with `loom keys create` is looked up in the
# database on first sight (so it works at once); a revoked key stops working within this delay.
_CACHE_S = 2.0


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mask(key: str) -> str:
    return f"{key[:6]}***{key[-4:]}" if len(key) > 12 else "***"


@dataclass(frozen=True)
class KeyInfo:
    id: str
    project: str
    hint: str
    created_at: int
    revoked_at: int | None


class KeyRing:
    def __init__(self, db: Database, env_keys: list[str]) -> None:
        self.db = db
        self._env = {hash_key(k): DEFAULT_PROJECT for k in env_keys}
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._open: tuple[bool, float] = (False, 0.0)

    async def _any_keys(self) -> bool:
        if self._env:
            return True
        is_open, until = self._open
        if time.monotonic() < until:
            return not is_open
        # Revoked keys count: revoking the last key must lock the server, not open it to every token.
        async with self.db.read() as conn:
            count = (await conn.execute(sa.select(sa.func.count()).select_from(tables.api_keys))).scalar_one()
        self._open = (count == 0, time.monotonic() + _CACHE_S)
        return count > 0

    async def is_open(self) -> bool:
        """True when no key was ever configured: any bearer token is then accepted (loopback only)."""
        return not await self._any_keys()

    async def authenticate(self, authorization: str | None) -> str:
        """The project of the bearer token in `authorization`, or AuthenticationError."""
        if not authorization or not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
            raise AuthenticationError(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code=None,
            )
        key = authorization[7:].strip()
        digest = hash_key(key)
        project = self._env.get(digest)
        if project is not None:
            return project
        cached = self._cache.get(digest)
        if cached is not None and time.monotonic() < cached[1]:
            project = cached[0]
        else:
            async with self.db.read() as conn:
                row = (
                    await conn.execute(
                        sa.select(tables.api_keys.c.project).where(
                            tables.api_keys.c.key_hash == digest, tables.api_keys.c.revoked_at.is_(None)
                        )
                    )
                ).first()
            project = row[0] if row is not None else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (project, time.monotonic() + _CACHE_S)
        if project is not None:
            return project
        if not await self._any_keys():
            return DEFAULT_PROJECT
        raise AuthenticationError(f"Incorrect API key provided: {mask(key)}.", code="invalid_api_key")


async def create_key(db: Database, project: str) -> tuple[KeyInfo, str]:
    key = "sk-loom-" + secrets.token_urlsafe(32)
    info = KeyInfo(id="key_" + secrets.token_hex(8), project=project, hint=mask(key), created_at=now(), revoked_at=None)
    async with db.write() as conn:
        await conn.execute(
            tables.api_keys.insert().values(
                id=info.id, project=project, key_hash=hash_key(key), hint=info.hint, created_at=info.created_at
            )
        )
    return info, key


async def list_keys(db: Database, project: str | None = None) -> list[KeyInfo]:
    t = tables.api_keys
    query = sa.select(t.c.id, t.c.project, t.c.hint, t.c.created_at, t.c.revoked_at).order_by(t.c.created_at, t.c.id)
    if project is not None:
        query = query.where(t.c.project == project)
    async with db.read() as conn:
        rows = (await conn.execute(query)).all()
    return [KeyInfo(id=r[0], project=r[1], hint=r[2], created_at=r[3], revoked_at=r[4]) for r in rows]


async def revoke_key(db: Database, key_id: str) -> bool:
    t = tables.api_keys
    async with db.write() as conn:
        result = await conn.execute(
            t.update().where(t.c.id == key_id, t.c.revoked_at.is_(None)).values(revoked_at=now())
        )
    return bool(result.rowcount)
