"""Chunk records and the BM25 corpus over them; in local mode the corpus is a JSONL file.

``chunks.jsonl`` holds one chunk per line (``{"source", "chunk", "text", "heading"}``, the same
fields as a Qdrant payload), sorted by (source, chunk) and rewritten atomically by ``ingest``,
so an arm in another process can read it at any time.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from orchestrator_svc.arms.retriever.bm25 import BM25Index
from orchestrator_svc.llm.terms import terms

log = structlog.get_logger(__name__)

_POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://octollm.dev/retriever/chunk")

ChunkKey = tuple[str, int]


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One indexed chunk: where it comes from and its text."""

    source: str
    chunk: int
    heading: str
    text: str

    @property
    def key(self) -> ChunkKey:
        return (self.source, self.chunk)

    @property
    def point_id(self) -> str:
        """Deterministic Qdrant point id: the same (source, chunk) always maps to one point."""
        return str(uuid.uuid5(_POINT_NAMESPACE, f"{self.source}\x00{self.chunk}"))

    @property
    def indexed_text(self) -> str:
        """What is embedded and tokenised: the heading trail, then the text."""
        return f"{self.heading}\n{self.text}" if self.heading else self.text

    def payload(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "chunk": self.chunk,
            "text": self.text,
            "heading": self.heading,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> ChunkRecord | None:
        """The record in a payload or corpus line; None when it is not one of ours."""
        source, chunk = payload.get("source"), payload.get("chunk")
        text, heading = payload.get("text"), payload.get("heading", "")
        if not isinstance(source, str) or not isinstance(text, str):
            return None
        if isinstance(chunk, float) and chunk.is_integer():
            chunk = int(chunk)
        if not isinstance(chunk, int) or isinstance(chunk, bool):
            return None
        return cls(source, chunk, heading if isinstance(heading, str) else "", text)


@dataclass(frozen=True, slots=True)
class Corpus:
    """Every chunk in the store and a BM25 index over them (document i is records[i])."""

    records: tuple[ChunkRecord, ...] = ()
    index: BM25Index = field(default_factory=lambda: BM25Index([]))
    by_key: Mapping[ChunkKey, ChunkRecord] = field(default_factory=dict)

    @classmethod
    def build(cls, records: Iterable[ChunkRecord]) -> Corpus:
        by_key = {r.key: r for r in records}
        ordered = tuple(by_key[k] for k in sorted(by_key))
        return cls(ordered, BM25Index(terms(r.indexed_text) for r in ordered), by_key)


def file_version(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the file is replaced or rewritten; None when it does not exist."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _read_records(path: Path) -> list[ChunkRecord]:
    records: list[ChunkRecord] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return records
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = ChunkRecord.from_payload(json.loads(line))
        except (json.JSONDecodeError, AttributeError):
            record = None
        if record is None:
            log.warning("retriever_corpus_line_skipped", path=str(path), line=number)
            continue
        records.append(record)
    return records


def read_corpus(path: Path) -> Corpus:
    """The corpus in a JSONL file (lines that are not chunks are skipped with a warning)."""
    return Corpus.build(_read_records(path))


def rewrite_corpus(
    path: Path, records_by_source: Mapping[str, Sequence[ChunkRecord]], expected: int
) -> None:
    """Replace the given sources' lines in the corpus file, atomically."""
    kept = [r for r in _read_records(path) if r.source not in records_by_source]
    merged = sorted([*kept, *(r for rs in records_by_source.values() for r in rs)], key=_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record in merged:
            out.write(json.dumps(record.payload(), ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    log.debug("retriever_corpus_written", path=str(path), chunks=len(merged), replaced=expected)


def _key(record: ChunkRecord) -> ChunkKey:
    return record.key
