"""Client-side helpers for the CLI: follow a task's events and print them as progress lines."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
            result = fin.result
            source = pb.AnswerSource.Name(result.answer_source).removeprefix("ANSWER_SOURCE_")
            checked = (
                f"verified by {result.validation.verified_by}"
                if result.verified
                else ("not verified")
            )
            line += (
                f"\n      written by: {source.lower()}, {checked}, "
                f"confidence {result.confidence:.2f}\n      answer: {result.answer}"
            )
        return line
    return f"{head} {json.dumps(json_format.MessageToDict(event))}"


WATCH_BATCH = 100  # events per WatchTask response: fewer messages for the same log


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
            request = pb.WatchTaskRequest(
                task_id=task_id, after_seq=last, max_batch_size=WATCH_BATCH
            )
            async for response in stub.WatchTask(request):
                event: pb.TaskEvent
                for event in response.events:
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


def _with_token(details: Any, header: tuple[str, str]) -> Any:
    return details._replace(metadata=[*(details.metadata or ()), header])


class _UnaryToken(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to unary calls."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.header), request)


class _StreamToken(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to server-streaming calls (WatchTask).

    NOTE: grpc.aio files an interceptor under the first kind it matches, so each kind needs
    its own object."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.header), request)


def open_channel(address: str) -> grpc.aio.Channel:
    """A channel to an orchestrator, as the environment says: OCTOLLM_CLIENT_TOKEN (bearer token)
    and OCTOLLM_CLIENT_TLS_CA (PEM of the CA to trust; TLS when set)."""
    token = os.environ.get("OCTOLLM_CLIENT_TOKEN", "")
    interceptors: list[Any] | None = [_UnaryToken(token), _StreamToken(token)] if token else None
    ca = os.environ.get("OCTOLLM_CLIENT_TLS_CA", "")
    if ca:
        credentials = grpc.ssl_channel_credentials(Path(ca).read_bytes())
        return grpc.aio.secure_channel(address, credentials, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
