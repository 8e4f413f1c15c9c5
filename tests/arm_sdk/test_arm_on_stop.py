"""Stop hooks: what an arm opened is closed once its server has drained."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from structlog.testing import capture_logs

from arm_sdk import SubtaskInput
from arm_sdk import _server as arm_server
from orchestrator_svc.arms import coder, judge, planner, retriever
from orchestrator_svc.arms.retriever import HashEmbedder
from tests.arm_sdk.arm_stream import HANG_GUARD_S, OpenStream, Serve, make_arm
from tests.arms.llm_arm_harness import FakeLLMs, StartLLM
from tests.llm.fake_openai import completion

DRAFT = {"language": "python", "code": "x = 1\n", "explanation": "Sets x."}


@pytest.fixture
async def start_llm() -> AsyncIterator[StartLLM]:
    """Fake OpenAI servers and clients of them; closed after the test."""
    fakes = FakeLLMs()
    yield fakes.start
    await fakes.close()


async def test_hooks_run_after_the_drain_last_registered_first(
    serve: Serve, open_stream: OpenStream
) -> None:
    """drain() lets the running handler finish, then runs the stop hooks in reverse order."""
    events: list[str] = []

    async def slow(inp: SubtaskInput) -> dict[str, Any]:
        await asyncio.sleep(0.2)
        events.append("handler finished")
        return {}

    arm = make_arm(slow)

    @arm.on_stop
    async def close_first_opened() -> None:
        events.append("first registered")

    @arm.on_stop
    async def close_last_opened() -> None:
        events.append("last registered")

    server = await serve(arm)
    stream = await open_stream(server)
    await stream.dispatch("s1")
    await stream.recv_until("accepted", "s1")
    await asyncio.wait_for(server.drain(grace=5), HANG_GUARD_S)
    assert events == ["handler finished", "last registered", "first registered"]


async def test_a_failing_or_hanging_hook_is_logged_and_the_rest_still_run(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hook that raises or outlives its timeout is logged; drain() returns and the other
    hooks run."""
    monkeypatch.setattr(arm_server, "STOP_HOOK_TIMEOUT_S", 0.1)
    ran: list[str] = []

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    arm = make_arm(handler)

    @arm.on_stop
    async def still_runs() -> None:
        ran.append("still_runs")

    @arm.on_stop
    async def hangs() -> None:
        await asyncio.sleep(60)

    @arm.on_stop
    async def breaks() -> None:
        raise RuntimeError("cannot close")

    server = await serve(arm)
    with capture_logs() as logs:
        await asyncio.wait_for(server.drain(grace=0), HANG_GUARD_S)
    assert ran == ["still_runs"]
    failed = [e for e in logs if e["event"] == "arm_stop_hook_failed"]
    assert [e["hook"] for e in failed] == [breaks.__qualname__]
    assert failed[0]["exc_info"] is True
    timed_out = [e for e in logs if e["event"] == "arm_stop_hook_timed_out"]
    assert [(e["hook"], e["after_s"]) for e in timed_out] == [(hangs.__qualname__, 0.1)]
    assert any(e["event"] == "arm_stopped" for e in logs)


def test_a_stop_hook_must_be_async() -> None:
    """on_stop refuses a plain function: it would block the event loop during shutdown."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    arm = make_arm(handler)
    with pytest.raises(TypeError, match="async"):
        arm.on_stop(lambda: None)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("module", [coder, judge, planner], ids=lambda m: m.__name__)
async def test_llm_arms_close_the_client_they_opened(
    module: ModuleType, serve: Serve, start_llm: StartLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An LLM arm built from the environment closes that LLM client when its server stops."""
    _, client = await start_llm([completion(DRAFT)])
    monkeypatch.setattr(module, "llm_client_from_env", lambda: client)
    server = await serve(module.build())
    await asyncio.wait_for(server.drain(grace=0), HANG_GUARD_S)
    with pytest.raises(RuntimeError, match="closed"):
        await client.complete_json(system="s", user="u", schema=coder.CodeDraft)


async def test_an_llm_given_to_an_arm_stays_open(serve: Serve, start_llm: StartLLM) -> None:
    """An LLM client passed to build() is the caller's: stopping the arm leaves it usable."""
    _, client = await start_llm([completion(DRAFT)])
    server = await serve(coder.build(llm=client))
    await asyncio.wait_for(server.drain(grace=0), HANG_GUARD_S)
    draft, _ = await client.complete_json(system="s", user="u", schema=coder.CodeDraft)
    assert draft.code == DRAFT["code"]


class ClosingEmbedder(HashEmbedder):
    """A real embedder that remembers being closed."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_the_retriever_closes_the_embedder_it_opened(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The retriever closes the embedder it took from the environment, not one it was given."""
    from_env, given = ClosingEmbedder(), ClosingEmbedder()
    monkeypatch.setattr(retriever, "embedder_from_env", lambda: from_env)
    for arm in (
        retriever.build(store_path=tmp_path / "env"),
        retriever.build(store_path=tmp_path / "given", embedder=given),
    ):
        server = await serve(arm)
        await asyncio.wait_for(server.drain(grace=0), HANG_GUARD_S)
    assert from_env.closed
    assert not given.closed
