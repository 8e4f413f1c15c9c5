"""The recovery table: what to do after a subtask attempt fails. Pure; no I/O.

| failure                                 | action                                | at most |
|-----------------------------------------|---------------------------------------|---------|
| retryable with a retry_after (the arm   | reroute to another arm of the type    | 1       |
| is cooling down, rate-limited)          | when one is routable, else wait       | 3       |
|                                         | retry_after when it fits the time     |         |
|                                         | left, else give up with its reason    |         |
| DEADLINE_EXCEEDED (arm or mesh timeout) | retry with a 1.5x longer deadline, on | 2       |
|                                         | another arm when there is one         |         |
| the arm was lost, drained or not there  | reroute, avoiding the arm that failed | 1       |
| any other failure marked retryable      | retry after jittered backoff          | 3 [1]   |
| not retryable                           | give up: the step fails               | -       |

[1] OCTOLLM_MAX_RETRIES.

Budgets are counted per kind, so a step can time out twice and then be rerouted once. Every
retry's deadline is the base subtask timeout times `Retry.timeout_factor`, which counts the
timeouts so far (1.5x after one, 2.25x after two, whatever kind of retry follows): factors
never compound from one attempt's deadline to the next.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import grpc
from octollm.v1 import common_pb2

_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
# Reasons the mesh gives when the arm, not the work, was the problem.
ARM_UNAVAILABLE_REASONS = frozenset({"ARM_LOST", "ARM_DRAINING", "NO_ARM_FOR_TYPE"})

TIMEOUT_RETRIES = 2
REROUTES = 1
TRANSIENT_RETRIES = 3
TIMEOUT_GROWTH = 1.5
COOLDOWN_WAITS = 3
# Time the retried attempt itself needs after a cool-down wait, at the least.
COOLDOWN_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class Retry:
    """Try the step again."""

    kind: str  # "timeout" | "reroute" | "transient" | "cooldown"
    delay_s: float
    timeout_factor: float = 1.0  # of the base subtask timeout, not of the last attempt's
    avoid_arm: str = ""


@dataclass(slots=True)
class RecoveryBudget:
    """How many recoveries of each kind one step has used."""

    transient_retries: int = TRANSIENT_RETRIES
    used: dict[str, int] = field(default_factory=dict)
    # Why the last `next` gave up, when the reason is not the failure's own (for its message).
    gave_up_because: str = ""

    def next(
        self,
        failure: common_pb2.Failure,
        arm_id: str,
        *,
        remaining_s: float | None = None,
        other_arm: bool = False,
    ) -> Retry | None:
        """The retry to make after `failure` on `arm_id`, or None to give up.

        `remaining_s`: the task's time left (None: unbounded); `other_arm`: another arm of the
        type can take the step now. Both matter only for a failure with a retry_after."""
        self.gave_up_because = ""
        if not failure.retryable:
            return None
        if failure.HasField("retry_after"):
            return self._after_cooldown(failure, arm_id, remaining_s, other_arm)
        if failure.code == _DEADLINE:
            kind, limit = "timeout", TIMEOUT_RETRIES
        elif failure.reason in ARM_UNAVAILABLE_REASONS:
            kind, limit = "reroute", REROUTES
        else:
            kind, limit = "transient", self.transient_retries
        n = self.used.get(kind, 0)
        if n >= limit:
            return None
        self.used[kind] = n + 1
        factor = TIMEOUT_GROWTH ** self.used.get("timeout", 0)
        if kind == "timeout":
            # NOTE: the mesh uses the avoided arm still when it is the only one of its type.
            return Retry(kind, 0.0, timeout_factor=factor, avoid_arm=arm_id)
        if kind == "reroute":
            return Retry(kind, 0.0, timeout_factor=factor, avoid_arm=arm_id)
        # Full jitter on an exponential base: 0.1 s, 0.2 s, 0.4 s caps.
        return Retry(kind, random.uniform(0.0, 0.1 * 2**n), timeout_factor=factor)

    def _after_cooldown(
        self,
        failure: common_pb2.Failure,
        arm_id: str,
        remaining_s: float | None,
        other_arm: bool,
    ) -> Retry | None:
        wait = failure.retry_after.ToNanoseconds() / 1e9
        if other_arm and self.used.get("reroute", 0) < REROUTES:
            self.used["reroute"] = self.used.get("reroute", 0) + 1
            return Retry("reroute", 0.0, timeout_factor=self._factor(), avoid_arm=arm_id)
        n = self.used.get("cooldown", 0)
        if n >= COOLDOWN_WAITS:
            return None
        if remaining_s is not None and wait + COOLDOWN_MARGIN_S > remaining_s:
            self.gave_up_because = (
                f"the arm asks to wait {wait:.1f}s and the task has {max(0.0, remaining_s):.1f}s"
                " left"
            )
            return None
        self.used["cooldown"] = n + 1
        return Retry("cooldown", wait, timeout_factor=self._factor())

    def _factor(self) -> float:
        return TIMEOUT_GROWTH ** self.used.get("timeout", 0)
