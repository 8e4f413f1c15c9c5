"""Optional Accepted and batched Credit on the Execute stream, pinned message by message."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from octollm.v1 import arm_service_pb2 as arm_pb

from arm_sdk import ArmError, SubtaskInput, report_progress
from tests.arm_sdk.arm_stream import (
    HANG_GUARD_S,
    OpenStream,
    Serve,
    credit_sum,
    kinds,
    make_arm,
    settle_window,
)

TERMINAL = ("result", "failure")


@pytest.mark.parametrize("outcome", ["result", "failure"])
async def test_handler_answering_at_once_is_not_accepted(
    serve: Serve, open_stream: OpenStream, outcome: str
) -> None:
    """A handler that finishes without suspending sends only its answer: no Accepted."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        if outcome == "failure":
            raise ArmError("no", reason="NOPE")
        return {"ok": True}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("quick", attempt=2)
    answer = await stream.recv()
    credit = await stream.recv()
    assert kinds([answer, credit]) == [outcome, "credit"]
    assert getattr(answer, outcome).subtask_id == "quick"
    assert getattr(answer, outcome).attempt == 2
    assert credit.credit.n == 1
    assert await stream.round_trip() == []


async def test_handler_still_running_is_accepted_before_it_answers(
    serve: Serve, open_stream: OpenStream
) -> None:
    """A handler waiting on something gets Accepted{id, attempt} while it waits, then Result."""
    release = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await release.wait()
        return {"ok": True}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("waits", attempt=3)
    accepted = await stream.recv()
    assert accepted.WhichOneof("kind") == "accepted"
    assert (accepted.accepted.subtask_id, accepted.accepted.attempt) == ("waits", 3)
    assert await stream.round_trip() == []
    release.set()
    result = await stream.recv()
    credit = await stream.recv()
    assert kinds([result, credit]) == ["result", "credit"]
    assert (result.result.subtask_id, result.result.attempt) == ("waits", 3)
    assert credit.credit.n == 1


async def test_one_suspension_is_enough_to_be_accepted(
    serve: Serve, open_stream: OpenStream
) -> None:
    """A handler that yields to the loop once (sleep(0)) is still running after its first step,
    so it is Accepted before its Result."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("s")
    messages = [await stream.recv() for _ in range(3)]
    assert kinds(messages) == ["accepted", "result", "credit"]


@pytest.mark.parametrize("suspends", [True, False], ids=["suspends", "returns-at-once"])
async def test_progress_never_comes_before_accepted(
    serve: Serve, open_stream: OpenStream, suspends: bool
) -> None:
    """Progress reported in the handler's first step is preceded by Accepted for that subtask."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await report_progress(0.5, "half")
        if suspends:
            await asyncio.sleep(0)
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=1)))
    await stream.dispatch("p", attempt=2)
    messages = [await stream.recv() for _ in range(4)]
    assert kinds(messages) == ["accepted", "progress", "result", "credit"]
    assert messages[0].accepted.attempt == 2
    assert messages[1].progress.subtask_id == "p"
    assert await stream.round_trip() == []


async def test_quick_subtasks_earn_one_credit_per_quarter_window(
    serve: Serve, open_stream: OpenStream
) -> None:
    """With max_concurrency 64, 16 quick subtasks in a row earn exactly one Credit{16}, right
    after the 16th Result, and none before it."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=64)))
    for i in range(1, 16):
        await stream.dispatch(f"s{i}")
        result = await stream.recv()
        assert result.result.subtask_id == f"s{i}"
        assert await stream.round_trip(i) == []
    await stream.dispatch("s16")
    result = await stream.recv()
    credit = await stream.recv()
    assert result.result.subtask_id == "s16"
    assert credit.WhichOneof("kind") == "credit"
    assert credit.credit.n == 16
    assert await stream.round_trip() == []
    # The count starts again from zero.
    await stream.dispatch("s17")
    assert (await stream.recv()).result.subtask_id == "s17"
    assert await stream.round_trip() == []


async def test_owed_credit_is_sent_once_the_orchestrator_holds_less_than_half(
    serve: Serve, open_stream: OpenStream
) -> None:
    """Credit owed below the batch size is returned as soon as a Dispatch leaves the
    orchestrator with less than half of the window."""
    release = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        if inp.input.get("block"):
            await release.wait()
        return {}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=64)))
    await stream.dispatch("quick")
    assert (await stream.recv()).result.subtask_id == "quick"
    window = 63  # one slot owed
    for i in range(31):
        await stream.dispatch(f"b{i}", {"block": True})
    window -= 31
    assert kinds(await stream.round_trip(1)) == ["accepted"] * 31  # holds 32: exactly half

    await stream.dispatch("b31", {"block": True})
    window -= 1
    messages = await stream.round_trip(2)
    if "credit" not in kinds(messages):
        # The arm checks owed credit after each message it writes; the Pong may be that one.
        messages.append(await stream.recv())
    assert sorted(kinds(messages)) == ["accepted", "credit"]
    assert credit_sum(messages) == 1
    window += 1

    release.set()
    results = 0
    while results < 32:
        message = await stream.recv()
        kind = message.WhichOneof("kind")
        assert kind in ("result", "credit"), message
        results += kind == "result"
        window += credit_sum([message])
    await settle_window(stream, window, 64)


async def test_whole_window_is_usable_and_returned(serve: Serve, open_stream: OpenStream) -> None:
    """With max_concurrency 8, eight waiting subtasks are all accepted, a ninth before any
    Credit is refused CREDIT_EXCEEDED, and releasing the eight returns Credit summing to 8."""
    release = asyncio.Event()
    ran: list[str] = []

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        ran.append(inp.subtask_id)
        await release.wait()
        return {"id": inp.subtask_id}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=8)))
    ids = [f"w{i}" for i in range(8)]
    for subtask_id in ids:
        await stream.dispatch(subtask_id)
    accepted = [await stream.recv() for _ in ids]
    assert kinds(accepted) == ["accepted"] * 8
    assert sorted(m.accepted.subtask_id for m in accepted) == sorted(ids)

    await stream.dispatch("ninth", attempt=2)
    refused = await stream.recv()
    f = refused.failure
    assert (f.subtask_id, f.attempt) == ("ninth", 2)
    assert f.failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f.failure.reason == "CREDIT_EXCEEDED"
    assert f.failure.retryable is True
    assert sorted(ran) == sorted(ids)

    release.set()
    results: list[str] = []
    credits = 0
    while len(results) < 8:
        message = await stream.recv()
        kind = message.WhichOneof("kind")
        if kind == "result":
            results.append(message.result.subtask_id)
        else:
            assert kind == "credit", message
            credits += message.credit.n
            assert 0 < credits <= len(results)
    credits += credit_sum(await stream.round_trip(), only=True)
    assert sorted(results) == sorted(ids)
    assert credits == 8

    # The returned window is the whole window again: eight more are all taken.
    ran.clear()
    for i in range(8):
        await stream.dispatch(f"again{i}")
    messages: list[arm_pb.ExecuteResponse] = []
    while sum(k in TERMINAL for k in kinds(messages)) < 8:
        messages.append(await stream.recv())
    assert "failure" not in kinds(messages)
    assert len(ran) == 8


@pytest.mark.parametrize("max_concurrency", [1, 8, 64])
async def test_credit_never_precedes_the_answer_it_pays_for(
    serve: Serve, open_stream: OpenStream, max_concurrency: int
) -> None:
    """Over 200 mixed subtasks (quick, failing, yielding, progress, cancelled, timed out), the
    Credit received never exceeds the answers received, at any message; nothing is refused."""
    total = 200
    plans = ["quick", "fail", "yield", "progress", "cancel", "timeout"]

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        plan = inp.input["plan"]
        if plan == "fail":
            raise ArmError("planned", reason="PLANNED")
        if plan == "yield":
            for _ in range(int(inp.input["i"]) % 5):
                await asyncio.sleep(0)
        elif plan == "progress":
            await report_progress(0.5, "half")
            await asyncio.sleep(0)
        elif plan in ("cancel", "timeout"):
            await asyncio.Event().wait()
        return {"i": inp.input["i"]}

    stream = await open_stream(await serve(make_arm(handler, max_concurrency=max_concurrency)))
    window, sent, credits = max_concurrency, 0, 0
    planned: dict[str, str] = {}
    answers: dict[str, arm_pb.ExecuteResponse] = {}
    async with asyncio.timeout(6 * HANG_GUARD_S):
        while len(answers) < total:
            while window > 0 and sent < total:
                plan = plans[sent % len(plans)]
                planned[f"s{sent}"] = plan
                timeout = 0.01 if plan == "timeout" else None
                await stream.dispatch(f"s{sent}", {"i": sent, "plan": plan}, timeout=timeout)
                sent += 1
                window -= 1
            message = await stream.recv()
            kind = message.WhichOneof("kind")
            if kind == "credit":
                credits += message.credit.n
                window += message.credit.n
            elif kind in TERMINAL:
                subtask_id = getattr(message, kind).subtask_id
                assert subtask_id not in answers, f"second answer for {subtask_id}"
                answers[subtask_id] = message
            elif kind == "accepted" and planned[message.accepted.subtask_id] == "cancel":
                await stream.cancel(message.accepted.subtask_id)
            assert credits <= len(answers), (credits, len(answers))
            assert 0 <= window <= max_concurrency

    expected = {
        "quick": "result",
        "yield": "result",
        "progress": "result",
        "fail": "PLANNED",
        "cancel": "CANCELLED",
        "timeout": "SUBTASK_TIMEOUT",
    }
    for subtask_id, message in answers.items():
        got = "result" if message.HasField("result") else message.failure.failure.reason
        assert got == expected[planned[subtask_id]], (subtask_id, message)
    # All slots are free again: less than one batch of credit is left owed.
    await settle_window(stream, window, max_concurrency)
