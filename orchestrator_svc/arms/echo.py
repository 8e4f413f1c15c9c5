"""The echo arm: returns its input and description; the mesh's no-op for tests and benchmarks."""

from __future__ import annotations

from arm_sdk import Arm, SubtaskInput, SubtaskOutput


def build(arm_id: str | None = None) -> Arm:
    """A new echo arm."""
    arm = Arm(
        arm_type="echo",
        description="Returns its input and description unchanged",
        capabilities=("echo", "general"),
        max_concurrency=64,
        cost_tier="low",
        version="0.1.0",
        arm_id=arm_id,
        deterministic=True,
    )

    @arm.handler
    async def echo(inp: SubtaskInput) -> SubtaskOutput:
        return SubtaskOutput(output={"echo": inp.input, "description": inp.description})

    return arm
