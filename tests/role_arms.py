"""An arm that declares the roles of an offline general plan, for tests about something else.

Echo stands in for no role (see README "The brain, with or without an LLM"), so a test that
submits a goal without a plan and is about the API, the CLI, metrics or the store (not about
what the answer says) starts `scribe()` beside its other arms: it declares planning, retrieval
and review, so the outline, research and review steps of a general goal run on it, and it
answers like echo does (its input and description), so the answer carries the goal.

    from tests.role_arms import scribe
"""

from __future__ import annotations

from arm_sdk import Arm, SubtaskInput, SubtaskOutput

ROLES = ("planning", "retrieval", "review")


def scribe(arm_id: str | None = None) -> Arm:
    """A new scribe arm (arm type "scribe")."""
    arm = Arm(
        arm_type="scribe",
        description="Answers with its input (a test arm declaring the general plan's roles)",
        capabilities=ROLES,
        max_concurrency=64,
        cost_tier="low",
        arm_id=arm_id,
    )

    @arm.handler
    async def write(inp: SubtaskInput) -> SubtaskOutput:
        return SubtaskOutput(output={"echo": inp.input, "description": inp.description})

    return arm
