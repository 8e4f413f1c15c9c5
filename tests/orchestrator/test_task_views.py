"""Task views (AIP-157): BASIC reads leave step outputs out; a FULL read that cannot fit in one
response fails RESOURCE_EXHAUSTED with TASK_TOO_LARGE or EVENT_TOO_LARGE, never a bare error."""

from __future__ import annotations

import contextlib
from typing import Any

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.api import views
from orchestrator_svc.arms import REFERENCE_ARMS
from tests.orchestrator.test_api import GOAL, collect, error_info
from tests.store.postgres_schema import postgres_schema


@pytest.fixture(params=["memory", "postgres"])
async def stub(request, start_arm, start_orchestrator, connect):  # type: ignore[no-untyped-def]
    """A client of an orchestrator with an echo arm, on each store (views are the API's)."""
    async with contextlib.AsyncExitStack() as stack:
        settings: dict[str, str] = {}
        if request.param == "postgres":
            schema = await stack.enter_async_context(postgres_schema())
            settings["postgres_dsn"] = schema.search_path_dsn
        echo = await start_arm(REFERENCE_ARMS["echo"]())
        orch = await start_orchestrator([echo.address], wait_for=("echo",), **settings)
        yield connect(orch.address)
        await orch.stop(grace_s=0)  # before its schema is dropped


def fan_in(width: int, text: str = "x") -> pb.Plan:
    """`width` echo steps feeding one sink (whose output carries all of theirs)."""
    plan = pb.Plan()
    for i in range(width):
        plan.steps.add(step_id=f"s{i}", arm_type="echo").input.update({"text": text})
    plan.steps.add(step_id="sink", arm_type="echo", depends_on=[f"s{i}" for i in range(width)])
    return plan


async def finished_task(stub: Any, plan: pb.Plan) -> pb.Task:
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    events = await collect(stub, task.task_id)
    assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    return task


async def test_basic_leaves_outputs_out_and_full_keeps_them(stub: Any) -> None:
    task = await finished_task(stub, fan_in(3))
    full = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert (
        full == (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id, view=views.FULL))).task
    )
    assert set(full.result.outputs.fields) == {"s0", "s1", "s2", "sink"}
    assert all(s.HasField("output") for s in full.subtasks)
    basic = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id, view=views.BASIC))).task
    assert not basic.result.HasField("outputs")
    assert not any(s.HasField("output") for s in basic.subtasks)
    # Everything else is the same task.
    for sub in full.subtasks:
        sub.ClearField("output")
    full.result.ClearField("outputs")
    assert basic == full
    assert basic.result.answer
    assert basic.subtasks[0].provenance.arm_id


async def test_list_is_basic_unless_full_is_asked_for(stub: Any) -> None:
    task = await finished_task(stub, fan_in(2))
    listed = (await stub.ListTasks(pb.ListTasksRequest())).tasks
    assert [t.task_id for t in listed] == [task.task_id]
    assert not listed[0].result.HasField("outputs")
    full = (await stub.ListTasks(pb.ListTasksRequest(view=views.FULL))).tasks
    assert set(full[0].result.outputs.fields) == {"s0", "s1", "sink"}


async def test_watch_basic_sends_events_without_outputs(stub: Any) -> None:
    task = await finished_task(stub, fan_in(2))
    full = await collect(stub, task.task_id)
    request = pb.WatchTaskRequest(task_id=task.task_id, view=views.BASIC, max_batch_size=10)
    basic = [e async for r in stub.WatchTask(request) for e in r.events]
    assert [e.seq for e in basic] == [e.seq for e in full]
    assert not any(e.subtask_changed.subtask.HasField("output") for e in basic)
    assert not basic[-1].finished.result.HasField("outputs")
    assert basic[-1].finished.result.answer == full[-1].finished.result.answer


async def test_unknown_view_is_invalid_argument(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTask(
            pb.GetTaskRequest(task_id="00000000-0000-4000-8000-000000000000", view=7)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("UNKNOWN_TASK_VIEW", "view")


async def test_reads_too_large_for_one_response_say_so(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a lowered response budget: GetTask FULL is TASK_TOO_LARGE, ListTasks FULL pages
    early, WatchTask FULL stops at the first event too large (EVENT_TOO_LARGE, its seq)."""
    small = await finished_task(stub, fan_in(1))
    big = await finished_task(stub, fan_in(8, text="y" * 400))
    budget = (await stub.GetTask(pb.GetTaskRequest(task_id=small.task_id))).task.ByteSize() + 100
    monkeypatch.setattr(views, "RESPONSE_BUDGET_BYTES", budget)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTask(pb.GetTaskRequest(task_id=big.task_id))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "TASK_TOO_LARGE"
    assert int(info.metadata["size_bytes"]) > int(info.metadata["limit_bytes"]) == budget
    assert "TASK_VIEW_BASIC" in caught.value.details()
    basic = await stub.GetTask(pb.GetTaskRequest(task_id=big.task_id, view=views.BASIC))
    assert basic.task.state == pb.TASK_STATE_SUCCEEDED

    # Newest first: the big task does not fit at all, so a FULL list refuses it...
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTasks(pb.ListTasksRequest(view=views.FULL))
    assert error_info(caught.value).reason == "TASK_TOO_LARGE"
    # ...and a FULL page that starts after it holds the small one.
    page = await stub.ListTasks(pb.ListTasksRequest(view=views.BASIC, page_size=1))
    rest = await stub.ListTasks(
        pb.ListTasksRequest(view=views.FULL, page_token=page.next_page_token)
    )
    assert [t.task_id for t in rest.tasks] == [small.task_id]

    seen: list[pb.TaskEvent] = []

    async def watch_full() -> None:
        async for response in stub.WatchTask(pb.WatchTaskRequest(task_id=big.task_id)):
            seen.append(response.event)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch_full()
    info = error_info(caught.value)
    assert (caught.value.code(), info.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "EVENT_TOO_LARGE",
    )
    assert int(info.metadata["seq"]) == seen[-1].seq + 1
    resumed = pb.WatchTaskRequest(task_id=big.task_id, after_seq=seen[-1].seq, view=views.BASIC)
    rest_events = [r.event async for r in stub.WatchTask(resumed)]
    assert rest_events[0].seq == seen[-1].seq + 1
    assert rest_events[-1].finished.state == pb.TASK_STATE_SUCCEEDED


async def test_a_page_ends_early_where_the_next_full_task_would_not_fit(
    stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await finished_task(stub, fan_in(1))
    second = await finished_task(stub, fan_in(1))
    size = (await stub.GetTask(pb.GetTaskRequest(task_id=first.task_id))).task.ByteSize()
    monkeypatch.setattr(views, "RESPONSE_BUDGET_BYTES", size + size // 2)
    page = await stub.ListTasks(pb.ListTasksRequest(view=views.FULL, page_size=10))
    assert [t.task_id for t in page.tasks] == [second.task_id]
    assert page.tasks[0].result.HasField("outputs")
    after = await stub.ListTasks(
        pb.ListTasksRequest(view=views.FULL, page_size=10, page_token=page.next_page_token)
    )
    assert ([t.task_id for t in after.tasks], after.next_page_token) == ([first.task_id], "")
