"""Task leases on a shared store: keep this replica's, take over those of replicas that died.

Every `interval_s` (a third of the lease TTL) the keeper renews every lease this replica holds,
stops running any task whose lease it no longer holds (another replica took it over after a
missed renewal, or it was ended elsewhere), and claims expired leases up to the runner's free
slots, resuming each claimed task from its event log. A store outage only delays all of this:
the keeper logs and tries again on the next tick.
"""

from __future__ import annotations

import structlog

from ..store.ports import TaskLeases, TaskNotFound
from .rounds import Rounds
from .runner import TaskRunner

log = structlog.get_logger(__name__)


class LeaseKeeper(Rounds):
    """See the module docstring. `start()` once; `stop_claiming()` at drain; `close()` last."""

    name = "task_leases"

    def __init__(self, leases: TaskLeases, runner: TaskRunner, *, max_tasks: int) -> None:
        self._leases = leases
        self._runner = runner
        self._max_tasks = max_tasks
        self.interval_s = leases.lease_ttl_s / 3
        self._claiming = True
        self._unrun: set[str] = set()  # held but not running here at the last tick

    def stop_claiming(self) -> None:
        """Keep renewing what this replica runs, but take over nothing more (draining)."""
        self._claiming = False

    async def tick(self) -> None:
        """One round: renew, let go of lost tasks, resume held-but-idle ones, claim expired."""
        # NOTE: the snapshot is taken before renewing: a task accepted while the renewal is in
        # flight is running here but may not be in `held` yet, and must not look lost.
        running = self._runner.running_ids()
        held = await self._leases.renew()
        for task_id in running - held:
            # NOTE: a task whose end was just committed holds no lease, and is not lost.
            if not self._runner.ended(task_id):
                self._runner.abandon(task_id, "its lease is gone: another replica runs it now")
        unrun = held - self._runner.running_ids()
        # NOTE: idle for two ticks in a row: a task just accepted is not started yet for a
        # moment, so one tick is not enough to call it stranded (a run that failed on the
        # store, say). This replica holds it, so it resumes it itself.
        for task_id in unrun & self._unrun:
            await self._resume(task_id)
        self._unrun = unrun - self._runner.running_ids()
        if not self._claiming:
            return
        free = self._max_tasks - self._runner.running
        if free <= 0:
            return
        for task in await self._leases.claim_expired(free):
            self._runner.start(task, resumed=True)

    async def _resume(self, task_id: str) -> None:
        store = self._runner.store
        try:
            task = await store.get(task_id)
        except TaskNotFound:
            return
        log.warning("task_stranded_resuming", task_id=task_id)
        self._runner.start(task, resumed=True)
