"""The echo and sleep reference arms, served for real."""

from __future__ import annotations

import grpc
import pytest
from octollm.v1 import arm_service_pb2 as arm_pb

from orchestrator_svc.arms import REFERENCE_ARMS, sleep
from tests.arm_sdk.arm_stream import OpenStream, Serve, kinds, output_of


def test_registry_builds_fresh_arms_by_name() -> None:
    """REFERENCE_ARMS maps names to factories; each call builds a new arm with its own id."""
    assert set(REFERENCE_ARMS) >= {"echo", "sleep"}
    first, second = REFERENCE_ARMS["echo"](), REFERENCE_ARMS["echo"]()
    assert first.arm_type == second.arm_type == "echo"
    assert first.arm_id != second.arm_id


@pytest.mark.parametrize(
    ("name", "capabilities"),
    [("echo", ("echo", "general")), ("sleep", ("sleep", "test"))],
)
def test_reference_arm_descriptors(name: str, capabilities: tuple[str, ...]) -> None:
    """Reference arms declare their type, capabilities, low cost and 64 concurrency."""
    descriptor = REFERENCE_ARMS[name]().descriptor()
    assert descriptor.arm_type == name
    assert tuple(descriptor.capabilities) == capabilities
    assert descriptor.max_concurrency == 64
    assert descriptor.cost_tier == arm_pb.COST_TIER_LOW
    assert descriptor.description


async def test_echo_returns_input_and_description(serve: Serve, open_stream: OpenStream) -> None:
    """The echo arm answers {"echo": input, "description": description} at once: no Accepted,
    and no Credit for one slot out of 64."""
    stream = await open_stream(await serve(REFERENCE_ARMS["echo"]()))
    await stream.dispatch("e1", {"text": "hello", "tags": ["a", "b"]}, description="say it back")
    result, before = await stream.recv_until("result")
    assert before == []
    assert await stream.round_trip() == []
    assert output_of(result) == {
        "echo": {"text": "hello", "tags": ["a", "b"]},
        "description": "say it back",
    }


async def test_sleep_reports_progress_then_result(serve: Serve, open_stream: OpenStream) -> None:
    """The sleep arm reports ten increasing progress steps, then {"slept": seconds}."""
    stream = await open_stream(await serve(REFERENCE_ARMS["sleep"]()))
    await stream.dispatch("z1", {"seconds": 0.05})
    result, before = await stream.recv_until("result")
    assert kinds(before) == ["accepted"] + ["progress"] * 10
    fractions = [m.progress.fraction for m in before[1:]]
    assert fractions == pytest.approx([step / 10 for step in range(1, 11)])
    assert all(m.progress.subtask_id == "z1" and m.progress.message for m in before[1:])
    assert output_of(result) == {"slept": 0.05}


@pytest.mark.parametrize(
    ("fail", "code", "reason", "retryable"),
    [
        ("transient", grpc.StatusCode.UNAVAILABLE, "SIMULATED_TRANSIENT", True),
        ("fatal", grpc.StatusCode.INVALID_ARGUMENT, "SIMULATED_FATAL", False),
    ],
)
async def test_sleep_simulates_failures(
    serve: Serve,
    open_stream: OpenStream,
    fail: str,
    code: grpc.StatusCode,
    reason: str,
    retryable: bool,
) -> None:
    """input.fail makes the sleep arm fail as a transient or a fatal error."""
    stream = await open_stream(await serve(REFERENCE_ARMS["sleep"]()))
    await stream.dispatch("f", {"seconds": 0, "fail": fail})
    failure, _ = await stream.recv_until("failure")
    f = failure.failure.failure
    assert (f.code, f.reason, f.retryable) == (code.value[0], reason, retryable)


@pytest.mark.parametrize("seconds", ["soon", -1, True, None])
async def test_sleep_rejects_bad_seconds(
    serve: Serve, open_stream: OpenStream, seconds: object
) -> None:
    """A seconds value that is not a non-negative number is INVALID_ARGUMENT/BAD_INPUT."""
    stream = await open_stream(await serve(REFERENCE_ARMS["sleep"]()))
    await stream.dispatch("b", {"seconds": seconds})
    failure, _ = await stream.recv_until("failure")
    f = failure.failure.failure
    assert (f.code, f.reason, f.retryable) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "BAD_INPUT",
        False,
    )
    assert dict(f.metadata) == {"field": "seconds"}


async def test_sleep_honours_cancel(serve: Serve, open_stream: OpenStream) -> None:
    """A long sleep stops promptly on Cancel and answers CANCELLED."""
    stream = await open_stream(await serve(REFERENCE_ARMS["sleep"]()))
    await stream.dispatch("long", {"seconds": 3600})
    await stream.recv_until("accepted")
    await stream.cancel("long")
    failure, _ = await stream.recv_until("failure")
    assert failure.failure.failure.reason == "CANCELLED"


def test_sleep_caps_seconds_at_an_hour() -> None:
    """Sleep requests above 3600 s are capped rather than refused."""
    assert sleep._seconds(1e9) == sleep.MAX_SECONDS == 3600.0
    assert sleep._seconds("2.5") == 2.5
