"""The sleep arm: waits a given time while reporting progress; can fail on request.

Input: ``{"seconds": float (default 0.1, capped at 3600), "fail": "transient" | "fatal"}``.
Output: ``{"slept": seconds}``. ``fail`` is raised after the sleep: "transient" as a retryable
UNAVAILABLE/SIMULATED_TRANSIENT, "fatal" as a non-retryable INVALID_ARGUMENT/SIMULATED_FATAL.
Used to exercise timeouts, cancellation, progress, retries and draining.
"""

from __future__ import annotations

import asyncio
import math

import grpc

from arm_sdk import Arm, ArmError, SubtaskInput, SubtaskOutput, report_progress

DEFAULT_SECONDS = 0.1
MAX_SECONDS = 3600.0
STEPS = 10


def build(arm_id: str | None = None) -> Arm:
    """A new sleep arm."""
    arm = Arm(
        arm_type="sleep",
        description="Sleeps for input.seconds, reporting progress; fails on request",
        capabilities=("sleep", "test"),
        max_concurrency=64,
        cost_tier="low",
        version="0.1.0",
        input_schema={
            "type": "object",
            "properties": {
                "seconds": {"type": "number", "minimum": 0, "maximum": MAX_SECONDS},
                "fail": {"enum": ["transient", "fatal"]},
            },
        },
        output_schema={"type": "object", "properties": {"slept": {"type": "number"}}},
        arm_id=arm_id,
    )

    @arm.handler
    async def sleep(inp: SubtaskInput) -> SubtaskOutput:
        seconds = _seconds(inp.input.get("seconds", DEFAULT_SECONDS))
        for step in range(1, STEPS + 1):
            await asyncio.sleep(seconds / STEPS)
            done = seconds * step / STEPS
            await report_progress(step / STEPS, f"slept {done:g} of {seconds:g} s")
        fail = inp.input.get("fail")
        if fail == "transient":
            raise ArmError(
                "simulated transient failure",
                code=grpc.StatusCode.UNAVAILABLE,
                reason="SIMULATED_TRANSIENT",
                retryable=True,
            )
        if fail == "fatal":
            raise ArmError(
                "simulated fatal failure",
                code=grpc.StatusCode.INVALID_ARGUMENT,
                reason="SIMULATED_FATAL",
                retryable=False,
            )
        return SubtaskOutput(output={"slept": seconds})

    return arm


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _bad_seconds(value)
    try:
        seconds = float(value)
    except ValueError:
        raise _bad_seconds(value) from None
    if math.isnan(seconds) or seconds < 0:
        raise _bad_seconds(value)
    return min(seconds, MAX_SECONDS)


def _bad_seconds(value: object) -> ArmError:
    return ArmError(
        f"input.seconds must be a non-negative number, got {value!r}",
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="BAD_INPUT",
        metadata={"field": "seconds"},
    )
