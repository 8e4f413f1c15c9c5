"""Arm statistics shared through the store: what one replica learns, the others route on.

Every `interval_s` the keeper adds the outcomes this replica saw of each arm since its last
round (counts, and the current moving averages) to the store's record of that arm; an arm
newly connected here first starts from the stored record, so a replica that starts, or one
that meets an arm another replica already knows, does not route it on priors alone.
"""

from __future__ import annotations

import contextlib

import structlog

from ..mesh import ArmConnection, Mesh
from ..store.ports import ArmHistory, ArmRecord, StoreError
from .rounds import Rounds

log = structlog.get_logger(__name__)

INTERVAL_S = 2.0


class ArmHistoryKeeper(Rounds):
    """See the module docstring. `start()` once; `close()` flushes a last time."""

    name = "arm_history"

    def __init__(self, history: ArmHistory, mesh: Mesh, *, interval_s: float = INTERVAL_S):
        self._history = history
        self._mesh = mesh
        self.interval_s = interval_s
        # arm_id -> (succeeded, failed) of its connection when last written (or started from).
        self._written: dict[str, tuple[int, int]] = {}

    async def close(self) -> None:
        await super().close()
        with contextlib.suppress(StoreError):
            await self.tick()

    async def tick(self) -> None:
        """Start new arms from their records, then write what changed."""
        arms = [c for c in self._mesh.arms() if c.arm_id]
        new = [c for c in arms if c.arm_id not in self._written]
        if new:
            records = await self._history.arm_records([c.arm_id for c in new])
            for conn in new:
                record = records.get(conn.arm_id)
                if record is not None:
                    conn.stats.start_from(
                        record.success_rate,
                        record.mean_latency_s,
                        record.succeeded + record.failed,
                    )
                # NOTE: nothing this connection saw is written yet, whenever it was seen.
                self._written[conn.arm_id] = (0, 0)
        changed = [record for conn in arms if (record := self._change(conn)) is not None]
        if changed:
            await self._history.add_arm_records(changed)
            for record in changed:
                written = self._written[record.arm_id]
                self._written[record.arm_id] = (
                    written[0] + record.succeeded,
                    written[1] + record.failed,
                )

    def _change(self, conn: ArmConnection) -> ArmRecord | None:
        written = self._written.get(conn.arm_id)
        if written is None:
            return None
        stats = conn.stats
        succeeded = max(0, stats.succeeded - written[0])
        failed = max(0, stats.failed - written[1])
        if not succeeded and not failed:
            return None
        return ArmRecord(
            conn.arm_id, conn.arm_type, succeeded, failed, stats.success_rate, stats.mean_latency_s
        )
