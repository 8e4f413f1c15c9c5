"""Reference arms, by name, for ``octollm arm <name>``: each factory builds a fresh Arm."""

from __future__ import annotations

from collections.abc import Callable

from arm_sdk import Arm
from orchestrator_svc.arms import coder, echo, executor, judge, planner, retriever, safety, sleep

REFERENCE_ARMS: dict[str, Callable[[], Arm]] = {
    "coder": coder.build,
    "echo": echo.build,
    "executor": executor.build,
    "judge": judge.build,
    "planner": planner.build,
    "retriever": retriever.build,
    "safety": safety.build,
    "sleep": sleep.build,
}

__all__ = ["REFERENCE_ARMS"]
