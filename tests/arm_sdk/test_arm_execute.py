"""The Execute stream protocol, driven through a real channel as an orchestrator would."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import structlog
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2

from arm_sdk import ArmError, Budget, SubtaskInput, SubtaskOutput
from tests.arm_sdk.arm_stream import (
    HANG_GUARD_S,
    ArmStream,
    Connect,
    OpenStream,
    Serve,
    kinds,
    make_arm,
    output_of,
    settle_window,
)


async def echo_handler(inp: SubtaskInput) -> SubtaskOutput:
    return SubtaskOutput(output={"echo": inp.input})


async def test_hello_comes_first_then_credit(serve: Serve, connect: Connect) -> None:
    """On stream open the arm sends Hello{descriptor} first, then Credit{max_concurrency}."""
    arm = make_arm(echo_handler, arm_type="echo", max_concurrency=7, capabilities=("echo",))
    server = await serve(arm)
    stream = ArmStream(connect(server))
    first = await stream.recv()
    second = await stream.recv()
    assert first.WhichOneof("kind") == "hello"
    assert first.hello.descriptor == arm.descriptor()
    assert first.hello.descriptor.arm_id == arm.arm_id
    assert second.WhichOneof("kind") == "credit"
    assert second.credit.n == 7


async def test_every_stream_gets_its_own_initial_credit(serve: Serve, connect: Connect) -> None:
    """Each Execute stream to the same arm starts with Hello and the full credit."""
    server = await serve(make_arm(echo_handler, max_concurrency=5))
    channel = connect(server)
    credits = [(await ArmStream(channel).handshake())[1].n for _ in range(3)]
    assert credits == [5, 5, 5]


async def test_dispatch_is_answered_with_result_then_credit(
    serve: Serve, open_stream: OpenStream
) -> None:
    """Dispatch -> Result (output, confidence, provenance) -> Credit{1}; a quick handler gets no
    Accepted."""

    async def handler(inp: SubtaskInput) -> SubtaskOutput:
        return SubtaskOutput(
            output={"echo": inp.input, "n": 2},
            confidence=0.75,
            model="tiny-model",
            tokens=42,
            cost_usd=0.25,
        )

    arm = make_arm(handler, arm_type="echo", max_concurrency=1)
    stream = await open_stream(await serve(arm))
    await stream.dispatch("sub-1", {"text": "hi", "nested": {"list": [1, "two", None]}}, attempt=3)

    result = await stream.recv()
    credit = await stream.recv()

    assert result.WhichOneof("kind") == "result"
    assert result.result.subtask_id == "sub-1"
    assert result.result.attempt == 3
    assert output_of(result) == {
        "echo": {"text": "hi", "nested": {"list": [1, "two", None]}},
        "n": 2,
    }
    assert result.result.confidence == 0.75
    provenance = result.result.provenance
    assert provenance.arm_id == arm.arm_id
    assert provenance.model == "tiny-model"
    assert provenance.usage == common_pb2.Usage(tokens=42, cost_usd=0.25)
    assert provenance.attempt == 3
    assert provenance.duration.ToNanoseconds() >= 0
    assert credit.WhichOneof("kind") == "credit"
    assert credit.credit.n == 1
    assert await stream.round_trip() == []


async def test_dict_return_is_shorthand_for_subtask_output(
    serve: Serve, open_stream: OpenStream
) -> None:
    """A handler returning a plain dict yields a Result with that output and confidence 1.0."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        return {"answer": "forty-two"}

    stream = await open_stream(await serve(make_arm(handler)))
    await stream.dispatch("s")
    result, _ = await stream.recv_until("result")
    assert output_of(result) == {"answer": "forty-two"}
    assert result.result.confidence == 1.0
    assert result.result.provenance.model == ""


async def test_dispatch_fields_reach_the_handler(serve: Serve, open_stream: OpenStream) -> None:
    """Every Dispatch field is mapped onto SubtaskInput, timeout in seconds."""
    seen: list[SubtaskInput] = []

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        seen.append(inp)
        return {}

    stream = await open_stream(await serve(make_arm(handler)))
    await stream.dispatch(
        "sub-9",
        {"q": "what"},
        attempt=2,
        timeout=30.5,
        task_id="task-1",
        step_id="step-a",
        description="answer the question",
        context={"user": "ada"},
        acceptance_criteria=["short", "true"],
        budget=common_pb2.Budget(max_tokens=100, max_cost_usd=0.5),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    await stream.dispatch("sub-10")
    await stream.recv_until("result", "sub-10")
    assert seen[0] == SubtaskInput(
        subtask_id="sub-9",
        attempt=2,
        task_id="task-1",
        step_id="step-a",
        description="answer the question",
        input={"q": "what"},
        context={"user": "ada"},
        acceptance_criteria=("short", "true"),
        timeout=30.5,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        budget=Budget(max_tokens=100, max_cost_usd=0.5),
    )
    assert seen[1].timeout is None
    assert seen[1].input == {}
    assert seen[1].budget == Budget()


async def test_arm_error_becomes_subtask_failure(serve: Serve, open_stream: OpenStream) -> None:
    """ArmError raised by a handler is reported field for field in SubtaskFailure, then Credit."""
    started = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await started.wait()
        raise ArmError(
            "quota gone",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason="QUOTA_EXHAUSTED",
            retryable=True,
            metadata={"provider": "acme", "limit": 10},  # type: ignore[dict-item]
        )

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("s1", attempt=4)
    accepted = await stream.recv()
    assert (accepted.accepted.subtask_id, accepted.accepted.attempt) == ("s1", 4)
    started.set()
    failure = await stream.recv()
    assert failure.WhichOneof("kind") == "failure"
    f = failure.failure
    assert f.subtask_id == "s1"
    assert f.attempt == 4
    assert f.failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f.failure.message == "quota gone"
    assert f.failure.reason == "QUOTA_EXHAUSTED"
    assert f.failure.retryable is True
    assert dict(f.failure.metadata) == {"provider": "acme", "limit": "10"}
    assert f.duration.ToNanoseconds() >= 0
    credit = await stream.recv()
    assert credit.credit.n == 1
    assert await stream.round_trip() == []


async def test_handler_exception_is_internal_and_stream_survives(
    serve: Serve, open_stream: OpenStream
) -> None:
    """An unexpected exception fails only that subtask (INTERNAL/HANDLER_ERROR), logged."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        if inp.input.get("boom"):
            raise ValueError("boom")
        return {"ok": True}

    stream = await open_stream(await serve(make_arm(handler)))
    with structlog.testing.capture_logs() as logs:
        await stream.dispatch("bad", {"boom": True})
        failure, _ = await stream.recv_until("failure")
    f = failure.failure.failure
    assert (f.code, f.reason, f.message, f.retryable) == (
        grpc.StatusCode.INTERNAL.value[0],
        "HANDLER_ERROR",
        "ValueError: boom",
        False,
    )
    [event] = [e for e in logs if e["event"] == "handler_failed"]
    assert event["log_level"] == "error"
    assert event["exc_info"] is True
    assert event["subtask_id"] == "bad"

    await stream.dispatch("good")
    result, _ = await stream.recv_until("result")
    assert output_of(result) == {"ok": True}


@pytest.mark.parametrize(
    ("returned", "message_part"),
    [
        pytest.param("a string", "handler returned str", id="not-a-dict"),
        pytest.param(SubtaskOutput(output={"x": {1, 2}}), "not JSON-shaped", id="not-json"),
        pytest.param(
            SubtaskOutput(output={}, confidence="high"),  # type: ignore[arg-type]
            "not JSON-shaped",
            id="bad-confidence",
        ),
    ],
)
async def test_bad_handler_output_is_internal_failure(
    serve: Serve, open_stream: OpenStream, returned: object, message_part: str
) -> None:
    """A handler result that cannot become a Result fails with INTERNAL/BAD_HANDLER_OUTPUT."""

    async def handler(inp: SubtaskInput) -> Any:
        return returned

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("s")
    failure, before = await stream.recv_until("failure")
    assert before == []
    f = failure.failure.failure
    assert f.code == grpc.StatusCode.INTERNAL.value[0]
    assert f.reason == "BAD_HANDLER_OUTPUT"
    assert message_part in f.message
    assert f.retryable is False
    assert (await stream.recv()).credit.n == 1


async def test_timeout_fails_with_deadline_exceeded(serve: Serve, open_stream: OpenStream) -> None:
    """A handler outliving Dispatch.timeout fails DEADLINE_EXCEEDED/SUBTASK_TIMEOUT, retryable."""
    cancelled = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("slow", timeout=0.05)
    failure, before = await stream.recv_until("failure")
    assert kinds(before) == ["accepted"]
    f = failure.failure.failure
    assert f.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert f.reason == "SUBTASK_TIMEOUT"
    assert f.retryable is True
    assert cancelled.is_set()
    assert (await stream.recv()).credit.n == 1


async def test_handler_finishing_within_timeout_succeeds(
    serve: Serve, open_stream: OpenStream
) -> None:
    """A timeout that does not expire changes nothing."""
    stream = await open_stream(await serve(make_arm(echo_handler)))
    await stream.dispatch("quick", {"a": "b"}, timeout=HANG_GUARD_S)
    result, _ = await stream.recv_until("result")
    assert output_of(result) == {"echo": {"a": "b"}}


async def test_handlers_own_timeout_error_is_a_handler_error(
    serve: Serve, open_stream: OpenStream
) -> None:
    """A TimeoutError from the handler's own wait is HANDLER_ERROR, not SUBTASK_TIMEOUT."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)
        return {}

    stream = await open_stream(await serve(make_arm(handler)))
    await stream.dispatch("s", timeout=HANG_GUARD_S)
    failure, _ = await stream.recv_until("failure")
    assert failure.failure.failure.reason == "HANDLER_ERROR"
    assert failure.failure.failure.message.startswith("TimeoutError")


async def test_cancel_stops_the_handler_and_frees_its_credit(
    serve: Serve, open_stream: OpenStream
) -> None:
    """Cancel cancels the handler task, answers CANCELLED and returns the slot's credit."""
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        if inp.input.get("block"):
            started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                saw_cancel.set()
                raise
        return {"ran": inp.subtask_id}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("long", {"block": True}, attempt=2)
    await stream.recv_until("accepted")
    await asyncio.wait_for(started.wait(), HANG_GUARD_S)
    await stream.cancel("long")

    failure = await stream.recv()
    credit = await stream.recv()
    assert saw_cancel.is_set()
    f = failure.failure
    assert (f.subtask_id, f.attempt) == ("long", 2)
    assert (f.failure.code, f.failure.reason) == (grpc.StatusCode.CANCELLED.value[0], "CANCELLED")
    assert credit.credit.n == 1

    await stream.dispatch("next")
    result, before = await stream.recv_until("result")
    assert before == []  # it answered at once: no Accepted
    assert output_of(result) == {"ran": "next"}
    assert (await stream.recv()).credit.n == 1


async def test_handler_swallowing_cancel_is_still_reported_cancelled(
    serve: Serve, open_stream: OpenStream
) -> None:
    """Once cancelled, the answer is CANCELLED even if the handler returns something."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return {"ignored": True}
        return {}

    stream = await open_stream(await serve(make_arm(handler)))
    await stream.dispatch("s")
    await stream.recv_until("accepted")
    await stream.cancel("s")
    failure, before = await stream.recv_until("failure")
    assert "result" not in kinds(before)
    assert failure.failure.failure.reason == "CANCELLED"


async def test_cancel_of_unknown_subtask_is_ignored(serve: Serve, open_stream: OpenStream) -> None:
    """Cancel for a subtask not running on the stream produces nothing."""
    stream = await open_stream(await serve(make_arm(echo_handler)))
    await stream.cancel("never-dispatched")
    await stream.send(arm_pb.ExecuteRequest(ping=arm_pb.Ping(nonce=3)))
    pong, before = await stream.recv_until("pong")
    assert before == []
    assert pong.pong.nonce == 3


async def test_dispatch_beyond_granted_credit_is_refused(
    serve: Serve, open_stream: OpenStream
) -> None:
    """More in flight than granted: RESOURCE_EXHAUSTED/CREDIT_EXCEEDED, retryable, not run."""
    release = asyncio.Event()
    ran: list[str] = []

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        ran.append(inp.subtask_id)
        await release.wait()
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("first")
    await stream.dispatch("second", attempt=5)
    accepted = await stream.recv()
    refused = await stream.recv()
    assert accepted.accepted.subtask_id == "first"
    f = refused.failure
    assert (f.subtask_id, f.attempt) == ("second", 5)
    assert f.failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f.failure.reason == "CREDIT_EXCEEDED"
    assert f.failure.retryable is True

    release.set()
    result = await stream.recv()
    credit = await stream.recv()
    assert result.result.subtask_id == "first"
    assert credit.credit.n == 1
    assert ran == ["first"]
    assert (await stream.ping(1)).nonce == 1


async def test_duplicate_dispatch_is_ignored(serve: Serve, open_stream: OpenStream) -> None:
    """A Dispatch whose subtask is already running on the stream is dropped with a warning
    (neither run, nor refused, nor counted against credit)."""
    release = asyncio.Event()
    runs: list[str] = []

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        runs.append(inp.subtask_id)
        await release.wait()
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    with structlog.testing.capture_logs() as logs:
        await stream.dispatch("dup")
        accepted = await stream.recv()
        assert (accepted.accepted.subtask_id, accepted.accepted.attempt) == ("dup", 1)
        await stream.dispatch("dup", attempt=2)
        assert await stream.round_trip(7) == []
    release.set()
    result = await stream.recv()
    assert result.WhichOneof("kind") == "result"
    assert result.result.attempt == 1
    assert runs == ["dup"]
    warnings = [e for e in logs if e["event"] == "duplicate_dispatch_ignored"]
    assert [(w["subtask_id"], w["attempt"], w["log_level"]) for w in warnings] == [
        ("dup", 2, "warning")
    ]
    # The same id may run again once the first run has finished and its slot came back.
    assert (await stream.recv()).credit.n == 1
    release.clear()
    await stream.dispatch("dup", attempt=3)
    assert (await stream.recv()).accepted.attempt == 3
    release.set()
    again = await stream.recv()
    assert again.result.attempt == 3
    assert (await stream.recv()).credit.n == 1
    assert runs == ["dup", "dup"]


async def test_ping_is_answered_with_pong(serve: Serve, open_stream: OpenStream) -> None:
    """Ping{nonce} -> Pong{nonce}, in order."""
    stream = await open_stream(await serve(make_arm(echo_handler)))
    for nonce in (1, -5, 2**62):
        await stream.send(arm_pb.ExecuteRequest(ping=arm_pb.Ping(nonce=nonce)))
    pongs = [(await stream.recv()).pong.nonce for _ in range(3)]
    assert pongs == [1, -5, 2**62]


@pytest.mark.parametrize("how", ["half-close", "cancel-call", "close-channel"])
async def test_stream_end_cancels_running_handlers(
    serve: Serve, connect: Connect, how: str
) -> None:
    """When the orchestrator closes or drops the stream, its running handlers are cancelled."""
    started = asyncio.Event()
    saw_cancel = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return {}

    server = await serve(make_arm(handler))
    channel = connect(server)
    stream = ArmStream(channel)
    await stream.handshake()
    await stream.dispatch("s")
    await stream.recv_until("accepted")
    await asyncio.wait_for(started.wait(), HANG_GUARD_S)
    if how == "half-close":
        await stream.call.done_writing()
        assert await stream.recv_end() == []
        assert await stream.call.code() == grpc.StatusCode.OK
    elif how == "cancel-call":
        stream.call.cancel()
    else:
        await channel.close()
    await asyncio.wait_for(saw_cancel.wait(), HANG_GUARD_S)


async def test_progress_is_sent_for_the_calling_subtask(
    serve: Serve, open_stream: OpenStream
) -> None:
    """report_progress inside a handler sends Progress for that subtask only."""
    from arm_sdk import report_progress

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await report_progress(0.25, f"quarter of {inp.subtask_id}")
        await asyncio.sleep(0)
        await report_progress(1.5, "over")
        return {}

    stream = await open_stream(await serve(make_arm(handler)))
    await stream.dispatch("a")
    await stream.dispatch("b")
    messages: list[arm_pb.ExecuteResponse] = []
    while sum(m.WhichOneof("kind") == "result" for m in messages) < 2:
        messages.append(await stream.recv())
    progress = sorted(
        (m.progress.subtask_id, m.progress.fraction, m.progress.message)
        for m in messages
        if m.WhichOneof("kind") == "progress"
    )
    assert progress == [
        ("a", 0.25, "quarter of a"),
        ("a", 1.0, "over"),
        ("b", 0.25, "quarter of b"),
        ("b", 1.0, "over"),
    ]
    for subtask_id in ("a", "b"):
        mine = [m for m in messages if _subtask_of(m) == subtask_id]
        assert kinds(mine) == ["accepted", "progress", "progress", "result"]


def _subtask_of(message: arm_pb.ExecuteResponse) -> str | None:
    kind = message.WhichOneof("kind")
    body = getattr(message, kind) if kind else None
    return getattr(body, "subtask_id", None)


async def test_report_progress_outside_a_handler_is_a_no_op() -> None:
    """report_progress with no running subtask does nothing (handlers stay unit-testable)."""
    from arm_sdk import report_progress

    await report_progress(0.5, "nobody listens")


async def test_many_concurrent_subtasks_respect_credit(
    serve: Serve, open_stream: OpenStream
) -> None:
    """500 subtasks on one stream all finish; never more run at once than the credit granted;
    every freed slot is returned by the batching rules."""
    total, max_concurrency = 500, 16
    in_flight = 0
    peak = 0

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            for _ in range(int(inp.input["yields"])):
                await asyncio.sleep(0)
            return {"i": inp.input["i"]}
        finally:
            in_flight -= 1

    server = await serve(make_arm(handler, max_concurrency=max_concurrency))
    channel_stream = await open_stream(server)
    window = max_concurrency
    sent = 0
    outputs: dict[str, dict[str, Any]] = {}
    failures: list[arm_pb.ExecuteResponse] = []
    while len(outputs) + len(failures) < total:
        while window > 0 and sent < total:
            await channel_stream.dispatch(f"s{sent}", {"i": sent, "yields": sent % 7})
            sent += 1
            window -= 1
        message = await channel_stream.recv()
        kind = message.WhichOneof("kind")
        if kind == "credit":
            window += message.credit.n
            assert window <= max_concurrency
        elif kind == "result":
            outputs[message.result.subtask_id] = output_of(message)
        elif kind == "failure":
            failures.append(message)

    assert failures == []
    assert outputs == {f"s{i}": {"i": i} for i in range(total)}
    assert 1 < peak <= max_concurrency
    await settle_window(channel_stream, window, max_concurrency)
