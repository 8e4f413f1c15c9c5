"""TaskStore: create, get, idempotency and listing."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

import orchestrator_svc.store as store_pkg
from orchestrator_svc.store import IdempotencyConflict, TaskNotFound, TaskStore

NewTask = Callable[..., pb.Task]


def _at(seconds: int) -> dict[str, object]:
    created = pb.Task().create_time
    created.FromSeconds(1_700_000_000 + seconds)
    return {"create_time": created}


def test_public_surface() -> None:
    """The store package exports exactly its ports, errors, projection, adapters and openers."""
    assert sorted(store_pkg.__all__) == sorted(
        [
            "TERMINAL_SUBTASK_STATES",
            "TERMINAL_TASK_STATES",
            "Cache",
            "CorruptRecord",
            "IdempotencyConflict",
            "InMemoryCache",
            "InMemoryTaskStore",
            "LeaseLost",
            "MigrationError",
            "PostgresTaskStore",
            "RedisCache",
            "StoreClosed",
            "StoreError",
            "StoreUnavailable",
            "TaskClosed",
            "TaskLeases",
            "TaskNotFound",
            "TaskStore",
            "apply",
            "cache_key",
            "migrate",
            "open_cache",
            "open_store",
            "subtask_id_for",
        ]
    )
    for name in store_pkg.__all__:
        assert getattr(store_pkg, name) is not None


async def test_create_stores_pending_task(store: TaskStore, new_task: NewTask) -> None:
    """create() stores the task as PENDING with last_seq 0 and a create_time."""
    task_id = str(uuid.uuid4())
    requested = new_task(task_id=task_id, state=pb.TASK_STATE_EXECUTING, last_seq=7)
    created, is_new = await store.create(requested, "fp")
    assert is_new
    assert created.task_id == task_id
    assert created.goal == requested.goal
    assert created.state == pb.TASK_STATE_PENDING
    assert created.last_seq == 0
    assert created.create_time.ToNanoseconds() > 0
    assert created.update_time == created.create_time
    assert await store.get(task_id) == created


async def test_create_assigns_task_id_when_empty(store: TaskStore, new_task: NewTask) -> None:
    """create() gives a task without an id a fresh UUID."""
    first, _ = await store.create(new_task(), "fp")
    second, _ = await store.create(new_task(), "fp")
    assert uuid.UUID(first.task_id) != uuid.UUID(second.task_id)


async def test_create_keeps_given_create_time(store: TaskStore, new_task: NewTask) -> None:
    """create() keeps a create_time the caller set (the API stamps acceptance time)."""
    created, _ = await store.create(new_task(**_at(5)), "fp")
    assert created.create_time.seconds == 1_700_000_005


async def test_create_refuses_existing_task_id(store: TaskStore, new_task: NewTask) -> None:
    """create() with the id of an existing task raises ValueError instead of overwriting it."""
    created, _ = await store.create(new_task(), "fp")
    with pytest.raises(ValueError, match="already exists"):
        await store.create(new_task(goal="another goal entirely", task_id=created.task_id), "x")
    assert (await store.get(created.task_id)).goal == created.goal


async def test_returned_tasks_are_copies(store: TaskStore, new_task: NewTask) -> None:
    """Mutating what create() or get() returned, or the input, does not change the store."""
    requested = new_task()
    created, _ = await store.create(requested, "fp")
    requested.goal = "changed input"
    created.goal = "changed output"
    fetched = await store.get(created.task_id)
    fetched.state = pb.TASK_STATE_FAILED
    again = await store.get(created.task_id)
    assert again.goal == "summarise the quarterly report"
    assert again.state == pb.TASK_STATE_PENDING


async def test_get_unknown_task_raises(store: TaskStore) -> None:
    """get() of an unknown id raises TaskNotFound carrying the id."""
    missing = str(uuid.uuid4())
    with pytest.raises(TaskNotFound) as caught:
        await store.get(missing)
    assert caught.value.task_id == missing


async def test_same_request_same_body_returns_existing(store: TaskStore, new_task: NewTask) -> None:
    """A retry with the same request_id and fingerprint returns the task as it is now."""
    first, first_new = await store.create(new_task(request_id="req-1"), "fp-a")
    await store.append(
        first.task_id,
        [pb.TaskEvent(state_changed=pb.TaskStateChanged(to_state=pb.TASK_STATE_PARSING))],
    )
    retried, retried_new = await store.create(new_task(request_id="req-1"), "fp-a")
    assert first_new
    assert not retried_new
    assert retried.task_id == first.task_id
    assert retried.state == pb.TASK_STATE_PARSING
    assert retried.last_seq == 1


async def test_same_request_different_body_conflicts(store: TaskStore, new_task: NewTask) -> None:
    """Reusing a request_id with a different fingerprint raises IdempotencyConflict."""
    first, _ = await store.create(new_task(request_id="req-1"), "fp-a")
    with pytest.raises(IdempotencyConflict) as caught:
        await store.create(new_task(goal="a different goal here", request_id="req-1"), "fp-b")
    assert caught.value.request_id == "req-1"
    assert caught.value.task_id == first.task_id
    page, _ = await store.list(10, "", ())
    assert [task.task_id for task in page] == [first.task_id]


async def test_empty_request_id_is_never_deduplicated(store: TaskStore, new_task: NewTask) -> None:
    """Tasks without a request_id are always created anew, even with the same fingerprint."""
    first, _ = await store.create(new_task(), "fp")
    second, second_new = await store.create(new_task(), "fp")
    assert second_new
    assert second.task_id != first.task_id


async def test_concurrent_creates_with_one_request_id(store: TaskStore, new_task: NewTask) -> None:
    """50 concurrent creates with the same request_id make exactly one task."""
    results = await asyncio.wait_for(
        asyncio.gather(*(store.create(new_task(request_id="burst"), "fp") for _ in range(50))),
        10,
    )
    assert sum(is_new for _, is_new in results) == 1
    assert len({task.task_id for task, _ in results}) == 1
    page, _ = await store.list(100, "", ())
    assert len(page) == 1


async def test_list_is_newest_first(store: TaskStore, new_task: NewTask) -> None:
    """list() orders by create_time descending, ties by task_id descending."""
    ids = [str(uuid.UUID(int=i)) for i in range(4)]
    await store.create(new_task(task_id=ids[0], **_at(1)), "fp")
    await store.create(new_task(task_id=ids[1], **_at(3)), "fp")
    await store.create(new_task(task_id=ids[2], **_at(2)), "fp")
    await store.create(new_task(task_id=ids[3], **_at(2)), "fp")
    page, token = await store.list(10, "", ())
    assert [task.task_id for task in page] == [ids[1], ids[3], ids[2], ids[0]]
    assert token == ""


async def test_list_pages_are_stable_while_tasks_arrive(
    store: TaskStore, new_task: NewTask
) -> None:
    """Paging visits every task once, newest first, though newer tasks are created meanwhile."""
    ids = [str(uuid.uuid4()) for _ in range(7)]
    for offset, task_id in enumerate(ids):
        await store.create(new_task(task_id=task_id, **_at(offset)), "fp")

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await store.list(3, token, ())
        pages += 1
        seen.extend(task.task_id for task in page)
        await store.create(new_task(**_at(100 + pages)), "fp")
        if not token:
            break
    assert seen == list(reversed(ids))
    assert pages == 3


async def test_list_full_last_page_has_no_token(store: TaskStore, new_task: NewTask) -> None:
    """A page that ends exactly at the last task returns an empty next_page_token."""
    for offset in range(4):
        await store.create(new_task(**_at(offset)), "fp")
    first, token = await store.list(2, "", ())
    second, last_token = await store.list(2, token, ())
    assert len(first) == len(second) == 2
    assert token
    assert last_token == ""


async def test_list_filters_by_state(store: TaskStore, new_task: NewTask) -> None:
    """list() with states returns only tasks in those states, paginated the same way."""
    executing: list[str] = []
    for offset in range(6):
        task, _ = await store.create(new_task(**_at(offset)), "fp")
        if offset % 2:
            await store.append(
                task.task_id,
                [pb.TaskEvent(state_changed=pb.TaskStateChanged(to_state=pb.TASK_STATE_EXECUTING))],
            )
            executing.append(task.task_id)

    states = [pb.TASK_STATE_EXECUTING, pb.TASK_STATE_SUCCEEDED]
    first, token = await store.list(2, "", states)
    second, end = await store.list(2, token, states)
    assert [task.task_id for task in first + second] == list(reversed(executing))
    assert end == ""
    assert all(task.state == pb.TASK_STATE_EXECUTING for task in first + second)
    pending, _ = await store.list(10, "", [pb.TASK_STATE_PENDING])
    assert len(pending) == 3


@pytest.mark.parametrize(
    "token",
    [
        "not a token!",
        "%%%",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(b'{"a": 1}').decode(),
        base64.urlsafe_b64encode(b'["x", "y"]').decode(),
        base64.urlsafe_b64encode(b"[1]").decode(),
        "ünïcode",
    ],
)
async def test_list_rejects_malformed_token(store: TaskStore, token: str) -> None:
    """list() raises ValueError for a page_token it did not issue."""
    with pytest.raises(ValueError, match="page token"):
        await store.list(10, token, ())


async def test_list_rejects_page_size_below_one(store: TaskStore) -> None:
    """list() raises ValueError for page_size < 1 (the API applies the default before)."""
    with pytest.raises(ValueError, match="page_size"):
        await store.list(0, "", ())
