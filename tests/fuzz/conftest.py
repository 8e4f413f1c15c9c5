"""The fuzz tests' mesh: one real orchestrator with echo, sleep and scribe arms per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.config import Settings
from orchestrator_svc.server import Orchestrator
from tests.fuzz.fuzzing import FuzzMesh
from tests.role_arms import scribe


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fuzz_mesh() -> AsyncIterator[FuzzMesh]:
    """One orchestrator with an echo, a sleep and a scribe arm, shared by every example of a
    module (its tests run on the module's event loop:
    `pytest.mark.asyncio(loop_scope="module")`)."""
    arms = {name: await REFERENCE_ARMS[name]().start("127.0.0.1:0") for name in ("echo", "sleep")}
    # NOTE: echo stands in for no role: the scribe declares those of a brain-planned goal.
    arms["scribe"] = await scribe().start("127.0.0.1:0")
    settings = Settings(
        arm_endpoints=[a.address for a in arms.values()],
        listen="127.0.0.1:0",
        metrics_port=-1,
        memory=False,
        subtask_timeout_s=10,
        # NOTE: with a price, cost budgets are accepted (and run) instead of refused at submit.
        llm_price_per_1k_prompt=0.001,
    )
    orchestrator = await Orchestrator(settings).start()
    await orchestrator.wait_for_arms(set(arms), timeout_s=10)
    # NOTE: large enough for the largest request the strategies build (2000 steps), and for
    # the Task of a wide echo plan: each output echoes the dependencies' outputs.
    channel = grpc.aio.insecure_channel(
        orchestrator.address,
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )
    try:
        yield FuzzMesh(orchestrator, arms, channel, pb_grpc.OrchestratorServiceStub(channel))
    finally:
        await channel.close()
        await orchestrator.stop(grace_s=0)
        for arm in arms.values():
            await arm.drain(grace=0)
