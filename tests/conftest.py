"""Shared fixtures: real arms and real orchestrators on loopback port 0."""

from __future__ import annotations

import os

# NOTE: before grpc is imported: keep C-core info lines (GOAWAY on purpose-killed peers) quiet.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, ArmServer
from orchestrator_svc.config import Settings
from orchestrator_svc.server import Orchestrator
from tests.store.postgres_schema import postgres_schema

StartArm = Callable[[Arm], Awaitable[ArmServer]]
StartOrchestrator = Callable[..., Awaitable[Orchestrator]]


@pytest.fixture
async def start_arm() -> AsyncIterator[StartArm]:
    """Start arms on 127.0.0.1:0; all are drained at the end of the test."""
    servers: list[ArmServer] = []

    async def start(arm: Arm) -> ArmServer:
        server = await arm.start("127.0.0.1:0")
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.drain(grace=0)


@pytest.fixture
async def start_orchestrator() -> AsyncIterator[StartOrchestrator]:
    """Start orchestrators on 127.0.0.1:0 dialling the given arm endpoints."""
    started: list[Orchestrator] = []

    async def start(
        endpoints: Sequence[str], *, wait_for: Sequence[str] = (), **settings: Any
    ) -> Orchestrator:
        settings.setdefault("metrics_port", 0)
        settings.setdefault("listen", "127.0.0.1:0")
        # NOTE: the task memory persists in the working directory by default: tests opt in.
        settings.setdefault("memory", False)
        config = Settings(arm_endpoints=list(endpoints), **settings)
        orchestrator = await Orchestrator(config).start()
        started.append(orchestrator)
        if wait_for:
            await orchestrator.wait_for_arms(set(wait_for), timeout_s=10)
        return orchestrator

    yield start
    for orchestrator in started:
        await orchestrator.stop(grace_s=0)


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    """An orchestrator's postgres_dsn in a fresh schema of the test PostgreSQL (dropped after)."""
    async with postgres_schema() as schema:
        yield schema.search_path_dsn


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[str], pb_grpc.OrchestratorServiceStub]]:
    """Open client channels to an orchestrator address; closed at the end of the test."""
    channels: list[grpc.aio.Channel] = []

    def open_stub(address: str) -> pb_grpc.OrchestratorServiceStub:
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        return pb_grpc.OrchestratorServiceStub(channel)

    yield open_stub
    for channel in channels:
        await channel.close()
