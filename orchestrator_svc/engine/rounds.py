"""A round of store work every few seconds, in the background (leases, arm history)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from ..store.ports import StoreError

log = structlog.get_logger(__name__)


class Rounds:
    """Runs `tick()` every `interval_s` from `start()` until `close()`; a store failure in a
    round is logged (`store_round_failed`, with the round's name) and the next one tries again."""

    name = "rounds"
    interval_s = 1.0

    _loop: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._keep(), name=f"octollm-{self.name}")

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop

    async def _keep(self) -> None:
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("store_round_failed", round=self.name, error=str(exc))
            await asyncio.sleep(self.interval_s)
