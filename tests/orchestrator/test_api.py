"""OrchestratorService end to end: a real orchestrator, real arms, a real client channel."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from tests.role_arms import scribe

GOAL = "Summarise the design of the dispatch stream"


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail a failed call carried."""
    raw = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def collect(
    stub: pb_grpc.OrchestratorServiceStub, task_id: str, after_seq: int = 0
) -> list[pb.TaskEvent]:
    call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id, after_seq=after_seq), timeout=20)
    return [r.event async for r in call]


@pytest.fixture
async def mesh(start_arm, start_orchestrator, connect):  # type: ignore[no-untyped-def]
    """An orchestrator with an echo, a sleep and a scribe arm (the roles of a general plan),
    and a client stub."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    sleep = await start_arm(REFERENCE_ARMS["sleep"]())
    roles = await start_arm(scribe())
    orch = await start_orchestrator(
        [echo.address, sleep.address, roles.address], wait_for=("echo", "sleep", "scribe")
    )
    return orch, connect(orch.address)


def dag_plan() -> pb.Plan:
    plan = pb.Plan()
    for step_id, arm, deps in (
        ("a", "echo", ()),
        ("b", "sleep", ("a",)),
        ("c", "echo", ("a", "b")),
    ):
        step = plan.steps.add(step_id=step_id, arm_type=arm, depends_on=deps, description=step_id)
        step.input.update({"seconds": 0.05, "name": step_id})
    return plan


async def test_submit_runs_a_brain_plan_to_its_end(mesh: Any) -> None:
    """A goal without a plan is parsed and planned by the (offline) brain and run on the arms;
    echo's copy of the goal and the plan is no answer, so the task fails validation."""
    _, stub = mesh
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL))).task
    assert task.state == pb.TASK_STATE_PENDING
    events = await collect(stub, task.task_id)
    assert events[-1].finished.state == pb.TASK_STATE_FAILED
    got = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert got.failure.reason == "VALIDATION_FAILED"
    assert "restates the goal or the plan" in got.failure.message
    assert 3 <= len(got.subtasks) <= 7
    assert {s.state for s in got.subtasks} == {pb.SUBTASK_STATE_SUCCEEDED}
    assert GOAL in got.result.answer
    assert not got.result.validation.passed
    # NOTE: echo stands in for no role: the arm declaring them runs every step.
    assert all(s.provenance.arm_id.startswith("scribe-") for s in got.subtasks)
    states = [e.state_changed.to_state for e in events if e.HasField("state_changed")]
    assert states[:3] == [pb.TASK_STATE_PARSING, pb.TASK_STATE_PLANNING, pb.TASK_STATE_EXECUTING]


async def test_explicit_dag_passes_dependency_outputs(mesh: Any) -> None:
    """Each step sees the outputs of the steps it depends on under input.dependencies."""
    _, stub = mesh
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=dag_plan()))).task
    events = await collect(stub, task.task_id)
    assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    outputs = json_format.MessageToDict(events[-1].finished.result.outputs)
    deps = outputs["c"]["echo"]["dependencies"]
    assert set(deps) == {"a", "b"}
    assert deps["b"] == {"slept": 0.05}
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    progress = [e for e in events if e.HasField("subtask_progress")]
    assert progress
    assert all(p.subtask_progress.step_id == "b" for p in progress)


async def test_watch_replays_after_seq_without_gaps_or_duplicates(mesh: Any) -> None:
    """Reconnecting with after_seq yields exactly the events after it."""
    _, stub = mesh
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=dag_plan()))).task
    full = await collect(stub, task.task_id)
    middle = full[len(full) // 2].seq
    rest = await collect(stub, task.task_id, after_seq=middle)
    assert [e.seq for e in rest] == [e.seq for e in full if e.seq > middle]
    assert rest == full[middle:]
    assert await collect(stub, task.task_id, after_seq=full[-1].seq) == []


async def test_watch_in_batches_carries_the_same_log_in_fewer_messages(mesh: Any) -> None:
    """max_batch_size: responses carry `events` (never `event`), together the whole log."""
    _, stub = mesh
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=dag_plan()))).task
    full = await collect(stub, task.task_id)
    request = pb.WatchTaskRequest(task_id=task.task_id, max_batch_size=4)
    responses = [r async for r in stub.WatchTask(request, timeout=30)]
    assert all(not r.HasField("event") and 1 <= len(r.events) <= 4 for r in responses)
    assert [e for r in responses for e in r.events] == full
    assert len(responses) < len(full)


async def test_list_tasks_pages_newest_first_and_filters(mesh: Any) -> None:
    """ListTasks pages with tokens and filters by state."""
    _, stub = mesh
    ids = []
    for i in range(5):
        task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=f"{GOAL} number {i}"))).task
        ids.append(task.task_id)
        await collect(stub, task.task_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListTasks(pb.ListTasksRequest(page_size=2, page_token=token))
        seen += [t.task_id for t in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids[::-1]
    running = await stub.ListTasks(pb.ListTasksRequest(states=[pb.TASK_STATE_EXECUTING]))
    assert list(running.tasks) == []


async def test_submit_is_idempotent_by_request_id(mesh: Any) -> None:
    """Same request_id and body returns the same task; a different body is ALREADY_EXISTS."""
    _, stub = mesh
    req = pb.SubmitTaskRequest(goal=GOAL, request_id="client-42")
    first = (await stub.SubmitTask(req)).task
    again = (await stub.SubmitTask(req)).task
    assert again.task_id == first.task_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal=GOAL + " (changed)", request_id="client-42")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_info(err.value).reason == "REQUEST_ID_REUSED"


async def test_cancel_reaches_the_arm_handler(start_arm, start_orchestrator, connect) -> None:  # type: ignore[no-untyped-def]
    """CancelTask cancels the running handler at the arm and ends the task CANCELLED."""
    started, cancelled = asyncio.Event(), asyncio.Event()
    arm = Arm(arm_type="slow", description="waits until cancelled")

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("slow",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="wait", arm_type="slow")
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL, plan=plan))).task
    await asyncio.wait_for(started.wait(), 10)
    resp = await stub.CancelTask(
        pb.CancelTaskRequest(task_id=task.task_id, reason="user changed mind")
    )
    assert resp.task.state == pb.TASK_STATE_CANCELLED
    assert resp.task.failure.message == "user changed mind"
    await asyncio.wait_for(cancelled.wait(), 10)
    assert resp.task.subtasks[0].state == pb.SUBTASK_STATE_CANCELLED
    again = await stub.CancelTask(pb.CancelTaskRequest(task_id=task.task_id))
    assert again.task.state == pb.TASK_STATE_CANCELLED


async def test_list_arms_and_get_arm(mesh: Any) -> None:
    """ListArms shows every arm with health and credits; GetArm finds one by id."""
    _, stub = mesh
    arms = (await stub.ListArms(pb.ListArmsRequest())).arms
    assert [a.descriptor.arm_type for a in arms] == ["echo", "scribe", "sleep"]
    assert all(a.health == pb.ARM_HEALTH_SERVING and a.credits > 0 for a in arms)
    only = (await stub.ListArms(pb.ListArmsRequest(arm_type="sleep"))).arms
    assert [a.descriptor.arm_type for a in only] == ["sleep"]
    one = (await stub.GetArm(pb.GetArmRequest(arm_id=arms[0].descriptor.arm_id))).arm
    assert one.address == arms[0].address


@pytest.mark.parametrize(
    ("request_", "code", "reason", "field"),
    [
        (pb.SubmitTaskRequest(goal="too short"), "INVALID_ARGUMENT", "GOAL_TOO_SHORT", "goal"),
        (pb.SubmitTaskRequest(goal="x" * 2001), "INVALID_ARGUMENT", "GOAL_TOO_LONG", "goal"),
        (
            pb.SubmitTaskRequest(goal=GOAL, constraints=["c"] * 21),
            "INVALID_ARGUMENT",
            "TOO_MANY_CONSTRAINTS",
            "constraints",
        ),
        (
            pb.SubmitTaskRequest(goal=GOAL, budget={"max_tokens": -1}),
            "INVALID_ARGUMENT",
            "NEGATIVE_BUDGET",
            "budget.max_tokens",
        ),
        (
            pb.SubmitTaskRequest(
                goal=GOAL,
                plan={
                    "steps": [
                        {"step_id": "a", "arm_type": "echo", "depends_on": ["b"]},
                        {"step_id": "b", "arm_type": "echo", "depends_on": ["a"]},
                    ]
                },
            ),
            "INVALID_ARGUMENT",
            "PLAN_CYCLE",
            None,
        ),
        (
            pb.SubmitTaskRequest(
                goal=GOAL,
                plan={"steps": [{"step_id": "a", "arm_type": "echo", "depends_on": ["z"]}]},
            ),
            "INVALID_ARGUMENT",
            "UNKNOWN_DEPENDENCY",
            None,
        ),
        (
            pb.SubmitTaskRequest(
                goal=GOAL, plan={"steps": [{"step_id": "a", "arm_type": "wizard"}]}
            ),
            "FAILED_PRECONDITION",
            "NO_ARM_FOR_TYPE",
            "plan.steps[0].arm_type",
        ),
    ],
)
async def test_bad_submit_gets_precise_status(mesh: Any, request_, code, reason, field) -> None:  # type: ignore[no-untyped-def]
    """Each bad SubmitTask gets its status code and an ErrorInfo reason naming the field."""
    _, stub = mesh
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitTask(request_)
    assert err.value.code().name == code
    info = error_info(err.value)
    assert info.reason == reason
    assert info.domain == "octollm.v1"
    if field is not None:
        assert info.metadata["field"] == field
    assert err.value.details()


@pytest.mark.parametrize(
    ("call", "code", "reason"),
    [
        ("GetTask", "NOT_FOUND", "TASK_NOT_FOUND"),
        ("CancelTask", "NOT_FOUND", "TASK_NOT_FOUND"),
        ("WatchTask", "NOT_FOUND", "TASK_NOT_FOUND"),
        ("GetTask:malformed", "INVALID_ARGUMENT", "MALFORMED_TASK_ID"),
        ("GetTask:empty", "INVALID_ARGUMENT", "MISSING_TASK_ID"),
        ("GetArm", "NOT_FOUND", "ARM_NOT_FOUND"),
        ("ListTasks", "INVALID_ARGUMENT", "INVALID_PAGE_TOKEN"),
    ],
)
async def test_unknown_and_malformed_ids(mesh: Any, call: str, code: str, reason: str) -> None:
    """Unknown ids are NOT_FOUND, malformed ones INVALID_ARGUMENT, each with ErrorInfo."""
    _, stub = mesh
    unknown = "0b0c7a4e-5d53-4a43-9bbd-4f7c1c8f2a11"
    calls = {
        "GetTask": lambda: stub.GetTask(pb.GetTaskRequest(task_id=unknown)),
        "CancelTask": lambda: stub.CancelTask(pb.CancelTaskRequest(task_id=unknown)),
        "WatchTask": lambda: collect(stub, unknown),
        "GetTask:malformed": lambda: stub.GetTask(pb.GetTaskRequest(task_id="not-a-uuid")),
        "GetTask:empty": lambda: stub.GetTask(pb.GetTaskRequest()),
        "GetArm": lambda: stub.GetArm(pb.GetArmRequest(arm_id="nobody-1")),
        "ListTasks": lambda: stub.ListTasks(pb.ListTasksRequest(page_token="garbage!")),
    }
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await calls[call]()
    assert err.value.code().name == code
    assert error_info(err.value).reason == reason
