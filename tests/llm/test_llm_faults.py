"""A task with an LLM in trouble degrades instead of breaking: unreachable, stalled and runaway
endpoints, and a token budget, each through a real orchestrator, real arms and a fake OpenAI
server. A plain goal runs on the mesh of `start_docs_mesh`, whose offline brain answers it from
an indexed document; an explicit echo plan runs on echo alone. Assertions are on states,
reasons, notes and counters, never on wall-clock."""

from __future__ import annotations

import asyncio
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from tests.llm.conftest import StartDocsMesh, assert_served_from_the_documents
from tests.llm.fake_openai import FakeOpenAI, Reply, completion, refused_base_url

GOAL = "Explain in two sentences why bounded queues keep a busy service responsive."


async def run_tasks(
    orch: Any, connect: Any, requests: list[pb.SubmitTaskRequest]
) -> list[tuple[pb.Task, list[str]]]:
    """Submit all at once; return each finished task with its state-change reasons."""
    stub = connect(orch.address)

    async def one(request: pb.SubmitTaskRequest) -> tuple[pb.Task, list[str]]:
        task = (await stub.SubmitTask(request)).task
        watch = stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=60)
        reasons = [r.event.state_changed.reason async for r in watch]
        done = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
        return done, [r for r in reasons if r]

    return list(await asyncio.gather(*(one(r) for r in requests)))


def echo_plan_request(goal: str = GOAL, **budget: Any) -> pb.SubmitTaskRequest:
    """A task with a one-step echo plan (so only integration and validation ask the LLM)."""
    plan = pb.Plan()
    plan.steps.add(step_id="say", arm_type="echo").input.update({"answer": "queues bound work"})
    request = pb.SubmitTaskRequest(goal=goal, plan=plan)
    for name, value in budget.items():
        if name == "max_time_s":
            request.budget.max_time.FromSeconds(value)
        else:
            setattr(request.budget, name, value)
    return request


async def test_a_brain_call_that_takes_the_task_over_its_token_budget_stops_it(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """Budget 1000 tokens; integration's LLM call costs 1300: the task stops BUDGET_EXCEEDED
    with the step outputs (not SUCCEEDED over budget), and max_tokens sent fitted the budget."""
    fake = await FakeOpenAI(
        [completion({"answer": "Queues bound work."}, prompt_tokens=700, completion_tokens=600)]
    ).start()
    try:
        echo = await start_arm(REFERENCE_ARMS["echo"]())
        orch = await start_orchestrator(
            [echo.address], wait_for=("echo",), llm_base_url=fake.base_url, llm_model="fake-model"
        )
        ((task, _),) = await run_tasks(orch, connect, [echo_plan_request(max_tokens=1000)])
    finally:
        await fake.close()
    assert task.state == pb.TASK_STATE_BUDGET_EXCEEDED
    assert task.failure.reason == "BUDGET_EXCEEDED"
    assert task.usage.tokens == 1300
    assert "say" in task.result.outputs.fields
    assert all(r["max_tokens"] <= 1000 for r in fake.requests)


async def test_a_tiny_token_budget_keeps_the_llm_unasked(
    start_docs_mesh: StartDocsMesh, connect: Any
) -> None:
    """Budget 100 tokens: no brain step can fit a call, so the model is never asked, the task
    is answered from the indexed documents and stays within its budget, and its events say
    why."""
    fake = await FakeOpenAI([completion({"answer": "x"}, prompt_tokens=900)]).start()
    try:
        orch = await start_docs_mesh(llm_base_url=fake.base_url, llm_model="fake-model")
        request = pb.SubmitTaskRequest(goal=GOAL)
        request.budget.max_tokens = 100
        ((task, reasons),) = await run_tasks(orch, connect, [request])
    finally:
        await fake.close()
    assert fake.requests == []
    assert_served_from_the_documents(task)
    assert task.usage.tokens == 0
    assert any("no tokens left in the budget" in r for r in reasons)


async def test_a_stalled_endpoint_leaves_the_task_time_for_its_fallback(
    start_docs_mesh: StartDocsMesh, connect: Any
) -> None:
    """The server accepts and says nothing; the client timeout is 30 s and the tasks have 6 s:
    each task's first call gets half its time, then the task stops asking and its fallbacks
    finish it SUCCEEDED from the documents (not DEADLINE_EXCEEDED); both concurrent tasks do,
    and the prompts of the calls given up on are counted."""
    fake = await FakeOpenAI([Reply(body=completion({}).body, delay_s=120)]).start()
    try:
        orch = await start_docs_mesh(
            llm_base_url=fake.base_url, llm_model="fake-model", llm_timeout_s=30
        )
        requests = [pb.SubmitTaskRequest(goal=GOAL) for _ in range(2)]
        for request in requests:
            request.budget.max_time.FromSeconds(6)
        finished = await run_tasks(orch, connect, requests)
    finally:
        await fake.close()
    for task, reasons in finished:
        assert_served_from_the_documents(task)
        assert any("timeout after" in r and "heuristic" in r for r in reasons), reasons
        assert any("timed out earlier" in r for r in reasons), reasons
    assert max(task.usage.tokens for task, _ in finished) > 0


async def test_a_runaway_generation_is_cut_off_and_the_task_served(
    start_docs_mesh: StartDocsMesh, connect: Any
) -> None:
    """The server streams forever, ignoring max_tokens: the client stops reading at twice the
    limit and closes the stream (the server sees the disconnect), the streamed tokens count, and
    the task still SUCCEEDS on its fallbacks (from the documents); so does an echo-plan task
    beside it."""
    fake = await FakeOpenAI(
        [Reply(body=completion("na " * 50).body, chunk_delay_s=0.001, endless=True)]
    ).start()
    try:
        orch = await start_docs_mesh(
            llm_base_url=fake.base_url, llm_model="fake-model", llm_output_retries=0
        )
        requests = [pb.SubmitTaskRequest(goal=GOAL), echo_plan_request()]
        for request in requests:
            request.budget.max_time.FromSeconds(60)
        finished = await run_tasks(orch, connect, requests)
    finally:
        await fake.close()
    for task, _ in finished:
        assert task.state == pb.TASK_STATE_SUCCEEDED, task.failure
        assert task.usage.tokens > 0
    assert_served_from_the_documents(finished[0][0])
    assert fake.disconnects >= len(finished)
    assert fake.streams_open == 0


async def test_an_unreachable_endpoint_costs_tasks_nothing_but_a_note(
    start_docs_mesh: StartDocsMesh, connect: Any
) -> None:
    """Wrong port: every task SUCCEEDS on the rules, answered from the indexed documents;
    after the first failures the breaker is open and the notes say the LLM is cooling down."""
    orch = await start_docs_mesh(llm_base_url=refused_base_url(), llm_model="m", llm_max_retries=0)
    finished = await run_tasks(orch, connect, [pb.SubmitTaskRequest(goal=GOAL) for _ in range(4)])
    assert [t.state for t, _ in finished] == [pb.TASK_STATE_SUCCEEDED] * 4
    for task, _ in finished:
        assert_served_from_the_documents(task)
    notes = [r for _, reasons in finished for r in reasons]
    assert any("connection failed" in r for r in notes)
    assert any("cooling down" in r for r in notes)


async def test_a_model_the_endpoint_does_not_serve_is_caught_at_start(
    start_docs_mesh: StartDocsMesh, connect: Any
) -> None:
    """OCTOLLM_LLM_MODEL is not in /v1/models: the orchestrator runs its brain offline, asks
    the endpoint nothing, and every task's events say why."""
    fake = await FakeOpenAI([completion({"answer": "x"})]).start()
    fake.model_ids = ["gemma3-270m"]
    try:
        orch = await start_docs_mesh(llm_base_url=fake.base_url, llm_model="gemma3")
        ((task, reasons),) = await run_tasks(orch, connect, [pb.SubmitTaskRequest(goal=GOAL)])
    finally:
        await fake.close()
    assert_served_from_the_documents(task)
    assert fake.requests == []
    assert any("LLM not used: model 'gemma3' is not served" in r for r in reasons), reasons


async def test_repair_rounds_ask_the_model_afresh_instead_of_the_cache(
    start_arm: Any, start_orchestrator: Any, connect: Any
) -> None:
    """An answer that keeps failing its criterion is re-integrated each repair round by a new
    LLM call (with the cache on, the same prompt would otherwise get the same reply)."""

    def answers(body: dict[str, Any], index: int) -> Reply:
        return completion({"answer": f"Bounded queues keep work in check (draft {index})."})

    fake = await FakeOpenAI(answers).start()
    try:
        echo = await start_arm(REFERENCE_ARMS["echo"]())
        orch = await start_orchestrator(
            [echo.address],
            wait_for=("echo",),
            llm_base_url=fake.base_url,
            llm_model="fake-model",
            cache_ttl_s=300,
        )
        request = echo_plan_request()
        request.acceptance_criteria.append("mentions zebras")
        ((task, reasons),) = await run_tasks(orch, connect, [request])
    finally:
        await fake.close()
    rounds = sum(r.startswith("combining step outputs") for r in reasons)
    integrations = [r for r in fake.requests if "final answer" in r["messages"][0]["content"]]
    assert rounds > 1
    assert len(integrations) == rounds
    assert task.state == pb.TASK_STATE_FAILED
