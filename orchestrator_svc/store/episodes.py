"""Task memory: succeeded tasks kept in Qdrant, recalled by the similarity of their goals.

`remember(task)` stores a SUCCEEDED task as one point: the vector of its goal, and a payload
with the goal, the domain, the plan's steps, a short answer, the confidence and what each step
cost on which arm and model. The point id is derived from the task id, so remembering a task
again replaces it. `recall(goal)` returns the most similar past tasks as `brain.Episode`s
(`AsyncQdrantClient.query_points`, cosine), for the planner's context.

`memory_from_settings` is the one place the parts are chosen:

- Qdrant: a server when `OCTOLLM_QDRANT_URL` is set, else local mode in `OCTOLLM_MEMORY_PATH`
  (`:memory:` keeps it in process). Local mode is synchronous under the hood and opens a folder
  for one client at a time: its calls run in a thread of their own, and a folder another
  process holds means no memory (one warning) until it is free.
- Embeddings: `OCTOLLM_EMBEDDINGS_BASE_URL` (an OpenAI-compatible endpoint), else the offline
  hashing embedder the retriever arm uses. The collection is created on first use with the
  embedder's dimension; a collection of another dimension is reported, not overwritten.

Memory is an aid, never a reason for a task to fail: every call is bounded by
`OCTOLLM_MEMORY_TIMEOUT_S`, and any failure means "no memory" (recall returns [], remember
skips) with one warning, after which Qdrant is left alone for `retry_after_s`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import functools
import importlib
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog
from octollm.v1 import orchestrator_service_pb2 as pb
from pydantic import TypeAdapter, ValidationError

from ..brain import Episode, EpisodeStep, StepProvenance
from ..config import Settings
from ..llm.embed import DimensionMismatch, Embedder, HashEmbedder, OpenAIEmbedder

if TYPE_CHECKING:
    from qdrant_client import AsyncQdrantClient

log = structlog.get_logger(__name__)

T = TypeVar("T")

COLLECTION = "octollm_episodes"
IN_PROCESS = ":memory:"
ANSWER_CHARS = 500
DEFAULT_LIMIT = 3
DEFAULT_MIN_SCORE = 0.5
PAYLOAD_VERSION = 1
_POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "octollm:task-memory")
_EPISODE = TypeAdapter(Episode)


class MemoryBusy(RuntimeError):
    """The local-mode folder is held by another Qdrant client (another process)."""


class QdrantBackend(Protocol):
    """Runs coroutines on one `AsyncQdrantClient`, wherever that client has to live."""

    @property
    def location(self) -> str:
        """The folder or URL, for logs."""
        ...

    async def open(self) -> None:
        """Make the client (idempotent)."""
        ...

    async def run(self, op: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        """`op(client)`'s result."""
        ...

    async def close(self) -> None:
        """Close the client; nothing runs afterwards."""
        ...


class ServerQdrant:
    """A Qdrant server: the client's calls are network calls on the event loop."""

    def __init__(self, url: str, api_key: str = "", timeout_s: float = 2.0) -> None:
        self.url = url
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._client: AsyncQdrantClient | None = None

    @property
    def location(self) -> str:
        return self.url

    async def open(self) -> None:
        if self._client is not None:
            return
        await _import_qdrant()
        from qdrant_client import AsyncQdrantClient

        # NOTE: the compatibility check is a blocking request in a thread that warns when the
        # server is down; the first call says as much, within our deadline.
        self._client = AsyncQdrantClient(
            url=self.url,
            api_key=self._api_key or None,
            timeout=max(1, round(self._timeout_s)),
            check_compatibility=False,
        )

    async def run(self, op: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        if self._client is None:
            raise RuntimeError("the Qdrant client is not open")
        return await op(self._client)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class LocalQdrant:
    """Qdrant local mode in `path` (or in process for `:memory:`).

    Local mode does its work synchronously inside its coroutines (numpy, SQLite), so every call
    runs in one worker thread of its own, on an event loop of that thread: the orchestrator's
    loop never waits for it, and calls never overlap.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="qdrant-local"
        )
        self._loop: asyncio.Runner | None = None
        self._client: AsyncQdrantClient | None = None

    @property
    def location(self) -> str:
        return self.path

    async def open(self) -> None:
        await self._in_thread(self._open)

    async def run(self, op: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        return await self._in_thread(functools.partial(self._run, op))

    async def close(self) -> None:
        try:
            await self._in_thread(self._close)
        finally:
            self._thread.shutdown(wait=False)

    async def _in_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    # -- in the worker thread -------------------------------------------------------------------

    def _open(self) -> None:
        if self._client is not None:
            return
        if self.path != IN_PROCESS:
            _check_unlocked(Path(self.path))
        from qdrant_client import AsyncQdrantClient

        self._loop = asyncio.Runner()
        if self.path == IN_PROCESS:
            self._client = AsyncQdrantClient(location=IN_PROCESS)
        else:
            self._client = AsyncQdrantClient(path=self.path)

    def _run(self, op: Callable[[AsyncQdrantClient], Awaitable[T]]) -> T:
        if self._client is None or self._loop is None:
            raise RuntimeError("the Qdrant client is not open")
        client = self._client

        async def call() -> T:
            return await op(client)

        return self._loop.run(call())

    def _close(self) -> None:
        client, self._client = self._client, None
        runner, self._loop = self._loop, None
        try:
            if client is not None and runner is not None:
                runner.run(client.close())
        finally:
            if runner is not None:
                runner.close()


def _check_unlocked(folder: Path) -> None:
    """Raise MemoryBusy when another client holds the folder's lock.

    NOTE: checked before Qdrant tries, because a refused Qdrant leaves its lock file open.
    """
    lock = folder / ".lock"
    if not lock.exists():
        return
    with lock.open("r+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MemoryBusy(
                f"the memory folder {folder} is in use by another Qdrant client (another "
                "orchestrator?): give each process its own OCTOLLM_MEMORY_PATH, or share a "
                "Qdrant server with OCTOLLM_QDRANT_URL"
            ) from None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def _import_qdrant() -> None:
    # NOTE: qdrant_client takes most of a second to import: in a thread, not on the event loop.
    await asyncio.to_thread(importlib.import_module, "qdrant_client")


class TaskMemory:
    """Episodic memory of succeeded tasks; see the module docstring. `backend` None = off."""

    def __init__(
        self,
        backend: QdrantBackend | None,
        embedder: Embedder | None = None,
        *,
        collection: str = COLLECTION,
        timeout_s: float = 2.0,
        open_timeout_s: float = 30.0,
        retry_after_s: float = 30.0,
    ) -> None:
        self._backend = backend
        self._embedder: Embedder = embedder or HashEmbedder()
        self.collection = collection
        self._timeout_s = timeout_s
        self._open_timeout_s = open_timeout_s
        self._retry_after_s = retry_after_s
        self._opening: asyncio.Task[bool] | None = None
        self._opened = False
        self._dimension: int | None = None
        self._create_lock = asyncio.Lock()
        self._down = False
        self._down_until = 0.0
        self._closing = False
        self._closed = False
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        """False when memory is off (OCTOLLM_MEMORY=off) or closed."""
        return self._backend is not None and not self._closed

    @property
    def location(self) -> str:
        return self._backend.location if self._backend is not None else ""

    def start(self) -> None:
        """Begin opening Qdrant in the background, so start-up does not wait for it."""
        if self.enabled and self._opening is None:
            self._opening = asyncio.create_task(self._open(), name="open task memory")

    async def open(self) -> bool:
        """Open Qdrant now (within `open_timeout_s`); True when memory is usable."""
        return self.enabled and await self._ready(self._open_timeout_s)

    async def recall(
        self, goal: str, limit: int = DEFAULT_LIMIT, min_score: float = DEFAULT_MIN_SCORE
    ) -> list[Episode]:
        """Up to `limit` past tasks whose goal is at least `min_score` similar (cosine) to
        `goal`, most similar first; [] when memory is off, empty, or failing."""
        if not goal.strip() or limit < 1:
            return []
        return await self._guarded(
            "recall", functools.partial(self._recall, goal, limit, min_score), [], self._timeout_s
        )

    async def remember(self, task: pb.Task, *, goal: str | None = None, domain: str = "") -> bool:
        """Store a SUCCEEDED task (replacing an earlier copy); True when it was stored.

        `goal` overrides the task's own (the redacted goal when the safety arm is on); `domain`
        is the parsed intent's, when known."""
        if task.state != pb.TASK_STATE_SUCCEEDED or not task.plan.steps:
            return False
        episode = episode_from_task(task, goal=goal, domain=domain)
        if not episode.goal.strip():
            return False
        # NOTE: remembering happens after the task's end, so it may wait for Qdrant to open.
        remember = functools.partial(self._remember, episode)
        return await self._guarded("remember", remember, False, self._open_timeout_s)

    def remember_soon(
        self,
        load: Callable[[], Awaitable[pb.Task]],
        *,
        goal: str | None = None,
        domain: str = "",
    ) -> None:
        """Remember the task `load()` returns, in the background: the caller never waits, and
        `close()` lets pending ones finish (within the timeout)."""
        if not self.enabled or self._closing:
            return
        job = asyncio.create_task(self._remember_loaded(load, goal, domain), name="remember task")
        self._pending.add(job)
        job.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Finish pending remembers (within the timeout), then close Qdrant and the embedder."""
        if self._closing:
            return
        self._closing = True
        if self._pending:
            _, late = await asyncio.wait(list(self._pending), timeout=self._open_timeout_s)
            for job in late:
                job.cancel()
            if late:
                await asyncio.wait(late)
        self._closed = True
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
            await asyncio.wait([self._opening])
        try:
            if self._backend is not None:
                # NOTE: local mode closes after an opening still running in its thread, so this
                # may take as long as opening.
                async with asyncio.timeout(self._open_timeout_s):
                    await self._backend.close()
        except Exception as exc:  # NOTE: closing is best effort; the process is ending
            log.warning("task_memory_close_failed", store=self.location, reason=_reason(exc))
        finally:
            await self._embedder.aclose()

    # -- internals ------------------------------------------------------------------------------

    async def _guarded(
        self, what: str, op: Callable[[], Awaitable[T]], default: T, wait_open_s: float
    ) -> T:
        """`op()` within the timeout once Qdrant is open (waiting up to `wait_open_s` for
        that); `default` on any failure."""
        if not self.enabled:
            return default
        loop = asyncio.get_running_loop()
        if self._down and loop.time() < self._down_until:
            return default
        if not await self._ready(wait_open_s):
            return default
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await op()
        except Exception as exc:  # NOTE: memory is an aid: any failure means "no memory"
            self._failed(what, exc)
            return default
        if self._down:
            self._down = False
            log.info("task_memory_recovered", store=self.location)
        return result

    async def _ready(self, wait_s: float) -> bool:
        """True once Qdrant is open; starts opening it if needed and waits up to `wait_s`."""
        if self._opened:
            return True
        if self._opening is None or self._opening.done():
            self._opening = asyncio.create_task(self._open(), name="open task memory")
        try:
            return await asyncio.wait_for(asyncio.shield(self._opening), wait_s)
        except TimeoutError:
            log.debug("task_memory_not_ready", store=self.location)
            return False

    async def _open(self) -> bool:
        assert self._backend is not None
        try:
            async with asyncio.timeout(self._open_timeout_s):
                await self._backend.open()
        except Exception as exc:  # NOTE: e.g. a folder another process holds: no memory
            self._failed("open", exc)
            return False
        self._opened = True
        log.info(
            "task_memory_opened",
            store=self.location,
            collection=self.collection,
            embedder=self._embedder.name,
        )
        return True

    def _failed(self, what: str, exc: BaseException) -> None:
        self._dimension = None
        self._down_until = asyncio.get_running_loop().time() + self._retry_after_s
        fields = {"during": what, "store": self.location, "reason": _reason(exc)}
        if self._down:
            log.debug("task_memory_still_unavailable", **fields)
            return
        self._down = True
        log.warning(
            "task_memory_unavailable",
            **fields,
            collection=self.collection,
            retry_in_s=self._retry_after_s,
        )

    async def _vector(self, text: str) -> list[float]:
        [vector] = await self._embedder.embed([text])
        return vector

    async def _recall(self, goal: str, limit: int, min_score: float) -> list[Episode]:
        vector = await self._vector(goal)
        assert self._backend is not None
        if await self._checked_dimension(len(vector)) is None:
            return []
        from qdrant_client import models

        response = await self._backend.run(
            lambda client: client.query_points(
                self.collection,
                query=vector,
                limit=limit,
                score_threshold=min_score,
                query_filter=models.Filter(
                    must=[
                        models.FieldCondition(
                            key="embedder", match=models.MatchValue(value=self._embedder.name)
                        )
                    ]
                ),
                with_payload=True,
                timeout=max(1, round(self._timeout_s)),
            )
        )
        episodes = []
        for point in response.points:
            episode = episode_from_payload(point.payload or {}, float(point.score))
            if episode is not None:
                episodes.append(episode)
        return episodes

    async def _remember(self, episode: Episode) -> bool:
        vector = await self._vector(episode.goal)
        assert self._backend is not None
        from qdrant_client import models

        async with self._create_lock:
            if await self._checked_dimension(len(vector)) is None:
                await self._backend.run(
                    lambda client: client.create_collection(
                        self.collection,
                        vectors_config=models.VectorParams(
                            size=len(vector), distance=models.Distance.COSINE
                        ),
                    )
                )
                self._dimension = len(vector)
                log.info(
                    "task_memory_collection_created",
                    store=self.location,
                    collection=self.collection,
                    dimension=len(vector),
                )
        point = models.PointStruct(
            id=point_id(episode.task_id),
            vector=vector,
            payload=episode_payload(episode, self._embedder.name),
        )
        await self._backend.run(
            lambda client: client.upsert(self.collection, points=[point], wait=True)
        )
        return True

    async def _checked_dimension(self, size: int) -> int | None:
        """The collection's vector size (None: no collection yet); raises DimensionMismatch
        when it is not `size`."""
        assert self._backend is not None
        if self._dimension is None:
            self._dimension = await self._backend.run(
                functools.partial(_vector_size, collection=self.collection)
            )
        if self._dimension is not None and self._dimension != size:
            raise DimensionMismatch(
                f"collection {self.collection!r} at {self.location} holds {self._dimension}-"
                f"dimensional vectors but the embedder {self._embedder.name} makes {size}-"
                "dimensional ones: point OCTOLLM_MEMORY_PATH at a fresh folder (or delete the "
                "collection) or go back to the embedder that filled it"
            )
        return self._dimension

    async def _remember_loaded(
        self, load: Callable[[], Awaitable[pb.Task]], goal: str | None, domain: str
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                task = await load()
        except Exception as exc:  # NOTE: e.g. the task store is closing: just do not remember
            log.warning("task_memory_remember_skipped", reason=_reason(exc))
            return
        await self.remember(task, goal=goal, domain=domain)


async def _vector_size(client: AsyncQdrantClient, collection: str) -> int | None:
    if not await client.collection_exists(collection):
        return None
    info = await client.get_collection(collection)
    size = getattr(info.config.params.vectors, "size", None)
    return size if isinstance(size, int) else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def point_id(task_id: str) -> str:
    """The Qdrant point id of a task (the same every time, so a task is stored once)."""
    return str(uuid.uuid5(_POINT_NAMESPACE, task_id))


def episode_from_task(task: pb.Task, *, goal: str | None = None, domain: str = "") -> Episode:
    """What memory keeps of a finished task: see the module docstring."""
    answer = task.result.answer
    if len(answer) > ANSWER_CHARS:
        answer = answer[: ANSWER_CHARS - 1] + "…"
    return Episode(
        task_id=task.task_id,
        goal=task.goal if goal is None else goal,
        domain=domain,
        steps=tuple(
            EpisodeStep(s.step_id, s.arm_type, s.description, tuple(s.depends_on))
            for s in task.plan.steps
        ),
        answer=answer,
        confidence=task.result.confidence,
        provenance=tuple(
            StepProvenance(
                step_id=sub.step_id,
                arm_id=sub.provenance.arm_id or sub.arm_id,
                model=sub.provenance.model,
                tokens=sub.provenance.usage.tokens,
                cost_usd=sub.provenance.usage.cost_usd,
            )
            for sub in task.subtasks
            if sub.state == pb.SUBTASK_STATE_SUCCEEDED
        ),
    )


def episode_payload(episode: Episode, embedder: str) -> dict[str, Any]:
    """The Qdrant payload of an episode (its fields but the score, plus the embedder name)."""
    data: dict[str, Any] = _EPISODE.dump_python(episode, mode="json")
    data.pop("score", None)
    return {**data, "embedder": embedder, "version": PAYLOAD_VERSION}


def episode_from_payload(payload: Mapping[str, Any], score: float) -> Episode | None:
    """The episode a payload holds, with `score`; None for a payload that is not one."""
    try:
        return _EPISODE.validate_python({**payload, "score": score})
    except ValidationError:
        return None


def memory_from_settings(settings: Settings) -> TaskMemory:
    """The task memory the settings describe (not opened yet: call `start()`)."""
    if not settings.memory:
        return TaskMemory(None)
    backend: QdrantBackend
    if settings.qdrant_url:
        backend = ServerQdrant(
            settings.qdrant_url,
            settings.qdrant_api_key.get_secret_value(),
            timeout_s=settings.memory_timeout_s,
        )
    else:
        backend = LocalQdrant(settings.memory_path)
    embedder: Embedder = HashEmbedder()
    if settings.embeddings_base_url:
        embedder = OpenAIEmbedder(
            settings.embeddings_base_url,
            settings.embeddings_model,
            api_key=settings.llm_api_key.get_secret_value(),
            timeout_s=settings.memory_timeout_s,
            max_retries=1,
        )
    return TaskMemory(backend, embedder, timeout_s=settings.memory_timeout_s)
