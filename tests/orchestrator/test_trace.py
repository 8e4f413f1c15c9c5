"""W3C trace context: taken from the client or started, carried to every arm, in every log line."""

from __future__ import annotations

from typing import Any

import structlog
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.telemetry import trace

CLIENT_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def recording_arm(seen: list[SubtaskInput]) -> Arm:
    arm = Arm(arm_type="probe", capabilities=("general",))

    @arm.handler
    async def run(inp: SubtaskInput) -> dict[str, Any]:
        seen.append(inp)
        structlog.get_logger("probe").info("probe_ran")
        return {"ok": True}

    return arm


async def test_client_traceparent_reaches_every_arm_as_a_child_span(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """The arm sees the client's trace id with a new span id; the task records the trace."""
    seen: list[SubtaskInput] = []
    server = await start_arm(recording_arm(seen))
    orch = await start_orchestrator([server.address], wait_for=("probe",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="one", arm_type="probe")
    plan.steps.add(step_id="two", arm_type="probe", depends_on=["one"])
    with structlog.testing.capture_logs([structlog.contextvars.merge_contextvars]) as logs:
        task = (
            await stub.SubmitTask(
                pb.SubmitTaskRequest(goal="Follow the trace through the mesh", plan=plan),
                metadata=(("traceparent", CLIENT_TRACE),),
            )
        ).task
        async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
            pass
    assert task.traceparent == CLIENT_TRACE
    assert len(seen) == 2
    trace_id = trace.trace_id(CLIENT_TRACE)
    spans = set()
    for inp in seen:
        parsed = trace.parse(inp.traceparent)
        assert parsed is not None
        assert parsed[0] == trace_id
        spans.add(parsed[1])
    assert len(spans) == 2
    assert "00f067aa0ba902b7" not in spans
    probe_lines = [line for line in logs if line["event"] == "probe_ran"]
    assert [line["trace_id"] for line in probe_lines] == [trace_id, trace_id]
    assert {line["task_id"] for line in probe_lines} == {task.task_id}
    task_lines = [line for line in logs if line.get("task_id") == task.task_id]
    assert any(
        line["event"] == "task_succeeded" and line["trace_id"] == trace_id for line in task_lines
    )


async def test_missing_or_bad_traceparent_starts_a_trace(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """Without a valid traceparent the server starts a new trace and still propagates it."""
    seen: list[SubtaskInput] = []
    server = await start_arm(recording_arm(seen))
    orch = await start_orchestrator([server.address], wait_for=("probe",))
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="one", arm_type="probe")
    task = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal="Start a trace for me please", plan=plan),
            metadata=(("traceparent", "00-garbage"),),
        )
    ).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    started = trace.parse(task.traceparent)
    assert started is not None
    assert trace.trace_id(seen[0].traceparent) == started[0]


async def test_otel_spans_share_the_trace_the_arms_see(
    start_arm, start_orchestrator, connect
) -> None:  # type: ignore[no-untyped-def]
    """With OpenTelemetry export on, a task span and a span per step carry the W3C ids."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from orchestrator_svc.telemetry.otel import TaskTracer

    seen: list[SubtaskInput] = []
    server = await start_arm(recording_arm(seen))
    orch = await start_orchestrator([server.address], wait_for=("probe",))
    exporter = InMemorySpanExporter()
    orch.runner.otel = TaskTracer(exporter, batch=False)
    stub = connect(orch.address)
    plan = pb.Plan()
    plan.steps.add(step_id="one", arm_type="probe")
    plan.steps.add(step_id="two", arm_type="probe", depends_on=["one"])
    task = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal="Export the trace of this task", plan=plan),
            metadata=(("traceparent", CLIENT_TRACE),),
        )
    ).task
    async for _ in stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=30):
        pass
    orch.runner.otel.shutdown()
    spans = exporter.get_finished_spans()
    trace_id = int(trace.trace_id(CLIENT_TRACE), 16)
    assert {s.context.trace_id for s in spans} == {trace_id}
    steps = {
        s.attributes["step_id"]: s for s in spans if s.attributes and "step_id" in s.attributes
    }
    assert set(steps) == {"one", "two"}
    task_spans = [s for s in spans if s.attributes and s.attributes.get("task_id") == task.task_id]
    assert len(task_spans) == 1
    dispatched = {trace.parse(inp.traceparent)[1] for inp in seen}  # type: ignore[index]
    assert {format(s.context.span_id, "016x") for s in steps.values()} == dispatched
