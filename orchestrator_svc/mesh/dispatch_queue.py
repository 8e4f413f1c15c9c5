"""The subtasks of one arm type waiting for credit, highest priority first."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from .connection import Pending

# Priorities 0..4 (the proto's Priority values; the engine maps UNSPECIFIED to NORMAL).
PRIORITY_LEVELS = 5


def _level(priority: int) -> int:
    return min(max(priority, 0), PRIORITY_LEVELS - 1)


class DispatchQueue:
    """A FIFO per priority: `popleft` takes the oldest subtask of the highest priority waiting;
    `appendleft` puts one back at the head of its priority (a failover or a requeue)."""

    __slots__ = ("_levels",)

    def __init__(self, pendings: Iterable[Pending] = ()) -> None:
        # NOTE: a fixed list, never resized: queue_depths reads len() from a metrics thread.
        self._levels: tuple[deque[Pending], ...] = tuple(deque() for _ in range(PRIORITY_LEVELS))
        for pending in pendings:
            self.append(pending)

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels)

    def __iter__(self) -> Iterator[Pending]:
        for level in reversed(self._levels):
            yield from level

    def append(self, pending: Pending) -> None:
        self._levels[_level(pending.priority)].append(pending)

    def appendleft(self, pending: Pending) -> None:
        self._levels[_level(pending.priority)].appendleft(pending)

    def popleft(self) -> Pending:
        """The next subtask to send; IndexError when the queue is empty."""
        for level in reversed(self._levels):
            if level:
                return level.popleft()
        raise IndexError("pop from an empty DispatchQueue")

    def pop_if_last(self, pending: Pending) -> bool:
        """Remove `pending` if it was the last queued at its priority (withdrawn at once)."""
        level = self._levels[_level(pending.priority)]
        if level and level[-1] is pending:
            level.pop()
            return True
        return False
