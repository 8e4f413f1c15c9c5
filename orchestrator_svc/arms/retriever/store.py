"""Where chunks live: a Qdrant collection (vector + payload per chunk) and the BM25 corpus.

Two modes, chosen by ``StoreConfig.from_env()``:

- **local** (default): ``OCTOLLM_RETRIEVER_PATH`` (default ``.octollm/retriever`` in the working
  directory) holds ``qdrant/`` (Qdrant local mode) and ``chunks.jsonl`` (the BM25 corpus, one
  chunk per line, rewritten atomically). Qdrant local mode lets one client at a time open a
  folder, so the store opens it only while it is used and closes it when idle: ``octollm
  ingest`` in one process and the arm in another take turns (a file lock, ``.lock``, makes
  them wait for each other up to ``lock_wait_s``). Concurrent queries in one process share one
  open client.
- **server**: ``OCTOLLM_QDRANT_URL`` (and optional ``OCTOLLM_QDRANT_API_KEY``): one client for
  the store's life; the chunks live only in the payloads and the BM25 corpus is rebuilt from a
  scroll whenever the collection's point count changes.

The collection is ``octollm_documents`` unless ``OCTOLLM_RETRIEVER_COLLECTION`` says otherwise.
Point ids are uuid5 of (source, chunk), so re-ingesting a file overwrites its points.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from orchestrator_svc.arms.retriever.corpus import (
    ChunkKey,
    ChunkRecord,
    Corpus,
    file_version,
    read_corpus,
    rewrite_corpus,
)
from orchestrator_svc.llm.embed import DimensionMismatch

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient

log = structlog.get_logger(__name__)

COLLECTION = "octollm_documents"
DEFAULT_STORE_PATH = Path(".octollm") / "retriever"
CORPUS_FILE = "chunks.jsonl"
QDRANT_DIR = "qdrant"
LOCK_FILE = ".lock"
_UPSERT_BATCH = 256
_SCROLL_PAGE = 512
_LOCK_POLL_S = 0.05


class StoreBusy(Exception):
    """The local store stayed locked by another ingest or arm for longer than allowed."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where the store is: a local folder, or a Qdrant server when ``url`` is set."""

    path: Path = DEFAULT_STORE_PATH
    url: str = ""
    api_key: str = ""
    collection: str = COLLECTION
    timeout_s: float = 10.0
    lock_wait_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):
            object.__setattr__(self, "path", Path(self.path))

    @property
    def local(self) -> bool:
        return not self.url

    @property
    def location(self) -> str:
        """The folder or URL, for reports and logs."""
        return str(self.path) if self.local else self.url

    @classmethod
    def from_env(cls, store_path: str | Path | None = None) -> StoreConfig:
        """From ``OCTOLLM_RETRIEVER_PATH`` / ``OCTOLLM_QDRANT_URL`` / ``OCTOLLM_QDRANT_API_KEY`` /
        ``OCTOLLM_RETRIEVER_COLLECTION``; an explicit ``store_path`` means local mode there."""
        collection = os.environ.get("OCTOLLM_RETRIEVER_COLLECTION", "").strip() or COLLECTION
        if store_path is not None:
            return cls(path=Path(store_path), collection=collection)
        return cls(
            path=Path(os.environ.get("OCTOLLM_RETRIEVER_PATH", "").strip() or DEFAULT_STORE_PATH),
            url=os.environ.get("OCTOLLM_QDRANT_URL", "").strip(),
            api_key=os.environ.get("OCTOLLM_QDRANT_API_KEY", "").strip(),
            collection=collection,
        )


@dataclass(frozen=True, slots=True)
class VectorHit:
    record: ChunkRecord
    score: float


class DocumentStore:
    """The chunks of one collection: vector search, BM25 corpus, and replacing sources."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._client: AsyncQdrantClient | None = None
        self._lock_file: IO[str] | None = None
        self._users = 0
        self._open_lock = asyncio.Lock()
        self._corpus_lock = asyncio.Lock()
        self._corpus = Corpus()
        self._corpus_version: object = None
        self._dimension: int | None = None

    @property
    def corpus_path(self) -> Path:
        return self.config.path / CORPUS_FILE

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncQdrantClient]:
        """An open client; in local mode the folder stays locked until the last session ends."""
        async with self._open_lock:
            if self._client is None:
                self._client = await self._connect()
                self._dimension = None
            self._users += 1
            client = self._client
        try:
            yield client
        finally:
            self._users -= 1
            if self.config.local and self._users == 0:
                await self._disconnect()

    async def aclose(self) -> None:
        """Close the client (server mode keeps one open for the store's life)."""
        async with self._open_lock:
            await self._disconnect()

    async def corpus(self) -> Corpus:
        """The BM25 corpus, reloaded when the store changed since the last call."""
        async with self._corpus_lock:
            if self.config.local:
                version: object = file_version(self.corpus_path)
                if version != self._corpus_version:
                    self._corpus = (
                        await asyncio.to_thread(read_corpus, self.corpus_path)
                        if version is not None
                        else Corpus()
                    )
            else:
                async with self.session() as client:
                    version = await self._count(client)
                    if version != self._corpus_version:
                        records = await scroll_records(client, self.config.collection)
                        self._corpus = await asyncio.to_thread(Corpus.build, records)
            self._corpus_version = version
            return self._corpus

    async def vector_search(self, vector: Sequence[float], limit: int) -> list[VectorHit]:
        """The ``limit`` nearest chunks by cosine; [] when there is no collection (or no vector
        of this length in it)."""
        async with self.session() as client:
            dimension = await self._collection_dimension(client)
            if dimension is None:
                return []
            if dimension != len(vector):
                log.warning(
                    "retriever_vector_search_skipped",
                    reason="dimension mismatch: re-ingest with the current embedder",
                    collection=self.config.collection,
                    collection_dimension=dimension,
                    query_dimension=len(vector),
                )
                return []
            response = await client.query_points(
                self.config.collection,
                query=list(vector),
                limit=limit,
                with_payload=True,
                timeout=_whole_seconds(self.config.timeout_s),
            )
        hits = []
        for point in response.points:
            record = ChunkRecord.from_payload(point.payload or {})
            if record is not None:
                hits.append(VectorHit(record, float(point.score)))
        return hits

    async def replace_sources(
        self,
        records_by_source: Mapping[str, Sequence[ChunkRecord]],
        vectors: Mapping[ChunkKey, Sequence[float]],
    ) -> int:
        """Make each source's chunks exactly ``records_by_source[source]`` (upsert them, delete
        that source's other points, rewrite the corpus file); return the collection's size."""
        await _import_qdrant()
        from qdrant_client import models

        records = [r for rs in records_by_source.values() for r in rs]
        async with self.session() as client:
            if records:
                await self._ensure_collection(client, len(vectors[records[0].key]))
            elif await self._collection_dimension(client) is None:
                return 0
            for start in range(0, len(records), _UPSERT_BATCH):
                batch = records[start : start + _UPSERT_BATCH]
                await client.upsert(
                    self.config.collection,
                    points=[
                        models.PointStruct(
                            id=r.point_id, vector=list(vectors[r.key]), payload=r.payload()
                        )
                        for r in batch
                    ],
                    wait=True,
                )
            for source, kept in records_by_source.items():
                await client.delete(
                    self.config.collection,
                    points_selector=models.FilterSelector(
                        filter=models.Filter(
                            must=[
                                models.FieldCondition(
                                    key="source", match=models.MatchValue(value=source)
                                )
                            ],
                            must_not=[models.HasIdCondition(has_id=[r.point_id for r in kept])],
                        )
                    ),
                    wait=True,
                )
            if self.config.local:
                await asyncio.to_thread(
                    rewrite_corpus, self.corpus_path, records_by_source, len(records)
                )
            return await self._count(client)

    async def count(self) -> int:
        """Points in the collection (0 when it does not exist)."""
        if self.config.local and not (self.config.path / QDRANT_DIR).exists():
            return 0
        async with self.session() as client:
            return await self._count(client)

    async def _count(self, client: AsyncQdrantClient) -> int:
        if not await client.collection_exists(self.config.collection):
            return 0
        result = await client.count(self.config.collection, exact=True)
        return int(result.count)

    async def _collection_dimension(self, client: AsyncQdrantClient) -> int | None:
        if self._dimension is None:
            if not await client.collection_exists(self.config.collection):
                return None
            info = await client.get_collection(self.config.collection)
            vectors = info.config.params.vectors
            size = getattr(vectors, "size", None)
            self._dimension = int(size) if isinstance(size, int) else None
        return self._dimension

    async def _ensure_collection(self, client: AsyncQdrantClient, dimension: int) -> None:
        from qdrant_client import models

        existing = await self._collection_dimension(client)
        if existing is None:
            await client.create_collection(
                self.config.collection,
                vectors_config=models.VectorParams(size=dimension, distance=models.Distance.COSINE),
            )
            self._dimension = dimension
            log.info(
                "retriever_collection_created",
                collection=self.config.collection,
                dimension=dimension,
                store=self.config.location,
            )
        elif existing != dimension:
            raise DimensionMismatch(
                f"collection {self.config.collection!r} at {self.config.location} holds "
                f"{existing}-dimensional vectors but the embedder makes {dimension}-dimensional "
                "ones: ingest into a fresh store (or another collection) or use the same embedder"
            )

    async def _connect(self) -> AsyncQdrantClient:
        await _import_qdrant()
        from qdrant_client import AsyncQdrantClient

        if not self.config.local:
            return AsyncQdrantClient(
                url=self.config.url,
                api_key=self.config.api_key or None,
                timeout=_whole_seconds(self.config.timeout_s),
            )
        self._lock_file = await _lock(self.config.path / LOCK_FILE, self.config.lock_wait_s)
        # NOTE: opening loads the whole collection from SQLite: done in a thread, so SQLite must
        # accept use from the event loop's thread afterwards (one user at a time). Shielded: a
        # client opened for a cancelled caller must still be closed, or it keeps the folder.
        opening = asyncio.ensure_future(
            asyncio.to_thread(
                AsyncQdrantClient,
                path=str(self.config.path / QDRANT_DIR),
                force_disable_check_same_thread=True,
            )
        )
        try:
            return await asyncio.shield(opening)
        except BaseException:
            try:
                if not opening.cancelled():
                    with contextlib.suppress(Exception):
                        await (await opening).close()
            finally:
                _unlock(self._lock_file)
                self._lock_file = None
            raise

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        try:
            if client is not None:
                await client.close()
        finally:
            if self._lock_file is not None:
                _unlock(self._lock_file)
                self._lock_file = None


async def scroll_records(client: AsyncQdrantClient, collection: str) -> list[ChunkRecord]:
    """Every chunk stored in the collection's payloads ([] when there is no collection)."""
    if not await client.collection_exists(collection):
        return []
    records: list[ChunkRecord] = []
    offset: Any = None
    while True:
        points, offset = await client.scroll(
            collection, limit=_SCROLL_PAGE, offset=offset, with_payload=True, with_vectors=False
        )
        records.extend(r for p in points if (r := ChunkRecord.from_payload(p.payload or {})))
        if offset is None:
            return records


async def _import_qdrant() -> None:
    # NOTE: qdrant_client takes about a second to import: not at module level (the CLI imports
    # every reference arm) and not on the event loop (it would stall the arm's streams).
    if "qdrant_client.models" not in sys.modules:
        await asyncio.to_thread(importlib.import_module, "qdrant_client")


def _whole_seconds(seconds: float) -> int:
    return max(1, round(seconds))


async def _lock(path: Path, wait_s: float) -> IO[str]:
    """An exclusive lock on ``path`` (created if missing), waiting up to ``wait_s`` for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if loop.time() >= deadline:
                handle.close()
                raise StoreBusy(
                    f"the retriever store {path.parent} is in use by another process "
                    f"(waited {wait_s:g} s)"
                ) from None
            await asyncio.sleep(_LOCK_POLL_S)
        except BaseException:
            handle.close()
            raise


def _unlock(handle: IO[str]) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
