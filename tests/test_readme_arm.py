"""The README's "Write an arm" example, run as written against a real orchestrator."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import grpc
from octollm.v1 import orchestrator_service_pb2 as pb

from tests.chaos.history import watch_until_finished

ROOT = Path(__file__).resolve().parent.parent


def readme_arm() -> types.ModuleType:
    """The example's module, imported (so its `arm.run(...)` under __main__ does not run)."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Write an arm\s*$(.*?)(?=^##\s)", text, re.M | re.S)
    assert section is not None, "README.md has no '## Write an arm' section"
    code = re.search(r"```python\n(.*?)```", section.group(1), re.S)
    assert code is not None, "the section has no python example"
    module = types.ModuleType("readme_arm")
    exec(compile(code.group(1), "README.md (Write an arm)", "exec"), module.__dict__)
    return module


async def test_the_example_arm_answers_and_fails_precisely(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    arm = readme_arm().arm
    server = await start_arm(arm)
    orch = await start_orchestrator([server.address], wait_for=("shouter",))
    stub = connect(orch.address)

    async def run(text: object) -> pb.Task:
        plan = pb.Plan()
        plan.steps.add(step_id="s", arm_type="shouter").input.update({"text": text})
        task = (
            await stub.SubmitTask(pb.SubmitTaskRequest(goal="Shout it to the mesh", plan=plan))
        ).task
        await watch_until_finished(stub, task.task_id, timeout_s=20)
        return (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task

    good = await run("hello mesh")
    assert good.state == pb.TASK_STATE_SUCCEEDED
    assert good.result.answer == "HELLO MESH"
    bad = await run(5)
    assert bad.state == pb.TASK_STATE_FAILED
    failure = bad.subtasks[0].failure
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "BAD_INPUT",
    )
    assert bad.subtasks[0].attempt == 1  # not retryable: tried once
