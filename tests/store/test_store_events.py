"""TaskStore: appending events, projecting them, and watching the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from google.protobuf import struct_pb2
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store import StoreClosed, TaskClosed, TaskNotFound, TaskStore

NewTask = Callable[..., pb.Task]
HANG_GUARD = 10


def _state(to_state: pb.TaskState.ValueType) -> pb.TaskEvent:
    return pb.TaskEvent(state_changed=pb.TaskStateChanged(to_state=to_state))


def _progress(fraction: float) -> pb.TaskEvent:
    return pb.TaskEvent(subtask_progress=pb.SubtaskProgress(subtask_id="s", fraction=fraction))


def _finished(state: pb.TaskState.ValueType = pb.TASK_STATE_SUCCEEDED) -> pb.TaskEvent:
    return pb.TaskEvent(
        finished=pb.TaskFinished(state=state, result=pb.TaskResult(answer="42", confidence=0.9))
    )


async def _collect(events: AsyncIterator[pb.TaskEvent]) -> list[pb.TaskEvent]:
    async def drain() -> list[pb.TaskEvent]:
        return [event async for event in events]

    return await asyncio.wait_for(drain(), HANG_GUARD)


async def _created(store: TaskStore, new_task: NewTask) -> str:
    task, _ = await store.create(new_task(), "fp")
    return task.task_id


async def test_append_assigns_gapless_seqs(store: TaskStore, new_task: NewTask) -> None:
    """Seqs run 1, 2, 3, ... across batches, and each event gets the task id and a time."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_state(pb.TASK_STATE_PARSING)])
    await store.append(task_id, [_progress(0.1), _progress(0.2), _progress(0.3)])
    seq = await store.append(task_id, [_state(pb.TASK_STATE_PLANNING)])
    task = await store.get(task_id)
    assert seq == task.last_seq
    assert task.last_seq == 5
    await store.append(task_id, [_finished()])

    events = await _collect(store.watch(task_id, 0))
    assert [event.seq for event in events] == [1, 2, 3, 4, 5, 6]


async def test_append_stamps_events_without_touching_the_input(
    store: TaskStore, new_task: NewTask
) -> None:
    """append() sets seq, task_id and time on its stored copies; the caller's events stay as-is."""
    task_id = await _created(store, new_task)
    given_time = pb.TaskEvent().time
    given_time.FromSeconds(1_700_000_123)
    timed = _state(pb.TASK_STATE_PARSING)
    timed.time.CopyFrom(given_time)
    untimed = _finished()
    seq = await store.append(task_id, [timed, untimed])
    task = await store.get(task_id)
    assert seq == task.last_seq

    assert not untimed.HasField("time")
    assert untimed.seq == 0
    assert untimed.task_id == ""
    stored = await _collect(store.watch(task_id, 0))
    assert [event.task_id for event in stored] == [task_id, task_id]
    assert stored[0].time == given_time
    assert stored[1].time.ToNanoseconds() > given_time.ToNanoseconds()
    assert task.update_time == stored[1].time


async def test_append_returns_projected_task(store: TaskStore, new_task: NewTask) -> None:
    """append() returns the task with every appended event applied."""
    task_id = await _created(store, new_task)
    event = _state(pb.TASK_STATE_EXECUTING)
    event.usage.CopyFrom(common_pb2.Usage(tokens=12, cost_usd=0.5))
    seq = await store.append(task_id, [event])
    task = await store.get(task_id)
    assert seq == task.last_seq
    assert task.state == pb.TASK_STATE_EXECUTING
    assert task.usage.tokens == 12
    assert task.last_seq == 1
    assert await store.get(task_id) == task


async def test_projection_of_every_event_kind(store: TaskStore, new_task: NewTask) -> None:
    """The stored task is the projection of its log, for each kind of event."""
    task_id = await _created(store, new_task)
    plan = pb.Plan(
        plan_id="p1",
        steps=[
            pb.PlanStep(step_id="search", arm_type="retriever"),
            pb.PlanStep(step_id="write", arm_type="coder", depends_on=["search"]),
        ],
    )
    seq = await store.append(task_id, [pb.TaskEvent(plan_created=pb.PlanCreated(plan=plan))])
    task = await store.get(task_id)
    assert seq == task.last_seq
    assert task.plan == plan
    assert [(s.subtask_id, s.step_id, s.arm_type, s.state) for s in task.subtasks] == [
        (f"{task_id}:search", "search", "retriever", pb.SUBTASK_STATE_PENDING),
        (f"{task_id}:write", "write", "coder", pb.SUBTASK_STATE_PENDING),
    ]

    running = pb.Subtask(
        subtask_id=f"{task_id}:search",
        step_id="search",
        arm_type="retriever",
        state=pb.SUBTASK_STATE_RUNNING,
        arm_id="retriever-0",
        attempt=1,
    )
    seq = await store.append(
        task_id, [pb.TaskEvent(subtask_changed=pb.SubtaskStateChanged(subtask=running))]
    )
    task = await store.get(task_id)
    assert seq == task.last_seq
    assert task.subtasks[0] == running
    assert task.subtasks[1].state == pb.SUBTASK_STATE_PENDING

    seq = await store.append(task_id, [_progress(0.5)])
    task = await store.get(task_id)
    assert seq == task.last_seq
    assert task.subtasks[0] == running
    assert task.last_seq == 3

    failure = common_pb2.Failure(code=4, message="too slow", reason="DEADLINE")
    finished = pb.TaskEvent(
        finished=pb.TaskFinished(state=pb.TASK_STATE_DEADLINE_EXCEEDED, failure=failure)
    )
    seq = await store.append(task_id, [finished])
    task = await store.get(task_id)
    assert seq == task.last_seq
    assert task.state == pb.TASK_STATE_DEADLINE_EXCEEDED
    assert task.failure == failure
    assert not task.HasField("result")
    assert task.last_seq == 4


async def test_append_to_unknown_task_raises(store: TaskStore) -> None:
    """append() to an unknown task raises TaskNotFound."""
    with pytest.raises(TaskNotFound):
        await store.append("00000000-0000-0000-0000-000000000000", [_progress(0.1)])


async def test_append_after_finished_is_refused(store: TaskStore, new_task: NewTask) -> None:
    """Once `finished` is in the log, append() raises TaskClosed and the log is unchanged."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_finished()])
    with pytest.raises(TaskClosed) as caught:
        await store.append(task_id, [_progress(1.0)])
    assert caught.value.task_id == task_id
    with pytest.raises(TaskClosed):
        await store.append(task_id, [])
    assert (await store.get(task_id)).last_seq == 1


async def test_batch_with_event_after_finished_is_refused_whole(
    store: TaskStore, new_task: NewTask
) -> None:
    """A batch with events after its `finished` raises TaskClosed and appends none of it."""
    task_id = await _created(store, new_task)
    with pytest.raises(TaskClosed):
        await store.append(task_id, [_progress(0.1), _finished(), _progress(0.2)])
    task = await store.get(task_id)
    assert task.last_seq == 0
    assert task.state == pb.TASK_STATE_PENDING


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (pb.TaskEvent(), "no kind"),
        (pb.TaskEvent(finished=pb.TaskFinished(state=pb.TASK_STATE_EXECUTING)), "non-terminal"),
        (
            pb.TaskEvent(task_id="someone-else", subtask_progress=pb.SubtaskProgress()),
            "names task",
        ),
    ],
)
async def test_invalid_event_is_refused_whole(
    store: TaskStore, new_task: NewTask, event: pb.TaskEvent, message: str
) -> None:
    """A batch with a malformed event raises ValueError and appends nothing."""
    task_id = await _created(store, new_task)
    with pytest.raises(ValueError, match=message):
        await store.append(task_id, [_progress(0.1), event])
    assert (await store.get(task_id)).last_seq == 0


async def test_empty_batch_changes_nothing(store: TaskStore, new_task: NewTask) -> None:
    """append() of no events leaves the task unchanged and returns its last_seq."""
    task_id = await _created(store, new_task)
    before = await store.get(task_id)
    assert await store.append(task_id, []) == before.last_seq == 0
    assert await store.get(task_id) == before


async def test_watch_replays_whole_log(store: TaskStore, new_task: NewTask) -> None:
    """watch(after_seq=0) on a finished task yields every event once, then ends."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_state(pb.TASK_STATE_PARSING), _progress(0.5)])
    await store.append(task_id, [_finished()])
    events = await _collect(store.watch(task_id, 0))
    assert [event.seq for event in events] == [1, 2, 3]
    assert events[-1].HasField("finished")


async def test_watch_replays_after_seq(store: TaskStore, new_task: NewTask) -> None:
    """watch(after_seq=n) yields only events with seq > n."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_progress(i / 10) for i in range(5)] + [_finished()])
    events = await _collect(store.watch(task_id, 3))
    assert [event.seq for event in events] == [4, 5, 6]


async def test_watch_past_the_end_of_finished_task_ends(
    store: TaskStore, new_task: NewTask
) -> None:
    """A watcher that already saw `finished` (after_seq >= last seq) gets an empty stream."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_progress(0.5), _finished()])
    assert await _collect(store.watch(task_id, 2)) == []
    assert await _collect(store.watch(task_id, 99)) == []


async def test_watch_follows_live_events_until_finished(
    store: TaskStore, new_task: NewTask
) -> None:
    """A watcher started before any event gets them live and ends after `finished`."""
    task_id = await _created(store, new_task)
    watcher = asyncio.create_task(_collect(store.watch(task_id, 0)))
    await asyncio.sleep(0)
    await store.append(task_id, [_state(pb.TASK_STATE_PARSING)])
    await asyncio.sleep(0)
    await store.append(task_id, [_progress(0.5)])
    assert not watcher.done()
    await store.append(task_id, [_finished(pb.TASK_STATE_FAILED)])
    events = await watcher
    assert [event.seq for event in events] == [1, 2, 3]
    assert events[-1].finished.state == pb.TASK_STATE_FAILED


async def test_watch_crosses_replay_boundary_without_gaps_or_dupes(
    store: TaskStore, new_task: NewTask
) -> None:
    """Watchers joining at various points while events are appended see 1..N exactly once."""
    task_id = await _created(store, new_task)
    total = 300
    watchers: list[asyncio.Task[list[pb.TaskEvent]]] = []
    starts: list[int] = []

    async def appender() -> None:
        seq = 0
        while seq < total - 1:
            batch = [_progress(0.0) for _ in range(1 + seq % 3)][: total - 1 - seq]
            await store.append(task_id, batch)
            seq += len(batch)
            if seq % 20 < 3:
                after = seq // 2
                starts.append(after)
                watchers.append(asyncio.create_task(_collect(store.watch(task_id, after))))
            await asyncio.sleep(0)
        await store.append(task_id, [_finished()])

    await asyncio.wait_for(appender(), HANG_GUARD)
    results = await asyncio.wait_for(asyncio.gather(*watchers), HANG_GUARD)
    assert len(results) > 5
    for after, events in zip(starts, results, strict=True):
        assert [event.seq for event in events] == list(range(after + 1, total + 1))


async def test_multiple_watchers_see_the_same_log(store: TaskStore, new_task: NewTask) -> None:
    """Several concurrent watchers each get every event, identical and in order."""
    task_id = await _created(store, new_task)
    watchers = [asyncio.create_task(_collect(store.watch(task_id, 0))) for _ in range(5)]
    for step in range(10):
        await store.append(task_id, [_progress(step / 10)])
        await asyncio.sleep(0)
    await store.append(task_id, [_finished()])
    results = await asyncio.wait_for(asyncio.gather(*watchers), HANG_GUARD)
    assert all(events == results[0] for events in results)
    assert [event.seq for event in results[0]] == list(range(1, 12))


async def test_slow_watcher_does_not_block_append(store: TaskStore, new_task: NewTask) -> None:
    """A watcher that stops reading does not hold up appends."""
    task_id = await _created(store, new_task)
    stalled = store.watch(task_id, 0)
    await store.append(task_id, [_progress(0.0)])
    first = await asyncio.wait_for(anext(stalled), HANG_GUARD)

    async def append_many() -> pb.Task:
        for _ in range(500):
            await store.append(task_id, [_progress(0.5)])
        return await store.get(task_id)

    task = await asyncio.wait_for(append_many(), HANG_GUARD)
    assert first.seq == 1
    assert task.last_seq == 501
    second = await asyncio.wait_for(anext(stalled), HANG_GUARD)
    assert second.seq == 2
    await stalled.aclose()  # type: ignore[attr-defined]


async def test_watched_events_are_copies(store: TaskStore, new_task: NewTask) -> None:
    """Mutating a watched event does not change what later watchers see."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_progress(0.5), _finished()])
    first = await _collect(store.watch(task_id, 0))
    first[0].subtask_progress.message = "tampered"
    again = await _collect(store.watch(task_id, 0))
    assert again[0].subtask_progress.message == ""


async def test_watch_unknown_task_raises(store: TaskStore) -> None:
    """Iterating watch() of an unknown task raises TaskNotFound."""
    with pytest.raises(TaskNotFound):
        await _collect(store.watch("00000000-0000-0000-0000-000000000000", 0))


async def test_watch_rejects_negative_after_seq(store: TaskStore, new_task: NewTask) -> None:
    """watch() with a negative after_seq raises ValueError."""
    task_id = await _created(store, new_task)
    with pytest.raises(ValueError, match="after_seq"):
        await _collect(store.watch(task_id, -1))


async def test_close_ends_pending_watchers(store: TaskStore, new_task: NewTask) -> None:
    """close() wakes waiting watchers with StoreClosed, and later calls raise it too."""
    task_id = await _created(store, new_task)
    watcher = asyncio.create_task(_collect(store.watch(task_id, 0)))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StoreClosed):
        await watcher
    with pytest.raises(StoreClosed):
        await store.get(task_id)


async def test_struct_payloads_survive_the_log(store: TaskStore, new_task: NewTask) -> None:
    """Structured outputs in events come back from watch() and get() intact."""
    task_id = await _created(store, new_task)
    outputs = struct_pb2.Struct()
    outputs.update({"search": {"hits": [1, 2, 3], "ok": True}})
    finished = pb.TaskEvent(
        finished=pb.TaskFinished(
            state=pb.TASK_STATE_SUCCEEDED, result=pb.TaskResult(answer="done", outputs=outputs)
        )
    )
    await store.append(task_id, [finished])
    (event,) = await _collect(store.watch(task_id, 0))
    assert event.finished.result.outputs == outputs
    assert (await store.get(task_id)).result.outputs == outputs


async def _collect_batches(
    batches: AsyncIterator[list[pb.TaskEvent]],
) -> list[list[pb.TaskEvent]]:
    async def drain() -> list[list[pb.TaskEvent]]:
        return [batch async for batch in batches]

    return await asyncio.wait_for(drain(), HANG_GUARD)


async def test_watch_batches_replays_in_chunks_of_at_most_max_events(
    store: TaskStore, new_task: NewTask
) -> None:
    """A replayed log of 7 events comes as 3 + 3 + 1, in order, ending with `finished`."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_progress(i / 10) for i in range(6)])
    await store.append(task_id, [_finished()])
    batches = await _collect_batches(store.watch_batches(task_id, 0, 3))
    assert [[e.seq for e in batch] for batch in batches] == [[1, 2, 3], [4, 5, 6], [7]]
    assert batches[-1][-1].HasField("finished")


async def test_watch_batches_yields_events_appended_together_together(
    store: TaskStore, new_task: NewTask
) -> None:
    """Live: each append's events arrive as one batch, after those already stored."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_state(pb.TASK_STATE_PARSING)])
    batches = store.watch_batches(task_id, 0, 100)
    first = await asyncio.wait_for(anext(batches), HANG_GUARD)
    assert [e.seq for e in first] == [1]
    await store.append(task_id, [_progress(0.5), _state(pb.TASK_STATE_PLANNING), _finished()])
    rest = await _collect_batches(batches)
    assert [[e.seq for e in batch] for batch in rest] == [[2, 3, 4]]


async def test_watch_batches_after_seq_and_bad_sizes(store: TaskStore, new_task: NewTask) -> None:
    """after_seq skips what the watcher has; a batch size below 1 is refused."""
    task_id = await _created(store, new_task)
    await store.append(task_id, [_progress(0.1), _progress(0.2), _finished()])
    batches = await _collect_batches(store.watch_batches(task_id, 2, 10))
    assert [[e.seq for e in batch] for batch in batches] == [[3]]
    with pytest.raises(ValueError, match="max_events"):
        await anext(store.watch_batches(task_id, 0, 0))
