"""The in-process store stays bounded: past its retention, the oldest finished task goes."""

from __future__ import annotations

import asyncio

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.config import Settings
from orchestrator_svc.engine import events
from orchestrator_svc.store import InMemoryTaskStore, TaskNotFound, open_store


async def submit(store: InMemoryTaskStore, name: str, request_id: str = "") -> str:
    task = pb.Task(goal=f"task {name}", request_id=request_id)
    stored, created = await store.create(task, fingerprint=name)
    assert created
    return stored.task_id


async def finish(store: InMemoryTaskStore, task_id: str) -> None:
    await store.append(task_id, [events.finished(pb.TASK_STATE_SUCCEEDED)])


async def test_the_oldest_finished_tasks_are_forgotten_first() -> None:
    store = InMemoryTaskStore(retain_finished=2)
    ids = [await submit(store, str(i), request_id=f"req-{i}") for i in range(4)]
    # Finished in another order than created: forgetting follows the finish order.
    for task_id in (ids[2], ids[0], ids[3], ids[1]):
        await finish(store, task_id)
    for gone in (ids[2], ids[0]):
        with pytest.raises(TaskNotFound):
            await store.get(gone)
    kept = {t.task_id for t in (await store.list(10, "", ()))[0]}
    assert kept == {ids[1], ids[3]}
    # A forgotten task's request_id is free again: the same key makes a new task.
    again, created = await store.create(pb.Task(goal="task 2", request_id="req-2"), "2")
    assert created
    assert again.task_id != ids[2]
    # A kept one still answers with the task it made.
    same, created = await store.create(pb.Task(goal="task 3", request_id="req-3"), "3")
    assert (same.task_id, created) == (ids[3], False)


async def test_unfinished_tasks_always_stay() -> None:
    store = InMemoryTaskStore(retain_finished=1)
    running = [await submit(store, str(i)) for i in range(5)]
    done = [await submit(store, f"done-{i}") for i in range(3)]
    for task_id in done:
        await finish(store, task_id)
    for task_id in running:
        assert (await store.get(task_id)).state == pb.TASK_STATE_PENDING
    assert len((await store.list(100, "", ()))[0]) == len(running) + 1


async def test_a_watcher_of_a_forgotten_task_reads_it_to_the_end() -> None:
    store = InMemoryTaskStore(retain_finished=1)
    first = await submit(store, "first")
    await store.append(
        first, [events.state_changed(pb.TASK_STATE_PENDING, pb.TASK_STATE_PLANNING, "go")]
    )
    watch = store.watch(first, 0)
    assert (await anext(watch)).seq == 1
    await finish(store, first)
    await finish(store, await submit(store, "second"))  # forgets `first`
    with pytest.raises(TaskNotFound):
        await store.get(first)
    rest = [e async for e in watch]
    assert [e.seq for e in rest] == [2]
    assert rest[0].HasField("finished")


async def test_the_setting_reaches_the_store() -> None:
    store = await open_store(Settings(retain_finished_tasks=1, memory=False))
    assert isinstance(store, InMemoryTaskStore)
    ids = [await submit(store, str(i)) for i in range(2)]
    await asyncio.gather(*(finish(store, t) for t in ids))
    assert [t.task_id for t in (await store.list(10, "", ()))[0]] == [ids[1]]
    await store.close()


def test_retention_must_keep_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InMemoryTaskStore(retain_finished=0)
