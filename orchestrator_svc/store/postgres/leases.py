"""Task leases and arm history on PostgreSQL.

Leases sit on the task rows themselves (lease_owner, lease_expires), so the FOR UPDATE every
locking append takes also fences a replica whose lease was taken over. Arm history is the
arm_stats table: counts add up across replicas, the moving averages are the last writer's.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection, Sequence

import structlog
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.ports import ArmRecord
from orchestrator_svc.store.postgres import sql
from orchestrator_svc.store.postgres.held import HeldProjections, TaskRow
from orchestrator_svc.store.postgres.rows import CorruptRecord, decode_task, is_task_id
from orchestrator_svc.store.postgres.sessions import Sessions
from orchestrator_svc.store.shared import copy_message

log = structlog.get_logger(__name__)


def default_owner(name: str | None = None) -> str:
    """A lease owner id unique to this process: `name` (or the host name), pid, a random part."""
    return f"{name or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Leases:
    """The leases of one owner (this replica): renewed, claimed when expired, released."""

    def __init__(
        self, sessions: Sessions, held: HeldProjections, *, owner: str, lease_ttl_s: float
    ) -> None:
        self._sessions = sessions
        self._held = held
        self.owner = owner
        self.lease_ttl_s = lease_ttl_s

    async def renew(self) -> set[str]:
        self._sessions.check_open()
        with self._sessions.reported("renew"):
            rows = await self._sessions.fetch(sql.RENEW_LEASES, self.owner, self.lease_ttl_s)
        return {row["task_id"] for row in rows}

    async def claim_expired(self, limit: int) -> list[pb.Task]:
        self._sessions.check_open()
        if limit < 1:
            return []
        with self._sessions.reported("claim"):
            rows = await self._sessions.fetch(
                sql.CLAIM_EXPIRED, self.owner, self.lease_ttl_s, limit
            )
        claimed = []
        for row in rows:
            try:
                task = decode_task(row["task_id"], row["body"])
            except CorruptRecord as exc:
                # NOTE: reported once and set aside (no replica claims it again), so a poisoned
                # row cannot become a claim-crash loop; the task stays readable for an operator.
                log.error("corrupt_task_quarantined", task_id=row["task_id"], error=str(exc))
                with self._sessions.reported("claim"):
                    async with self._sessions.session() as conn:
                        await conn.execute(sql.QUARANTINE, row["task_id"])
                continue
            log.info("task_lease_claimed", task_id=task.task_id, previous_owner=row["previous"])
            self._held.hold(TaskRow(copy_message(task), False, self.owner))
            claimed.append(task)
        return claimed

    async def release(self, task_ids: Collection[str]) -> None:
        self._sessions.check_open()
        ids = [task_id for task_id in task_ids if is_task_id(task_id)]
        if not ids:
            return
        with self._sessions.reported("release"):
            async with self._sessions.session() as conn:
                await conn.execute(sql.RELEASE_LEASES, self.owner, ids)


class ArmStats:
    """What the replicas have seen of each arm (the arm_stats table)."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    async def add_arm_records(self, records: Sequence[ArmRecord]) -> None:
        self._sessions.check_open()
        if not records:
            return
        with self._sessions.reported("arm_stats"):
            async with self._sessions.session() as conn:
                await conn.execute(
                    sql.ADD_ARM_RECORDS,
                    [r.arm_id for r in records],
                    [r.arm_type for r in records],
                    [r.succeeded for r in records],
                    [r.failed for r in records],
                    [min(1.0, max(0.0, r.success_rate)) for r in records],
                    [max(0.0, r.mean_latency_s) for r in records],
                )

    async def arm_records(self, arm_ids: Collection[str]) -> dict[str, ArmRecord]:
        self._sessions.check_open()
        if not arm_ids:
            return {}
        with self._sessions.reported("arm_stats"):
            rows = await self._sessions.fetch(sql.ARM_RECORDS, list(arm_ids))
        return {
            row["arm_id"]: ArmRecord(
                row["arm_id"],
                row["arm_type"],
                row["succeeded"],
                row["failed"],
                row["success_rate"],
                row["mean_latency_s"],
            )
            for row in rows
        }
