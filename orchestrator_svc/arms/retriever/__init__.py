"""The retriever arm: hybrid search (BM25 + Qdrant vectors, fused by reciprocal rank) over
documents put in its store by ``ingest`` (``octollm ingest PATH``).

Input: ``{"query": str, "top_k": int (default 5, 1..50; more is served as 50)}``. Without a
query (absent, null or blank) it searches for ``input.goal``, else the dispatch description,
so a planner's generic step works too. Queries are cut to 4096 characters.
Output: ``{"results": [{"source", "chunk", "score", "text", "heading"}], "answer": str}``, best
first; ``score`` is the fused RRF score, ``answer`` the hits' paragraphs that cover the query,
quoted exactly with their sources under a first line saying no model wrote them, or "not found in
the indexed documents" naming the query's words no hit has. An empty store is not a failure: no
results, and an answer that says nothing is indexed. A query that is not a string, a bad
``top_k`` or no query at all fail with INVALID_ARGUMENT / BAD_INPUT.

Where the store is and which embedder makes the vectors come from the environment: see
``store.StoreConfig.from_env`` and ``embed.embedder_from_env``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import grpc

from arm_sdk import Arm, ArmError, SubtaskInput, SubtaskOutput
from orchestrator_svc.arms.retriever.ingestion import IngestReport, ingest
from orchestrator_svc.arms.retriever.search import (
    DEFAULT_TOP_K,
    MAX_QUERY_CHARS,
    MAX_TOP_K,
    HybridSearch,
    SearchResult,
)
from orchestrator_svc.arms.retriever.store import DocumentStore, StoreBusy, StoreConfig
from orchestrator_svc.llm.embed import (
    DimensionMismatch,
    Embedder,
    HashEmbedder,
    OpenAIEmbedder,
    embedder_from_env,
)

__all__ = [
    "DimensionMismatch",
    "DocumentStore",
    "Embedder",
    "HashEmbedder",
    "HybridSearch",
    "IngestReport",
    "OpenAIEmbedder",
    "SearchResult",
    "StoreBusy",
    "StoreConfig",
    "build",
    "embedder_from_env",
    "ingest",
]

QUERY_LOCK_WAIT_S = 5.0

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "string",
            "description": f"what to search for; cut to {MAX_QUERY_CHARS} characters",
        },
        "top_k": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K},
        "goal": {"type": "string", "description": "searched for when query is missing"},
    },
}

OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["results", "answer"],
    "properties": {
        "results": {
            "type": "array",
            "maxItems": MAX_TOP_K,
            "items": {
                "type": "object",
                "required": ["source", "chunk", "score", "text", "heading"],
                "properties": {
                    "source": {"type": "string"},
                    "chunk": {"type": "integer", "minimum": 0},
                    "score": {"type": "number"},
                    "text": {"type": "string"},
                    "heading": {"type": "string"},
                },
            },
        },
        "answer": {"type": "string"},
    },
}


def build(
    arm_id: str | None = None,
    *,
    store_path: str | Path | None = None,
    embedder: Embedder | None = None,
) -> Arm:
    """A new retriever arm over the store in the environment (or the local ``store_path``)."""
    # NOTE: a query waits at most a few seconds for an ingest holding a local store, then
    # answers from BM25 alone (the corpus file is readable throughout).
    config = dataclasses.replace(StoreConfig.from_env(store_path), lock_wait_s=QUERY_LOCK_WAIT_S)
    search = HybridSearch(
        DocumentStore(config), embedder if embedder is not None else embedder_from_env()
    )
    arm = Arm(
        arm_type="retriever",
        description=(
            "Hybrid search (BM25 + vectors, RRF) over documents ingested with `octollm ingest`"
        ),
        capabilities=("retrieval", "search", "context"),
        max_concurrency=16,
        cost_tier="low",
        version="0.1.0",
        input_schema=INPUT_SCHEMA,
        output_schema=OUTPUT_SCHEMA,
        arm_id=arm_id,
    )
    # NOTE: the store (a Qdrant client in server mode) is opened here, so closed here; an
    # embedder passed in is the caller's to close.
    arm.on_stop(search.aclose if embedder is None else search.store.aclose)

    @arm.handler
    async def retrieve(inp: SubtaskInput) -> SubtaskOutput:
        query = _query(inp)
        top_k = _top_k(inp.input.get("top_k"))
        result = await search.search(query, top_k)
        return SubtaskOutput(
            output={
                "results": [hit.as_output() for hit in result.hits],
                "answer": result.answer(),
            },
            confidence=result.confidence(),
        )

    return arm


def _query(inp: SubtaskInput) -> str:
    query = inp.input.get("query")
    if query is not None and not isinstance(query, str):
        raise _bad_input("query", f"input.query must be a string, got {type(query).__name__}")
    goal = inp.input.get("goal")
    for candidate in (query, goal if isinstance(goal, str) else None, inp.description):
        if candidate and candidate.strip():
            return candidate
    raise _bad_input("query", "no query: set input.query (or input.goal, or a description)")


def _top_k(value: object) -> int:
    if value is None:
        return DEFAULT_TOP_K
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad_input("top_k", f"input.top_k must be a whole number >= 1, got {value!r}")
    return min(value, MAX_TOP_K)


def _bad_input(field: str, message: str) -> ArmError:
    return ArmError(
        message,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="BAD_INPUT",
        metadata={"field": field},
    )
