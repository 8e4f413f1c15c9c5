"""Per-client limits: a request-rate token bucket and a cap on unfinished tasks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Buckets of idle clients are forgotten past this many clients, so peers cannot grow memory.
_MAX_TRACKED = 10_000


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `burst` banked; one request spends one token."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> float:
        """Spend a token and return 0, or return the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimit:
    """One bucket per client identity; `rps` 0 turns it off. Burst is max(1, rps)."""

    def __init__(self, rps: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rps = rps
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def wait_s(self, identity: str) -> float:
        """0 when `identity` may go on now (and it is counted), else how long it should wait."""
        if self.rps <= 0:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            if len(self._buckets) >= _MAX_TRACKED:
                self._forget_idle(now)
            bucket = self._buckets[identity] = TokenBucket(self.rps, max(1.0, self.rps), stamp=now)
        return bucket.take(now)

    def _forget_idle(self, now: float) -> None:
        burst = max(1.0, self.rps)
        full = [
            k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * self.rps >= burst
        ]
        for key in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[key]


class TaskQuota:
    """At most `limit` unfinished tasks per identity (0 = off).

    `is_unfinished(task_id)` says whether a task still runs; finished ones are pruned lazily on the
    client's next submit. Submits in flight hold a slot, so concurrent submits cannot overshoot.
    """

    def __init__(self, limit: int, is_unfinished: Callable[[str], bool]) -> None:
        self.limit = limit
        self._is_unfinished = is_unfinished
        self._tasks: dict[str, set[str]] = {}
        self._pending: dict[str, int] = {}

    def reserve(self, identity: str) -> bool:
        """Hold a slot for one submit; False when the client is at its limit."""
        if self.limit <= 0:
            return True
        tasks = {t for t in self._tasks.get(identity, ()) if self._is_unfinished(t)}
        if tasks:
            self._tasks[identity] = tasks
        else:
            self._tasks.pop(identity, None)
        if len(tasks) + self._pending.get(identity, 0) >= self.limit:
            return False
        self._pending[identity] = self._pending.get(identity, 0) + 1
        return True

    def release(self, identity: str, task_id: str | None) -> None:
        """End a reserved submit; `task_id` is the task it created (None when it failed)."""
        if self.limit <= 0:
            return
        left = self._pending.get(identity, 1) - 1
        if left > 0:
            self._pending[identity] = left
        else:
            self._pending.pop(identity, None)
        if task_id:
            self._tasks.setdefault(identity, set()).add(task_id)

    def count(self, identity: str) -> int:
        return len(self._tasks.get(identity, ()))
