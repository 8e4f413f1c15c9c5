"""The task memory on Qdrant local mode: remember, recall, replace, persist, and degrade."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb
from structlog.testing import capture_logs

from orchestrator_svc.arms.retriever import HashEmbedder
from orchestrator_svc.brain import Episode, EpisodeStep, StepProvenance
from orchestrator_svc.config import Settings
from orchestrator_svc.store.episodes import (
    LocalQdrant,
    ServerQdrant,
    memory_from_settings,
)
from tests.conftest import StartOrchestrator
from tests.llm.conftest import StartFake
from tests.llm.fake_openai import Reply, refused_base_url
from tests.memory.conftest import MakeMemory, finished_task

LOGIN_BUG = "Find and fix the authentication bug in auth/login.py"


def warnings_of(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["log_level"] == "warning"]


async def test_recall_returns_similar_past_tasks_most_similar_first(
    memories: MakeMemory,
) -> None:
    """Recall ranks past tasks by the similarity of their goals and leaves out unrelated ones."""
    memory = memories(LocalQdrant(":memory:"))
    assert await memory.open()
    await memory.remember(finished_task("t-logout", LOGIN_BUG.replace("login", "logout")))
    await memory.remember(finished_task("t-login", LOGIN_BUG), domain="code")
    await memory.remember(finished_task("t-haiku", "Write a haiku about the sea"))

    recalled = await memory.recall(LOGIN_BUG + ".")
    assert [e.task_id for e in recalled] == ["t-login", "t-logout"]
    assert recalled[0].score > recalled[1].score >= 0.5
    assert recalled[0] == Episode(
        task_id="t-login",
        goal=LOGIN_BUG,
        domain="code",
        steps=(
            EpisodeStep("research", "retriever", "research for the goal"),
            EpisodeStep("compose", "planner", "compose for the goal", ("research",)),
        ),
        answer="the answer",
        confidence=0.8,
        provenance=(
            StepProvenance("research", "retriever-1", "fake-model", 10, 0.001),
            StepProvenance("compose", "planner-1", "fake-model", 10, 0.001),
        ),
        score=recalled[0].score,
    )
    assert await memory.recall(LOGIN_BUG, limit=1) == recalled[:1]


async def test_recall_is_empty_before_anything_is_remembered(memories: MakeMemory) -> None:
    """No collection yet (and a blank goal) means no past tasks, not an error."""
    memory = memories(LocalQdrant(":memory:"))
    with capture_logs() as logs:
        assert await memory.recall(LOGIN_BUG) == []
        assert await memory.recall("   ") == []
    assert warnings_of(logs) == []


async def test_remembering_a_task_again_replaces_it(memories: MakeMemory) -> None:
    """The point id comes from the task id: a task remembered twice is stored once, as last."""
    memory = memories(LocalQdrant(":memory:"))
    await memory.remember(finished_task("t-1", LOGIN_BUG, answer="first try"))
    await memory.remember(finished_task("t-1", LOGIN_BUG, answer="second try", confidence=0.9))

    (only,) = await memory.recall(LOGIN_BUG, limit=10, min_score=0.0)
    assert (only.task_id, only.answer, only.confidence) == ("t-1", "second try", 0.9)


async def test_only_succeeded_tasks_are_remembered(memories: MakeMemory) -> None:
    """A failed task, or one without a plan, is not remembered."""
    memory = memories(LocalQdrant(":memory:"))
    assert not await memory.remember(finished_task("t-f", LOGIN_BUG, state=pb.TASK_STATE_FAILED))
    assert not await memory.remember(pb.Task(task_id="t-n", goal=LOGIN_BUG))
    assert await memory.remember(finished_task("t-ok", LOGIN_BUG))
    assert [e.task_id for e in await memory.recall(LOGIN_BUG)] == ["t-ok"]


async def test_the_given_goal_replaces_the_raw_one_and_long_answers_are_cut(
    memories: MakeMemory,
) -> None:
    """`goal=` (the redacted goal) is what is stored and matched; the answer is kept short."""
    memory = memories(LocalQdrant(":memory:"))
    task = finished_task("t-1", "Rotate the key sk-live-123 for payments", answer="x" * 5000)
    await memory.remember(task, goal="Rotate the key [REDACTED] for payments")

    (episode,) = await memory.recall("Rotate the key [REDACTED] for payments")
    assert episode.goal == "Rotate the key [REDACTED] for payments"
    assert len(episode.answer) == 500


async def test_memory_persists_in_its_folder(memories: MakeMemory, tmp_path: Path) -> None:
    """Local mode keeps the tasks on disk: a memory opened later on the folder recalls them."""
    first = memories(LocalQdrant(tmp_path / "memory"))
    await first.remember(finished_task("t-1", LOGIN_BUG))
    await first.close()

    again = memories(LocalQdrant(tmp_path / "memory"))
    assert [e.task_id for e in await again.recall(LOGIN_BUG)] == ["t-1"]


async def test_remember_soon_is_finished_by_close(memories: MakeMemory, tmp_path: Path) -> None:
    """remember_soon returns at once; close() lets the pending remember finish first."""
    memory = memories(LocalQdrant(tmp_path / "memory"))
    loaded = asyncio.Event()

    async def load() -> pb.Task:
        loaded.set()
        return finished_task("t-1", LOGIN_BUG)

    memory.remember_soon(load, domain="code")
    assert not loaded.is_set()
    await memory.close()
    assert loaded.is_set()

    again = memories(LocalQdrant(tmp_path / "memory"))
    assert [(e.task_id, e.domain) for e in await again.recall(LOGIN_BUG)] == [("t-1", "code")]


async def test_a_folder_in_use_means_no_memory_and_one_warning(
    memories: MakeMemory, tmp_path: Path
) -> None:
    """Qdrant local mode opens a folder once: a second client gets no memory, one warning."""
    holder = memories(LocalQdrant(tmp_path / "memory"))
    assert await holder.open()
    second = memories(LocalQdrant(tmp_path / "memory"), retry_after_s=0.0)
    with capture_logs() as logs:
        assert not await second.open()
        assert await second.recall(LOGIN_BUG) == []
        assert not await second.remember(finished_task("t-1", LOGIN_BUG))
    (warning,) = warnings_of(logs)
    assert warning["event"] == "task_memory_unavailable"
    assert warning["during"] == "open"
    assert "is in use by another Qdrant client" in warning["reason"]
    assert str(tmp_path / "memory") in warning["reason"]


async def test_a_dimension_mismatch_is_reported_and_means_no_memory(
    memories: MakeMemory, tmp_path: Path
) -> None:
    """A collection filled by a 384-dimensional embedder is not mixed with 64-dimensional
    vectors: remember and recall do nothing, and the warning says why and what to do."""
    first = memories(LocalQdrant(tmp_path / "memory"))
    await first.remember(finished_task("t-1", LOGIN_BUG))
    await first.close()

    changed = memories(LocalQdrant(tmp_path / "memory"), HashEmbedder(64), retry_after_s=0.0)
    with capture_logs() as logs:
        assert not await changed.remember(finished_task("t-2", LOGIN_BUG))
        assert await changed.recall(LOGIN_BUG) == []
    (warning,) = warnings_of(logs)
    assert warning["event"] == "task_memory_unavailable"
    assert warning["reason"].startswith("DimensionMismatch: collection 'octollm_episodes'")
    assert "holds 384-dimensional vectors" in warning["reason"]
    assert "hash-ngram-v1-64 makes 64-dimensional ones" in warning["reason"]


async def test_an_unreachable_server_means_no_memory_and_one_warning(
    memories: MakeMemory,
) -> None:
    """Server mode with nothing listening: recall is empty, remember skips, one warning."""
    url = refused_base_url().removesuffix("/v1")
    memory = memories(ServerQdrant(url, timeout_s=5.0), retry_after_s=0.0)
    with capture_logs() as logs:
        assert await memory.recall(LOGIN_BUG) == []
        assert not await memory.remember(finished_task("t-1", LOGIN_BUG))
        assert await memory.recall(LOGIN_BUG) == []
    (warning,) = warnings_of(logs)
    assert warning["event"] == "task_memory_unavailable"
    assert warning["store"] == url
    assert warning["during"] == "recall"


async def test_a_failing_memory_is_left_alone_for_a_while(memories: MakeMemory) -> None:
    """After a failure, calls within retry_after_s return at once without trying Qdrant."""
    url = refused_base_url().removesuffix("/v1")
    memory = memories(ServerQdrant(url, timeout_s=5.0), retry_after_s=3600.0)
    with capture_logs() as logs:
        assert await memory.recall(LOGIN_BUG) == []
        assert await memory.recall(LOGIN_BUG) == []
    assert [e["event"] for e in logs if e["event"].startswith("task_memory_")] == [
        "task_memory_opened",
        "task_memory_unavailable",
    ]


async def test_a_closed_memory_recalls_and_remembers_nothing(memories: MakeMemory) -> None:
    """After close() every call is a quiet no-op."""
    memory = memories(LocalQdrant(":memory:"))
    await memory.remember(finished_task("t-1", LOGIN_BUG))
    await memory.close()
    with capture_logs() as logs:
        assert await memory.recall(LOGIN_BUG) == []
        assert not await memory.remember(finished_task("t-2", LOGIN_BUG))
    assert warnings_of(logs) == []
    assert not memory.enabled


async def test_settings_choose_the_memory(tmp_path: Path) -> None:
    """OCTOLLM_MEMORY=off: no memory; OCTOLLM_QDRANT_URL: a server; else local mode in
    OCTOLLM_MEMORY_PATH (default .octollm/memory) with the local hashing embedder."""
    off = memory_from_settings(Settings(memory=False))
    assert not off.enabled
    assert await off.recall(LOGIN_BUG) == []

    assert Settings.model_fields["memory"].default is True
    assert Settings.model_fields["memory_path"].default == ".octollm/memory"
    local = memory_from_settings(Settings(memory_path=str(tmp_path), qdrant_url=""))
    assert local.enabled
    assert local.location == str(tmp_path)
    await local.close()

    server = memory_from_settings(Settings(qdrant_url="http://qdrant:6333"))
    assert server.location == "http://qdrant:6333"
    await server.close()


def embedding_reply(body: dict[str, Any], _: int) -> Reply:
    """An OpenAI embeddings answer: the 16-dimensional hashing vector of each input."""
    local = HashEmbedder(16)
    return Reply(
        body={
            "object": "list",
            "model": body["model"],
            "data": [
                {"object": "embedding", "index": i, "embedding": local.vector(text)}
                for i, text in enumerate(body["input"])
            ],
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        }
    )


async def test_a_configured_embeddings_endpoint_makes_the_vectors(start_fake: StartFake) -> None:
    """With OCTOLLM_EMBEDDINGS_BASE_URL the goals are embedded by that endpoint and model."""
    fake = await start_fake(embedding_reply)
    memory = memory_from_settings(
        Settings(
            memory_path=":memory:",
            memory_timeout_s=20.0,
            embeddings_base_url=fake.base_url,
            embeddings_model="fake-embed",
        )
    )
    try:
        assert await memory.remember(finished_task("t-1", LOGIN_BUG))
        (episode,) = await memory.recall(LOGIN_BUG)
    finally:
        await memory.close()
    assert episode.task_id == "t-1"
    assert [(r["model"], r["input"]) for r in fake.requests] == [
        ("fake-embed", [LOGIN_BUG]),
        ("fake-embed", [LOGIN_BUG]),
    ]


async def test_the_orchestrator_holds_its_memory_from_start_to_stop(
    start_orchestrator: StartOrchestrator, memories: MakeMemory, tmp_path: Path
) -> None:
    """`octollm serve` opens the memory folder at start (in the background) and lets it go at
    stop, so the next process can open it."""
    folder = tmp_path / "memory"
    orchestrator = await start_orchestrator([], memory=True, memory_path=str(folder))
    assert await orchestrator.memory.open()
    assert await orchestrator.memory.remember(finished_task("t-1", LOGIN_BUG))
    await orchestrator.stop(grace_s=0)
    assert not orchestrator.memory.enabled

    after = memories(LocalQdrant(folder))
    assert [e.task_id for e in await after.recall(LOGIN_BUG)] == ["t-1"]
