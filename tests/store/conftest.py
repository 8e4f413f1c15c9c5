"""Store fixtures: every test in tests/store/ runs against each TaskStore adapter."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store import InMemoryTaskStore, TaskStore


def _memory() -> TaskStore:
    return InMemoryTaskStore()


# NOTE: add the Postgres adapter here (skipping when no database is reachable); the tests are
# written against the TaskStore port only.
_ADAPTERS: dict[str, Callable[[], TaskStore]] = {"memory": _memory}


@pytest.fixture(params=sorted(_ADAPTERS))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TaskStore]:
    adapter = _ADAPTERS[request.param]()
    yield adapter
    await adapter.close()


@pytest.fixture
def new_task() -> Callable[..., pb.Task]:
    """Build a Task as the API would hand it to create()."""

    def build(goal: str = "summarise the quarterly report", **fields: object) -> pb.Task:
        return pb.Task(goal=goal, **fields)  # type: ignore[arg-type]

    return build
