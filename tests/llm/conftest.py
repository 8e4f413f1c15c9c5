"""Fixtures: scriptable fake OpenAI servers on 127.0.0.1:0 and clients that are closed after."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from orchestrator_svc.llm import OpenAICompatibleClient
from tests.llm.fake_openai import FakeOpenAI, Script

StartFake = Callable[[Script], Awaitable[FakeOpenAI]]
MakeClient = Callable[..., OpenAICompatibleClient]


@pytest.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    """Start fake OpenAI servers; all are closed at the end of the test."""
    servers: list[FakeOpenAI] = []

    async def start(script: Script) -> FakeOpenAI:
        server = await FakeOpenAI(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def make_client() -> AsyncIterator[MakeClient]:
    """Build OpenAICompatibleClients (quick test defaults); all are closed at the end."""
    clients: list[OpenAICompatibleClient] = []

    def make(base_url: str, **overrides: Any) -> OpenAICompatibleClient:
        options: dict[str, Any] = {
            "api_key": "sk-test-secret",
            "model": "fake-model",
            "timeout_s": 5.0,
            "max_retries": 2,
            "max_backoff_s": 0.05,
        }
        options.update(overrides)
        client = OpenAICompatibleClient(base_url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
