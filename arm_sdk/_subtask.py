"""The Python face of a subtask: what a handler receives and what it returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from octollm.v1 import arm_service_pb2 as arm_pb

from arm_sdk.structs import struct_to_dict


@dataclass(frozen=True, slots=True)
class Budget:
    """Resources a subtask may spend; 0 means no limit from the orchestrator."""

    max_tokens: int = 0
    max_cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class SubtaskInput:
    """One dispatched subtask, as a handler sees it."""

    subtask_id: str
    attempt: int
    task_id: str
    step_id: str
    description: str
    input: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    acceptance_criteria: tuple[str, ...] = ()
    # Seconds left when the subtask was dispatched; None when the orchestrator set no limit.
    timeout: float | None = None
    traceparent: str = ""
    budget: Budget = field(default_factory=Budget)
    # What the orchestrator wants from the arm for this subtask (the plan step's).
    required_capabilities: tuple[str, ...] = ()

    @classmethod
    def from_proto(cls, dispatch: arm_pb.Dispatch) -> SubtaskInput:
        """Build the handler's view of a Dispatch message."""
        timeout_ns = dispatch.timeout.seconds * 1_000_000_000 + dispatch.timeout.nanos
        return cls(
            subtask_id=dispatch.subtask_id,
            attempt=dispatch.attempt,
            task_id=dispatch.task_id,
            step_id=dispatch.step_id,
            description=dispatch.description,
            input=struct_to_dict(dispatch.input),
            context=struct_to_dict(dispatch.context),
            acceptance_criteria=tuple(dispatch.acceptance_criteria),
            timeout=timeout_ns / 1e9 if timeout_ns else None,
            traceparent=dispatch.traceparent,
            budget=Budget(
                max_tokens=dispatch.budget.max_tokens,
                max_cost_usd=dispatch.budget.max_cost_usd,
            ),
            required_capabilities=tuple(dispatch.required_capabilities),
        )


@dataclass(slots=True)
class SubtaskOutput:
    """A handler's successful outcome; a plain dict return is shorthand for ``output``."""

    output: dict[str, Any]
    confidence: float = 1.0
    model: str = ""
    tokens: int = 0
    cost_usd: float = 0.0


Handler: TypeAlias = Callable[[SubtaskInput], Awaitable["SubtaskOutput | dict[str, Any]"]]
