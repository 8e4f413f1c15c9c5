"""The projections this store holds: each task it runs, as it last committed it.

An append to a held task is written in one statement that checks the row is still where the
held projection says (see committer.py); the follower follows a held task's log from the store's
own commits, so a watcher of a task this store runs starts without reading the table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.postgres.follower import Follower
from orchestrator_svc.store.projection import apply

# Projections of tasks this store writes to (the ones its replica runs), most recent last.
_MAX_HELD_PROJECTIONS = 10_000


@dataclass(eq=False)
class TaskRow:
    """A task row as this store holds it, or holds FOR UPDATE during a commit: its projection
    as the batch changes it."""

    task: pb.Task
    finished: bool
    lease_owner: str | None = None
    changed: bool = False
    subtask_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.subtask_index.update(
            (subtask.subtask_id, position) for position, subtask in enumerate(self.task.subtasks)
        )

    def apply(self, task_id: str, events: Sequence[pb.TaskEvent], into: list[pb.TaskEvent]) -> int:
        """Number `events` after the projection's last seq, project them, add them to `into`
        (the rows to insert); the new last seq."""
        for event in events:
            event.seq = self.task.last_seq + 1
            event.task_id = task_id
            apply(self.task, event, self.subtask_index)
            into.append(event)
        self.finished = events[-1].HasField("finished")
        return self.task.last_seq


class HeldProjections:
    """task_id -> its row as this store last committed it, for the tasks this store runs (the
    least recently written dropped past a bound)."""

    def __init__(self, follower: Follower) -> None:
        self._follower = follower
        self._rows: OrderedDict[str, TaskRow] = OrderedDict()

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._rows

    def __getitem__(self, task_id: str) -> TaskRow:
        return self._rows[task_id]

    def get(self, task_id: str) -> TaskRow | None:
        return self._rows.get(task_id)

    def hold(self, row: TaskRow) -> None:
        """Keep a task's projection for the one-statement append path, and follow its log from
        here on (a finished task is let go instead)."""
        task_id = row.task.task_id
        if row.finished:
            self.unhold(task_id)
            return
        self._rows[task_id] = row
        self._rows.move_to_end(task_id)
        self._follower.hold(task_id, row.task.last_seq)
        if len(self._rows) > _MAX_HELD_PROJECTIONS:
            self.unhold(next(iter(self._rows)))

    def unhold(self, task_id: str) -> None:
        self._rows.pop(task_id, None)
        self._follower.release(task_id)
