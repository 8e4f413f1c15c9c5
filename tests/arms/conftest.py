"""Fixtures of the LLM-backed arm tests: no LLM from the environment, Execute streams to arms on
port 0, and fake OpenAI servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.arms.llm_arm_harness import FakeLLMs, OpenStream, StartLLM, StreamOpener


@pytest.fixture(autouse=True)
def no_llm_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arms built without an explicit LLM find none in the environment."""
    for name in ("OCTOLLM_LLM_BASE_URL", "OCTOLLM_LLM_MODEL", "OCTOLLM_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def opener(start_arm: Any) -> AsyncIterator[StreamOpener]:
    """Serves arms on port 0 and opens Execute streams to them; closed after the test."""
    opener = StreamOpener(start_arm)
    yield opener
    await opener.close()


@pytest.fixture
def open_stream(opener: StreamOpener) -> OpenStream:
    """Serve an arm and open an Execute stream to it."""
    return opener.open


@pytest.fixture
async def start_llm() -> AsyncIterator[StartLLM]:
    """Fake OpenAI servers and clients of them; closed after the test."""
    fakes = FakeLLMs()
    yield fakes.start
    await fakes.close()
