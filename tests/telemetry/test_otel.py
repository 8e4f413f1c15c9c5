"""OpenTelemetry spans of tasks and subtasks reuse the mesh's W3C trace ids."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from structlog.testing import capture_logs

from orchestrator_svc.config import Settings
from orchestrator_svc.telemetry import otel, trace
from orchestrator_svc.telemetry.otel import TaskTracer, tracer_from_settings


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exporter: InMemorySpanExporter) -> Iterator[TaskTracer]:
    tracer = TaskTracer(exporter, batch=False)
    yield tracer
    tracer.shutdown()


def _ids(traceparent: str) -> tuple[int, int]:
    parsed = trace.parse(traceparent)
    assert parsed is not None
    return int(parsed[0], 16), int(parsed[1], 16)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_task_span_is_in_the_tasks_trace(
    tracer: TaskTracer, exporter: InMemorySpanExporter
) -> None:
    """The task span has the traceparent's trace id, its span as parent, and task_id/goal."""
    traceparent = trace.start()
    with tracer.task_span("t-1", traceparent, "summarise the docs"):
        pass
    (span,) = exporter.get_finished_spans()
    trace_id, parent_span_id = _ids(traceparent)
    assert span.context is not None
    assert span.context.trace_id == trace_id
    assert span.parent is not None
    assert span.parent.span_id == parent_span_id
    assert span.attributes is not None
    assert span.attributes["task_id"] == "t-1"
    assert span.attributes["goal"] == "summarise the docs"


def test_subtask_spans_take_the_dispatch_ids_under_the_task_span(
    tracer: TaskTracer, exporter: InMemorySpanExporter
) -> None:
    """Each subtask span's ids are its dispatch traceparent's; its parent is the task span."""
    task_tp = trace.start()
    dispatches = [trace.child(task_tp), trace.child(task_tp)]
    with tracer.task_span("t-1", task_tp, "goal"):
        for n, dispatch_tp in enumerate(dispatches):
            with tracer.subtask_span(dispatch_tp, f"s{n}", "coder"):
                pass
    spans = exporter.get_finished_spans()
    (task_span,) = _by_name(spans, "octollm.task")
    subtasks = _by_name(spans, "octollm.subtask")
    assert task_span.context is not None
    assert len(subtasks) == 2
    for n, (span, dispatch_tp) in enumerate(zip(subtasks, dispatches, strict=True)):
        assert span.context is not None
        assert (span.context.trace_id, span.context.span_id) == _ids(dispatch_tp)
        assert span.parent is not None
        assert span.parent.span_id == task_span.context.span_id
        assert span.kind is SpanKind.CLIENT
        assert span.attributes is not None
        assert span.attributes["step_id"] == f"s{n}"
        assert span.attributes["arm_type"] == "coder"


async def test_subtask_spans_in_concurrent_asyncio_tasks_find_their_task_span(
    tracer: TaskTracer, exporter: InMemorySpanExporter
) -> None:
    """Steps run as asyncio tasks inside a task span nest under it, each with its own ids."""
    task_tp = trace.start()

    async def step(n: int, dispatch_tp: str) -> None:
        with tracer.subtask_span(dispatch_tp, f"s{n}", "retriever"):
            await asyncio.sleep(0)

    dispatches = [trace.child(task_tp) for _ in range(3)]
    with tracer.task_span("t-2", task_tp, "goal"):
        async with asyncio.TaskGroup() as group:
            for n, dispatch_tp in enumerate(dispatches):
                group.create_task(step(n, dispatch_tp))
    spans = exporter.get_finished_spans()
    (task_span,) = _by_name(spans, "octollm.task")
    assert task_span.context is not None
    got = {
        (s.context.trace_id, s.context.span_id): s.parent.span_id
        for s in _by_name(spans, "octollm.subtask")
        if s.context is not None and s.parent is not None
    }
    assert got == {_ids(tp): task_span.context.span_id for tp in dispatches}


def test_subtask_span_outside_a_task_span_is_a_root_with_the_dispatch_ids(
    tracer: TaskTracer, exporter: InMemorySpanExporter
) -> None:
    """Without a task span of the same trace, the subtask span still carries the dispatch ids."""
    other_tp = trace.start()
    dispatch_tp = trace.child(trace.start())
    with tracer.task_span("t-3", other_tp, "goal"), tracer.subtask_span(dispatch_tp, "s", "x"):
        pass
    (span,) = _by_name(exporter.get_finished_spans(), "octollm.subtask")
    assert span.context is not None
    assert (span.context.trace_id, span.context.span_id) == _ids(dispatch_tp)
    assert span.parent is None


def test_ids_are_random_again_after_a_subtask_span(
    tracer: TaskTracer, exporter: InMemorySpanExporter
) -> None:
    """The pinned ids apply to the subtask span only, not to spans started inside it."""
    task_tp = trace.start()
    dispatch_tp = trace.child(task_tp)
    with (
        tracer.task_span("t-4", task_tp, "goal"),
        tracer.subtask_span(dispatch_tp, "s", "x"),
        tracer.task_span("t-5", task_tp, "goal"),
    ):
        pass
    inner = next(
        s
        for s in exporter.get_finished_spans()
        if s.attributes is not None and s.attributes.get("task_id") == "t-5"
    )
    assert inner.context is not None
    assert inner.context.span_id != _ids(dispatch_tp)[1]


def test_tracer_from_settings_is_none_without_an_endpoint() -> None:
    """No OCTOLLM_OTEL_ENDPOINT: no tracer, so the engine pays nothing."""
    assert tracer_from_settings(Settings(otel_endpoint="")) is None


def test_tracer_from_settings_builds_an_otlp_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint with the packages installed gives a TaskTracer that shuts down cleanly."""
    monkeypatch.setenv("OCTOLLM_OTEL_ENDPOINT", "http://127.0.0.1:4317")
    tracer = tracer_from_settings(Settings())
    assert isinstance(tracer, TaskTracer)
    tracer.shutdown()


def test_tracer_from_settings_warns_once_when_packages_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Endpoint set but OpenTelemetry not importable: None, and one warning naming the extra."""
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    monkeypatch.setattr(otel, "_warned_missing", False)
    settings = Settings(otel_endpoint="http://127.0.0.1:4317")
    with capture_logs() as logs:
        assert tracer_from_settings(settings) is None
        assert tracer_from_settings(settings) is None
    warnings = [e for e in logs if e["event"] == "otel_export_disabled"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "octollm-mesh[otel]" in warnings[0]["reason"]
