"""An LLM endpoint that answers garbage: a full task through real gRPC still completes, on the
offline brain, and its events say the LLM was not used and why.

(tests/orchestrator/test_brain_engine.py covers a chat completion whose content is not JSON;
these are the layers below and around it: the HTTP body, the completion's shape, the schema.)
"""

from __future__ import annotations

import pytest
from octollm.v1 import orchestrator_service_pb2 as pb

from tests.chaos.history import assert_consistent_history, finished_history
from tests.llm.fake_openai import FakeOpenAI, Reply, completion, error
from tests.role_arms import scribe

GOAL = "Write a short note about credit-based flow control"

GARBAGE = {
    "html instead of JSON": Reply(body="<html><body>502 Bad Gateway</body></html>"),
    "truncated JSON": Reply(body='{"id": "chatcmpl-1", "choices": [{"message": {"con'),
    "binary noise": Reply(body="\x00\xff\xfe garbage \u2028\x1b[31m"),
    "completion of the wrong shape": Reply(body={"choices": "none", "usage": -1}),
    "no choices": Reply(
        body={"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
    ),
    "JSON breaking every schema": completion({"unexpected": [1, 2, 3], "domain": 42}),
    "server error with a garbage body": error(500, "\x00" * 64),
}


@pytest.mark.parametrize("reply", list(GARBAGE.values()), ids=list(GARBAGE))
async def test_llm_garbage_falls_back_to_the_offline_brain(
    reply: Reply, start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Any LLM garbage: the task runs to its end on the heuristics and the events say so (echo's
    copy of the goal is no answer, so that end is a failed validation, not a crash)."""
    fake = await FakeOpenAI([reply]).start()
    try:
        roles = await start_arm(scribe())
        orch = await start_orchestrator(
            [roles.address],
            wait_for=("scribe",),
            llm_base_url=fake.base_url,
            llm_model="fake-model",
            llm_max_retries=0,
            llm_output_retries=1,
            llm_timeout_s=5,
        )
        stub = connect(orch.address)
        task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal=GOAL))).task
        events, done = await finished_history(stub, task.task_id, timeout_s=60)
    finally:
        await fake.close()
    assert fake.requests, "the orchestrator never asked the LLM"
    assert_consistent_history(events, done)
    assert done.state == pb.TASK_STATE_FAILED
    assert done.failure.reason == "VALIDATION_FAILED", done.failure
    assert GOAL in done.result.answer
    reasons = " ".join(e.state_changed.reason for e in events if e.HasField("state_changed"))
    assert "heuristic" in reasons, reasons
    assert "LLM parsed" not in reasons
