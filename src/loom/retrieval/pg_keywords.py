"""Keyword search in the PostgreSQL chunk index: exact Okapi BM25 from an in-memory index per store.

Each chunk's keywords are analysed once, at ingest (`analysis.encode`), into three columns of
`retrieval_chunks`: its distinct terms' hashes (`kw_terms`), their frequencies (`kw_tfs`) and its
length (`kw_len`). A replica searching a store loads those rows into a `bm25.Postings` (numpy CSR)
and ranks them (`topk.top_k`): the exact BM25 top k, with statistics over the searched stores, no
candidate cap however large the store.

Freshness: every write to a store takes a new value of the sequence `retrieval_kw_generation` as
the store's `generation` (`retrieval_store_stats`), in the transaction that writes, under the
store's lock, so one store's generations commit in increasing order; added chunks carry it as
their `kw_generation`, and a delete sets `deleted_generation` too (a new store's row starts with
both at its first generation, so a store deleted and made again under the same id is reloaded).
A search reads its stores' generations in one round trip; a cached store older than that loads
only the chunks added since (a delta, kept as a segment of its own and merged with its small
neighbours as they grow, as in a log-structured merge), and if anything was deleted since, the
ids of its cached chunks still there (the others are dropped from the segments in one pass,
no re-sort). A store loaded whole is built as segments of SEGMENT_ROWS chunks. Loads run off
the event loop, and concurrent searches of one store share one load. A search of cached stores
starts ranking them while their generations are read, and ranks again only if one has moved on.

The cache is bounded (`max_bytes`, `LOOM_KEYWORD_CACHE_MB`): past it the least recently searched
stores are dropped (never the ones being searched).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loom.retrieval.analysis import Hashes
from loom.retrieval.bm25 import Postings, PostingsRow
from loom.retrieval.index import Candidate
from loom.retrieval.topk import top_k

# Settings for one search transaction, whatever the server's defaults: asyncpg prepares statements,
# and after five runs PostgreSQL may switch to a generic plan that cannot see how selective a
# file list is. And no JIT: a server built with LLVM compiles every plan whose cost estimate
# passes `jit_above_cost` (100000; an exact vector scan over 100k chunks estimates 167k), which
# takes longer than these few-millisecond queries run (pgserver's build has no JIT at all).
SESSION_SETTINGS = "set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true)"

GENERATION_SEQUENCE = "retrieval_kw_generation"
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024
SEGMENT_ROWS = 1 << 17

_GENERATIONS = "SELECT vector_store_id, generation FROM retrieval_store_stats WHERE vector_store_id = ANY($1::text[])"
_STORE_GENERATION = text("SELECT generation, deleted_generation FROM retrieval_store_stats WHERE vector_store_id = :vs")
_ROWS = "SELECT id, file_id, kw_terms, kw_tfs, kw_len FROM retrieval_chunks WHERE vector_store_id = $1"
_IDS = "SELECT id FROM retrieval_chunks WHERE vector_store_id = $1 AND kw_generation <= $2"


@asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's asyncpg connection, for a search's reads: one round trip a query, where
    SQLAlchemy's connection adds a BEGIN and a ROLLBACK around it and its own row handling (measured on
    the 1M-chunk bench database: 0.20 against 0.55 ms a query; a search makes four, beside its ranking)."""
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert raw is not None
        try:
            yield raw
        except BaseException:
            # Failed or cancelled mid-query: asyncpg's own state (a transaction it believes open, a reply
            # half read) is unknown, so the connection is closed, not pooled again for another request.
            await conn.invalidate()
            raise


@dataclass(frozen=True, slots=True)
class _Entry:
    """A store as cached: its segments (oldest first; chunk ids never repeat across them) and the
    generation they hold every chunk of."""

    segments: tuple[Postings, ...]
    generation: int

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments)


def _build(rows: Sequence[tuple[int, str, bytes, bytes, int]]) -> Postings:
    """A segment from stored rows (id, file id, terms, tfs, length). Blocking."""
    codes: dict[str, int] = {}
    coded: list[PostingsRow] = [
        (int(i), codes.setdefault(f, len(codes)), bytes(t), bytes(tf), int(n)) for i, f, t, tf, n in rows
    ]
    return Postings.build(coded, list(codes))


def _compacted(segments: Sequence[Postings]) -> tuple[Postings, ...]:
    """Merge the newest segments while the one before is less than twice as large and the two fit in
    SEGMENT_ROWS (the small ones stay geometric: few segments, each chunk merged a few times; a
    large store stays segments of about SEGMENT_ROWS, never merged again). Blocking."""
    out = [s for s in segments if s.size]
    while len(out) >= 2 and out[-2].size < 2 * out[-1].size and out[-2].size + out[-1].size <= SEGMENT_ROWS:
        out[-2:] = [Postings.merge(out[-2:])]
    return tuple(out)


def _segments(rows: Sequence[tuple[int, str, bytes, bytes, int]]) -> list[Postings]:
    """Rows loaded at once, as segments of SEGMENT_ROWS (a build sorts its postings: smaller sorts,
    less memory at a time). Blocking."""
    return [_build(rows[i : i + SEGMENT_ROWS]) for i in range(0, len(rows), SEGMENT_ROWS)]


def keep_only(segment: Postings, alive: npt.NDArray[np.int64]) -> Postings:
    """The segment without the chunks whose ids are not in `alive` (sorted): one pass over its
    postings, no sort (`Postings.remove`, `compact`). Blocking."""
    gone = ~np.isin(segment.chunk_ids, alive, assume_unique=True)
    return segment.remove(gone).compact() if gone.any() else segment


def _read(done: asyncio.Future[list[Candidate]]) -> None:
    """Take a discarded ranking's outcome, so that its error (if any) is not reported as never read."""
    if not done.cancelled():
        done.exception()


class KeywordCache:
    """Stores' postings in memory, for exact BM25 over them (see the module's description)."""

    def __init__(self, engine: AsyncEngine, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._engine = engine
        self._max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently searched first
        self._locks: dict[str, asyncio.Lock] = {}
        self._missed: set[str] = set()  # stores found stale by their last search: no guess next time

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def cached(self, vector_store_id: str) -> int | None:
        """The generation cached for a store (None: not cached)."""
        entry = self._entries.get(vector_store_id)
        return None if entry is None else entry.generation

    async def search(
        self, vector_store_ids: Sequence[str], hashes: Hashes, limit: int, file_ids: Collection[str] | None
    ) -> list[Candidate]:
        stores = list(dict.fromkeys(vector_store_ids))
        # When every store is cached (and none was found stale last time), ranking starts on the cache
        # while the generations are read: a search that finds nothing newer saves the round trip; one
        # that does rank again and leaves the guess (a thread can't be stopped) to end unread.
        cached = [self._entries.get(vs) for vs in stores]
        guess: asyncio.Future[list[Candidate]] | None = None
        if all(e is not None for e in cached) and self._missed.isdisjoint(stores):
            held = [s for e in cached if e is not None for s in e.segments]
            guess = asyncio.get_running_loop().run_in_executor(None, top_k, held, hashes, limit, file_ids)
        try:
            found = await self._generations(stores)
        finally:
            if guess is not None:
                guess.add_done_callback(_read)
        stale = {vs for vs, e in zip(stores, cached, strict=True) if e is not None and found.get(vs) != e.generation}
        self._missed.difference_update(stores)
        self._missed.update(stale)
        if guess is not None and not stale:
            for vs in stores:
                self._entries.move_to_end(vs)
            return await guess
        segments: list[Postings] = []
        for vs in stores:
            if vs not in found:  # empty, or deleted
                self._entries.pop(vs, None)
                continue
            segments.extend(await self._fresh(vs, found[vs]))
        self._evict(keep=set(stores))
        self._missed.intersection_update(self._entries)
        if not segments:
            return []
        return await asyncio.to_thread(top_k, segments, hashes, limit, file_ids)

    async def _generations(self, stores: Sequence[str]) -> dict[str, int]:
        """The stores' generations as committed now (a store without one is empty or deleted)."""
        async with raw_connection(self._engine) as raw:
            return {str(r[0]): int(r[1]) for r in await raw.fetch(_GENERATIONS, list(stores))}

    async def _fresh(self, vs: str, generation: int) -> tuple[Postings, ...]:
        entry = self._entries.get(vs)
        if entry is None or entry.generation < generation:
            lock = self._locks.setdefault(vs, asyncio.Lock())
            async with lock:  # one load per store at a time; the others then find it done
                entry = self._entries.get(vs)
                if entry is None or entry.generation < generation:
                    entry = await self._load(vs, entry)
                    self._entries[vs] = entry
        self._entries.move_to_end(vs)
        return entry.segments

    async def _load(self, vs: str, base: _Entry | None) -> _Entry:
        """The store as committed now, read in one snapshot with the generation it makes up: all its
        chunks if `base` is None, else the chunks added since `base` and, if something was deleted
        since, the ids of `base`'s chunks still there (to drop the others)."""
        alive: npt.NDArray[np.int64] | None = None
        async with self._engine.connect() as conn:
            await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                row = (await conn.execute(_STORE_GENERATION, {"vs": vs})).first()
                if row is None:
                    return _Entry((), 0)
                generation, deleted = int(row[0]), int(row[1])
                # The raw driver: a million rows through SQLAlchemy's Row objects cost seconds more.
                raw = (await conn.get_raw_connection()).driver_connection
                assert raw is not None
                if base is None:
                    rows = await raw.fetch(_ROWS, vs)
                else:
                    rows = await raw.fetch(_ROWS + " AND kw_generation > $2", vs, base.generation)
                    if deleted > base.generation:
                        ids = await raw.fetch(_IDS, vs, base.generation)
                        alive = np.sort(np.fromiter((r[0] for r in ids), dtype=np.int64, count=len(ids)))
        if base is None:
            return _Entry(await asyncio.to_thread(lambda: _compacted(_segments(rows))), generation)
        old = base.segments

        def update() -> tuple[Postings, ...]:
            kept = [keep_only(s, alive) for s in old] if alive is not None else list(old)
            return _compacted([*kept, *_segments(rows)])

        return _Entry(await asyncio.to_thread(update), generation)

    def _evict(self, keep: set[str]) -> None:
        total = self.nbytes
        for vs in list(self._entries):
            if total <= self._max_bytes:
                break
            if vs in keep:
                continue
            total -= self._entries.pop(vs).nbytes
            lock = self._locks.get(vs)
            if lock is not None and not lock.locked():
                del self._locks[vs]
