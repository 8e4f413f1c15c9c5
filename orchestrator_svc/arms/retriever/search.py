"""Hybrid search: BM25 and vector rankings fused by reciprocal rank, plus an extractive answer:
the paragraphs of the hits that cover the query, quoted exactly under a first line saying no
model wrote them, or "not found in the indexed documents" naming what no hit covers (the brain's
coverage rules, `orchestrator_svc.brain.retrieval_answer`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator_svc.arms.retriever.corpus import ChunkKey, ChunkRecord
from orchestrator_svc.arms.retriever.fusion import RRF_K, reciprocal_rank_fusion
from orchestrator_svc.arms.retriever.store import DocumentStore, VectorHit
from orchestrator_svc.brain import Passage, retrieval_answer
from orchestrator_svc.llm.embed import Embedder
from orchestrator_svc.llm.terms import terms

log = structlog.get_logger(__name__)

# NOTE: queries are cut to this many characters before tokenising or embedding: a 1 MB
# "query" is a pasted document, and its first few thousand characters carry the intent.
MAX_QUERY_CHARS = 4096
DEFAULT_TOP_K = 5
MAX_TOP_K = 50
NOTHING_INDEXED = (
    "Nothing is indexed yet, so there is nothing to search: add documents with "
    "`octollm ingest PATH` (Markdown or text files) and ask again."
)


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result: the chunk, its fused score, and its rank in each ranking (None if absent)."""

    record: ChunkRecord
    score: float
    lexical_rank: int | None
    vector_rank: int | None

    def as_output(self) -> dict[str, Any]:
        return {
            "source": self.record.source,
            "chunk": self.record.chunk,
            "score": self.score,
            "text": self.record.text,
            "heading": self.record.heading,
        }


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The hits, best first, and what was searched."""

    query: str
    hits: tuple[SearchHit, ...]
    indexed: int
    truncated: bool

    def answer(self) -> str:
        """The hits' paragraphs that cover the query, quoted with their sources, or "not found
        in the indexed documents" naming the query's words no hit has."""
        if self.indexed == 0:
            return NOTHING_INDEXED
        passages = [
            Passage(hit.record.text, hit.record.heading, hit.record.source, hit.record.chunk)
            for hit in self.hits
        ]
        note = f"the query was cut to its first {MAX_QUERY_CHARS} characters"
        return retrieval_answer(self.query, passages, note=note if self.truncated else "").text

    def confidence(self) -> float:
        """0.1 with no hit; 0.9 when both rankings agree on the best chunk; 0.6 otherwise."""
        if not self.hits:
            return 0.1
        best = self.hits[0]
        return 0.9 if best.lexical_rank == 1 and best.vector_rank == 1 else 0.6


class HybridSearch:
    """BM25 over the corpus plus nearest vectors in Qdrant, fused with RRF (k=60)."""

    def __init__(
        self, store: DocumentStore, embedder: Embedder, *, rrf_k: int = RRF_K, depth: int = 20
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.depth = depth

    async def search(self, query: str, top_k: int = DEFAULT_TOP_K) -> SearchResult:
        """The ``top_k`` (1..50) best chunks for ``query`` (cut to MAX_QUERY_CHARS first)."""
        top_k = max(1, min(top_k, MAX_TOP_K))
        truncated = len(query) > MAX_QUERY_CHARS
        query = query[:MAX_QUERY_CHARS]
        corpus = await self.store.corpus()
        if not corpus.records:
            return SearchResult(query, (), 0, truncated)
        depth = min(max(self.depth, top_k * 4), 200)
        lexical_task = asyncio.to_thread(corpus.index.top, terms(query), depth)
        lexical, vector = await asyncio.gather(lexical_task, self._vector_ranking(query, depth))
        lexical_keys = [corpus.records[doc].key for doc, _ in lexical]
        vector_keys = [hit.record.key for hit in vector]
        known: dict[ChunkKey, ChunkRecord] = {hit.record.key: hit.record for hit in vector}
        known.update((k, corpus.by_key[k]) for k in lexical_keys)
        lexical_rank = {k: i for i, k in enumerate(lexical_keys, start=1)}
        vector_rank = {k: i for i, k in enumerate(vector_keys, start=1)}
        fused = reciprocal_rank_fusion([lexical_keys, vector_keys], k=self.rrf_k)[:top_k]
        hits = tuple(
            SearchHit(known[key], score, lexical_rank.get(key), vector_rank.get(key))
            for key, score in fused
        )
        log.debug(
            "retriever_searched",
            query_chars=len(query),
            truncated=truncated,
            lexical=len(lexical_keys),
            vector=len(vector_keys),
            hits=len(hits),
        )
        return SearchResult(query, hits, len(corpus.records), truncated)

    async def aclose(self) -> None:
        await self.store.aclose()
        await self.embedder.aclose()

    async def _vector_ranking(self, query: str, depth: int) -> list[VectorHit]:
        """Nearest chunks with a positive cosine; [] (BM25 alone) when embedding or Qdrant fails."""
        try:
            [vector] = await self.embedder.embed([query])
            if not any(vector):
                return []
            hits = await self.store.vector_search(vector, depth)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "retriever_vector_search_failed",
                error=f"{type(exc).__name__}: {exc}",
                embedder=self.embedder.name,
                store=self.store.config.location,
            )
            return []
        return [hit for hit in hits if hit.score > 0]
