"""Fixtures for brain tests: the fake OpenAI server and client factories from tests/llm."""

from __future__ import annotations

# NOTE: importing the fixtures registers them for this directory too (F401: used by pytest).
from tests.llm.conftest import make_client, start_fake  # noqa: F401
