"""Arbitrary bytes as request bodies to every RPC of the orchestrator and of an arm_sdk arm.

What the servers answer, exactly:

- OrchestratorService, a body that does not parse as the request message (corrupt, bad UTF-8,
  nested past protobuf's 100 levels): INVALID_ARGUMENT / MALFORMED_REQUEST with ErrorInfo
  (grpc.aio alone would say UNKNOWN "Unexpected <class 'DecodeError'>": see
  orchestrator_svc/api/malformed.py). A body that parses: what that request deserves, OK or a
  client error with ErrorInfo.
- ArmService/DescribeArm (arm_sdk has no such interceptor): grpc.aio's own UNKNOWN with
  "Unexpected <class 'google.protobuf.message.DecodeError'>" for an unparsable body, else OK.
- ArmService/Execute: Hello first, and the stream ends OK: the arm closes a stream whose next
  message does not parse, as it does when the orchestrator finishes writing.

Every call has a deadline (a hang would be DEADLINE_EXCEEDED, which is never accepted) and a
health Check passes after every example.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.internal import encoder
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import event, example, given
from hypothesis import strategies as st
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import orchestrator_service_pb2 as pb

from tests.chaos.history import assert_consistent_history, finished_history
from tests.fuzz.fuzzing import FuzzMesh, answer, error_info, fuzz_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALL_TIMEOUT_S = 15.0
SERVICE = pb.DESCRIPTOR.services_by_name["OrchestratorService"]
METHODS = {m.name: m for m in SERVICE.methods}
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
GRPC_DECODE_ERROR = "Unexpected <class 'google.protobuf.message.DecodeError'>"
GOAL = "Fuzz the wire format of every RPC"
KNOWN_TASK = "6f1c1e1a-0000-4000-8000-000000000001"


def request_class(method: str) -> type[Message]:
    return message_factory.GetMessageClass(METHODS[method].input_type)  # type: ignore[no-any-return]


def parses(message_class: type[Message], body: bytes) -> bool:
    try:
        message_class.FromString(body)
    except DecodeError:
        return False
    return True


def seeds() -> dict[str, list[bytes]]:
    """Valid bodies of every OrchestratorService request, to mutate."""
    plan = pb.Plan()
    plan.steps.add(step_id="a", arm_type="echo").input.update({"n": 1})
    plan.steps.add(step_id="b", arm_type="sleep", depends_on=["a"]).input.update({"seconds": 0})
    requests: dict[str, list[Message]] = {
        "SubmitTask": [
            pb.SubmitTaskRequest(goal=GOAL),
            pb.SubmitTaskRequest(goal=GOAL, plan=plan, constraints=["short"], priority=2),
        ],
        "GetTask": [pb.GetTaskRequest(task_id=KNOWN_TASK)],
        "ListTasks": [pb.ListTasksRequest(page_size=3, states=[pb.TASK_STATE_SUCCEEDED])],
        "CancelTask": [pb.CancelTaskRequest(task_id=KNOWN_TASK, reason="fuzz")],
        "WatchTask": [pb.WatchTaskRequest(task_id=KNOWN_TASK, after_seq=2)],
        "ListArms": [pb.ListArmsRequest(arm_type="echo")],
        "GetArm": [pb.GetArmRequest(arm_id="echo-1")],
    }
    assert set(requests) == set(METHODS), "a new RPC needs seeds here"
    return {name: [r.SerializeToString() for r in rs] for name, rs in requests.items()}


SEEDS = seeds()


@st.composite
def mutations(draw: Any, originals: Sequence[bytes]) -> bytes:
    """A valid body with a few bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif not data:
            continue
        elif op == "flip":
            data[min(at, len(data) - 1)] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


def bodies(originals: Sequence[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=512), mutations(originals), st.binary(max_size=65_536))


def length_delimited(field: int, payload: bytes) -> bytes:
    """One protobuf field of wire type 2 (bytes, string, message)."""
    out: list[bytes] = []
    encoder._EncodeVarint(out.append, len(payload))
    return encoder.TagBytes(field, 2) + b"".join(out) + payload


def nested_struct(depth: int) -> bytes:
    """A Struct {"k": {"k": ... {}}} `depth` objects deep, encoded by hand (Python would refuse
    to build one deeper than the parser allows)."""
    struct = b""
    for _ in range(depth - 1):
        value = length_delimited(5, struct)  # Value.struct_value
        entry = length_delimited(1, b"k") + length_delimited(2, value)  # map entry key, value
        struct = length_delimited(1, entry)  # Struct.fields
    return struct


def deep_submit(depth: int) -> bytes:
    context = pb.SubmitTaskRequest.DESCRIPTOR.fields_by_name["context"].number
    return pb.SubmitTaskRequest(goal=GOAL).SerializeToString() + length_delimited(
        context, nested_struct(depth)
    )


async def assert_serving(channel: grpc.aio.Channel, service: str = "") -> None:
    """A health Check on `channel` says SERVING."""
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def call_raw(mesh: FuzzMesh, method: str, body: bytes) -> list[bytes] | grpc.aio.AioRpcError:
    """Send `body` as the request of OrchestratorService/`method`; raw response messages."""
    path = f"/{SERVICE.full_name}/{method}"
    if METHODS[method].server_streaming:
        stream = mesh.channel.unary_stream(path)(body, timeout=CALL_TIMEOUT_S)

        async def drain() -> list[bytes]:
            return [r async for r in stream]

        return await answer(drain())
    reply = await answer(mesh.channel.unary_unary(path)(body, timeout=CALL_TIMEOUT_S))
    return reply if isinstance(reply, grpc.aio.AioRpcError) else [reply]


@fuzz_settings(200)
@given(data=st.data(), method=st.sampled_from(sorted(METHODS)))
@example(data=None, method="SubmitTask")
async def test_raw_bytes_to_the_orchestrator_get_proper_statuses(
    fuzz_mesh: FuzzMesh, data: Any, method: str
) -> None:
    """Any body to any RPC: MALFORMED_REQUEST if unparsable, else OK or a client error."""
    body = deep_submit(35) if data is None else data.draw(bodies(SEEDS[method]), label="body")
    message_class = request_class(method)
    replies = await call_raw(fuzz_mesh, method, body)
    if isinstance(replies, grpc.aio.AioRpcError):
        code = replies.code()
        assert code in CLIENT_ERRORS, f"{code.name}: {replies.details()}"
        info = error_info(replies)
        event(f"{method}: {code.name}/{info.reason}")
        assert (info.reason == "MALFORMED_REQUEST") == (not parses(message_class, body))
    else:
        event(f"{method}: OK")
        assert parses(message_class, body)
        if method == "SubmitTask":
            task = pb.SubmitTaskResponse.FromString(replies[0]).task
            events, done = await finished_history(fuzz_mesh.stub, task.task_id)
            assert_consistent_history(events, done)
    await assert_serving(fuzz_mesh.channel)


@pytest.mark.parametrize(
    ("depth", "reason"),
    [(35, "MALFORMED_REQUEST"), (34, "TOO_DEEP"), (21, "TOO_DEEP"), (20, None)],
)
async def test_deep_contexts_are_refused_before_they_break_a_reader(
    fuzz_mesh: FuzzMesh, depth: int, reason: str | None
) -> None:
    """35 deep: MALFORMED_REQUEST; 21..34: TOO_DEEP (replies would not parse); 20: runs to its
    end (echo's copy of the goal is no answer, so that end is a failed validation)."""
    reply = await call_raw(fuzz_mesh, "SubmitTask", deep_submit(depth))
    if reason is not None:
        assert isinstance(reply, grpc.aio.AioRpcError), reply
        assert reply.code() == grpc.StatusCode.INVALID_ARGUMENT
        info = error_info(reply)
        assert info.reason == reason
        if reason == "MALFORMED_REQUEST":
            assert info.metadata["message_type"] == "octollm.v1.SubmitTaskRequest"
        else:
            assert info.metadata["field"] == "context"
        return
    assert not isinstance(reply, grpc.aio.AioRpcError), reply
    task = pb.SubmitTaskResponse.FromString(reply[0]).task
    events, done = await finished_history(fuzz_mesh.stub, task.task_id)
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_FAILED
    assert done.failure.reason == "VALIDATION_FAILED"


# -- the arm ------------------------------------------------------------------------------------

ARM_SERVICE = arm_pb.DESCRIPTOR.services_by_name["ArmService"].full_name


def execute_seeds() -> list[bytes]:
    dispatch = arm_pb.Dispatch(subtask_id="raw-1", attempt=1, task_id="t", step_id="s")
    dispatch.input.update({"x": [1, "two", {"three": None}]})
    dispatch.timeout.FromSeconds(5)
    return [
        arm_pb.ExecuteRequest(dispatch=dispatch).SerializeToString(),
        arm_pb.ExecuteRequest(cancel=arm_pb.Cancel(subtask_id="raw-1")).SerializeToString(),
        arm_pb.ExecuteRequest(ping=arm_pb.Ping(nonce=7)).SerializeToString(),
    ]


EXECUTE_SEEDS = execute_seeds()


@fuzz_settings(100)
@given(body=bodies([arm_pb.DescribeArmRequest().SerializeToString(), b"\n\x00"]))
async def test_raw_bytes_to_describe_arm(fuzz_mesh: FuzzMesh, body: bytes) -> None:
    """DescribeArm: OK with the descriptor if the body parses, else grpc.aio's own UNKNOWN."""
    arm = fuzz_mesh.arms["echo"]
    async with grpc.aio.insecure_channel(arm.address) as channel:
        describe = channel.unary_unary(f"/{ARM_SERVICE}/DescribeArm")
        reply = await answer(describe(body, timeout=CALL_TIMEOUT_S))
        if isinstance(reply, grpc.aio.AioRpcError):
            assert reply.code() == grpc.StatusCode.UNKNOWN, reply
            assert (reply.details() or "").startswith(GRPC_DECODE_ERROR), reply.details()
            assert not parses(arm_pb.DescribeArmRequest, body)
        else:
            assert parses(arm_pb.DescribeArmRequest, body)
            described = arm_pb.DescribeArmResponse.FromString(reply)
            assert described.descriptor.arm_id == arm.arm_id
        await assert_serving(channel)


@fuzz_settings(100)
@given(frames=st.lists(bodies(EXECUTE_SEEDS), min_size=1, max_size=5))
async def test_raw_frames_to_execute_end_the_stream_cleanly(
    fuzz_mesh: FuzzMesh, frames: list[bytes]
) -> None:
    """Execute with any frames: Hello, parsable replies, status OK; the arm serves on."""
    arm = fuzz_mesh.arms["echo"]
    async with grpc.aio.insecure_channel(arm.address) as channel:
        call = channel.stream_stream(f"/{ARM_SERVICE}/Execute")(timeout=CALL_TIMEOUT_S)

        async def exchange() -> list[bytes]:
            for frame in frames:
                # NOTE: once the arm has closed the stream (after a frame it cannot parse), the
                # client's own write fails; the call's status is still the arm's.
                if await answer(call.write(frame)) is not None:
                    break
            else:
                await call.done_writing()
            return [r async for r in call]

        replies = await answer(exchange())
        assert not isinstance(replies, grpc.aio.AioRpcError), replies
        assert await call.code() == grpc.StatusCode.OK
        responses = [arm_pb.ExecuteResponse.FromString(r) for r in replies]
        assert responses[0].HasField("hello")
        event(f"{sum(parses(arm_pb.ExecuteRequest, f) for f in frames)} of {len(frames)} parse")
        await assert_serving(channel)
    # The orchestrator's own stream to the arm is untouched: work still gets done.
    dispatch = arm_pb.Dispatch(subtask_id=f"after-{uuid.uuid4()}", attempt=1)
    outcome = await fuzz_mesh.orchestrator.mesh.execute("echo", dispatch, timeout_s=10)
    assert outcome.result is not None, outcome


async def test_dispatch_the_arm_cannot_read_fails_only_that_subtask(fuzz_mesh: FuzzMesh) -> None:
    """A Dispatch holding NaN fails BAD_DISPATCH; the same stream runs the next one."""
    arm = fuzz_mesh.arms["echo"]
    poison = arm_pb.Dispatch(subtask_id="poison", attempt=1)
    poison.input.update({"x": math.nan})
    fine = arm_pb.Dispatch(subtask_id="fine", attempt=1)
    async with grpc.aio.insecure_channel(arm.address) as channel:
        call = channel.stream_stream(
            f"/{ARM_SERVICE}/Execute",
            request_serializer=arm_pb.ExecuteRequest.SerializeToString,
            response_deserializer=arm_pb.ExecuteResponse.FromString,
        )(timeout=CALL_TIMEOUT_S)
        hello = await call.read()
        assert hello.HasField("hello")
        await call.write(arm_pb.ExecuteRequest(dispatch=poison))
        await call.write(arm_pb.ExecuteRequest(dispatch=fine))
        outcomes: dict[str, arm_pb.ExecuteResponse] = {}
        while len(outcomes) < 2:
            response = await call.read()
            assert response is not grpc.aio.EOF, "the arm ended the stream"
            kind = response.WhichOneof("kind")
            if kind == "failure":
                outcomes[response.failure.subtask_id] = response
            elif kind == "result":
                outcomes[response.result.subtask_id] = response
        await call.done_writing()
    failure = outcomes["poison"].failure.failure
    assert (failure.reason, failure.retryable) == ("BAD_DISPATCH", False)
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert outcomes["fine"].HasField("result")
