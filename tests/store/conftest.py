"""Store fixtures: every test in tests/store/ runs against each TaskStore adapter.

The PostgreSQL adapter runs each test in a fresh schema on the test server, dropped afterwards
(see tests/store/postgres_schema.py); without a reachable server those tests skip, or fail
under CI.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store import InMemoryTaskStore, TaskStore
from tests.store.postgres_schema import PgSchema, postgres_schema


@contextlib.asynccontextmanager
async def _memory() -> AsyncIterator[TaskStore]:
    store = InMemoryTaskStore()
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def _postgres() -> AsyncIterator[TaskStore]:
    async with postgres_schema() as schema:
        await schema.migrate()
        yield await schema.open_store()


# NOTE: the tests are written against the TaskStore port only.
_ADAPTERS: dict[str, Callable[[], AbstractAsyncContextManager[TaskStore]]] = {
    "memory": _memory,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(_ADAPTERS))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TaskStore]:
    async with _ADAPTERS[request.param]() as adapter:
        yield adapter


@pytest.fixture
async def pg_schema() -> AsyncIterator[PgSchema]:
    """A fresh, empty (unmigrated) schema on the test PostgreSQL."""
    async with postgres_schema() as schema:
        yield schema


@pytest.fixture
def new_task() -> Callable[..., pb.Task]:
    """Build a Task as the API would hand it to create()."""

    def build(goal: str = "summarise the quarterly report", **fields: object) -> pb.Task:
        return pb.Task(goal=goal, **fields)  # type: ignore[arg-type]

    return build
