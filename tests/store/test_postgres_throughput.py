"""Group commit, measured: 10,000 single-event appends across 100 tasks, with and without it.

Run with `python -m pytest tests/store/test_postgres_throughput.py -m slow -s`; it prints the
figures and asserts only correctness (speed differs too much between machines to pin).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store import InMemoryTaskStore, TaskStore
from tests.store.postgres_schema import postgres_schema

TASKS = 100
EVENTS_PER_TASK = 100


async def _append_everywhere(store: TaskStore, new_task: Callable[..., pb.Task]) -> float:
    """Append EVENTS_PER_TASK events to each of TASKS tasks, tasks concurrently; return seconds."""
    task_ids = [(await store.create(new_task(), "fp"))[0].task_id for _ in range(TASKS)]
    event = pb.TaskEvent(subtask_progress=pb.SubtaskProgress(subtask_id="s", fraction=0.5))

    async def one_task(task_id: str) -> None:
        for _ in range(EVENTS_PER_TASK):
            await store.append(task_id, [event])

    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one_task(task_id) for task_id in task_ids)), 600)
    elapsed = time.perf_counter() - started
    for task_id in task_ids:
        assert (await store.get(task_id)).last_seq == EVENTS_PER_TASK
    return elapsed


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_group_commit_throughput(new_task: Callable[..., pb.Task]) -> None:
    """Prints append throughput: in memory, PostgreSQL with group commit, and one by one."""
    memory = InMemoryTaskStore()
    results = {"in-memory": await _append_everywhere(memory, new_task)}
    await memory.close()
    for label, group_commit in (("postgres group commit", True), ("postgres one by one", False)):
        async with postgres_schema() as schema:
            await schema.migrate()
            store = await schema.open_store(group_commit=group_commit)
            results[label] = await _append_everywhere(store, new_task)
    total = TASKS * EVENTS_PER_TASK
    print()
    for label, seconds in results.items():
        print(f"{label:>24}: {total} appends in {seconds:6.2f} s = {total / seconds:8.0f} /s")
