"""``ingest``: text and Markdown files into the retriever's store (``octollm ingest PATH``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from orchestrator_svc.arms.retriever.chunking import check_sizes, chunk_document
from orchestrator_svc.arms.retriever.corpus import ChunkKey, ChunkRecord
from orchestrator_svc.arms.retriever.store import DocumentStore, StoreConfig
from orchestrator_svc.llm.embed import Embedder, embedder_from_env

log = structlog.get_logger(__name__)

MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
TEXT_SUFFIXES = frozenset({".txt"})
DOCUMENT_SUFFIXES = MARKDOWN_SUFFIXES | TEXT_SUFFIXES
# NOTE: a "document" bigger than this is almost certainly a dump or a log, not prose to search.
MAX_FILE_BYTES = 10 * 1024 * 1024
_SKIPPED_DIRS = frozenset({"node_modules", "__pycache__"})
_EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one ``ingest`` did: files read, chunks written, files left out (with why)."""

    files: int
    chunks: int
    points: int
    skipped: tuple[str, ...]
    store: str
    collection: str
    embedder: str

    def summary(self) -> str:
        """One line for a CLI."""
        line = (
            f"ingested {self.files} file(s) as {self.chunks} chunk(s) into "
            f"{self.collection!r} at {self.store} ({self.points} chunk(s) indexed in all, "
            f"embedder {self.embedder})"
        )
        return f"{line}; skipped {len(self.skipped)}" if self.skipped else line


async def ingest(
    path: str | Path,
    *,
    store_path: str | Path | None = None,
    chunk_chars: int = 800,
    overlap: int = 100,
    embedder: Embedder | None = None,
) -> IngestReport:
    """Chunk, embed and index the .md/.markdown/.txt files under ``path`` (a folder, walked
    recursively, hidden entries skipped; or one file).

    Sources are paths relative to ``path`` (a lone file is its name); re-ingesting a source
    replaces its chunks, so running it twice changes nothing. ``store_path`` picks a local store
    folder; by default the store comes from the environment (see ``StoreConfig.from_env``), and
    the embedder too (see ``embedder_from_env``). Raises ``FileNotFoundError`` for a missing
    path, ``ValueError`` for a file of another type or bad chunk sizes, ``DimensionMismatch``
    when the store was filled by an embedder of another size, ``StoreBusy`` when another
    process holds a local store too long.
    """
    root = Path(path)
    check_sizes(chunk_chars, overlap)
    config = StoreConfig.from_env(store_path)
    records_by_source, skipped = await asyncio.to_thread(
        _chunk_files, root, config.path.resolve(), chunk_chars, overlap
    )

    owned = embedder is None
    active = embedder if embedder is not None else embedder_from_env()
    store = DocumentStore(config)
    records = [r for rs in records_by_source.values() for r in rs]
    try:
        if records_by_source:
            vectors = await _embed(active, records)
            points = await store.replace_sources(records_by_source, vectors)
        else:
            points = await store.count()
    finally:
        await store.aclose()
        if owned:
            await active.aclose()
    report = IngestReport(
        files=len(records_by_source),
        chunks=len(records),
        points=points,
        skipped=tuple(skipped),
        store=config.location,
        collection=config.collection,
        embedder=active.name,
    )
    log.info(
        "retriever_ingested",
        path=str(root),
        files=report.files,
        chunks=report.chunks,
        points=report.points,
        skipped=len(report.skipped),
        store=report.store,
        collection=report.collection,
    )
    return report


def _chunk_files(
    root: Path, store: Path, chunk_chars: int, overlap: int
) -> tuple[dict[str, list[ChunkRecord]], list[str]]:
    """The chunks of every document under ``root`` by source, and the files skipped (why)."""
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if root.is_file() and root.suffix.lower() not in DOCUMENT_SUFFIXES:
        kinds = ", ".join(sorted(DOCUMENT_SUFFIXES))
        raise ValueError(f"{root} is not a text or Markdown file ({kinds})")
    files = [root] if root.is_file() else _documents(root, store)
    base = root.parent if root.is_file() else root
    records_by_source: dict[str, list[ChunkRecord]] = {}
    skipped: list[str] = []
    for file in files:
        source = file.relative_to(base).as_posix()
        text = _read(file, skipped, source)
        if text is None:
            continue
        chunks = chunk_document(
            text,
            markdown=file.suffix.lower() in MARKDOWN_SUFFIXES,
            chunk_chars=chunk_chars,
            overlap=overlap,
        )
        records_by_source[source] = [
            ChunkRecord(source, index, c.heading, c.text) for index, c in enumerate(chunks)
        ]
    return records_by_source, skipped


def _documents(root: Path, store: Path) -> list[Path]:
    """Document files under ``root``, sorted; hidden entries and the store itself left out."""
    found: list[Path] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and d not in _SKIPPED_DIRS and (here / d).resolve() != store
        )
        found.extend(
            here / name
            for name in sorted(names)
            if not name.startswith(".") and Path(name).suffix.lower() in DOCUMENT_SUFFIXES
        )
    return found


def _read(file: Path, skipped: list[str], source: str) -> str | None:
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            skipped.append(f"{source}: {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
            return None
        return file.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        skipped.append(f"{source}: {exc.strerror or exc}")
        return None


async def _embed(embedder: Embedder, records: Sequence[ChunkRecord]) -> dict[ChunkKey, list[float]]:
    vectors: dict[ChunkKey, list[float]] = {}
    for start in range(0, len(records), _EMBED_BATCH):
        batch = records[start : start + _EMBED_BATCH]
        embedded = await embedder.embed([r.indexed_text for r in batch])
        if len(embedded) != len(batch):
            raise RuntimeError(f"embedder returned {len(embedded)} vectors for {len(batch)} texts")
        vectors.update((r.key, v) for r, v in zip(batch, embedded, strict=True))
    return vectors
