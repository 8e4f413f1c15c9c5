"""Task admission: a fixed number of running slots, given out by priority.

A task takes a slot before it starts (PENDING until then) and gives it back at its end. While
every slot is taken, waiting tasks are admitted highest `Priority` first and in arrival order
within one priority (UNSPECIFIED counts as NORMAL). Nothing ages: a steady stream of higher
priority work keeps lower priority tasks waiting, as the proto documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator

from octollm.v1 import orchestrator_service_pb2 as pb


def effective_priority(priority: int) -> int:
    """The priority a task is admitted and dispatched with (UNSPECIFIED is NORMAL)."""
    return priority or pb.PRIORITY_NORMAL


class TaskAdmission:
    """Running slots for tasks, admitted by priority; see the module docstring."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        # (-priority, arrival number, the waiter's future): a min-heap, so the highest
        # priority and then the earliest arrival comes out first.
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        """Hold a running slot for the body; wait for one first when all are taken."""
        await self._acquire(effective_priority(priority))
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, priority: int) -> None:
        # NOTE: a free slot means nobody live is waiting: _release hands a slot to a waiter
        # before it counts one as free.
        if self._free > 0:
            self._free -= 1
            return
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            # NOTE: granted and cancelled in the same loop turn: the slot is this waiter's,
            # so hand it on. A waiter cancelled before its turn is skipped by _release.
            if future.done() and not future.cancelled():
                self._release()
            raise

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
