"""Client-side helpers for the CLI: follow a task's events and print them as progress lines."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import grpc
from google.protobuf import json_format
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc


def _state(value: int) -> str:
    return pb.TaskState.Name(value).removeprefix("TASK_STATE_")  # type: ignore[arg-type]


def _sub_state(value: int) -> str:
    return pb.SubtaskState.Name(value).removeprefix("SUBTASK_STATE_")  # type: ignore[arg-type]


def describe_event(event: pb.TaskEvent) -> str:
    """One human-readable line for a task event."""
    kind = event.WhichOneof("kind")
    head = f"[{event.seq:>3}]"
    if kind == "state_changed":
        change = event.state_changed
        return f"{head} task {_state(change.to_state):<12} {change.reason}"
    if kind == "plan_created":
        steps = ", ".join(
            f"{s.step_id}({s.arm_type}{' <- ' + '+'.join(s.depends_on) if s.depends_on else ''})"
            for s in event.plan_created.plan.steps
        )
        return f"{head} plan {len(event.plan_created.plan.steps)} step(s): {steps}"
    if kind == "subtask_changed":
        sub = event.subtask_changed.subtask
        where = f" on {sub.arm_id}" if sub.arm_id else ""
        attempt = f" attempt {sub.attempt}" if sub.attempt > 1 else ""
        extra = f": {sub.failure.reason} {sub.failure.message}" if sub.HasField("failure") else ""
        return f"{head}   step {sub.step_id:<10} {_sub_state(sub.state)}{where}{attempt}{extra}"
    if kind == "subtask_progress":
        p = event.subtask_progress
        return f"{head}   step {p.step_id:<10} {p.fraction:>4.0%} {p.message}"
    if kind == "finished":
        fin = event.finished
        line = f"{head} task {_state(fin.state)}"
        if fin.HasField("failure"):
            line += f": {fin.failure.reason}: {fin.failure.message}"
        if fin.HasField("result") and fin.result.answer:
            line += f"\n      answer: {fin.result.answer}"
        return line
    return f"{head} {json.dumps(json_format.MessageToDict(event))}"


async def follow(
    stub: pb_grpc.OrchestratorServiceStub,
    task_id: str,
    emit: Callable[[str], None],
    *,
    after_seq: int = 0,
    reconnects: int = 5,
) -> pb.TaskState.ValueType:
    """Print a task's events until it finishes; resume with after_seq if the stream breaks."""
    last = after_seq
    for attempt in range(reconnects + 1):
        try:
            call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id, after_seq=last))
            async for response in call:
                event: pb.TaskEvent = response.event
                last = event.seq
                emit(describe_event(event))
                if event.HasField("finished"):
                    return event.finished.state
            break
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == reconnects:
                raise
            await asyncio.sleep(min(0.2 * 2**attempt, 3.0))
    reply: pb.GetTaskResponse = await stub.GetTask(pb.GetTaskRequest(task_id=task_id))
    return reply.task.state
