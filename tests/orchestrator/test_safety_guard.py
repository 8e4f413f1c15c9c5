"""OCTOLLM_SAFETY=on: the safety arm guards task input and the answer; fails closed."""

from __future__ import annotations

from typing import Any

import structlog
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS

SECRET = "AKIAIOSFODNN7EXAMPLE"
EMAIL = "alice@example.com"


def parrot_arm(seen: list[str]) -> Arm:
    """Repeats the goal it was given, so a leak into planning would show in the answer; it
    declares the roles of a general goal's plan, so every step of one runs on it."""
    arm = Arm(arm_type="parrot", capabilities=("planning", "retrieval", "review"))

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        seen.append(str(inp.input))
        return {"answer": f"you asked: {inp.input.get('goal', '')} (reply to {EMAIL})"}

    return arm


async def test_safety_redacts_input_and_answer_and_reports_kinds(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Secrets in the goal never reach an arm or the answer; events name kinds, not values."""
    seen: list[str] = []
    parrot = await start_arm(parrot_arm(seen))
    safety = await start_arm(REFERENCE_ARMS["safety"]())
    orch = await start_orchestrator(
        [parrot.address, safety.address], wait_for=("parrot", "safety"), safety=True
    )
    stub = connect(orch.address)
    goal = f"Summarise the account for key {SECRET} and mail it"
    with structlog.testing.capture_logs() as logs:
        task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=goal))).task
        events = [
            r.event
            async for r in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30)
        ]
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_SUCCEEDED, done.failure
    assert seen
    assert all(SECRET not in text for text in seen)
    assert SECRET not in done.result.answer
    assert EMAIL not in done.result.answer
    reasons = " ".join(e.state_changed.reason for e in events if e.HasField("state_changed"))
    assert "safety redacted" in reasons
    assert SECRET not in reasons
    assert all(SECRET not in str(line) for line in logs)


async def test_safety_on_without_a_safety_arm_fails_closed(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With OCTOLLM_SAFETY=on and no safety arm the task fails SAFETY_UNAVAILABLE, unplanned."""
    parrot = await start_arm(parrot_arm([]))
    orch = await start_orchestrator([parrot.address], wait_for=("parrot",), safety=True)
    stub = connect(orch.address)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal="Say something harmless"))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_FAILED
    assert done.failure.reason == "SAFETY_UNAVAILABLE"
    assert not done.subtasks


async def test_a_scan_of_a_quoted_text_still_reports_what_the_guard_redacted(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """The guard redacts the goal before planning, so the scan of the text it quotes sees
    [REDACTED:<KIND>] markers: they count as findings of their kind ("already redacted"), and
    the answer does not say the text was clean."""
    safety = await start_arm(REFERENCE_ARMS["safety"]())
    judge = await start_arm(REFERENCE_ARMS["judge"]())
    orch = await start_orchestrator(
        [safety.address, judge.address], wait_for=("safety", "judge"), safety=True
    )
    goal = f"Scan this note for secrets and personal data: 'Write to {EMAIL} with key {SECRET}.'"
    stub = connect(orch.address)
    task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=goal))).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
    assert done.state == pb.TASK_STATE_SUCCEEDED, done.failure
    assert "- AWS_ACCESS_KEY: 1 (already redacted), severity high" in done.result.answer
    assert "- EMAIL: 1 (already redacted), severity medium" in done.result.answer
    assert "no secrets" not in done.result.answer
    assert SECRET not in done.result.answer
