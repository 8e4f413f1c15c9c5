"""Fixtures for task-memory tests: memories that are closed after, finished tasks, fake OpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.episodes import QdrantBackend, TaskMemory

# NOTE: importing the fixtures registers them for this directory too (F401: used by pytest).
from tests.llm.conftest import make_client, start_fake  # noqa: F401

MakeMemory = Callable[..., TaskMemory]
Step = tuple[str, str, Sequence[str]]

RESEARCH_PLAN: tuple[Step, ...] = (
    ("research", "retriever", ()),
    ("compose", "planner", ("research",)),
)


@pytest.fixture
async def memories() -> AsyncIterator[MakeMemory]:
    """Build TaskMemory instances (generous timeouts: these machines are shared); all closed."""
    made: list[TaskMemory] = []

    def make(backend: QdrantBackend | None, embedder: Any = None, **options: Any) -> TaskMemory:
        options.setdefault("timeout_s", 20.0)
        memory = TaskMemory(backend, embedder, **options)
        made.append(memory)
        return memory

    yield make
    for memory in made:
        await memory.close()


def finished_task(
    task_id: str,
    goal: str,
    steps: Sequence[Step] = RESEARCH_PLAN,
    *,
    answer: str = "the answer",
    confidence: float = 0.8,
    state: pb.TaskState.ValueType = pb.TASK_STATE_SUCCEEDED,
) -> pb.Task:
    """A task as the store holds it at its end: plan, succeeded subtasks with provenance."""
    task = pb.Task(task_id=task_id, goal=goal, state=state)
    for step_id, arm_type, depends_on in steps:
        task.plan.steps.add(
            step_id=step_id,
            arm_type=arm_type,
            description=f"{step_id} for the goal",
            depends_on=list(depends_on),
        )
        sub = task.subtasks.add(
            subtask_id=f"{task_id}:{step_id}",
            step_id=step_id,
            arm_type=arm_type,
            state=pb.SUBTASK_STATE_SUCCEEDED,
            arm_id=f"{arm_type}-1",
        )
        sub.provenance.arm_id = f"{arm_type}-1"
        sub.provenance.model = "fake-model"
        sub.provenance.usage.tokens = 10
        sub.provenance.usage.cost_usd = 0.001
    task.result.answer = answer
    task.result.confidence = confidence
    return task
