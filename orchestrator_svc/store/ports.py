"""The task store port: tasks are projections of an append-only, per-task event log.

Errors::

    StoreError
    +-- TaskNotFound         no task with that id
    +-- IdempotencyConflict  request_id already used with a different request body
    +-- TaskClosed           the task's log already ends with a `finished` event
    +-- LeaseLost            another replica took over the task (its lease expired)
    +-- StoreClosed          the store was closed
    +-- StoreUnavailable     the database cannot be reached or did not answer in time

Adapters (in process memory, PostgreSQL) implement `TaskStore` with the same behaviour; the
shared test suite in tests/store/ is the executable definition of that behaviour. A store that
several orchestrator replicas share also implements `TaskLeases`: the replica that runs a task
holds its lease, and a dead replica's tasks are claimed and resumed by another.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from octollm.v1 import orchestrator_service_pb2 as pb

# A batch of watched events stops growing past this many bytes (far below gRPC's 16 MiB cap).
WATCH_BATCH_BYTES = 1 << 20


class StoreError(Exception):
    """Base class of every error a TaskStore raises on purpose."""


class TaskNotFound(StoreError):
    """No task has this id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} not found")
        self.task_id = task_id


class IdempotencyConflict(StoreError):
    """The request_id was already used for a task created from a different request body."""

    def __init__(self, request_id: str, task_id: str) -> None:
        super().__init__(
            f"request_id {request_id!r} was already used for task {task_id!r} "
            "with a different request body"
        )
        self.request_id = request_id
        self.task_id = task_id


class TaskClosed(StoreError):
    """The task has finished: its event log accepts no more events."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} has finished; its event log is closed")
        self.task_id = task_id


class LeaseLost(StoreError):
    """An owner append to a task whose lease another replica holds now."""

    def __init__(self, task_id: str, owner: str) -> None:
        super().__init__(f"task {task_id!r} is now run by replica {owner!r}; this replica lost it")
        self.task_id = task_id
        self.owner = owner


class StoreUnavailable(StoreError):
    """The store's database cannot be reached, refused the connection, or was too slow."""


class StoreClosed(StoreError):
    """The store was closed; pending watchers get this too."""

    def __init__(self) -> None:
        super().__init__("task store is closed")


class TaskStore(Protocol):
    """Durable home of tasks and their event logs."""

    async def create(self, task: pb.Task, fingerprint: str) -> tuple[pb.Task, bool]:
        """Store a new task and return (task, True).

        The stored task starts in state PENDING with last_seq 0; create_time is set to now
        when unset and a task_id is assigned when empty. If task.request_id is non-empty and
        already used: the same fingerprint returns (existing task as it is now, False); a
        different fingerprint raises IdempotencyConflict. Atomic under concurrency.
        """
        ...

    async def append(
        self, task_id: str, events: Sequence[pb.TaskEvent], *, as_owner: bool = False
    ) -> int:
        """Append events to the task's log and return the seq of the last one (its last_seq).

        `as_owner` says the caller runs the task: a store with leases then refuses the batch
        with LeaseLost when another replica holds the task's lease (a fence against a replica
        that was presumed dead). Other appends (e.g. a CancelTask served by any replica) are
        not fenced.

        NOTE: it does not return the projected task: tasks with many subtasks would make every
        append pay for a copy the hot path never reads; call get() when the task is wanted.

        Each event gets the next seq (last_seq+1, +2, ... with no gaps), the task_id, and the
        current time when its time is unset; the caller's messages are not modified. The whole
        batch is applied to the projection, then published to watchers. Raises TaskNotFound,
        TaskClosed once a `finished` event is in the log (also for events after a `finished`
        in the same batch), and ValueError for an event without a kind, a `finished` with a
        non-terminal state, or a task_id naming another task. A refused batch appends nothing.
        """
        ...

    async def get(self, task_id: str) -> pb.Task:
        """Return a copy of the task. Raises TaskNotFound."""
        ...

    async def list(
        self, page_size: int, page_token: str, states: Collection[int]
    ) -> tuple[builtins.list[pb.Task], str]:
        """Return copies of one page of tasks, newest first, and the next page's token ("" at
        the end).

        Order is create_time descending, then task_id descending, so pages are stable while
        tasks are created. `states` filters (empty means all). page_size must be >= 1. The
        token is opaque; a malformed one raises ValueError.
        """
        ...

    def watch(self, task_id: str, after_seq: int) -> AsyncIterator[pb.TaskEvent]:
        """Yield the task's events with seq > after_seq: the stored ones, then live ones.

        In order, with no gaps or duplicates; ends after the `finished` event is yielded (at
        once when after_seq is already past it). Raises TaskNotFound on first iteration. A slow
        watcher must neither block append() nor buffer events beyond the task's own log.
        """
        ...

    def watch_batches(
        self, task_id: str, after_seq: int, max_events: int
    ) -> AsyncIterator[builtins.list[pb.TaskEvent]]:
        """watch(), but each step yields every event available at once (at least one, at most
        `max_events`, and no more than about WATCH_BATCH_BYTES of them): what was appended
        together is yielded together."""
        ...

    async def close(self) -> None:
        """Release resources; later calls and pending watchers raise StoreClosed."""
        ...


@runtime_checkable
class TaskLeases(Protocol):
    """Leases on unfinished tasks, for stores that several orchestrator replicas share.

    `create()` gives the new task's lease to this store's `owner` for `lease_ttl_s`; the
    `finished` event releases it. The owner keeps it with `renew()`; when it stops renewing
    (it died, or lost the database), the lease expires and `claim_expired()` on another
    replica takes it over.
    """

    @property
    def owner(self) -> str:
        """This replica's lease owner id (unique per process)."""
        ...

    @property
    def lease_ttl_s(self) -> float:
        """How long a lease lasts without renewal."""
        ...

    async def renew(self) -> set[str]:
        """Extend every lease this owner holds; return the ids of the tasks still held."""
        ...

    async def claim_expired(self, limit: int) -> builtins.list[pb.Task]:
        """Take over up to `limit` unfinished tasks whose lease expired; return them as stored.

        Claims skip rows other replicas are claiming or writing (FOR UPDATE SKIP LOCKED), so
        concurrent claimers never take the same task.
        """
        ...

    async def release(self, task_ids: Collection[str]) -> None:
        """Let other replicas claim these tasks at once (a hand-off at shutdown)."""
        ...


@dataclass(frozen=True, slots=True)
class ArmRecord:
    """What replicas have seen of one arm: outcome counts and moving averages."""

    arm_id: str
    arm_type: str
    succeeded: int
    failed: int
    success_rate: float
    mean_latency_s: float


@runtime_checkable
class ArmHistory(Protocol):
    """Arm statistics kept in a store that several orchestrator replicas share."""

    async def add_arm_records(self, records: Sequence[ArmRecord]) -> None:
        """Add each record's counts to the arm's totals and keep its moving averages."""
        ...

    async def arm_records(self, arm_ids: Collection[str]) -> dict[str, ArmRecord]:
        """The stored record of each of these arms that has one."""
        ...
