"""Test-side driver for one Execute stream: a hand-operated orchestrator end."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import json_format
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc

from arm_sdk import Arm, ArmServer, SubtaskInput, SubtaskOutput

# NOTE: a hang guard, not a speed target.
HANG_GUARD_S = 10.0

# Signatures of the conftest fixtures, for annotating tests.
Serve = Callable[[Arm], Awaitable[ArmServer]]
Connect = Callable[[ArmServer], grpc.aio.Channel]
OpenStream = Callable[[ArmServer], Awaitable["ArmStream"]]


def make_arm(
    handler: Callable[[SubtaskInput], Awaitable[SubtaskOutput | dict[str, Any]]],
    **kwargs: Any,
) -> Arm:
    """An Arm with the given handler; keyword arguments go to Arm()."""
    kwargs.setdefault("arm_type", "test")
    arm = Arm(**kwargs)
    arm.handler(handler)
    return arm


def dispatch_request(
    subtask_id: str,
    payload: Mapping[str, Any] | None = None,
    *,
    attempt: int = 1,
    timeout: float | None = None,
    **fields: Any,
) -> arm_pb.ExecuteRequest:
    """An ExecuteRequest carrying one Dispatch."""
    request = arm_pb.ExecuteRequest()
    dispatch = request.dispatch
    dispatch.subtask_id = subtask_id
    dispatch.attempt = attempt
    dispatch.input.update(dict(payload or {}))
    if timeout is not None:
        dispatch.timeout.FromNanoseconds(int(timeout * 1e9))
    for name, value in fields.items():
        if name == "context":
            dispatch.context.update(value)
        elif name == "acceptance_criteria":
            dispatch.acceptance_criteria.extend(value)
        elif name == "budget":
            dispatch.budget.CopyFrom(value)
        else:
            setattr(dispatch, name, value)
    return request


class ArmStream:
    """The orchestrator end of one Execute stream, driven by hand."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = arm_grpc.ArmServiceStub(channel).Execute()

    async def recv(self) -> arm_pb.ExecuteResponse:
        """The next message; fails if the stream ended."""
        message = await asyncio.wait_for(self.call.read(), HANG_GUARD_S)
        assert message is not grpc.aio.EOF, "stream ended"
        assert isinstance(message, arm_pb.ExecuteResponse)
        return message

    async def recv_until(
        self, kind: str, subtask_id: str | None = None
    ) -> tuple[arm_pb.ExecuteResponse, list[arm_pb.ExecuteResponse]]:
        """Read until a message of ``kind`` (for ``subtask_id``); return it and those before."""
        seen: list[arm_pb.ExecuteResponse] = []
        while True:
            message = await self.recv()
            if message.WhichOneof("kind") == kind and (
                subtask_id is None or getattr(message, kind).subtask_id == subtask_id
            ):
                return message, seen
            seen.append(message)

    async def recv_end(self) -> list[arm_pb.ExecuteResponse]:
        """Read until the arm ends the stream; return what came before the end."""
        seen: list[arm_pb.ExecuteResponse] = []
        while True:
            message = await asyncio.wait_for(self.call.read(), HANG_GUARD_S)
            if message is grpc.aio.EOF:
                return seen
            assert isinstance(message, arm_pb.ExecuteResponse)
            seen.append(message)

    async def handshake(self) -> tuple[arm_pb.Hello, arm_pb.Credit]:
        """Read the Hello and initial Credit the arm sends on every stream."""
        hello = await self.recv()
        credit = await self.recv()
        assert hello.WhichOneof("kind") == "hello", hello
        assert credit.WhichOneof("kind") == "credit", credit
        return hello.hello, credit.credit

    async def send(self, request: arm_pb.ExecuteRequest) -> None:
        """Write one request."""
        await asyncio.wait_for(self.call.write(request), HANG_GUARD_S)

    async def dispatch(
        self, subtask_id: str, payload: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """Send one Dispatch."""
        await self.send(dispatch_request(subtask_id, payload, **kwargs))

    async def cancel(self, subtask_id: str) -> None:
        """Send a Cancel."""
        await self.send(
            arm_pb.ExecuteRequest(cancel=arm_pb.Cancel(subtask_id=subtask_id, reason="test"))
        )

    async def ping(self, nonce: int) -> arm_pb.Pong:
        """Send a Ping and read up to its Pong."""
        await self.send(arm_pb.ExecuteRequest(ping=arm_pb.Ping(nonce=nonce)))
        message, _ = await self.recv_until("pong")
        return message.pong

    async def round_trip(self, nonce: int = 0) -> list[arm_pb.ExecuteResponse]:
        """Ping and read up to its Pong; return what the arm sent before it.

        The Pong is queued behind everything the arm had queued when the Ping arrived (each
        terminal message with its freed slot), so an empty list shows nothing was pending.
        """
        await self.send(arm_pb.ExecuteRequest(ping=arm_pb.Ping(nonce=nonce)))
        message, before = await self.recv_until("pong")
        assert message.pong.nonce == nonce
        return before


def credit_batching(max_concurrency: int) -> tuple[int, int]:
    """The arm's credit thresholds: (Credit once this many slots are owed, low water).

    Owed credit is sent once a quarter of the window is owed, or, when the arm has nothing
    else to send, as soon as the orchestrator holds less than half of the window.
    """
    return max(1, max_concurrency // 4), max(1, (max_concurrency + 1) // 2)


async def settle_window(stream: ArmStream, window: int, max_concurrency: int) -> int:
    """With every terminal message read and nothing running, read the Credit still coming.

    Returns the orchestrator's final window and checks the batching rules: either the whole
    window is back, or the orchestrator holds at least half of it and less than a batch is owed.
    """
    flush_at, low_water = credit_batching(max_concurrency)
    window += credit_sum(await stream.round_trip(), only=True)
    while window < low_water:
        # Owed credit below low water is flushed once the arm's queue is empty (after the Pong).
        message = await stream.recv()
        assert message.WhichOneof("kind") == "credit", message
        window += message.credit.n
    assert window <= max_concurrency
    assert window == max_concurrency or max_concurrency - window < flush_at, (
        window,
        max_concurrency,
    )
    return window


def credit_sum(messages: list[arm_pb.ExecuteResponse], *, only: bool = False) -> int:
    """Total n of the Credit messages; with ``only``, fail on any other kind of message."""
    if only:
        assert set(kinds(messages)) <= {"credit"}, kinds(messages)
    return sum(m.credit.n for m in messages if m.WhichOneof("kind") == "credit")


def kinds(messages: list[arm_pb.ExecuteResponse]) -> list[str]:
    """The oneof kind of each message."""
    return [str(m.WhichOneof("kind")) for m in messages]


def output_of(message: arm_pb.ExecuteResponse) -> dict[str, Any]:
    """A Result message's output as a dict."""
    return json_format.MessageToDict(message.result.output)
