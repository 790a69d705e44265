"""Keyword search in the PostgreSQL chunk index: Okapi BM25 over the tsvector, planned with MaxScore.

Okapi BM25 (k1 1.2, b 0.75) over the tsvector: the GIN index finds chunks with query
lexemes, term frequencies come from a per-chunk jsonb computed at ingest. ts_rank_cd
measured far worse on SciFact (nDCG@10 0.38 against 0.68).

MaxScore: score only chunks holding one of the rarer terms, adding terms (rarest first)
until the chunks left out, which hold only the remaining common terms, cannot beat the
current k-th score (a term adds at most `idf * (k1 + 1)`). Exact, and it skips scanning
the huge posting sets of common words, which dominate the cost of an OR query; past
MAX_SCORED chunks it stops (approximate, bounded latency).

In a large store even the rarest query term can be in thousands of chunks (at a million
chunks, ~5 us each to score). Past `first_pass_rows` of them the ranking is approximate:
the chunks holding two or three of the rarer terms together are scored (each AND group
is one GIN scan, and their top is where BM25's top is), else the first `first_pass_rows`
chunks holding the rarest term.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from loom.retrieval.index import Candidate
from loom.retrieval.schema import TEXT_SEARCH_CONFIG

BM25_K1 = 1.2
BM25_B = 0.75
MAX_SCORED = 5000
# Keyword search in a store of LARGE_STORE chunks or more scores at most about FIRST_PASS_ROWS
# chunks in its first pass (see `keyword_candidates`); in smaller stores the first pass scores
# every chunk holding its terms, however many, so that they always get the exact ranking.
FIRST_PASS_ROWS = 1000
LARGE_STORE = 50_000
CO_OCCURRING_TERMS = 8
MAX_GROUPS = 6  # each an index scan of its own
# Settings for one search transaction, whatever the server's defaults: asyncpg prepares statements,
# and after five runs PostgreSQL may switch to a generic plan that cannot see how selective a
# tsquery or a file list is. And no JIT: a server built with LLVM compiles every plan whose cost
# estimate passes `jit_above_cost` (100000; an exact vector scan over 100k chunks estimates 167k),
# which takes longer than these few-millisecond queries run (pgserver's build has no JIT at all).
SESSION_SETTINGS = "set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true)"


async def keyword_candidates(
    conn: AsyncConnection,
    vector_store_ids: Sequence[str],
    terms: Sequence[str],
    limit: int,
    file_ids: Collection[str] | None,
    *,
    first_pass_rows: int = FIRST_PASS_ROWS,
    large_store: int = LARGE_STORE,
) -> list[Candidate]:
    """The `limit` best chunks for `terms` (not empty) by BM25 (see the module's description), among
    `file_ids` (not empty) if given."""
    stats = await _term_stats(conn, vector_store_ids, terms)
    if stats is None:
        return []
    n, df, avgdl = stats
    idf = {lex: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for lex, d in df.items()}
    order = sorted(idf, key=lambda lex: (-idf[lex], lex))  # rarest first
    bound = {lex: idf[lex] * (BM25_K1 + 1) for lex in order}
    params: dict[str, Any] = {"vs": list(vector_store_ids), "k": limit}
    if file_ids is not None:
        params["files"] = list(file_ids)

    async def scored(queries: Sequence[str], cap: int | None = None) -> list[Candidate]:
        params.update({f"q{i}": q for i, q in enumerate(queries)}, cap=cap)
        sql = _bm25_sql(order, idf, avgdl, len(queries), file_ids is not None, cap is not None)
        result = await conn.execute(text(sql), params)
        return [Candidate(int(r[0]), float(r[1])) for r in result]

    # Start with the rarest terms that can fill the candidate list.
    size, covered = 0, 0
    while size < len(order) and (covered < limit or size == 0):
        covered += df[order[size]]
        size += 1
    if covered > first_pass_rows and n >= large_store:
        # Even the rarest terms are in too many chunks (a large store, a query of common
        # words): score the chunks holding two or three of the rarer terms together.
        groups = _co_occurring(order, df, n, bound, limit, first_pass_rows)
        if groups:
            # One condition per AND group, so that each is an index scan of its own that
            # skips through the longer posting lists (one tsquery ORing ANDs reads them all).
            return await scored([" & ".join(_quote(x) for x in g) for g in groups])
        # Too few chunks hold two of them: score the first `first_pass_rows` chunks found
        # holding the rarest term (approximate, bounded latency).
        return await scored([_any_of(order[:1])], cap=first_pass_rows)
    found = await scored([_any_of(order[:size])])
    return await _max_score(scored, found, order, df, bound, size, limit)


def _quote(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _any_of(lexemes: Sequence[str]) -> str:
    return " | ".join(_quote(x) for x in lexemes)


async def _term_stats(
    conn: AsyncConnection, vector_store_ids: Sequence[str], terms: Sequence[str]
) -> tuple[int, dict[str, int], float] | None:
    """The stores' chunk count, the document frequency of each query lexeme found in them, and their
    average chunk length; None if none of the query's lexemes is in them (or they are empty).

    One round trip: the query's lexemes (same configuration as the documents), each one's document
    frequency in these stores and the stores' size (tables `add_chunks` keeps), and this
    transaction's planner settings (`SESSION_SETTINGS`; a sequential scan would decompress every
    chunk's tsvector to test it where a bitmap scan of the GIN index needs none, and the planner
    does not cost that)."""
    rows = (
        await conn.execute(
            text(
                "SELECT l.lexeme, (SELECT sum(df) FROM retrieval_terms t WHERE t.vector_store_id = ANY(:vs) "
                f"AND t.lexeme = l.lexeme), s.n, s.len, {SESSION_SETTINGS}, "
                "set_config('enable_seqscan', 'off', true) FROM (SELECT sum(chunks) AS n, "
                "sum(total_len) AS len FROM retrieval_store_stats WHERE vector_store_id = ANY(:vs)) AS s "
                f"LEFT JOIN unnest(tsvector_to_array(to_tsvector('{TEXT_SEARCH_CONFIG}', CAST(:q AS text)))) "
                "AS l(lexeme) ON true"
            ),
            {"vs": list(vector_store_ids), "q": " ".join(terms)},
        )
    ).all()
    n = int(rows[0][2] or 0)
    df = {str(r[0]): int(r[1]) for r in rows if r[0] is not None and r[1]}
    if not df or n <= 0:
        return None
    return n, df, max(float(rows[0][3] or 0) / n, 1.0)


async def _max_score(
    scored: Callable[[Sequence[str]], Awaitable[list[Candidate]]],
    found: list[Candidate],
    order: Sequence[str],
    df: dict[str, int],
    bound: dict[str, float],
    size: int,
    limit: int,
) -> list[Candidate]:
    """MaxScore's growth: `found` scored the chunks holding one of `order[:size]`; add the chunks of
    the next terms (rarest first) while a chunk holding only the terms left out could still beat
    the k-th score."""
    # rest[j]: the best score a chunk can reach holding only terms order[j:].
    rest = [sum(bound[x] for x in order[j:]) for j in range(len(order) + 1)]
    while size < len(order):
        threshold = found[-1].score if len(found) >= limit else 0.0
        if rest[size] <= threshold:
            break
        # Grow to the shortest prefix whose left-out terms cannot reach the threshold...
        grow = next(j for j in range(size + 1, len(order) + 1) if rest[j] <= threshold)
        # ...unless that means scoring most of a large store: past MAX_SCORED chunks the
        # ranking is by the rarer terms' chunks only (approximate, bounded latency).
        if sum(df[x] for x in order[:grow]) > MAX_SCORED:
            break
        # Only the chunks not scored yet: a score counts every query term, so the chunks
        # holding one of the first terms already have theirs.
        more = await scored([f"({_any_of(order[size:grow])}) & !({_any_of(order[:size])})"])
        best = {c.chunk_id: c.score for c in found + more}
        found = [Candidate(i, v) for i, v in sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
        size = grow
    return found


def _co_occurring(
    order: Sequence[str], df: dict[str, int], n: int, bound: dict[str, float], limit: int, budget: int
) -> list[tuple[str, ...]]:
    """AND groups of two (else three) of the rarer query terms, best-scoring groups first, as many
    as fit `budget` chunks (estimated as if terms occurred independently); [] if no group size
    gives at least `limit` chunks that way. Terms in a tenth of the chunks or more are left out:
    they add little to a score, and intersecting their posting lists costs more than it saves."""
    terms = [x for x in order if df[x] * 10 < n][:CO_OCCURRING_TERMS]
    for size in (2, 3):
        groups = sorted(itertools.combinations(terms, size), key=lambda g: -sum(bound[x] for x in g))
        chosen: list[tuple[str, ...]] = []
        rows = 0.0
        for g in groups:
            estimate = n * math.prod(df[x] / n for x in g)
            if rows + estimate <= budget and len(chosen) < MAX_GROUPS:
                chosen.append(g)
                rows += estimate
        if rows >= limit:
            return chosen
    return []


_NAME_BYTES = 63  # PostgreSQL truncates longer identifiers (NAMEDATALEN - 1)


def _bm25_sql(
    lexemes: Sequence[str], idf: dict[str, float], avgdl: float, queries: int, with_files: bool, capped: bool
) -> str:
    """The BM25 scoring statement for these lexemes; chunks matching one of the tsqueries `:q0`,
    `:q1`, ... get scored (only the first `:cap` found if `capped`).

    A chunk's term frequencies are one compressed jsonb value: `jsonb_to_record` decompresses it
    once per chunk and reads every query lexeme (a `->>` per lexeme decompressed it each time,
    twice the cost). The lexemes are the record's column names, so they are quoted identifiers;
    one too long for an identifier is read with `->>` instead. Constants are written into the
    statement as float literals (PostgreSQL would otherwise infer an untyped parameter's type from
    its operand: `:b * c.doc_len` bound b as an integer once, which flattened length normalisation).
    """
    columns: list[str] = []
    terms: list[str] = []
    for lex in lexemes:
        if len(lex.encode()) <= _NAME_BYTES:
            name = '"' + lex.replace('"', '""') + '"'
            columns.append(f"{name} float8")
            tf = f"COALESCE(x.{name}, 0)"
        else:
            tf = "COALESCE(CAST(c.term_freqs ->> '" + lex.replace("'", "''") + "' AS float8), 0)"
        terms.append(f"{idf[lex]!r} * {tf} / ({tf} + n.norm)")
    norm = f"{BM25_K1!r} * (1 - {BM25_B!r} + {BM25_B!r} * c.doc_len / {avgdl!r})"
    score = f"{BM25_K1 + 1!r} * (" + " + ".join(terms) + ")"
    record = f", LATERAL jsonb_to_record(c.term_freqs) AS x({', '.join(columns)})" if columns else ""
    source = f"CROSS JOIN LATERAL (SELECT {norm} AS norm) AS n{record}"
    match = " OR ".join(f"tsv @@ CAST(:q{i} AS tsquery)" for i in range(queries))
    if not with_files and not capped:
        return (
            f"SELECT c.id, {score} AS score FROM retrieval_chunks c {source} "
            f"WHERE ({match}) AND c.vector_store_id = ANY(:vs) "
            "ORDER BY score DESC, c.id LIMIT :k"
        )
    # Filtered: find the matching rows through the GIN index first (bounded by the MaxScore
    # term choice), then keep the allowed files'; the planner would otherwise walk every row
    # of the allowed files and score each one.
    return (
        "WITH m AS MATERIALIZED (SELECT id FROM retrieval_chunks "
        f"WHERE ({match}) AND vector_store_id = ANY(:vs){' LIMIT :cap' if capped else ''}) "
        f"SELECT c.id, {score} AS score FROM m JOIN retrieval_chunks c ON c.id = m.id {source} "
        f"{'WHERE c.file_id = ANY(:files) ' if with_files else ''}ORDER BY score DESC, c.id LIMIT :k"
    )
