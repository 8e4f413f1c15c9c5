"""Fixtures: scriptable fake OpenAI servers on 127.0.0.1:0 and clients that are closed after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.arms import retriever as retriever_arm
from orchestrator_svc.llm import OpenAICompatibleClient
from orchestrator_svc.server import Orchestrator
from tests.llm.fake_openai import FakeOpenAI, Script

StartFake = Callable[[Script], Awaitable[FakeOpenAI]]
MakeClient = Callable[..., OpenAICompatibleClient]


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    """Start fake OpenAI servers; all are closed at the end of the test."""
    servers: list[FakeOpenAI] = []

    async def start(script: Script) -> FakeOpenAI:
        server = await FakeOpenAI(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Build OpenAICompatibleClients (quick test defaults); all are closed at the end."""
    clients: list[OpenAICompatibleClient] = []

    def make(base_url: str, **overrides: Any) -> OpenAICompatibleClient:
        options: dict[str, Any] = {
            "api_key": "sk-test-secret",
            "model": "fake-model",
            "timeout_s": 5.0,
            "max_retries": 2,
            "max_backoff_s": 0.05,
        }
        options.update(overrides)
        client = OpenAICompatibleClient(base_url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


BOUNDED_QUEUES = """# Why bounded queues keep a busy service responsive

A bounded queue keeps a busy web service responsive under load because it caps the work
waiting in front of the workers. When the queue is full, the service rejects or sheds new
requests at once instead of letting them wait, so the requests it accepts are served within a
predictable latency rather than behind an ever-growing backlog.

An unbounded queue hides overload: memory grows, every request waits longer, and callers time
out on work the service still finishes for nobody. Bounding the queue turns overload into
fast, explicit back-pressure that clients can retry against.
"""

DOCS_ARMS = ("retriever", "planner", "judge", "echo")
StartDocsMesh = Callable[..., Awaitable[Orchestrator]]


@pytest.fixture
async def start_docs_mesh(start_arm: Any, start_orchestrator: Any, tmp_path: Path) -> StartDocsMesh:
    """Start a mesh whose offline brain can answer a goal about bounded queues without an LLM:
    the retriever on a document that covers it, the planner and judge arms (no LLM of their
    own: the general template's outline and review) and echo (for explicit echo plans), with an
    orchestrator given `settings` (its LLM endpoint)."""

    async def start(**settings: Any) -> Orchestrator:
        docs = tmp_path / "docs"
        docs.mkdir(exist_ok=True)
        (docs / "bounded-queues.md").write_text(BOUNDED_QUEUES)
        store = str(tmp_path / "retriever")
        await retriever_arm.ingest(docs, store_path=store)
        arms = [await start_arm(retriever_arm.build(store_path=store))]
        for name in DOCS_ARMS[1:]:
            arms.append(await start_arm(REFERENCE_ARMS[name]()))
        orchestrator: Orchestrator = await start_orchestrator(
            [a.address for a in arms], wait_for=DOCS_ARMS, **settings
        )
        return orchestrator

    return start


def assert_served_from_the_documents(task: pb.Task) -> None:
    """The task SUCCEEDED on the offline fallback: the retriever (never echo) found the
    bounded-queues document, the answer quotes it and says no model wrote it, and it is neither
    verified nor trusted beyond 0.5."""
    assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
    ran = {sub.arm_type for sub in task.subtasks}
    assert "retriever" in ran
    assert "echo" not in ran
    answer = task.result.answer
    assert answer.splitlines()[0] == "From the indexed documents (no model wrote this answer):"
    assert "caps the work" in answer, answer
    assert task.result.answer_source == pb.ANSWER_SOURCE_RETRIEVAL
    assert not task.result.verified
    assert 0 < task.result.confidence <= 0.5
