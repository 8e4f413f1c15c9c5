"""Optional OpenTelemetry export of task and subtask spans (the `otel` extra).

The spans reuse the W3C ids the mesh already carries (see `trace.py`), so a backend shows the
same trace id as the logs: a task span is a child of `task.traceparent`, and each subtask span
takes the span id of its Dispatch's traceparent, so spans an arm starts from that traceparent
nest under it. OpenTelemetry is imported only when a tracer is built.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.trace import Span, SpanContext

    from orchestrator_svc.config import Settings

log = structlog.get_logger(__name__)

SERVICE_NAME = "octollm-orchestrator"
GOAL_ATTRIBUTE_CHARS = 256

# (trace id, span id) the next span must take; set only around one synchronous start_span.
_pinned: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "octollm_otel_pinned_ids", default=None
)
_warned_missing = False


class TaskTracer:
    """Spans for one orchestrator: a task span around a task, a subtask span per dispatch."""

    def __init__(self, exporter: SpanExporter, *, batch: bool = True) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        processor: SpanProcessor = (
            BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        )
        self._provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE_NAME}),
            id_generator=_pinnable_ids(),
        )
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer(__name__)

    @contextmanager
    def task_span(self, task_id: str, traceparent: str, goal: str) -> Iterator[Span]:
        """The current span while a task runs: a child of `traceparent`, in its trace."""
        from opentelemetry.trace import SpanKind

        parent = _extract(traceparent)
        with self._tracer.start_as_current_span(
            "octollm.task",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes={"task_id": task_id, "goal": goal[:GOAL_ATTRIBUTE_CHARS]},
        ) as span:
            yield span

    @contextmanager
    def subtask_span(self, traceparent: str, step_id: str, arm_type: str) -> Iterator[Span]:
        """A span whose ids are the dispatch's traceparent, under the current task span."""
        from opentelemetry import context as otel_context
        from opentelemetry import trace as otel_trace
        from opentelemetry.trace import SpanKind

        ids = _span_context(traceparent)
        current = otel_trace.get_current_span()
        parent = otel_context.Context()  # empty: without a task span of this trace, a root
        if ids is not None and current.get_span_context().trace_id == ids.trace_id:
            parent = otel_trace.set_span_in_context(current)
        token = _pinned.set((ids.trace_id, ids.span_id) if ids is not None else None)
        try:
            span = self._tracer.start_span(
                "octollm.subtask",
                context=parent,
                kind=SpanKind.CLIENT,
                attributes={"step_id": step_id, "arm_type": arm_type},
            )
        finally:
            _pinned.reset(token)
        with otel_trace.use_span(span, end_on_exit=True):
            yield span

    def shutdown(self) -> None:
        """Export what is buffered and stop; blocks (up to the exporter's timeout)."""
        self._provider.shutdown()


def tracer_from_settings(settings: Settings) -> TaskTracer | None:
    """A TaskTracer exporting over OTLP/gRPC to `otel_endpoint`, or None when export is off."""
    global _warned_missing
    endpoint = settings.otel_endpoint.strip()
    if not endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        if not _warned_missing:
            _warned_missing = True
            log.warning(
                "otel_export_disabled",
                reason="OCTOLLM_OTEL_ENDPOINT is set but OpenTelemetry is not installed; "
                "install the extra: pip install 'octollm-mesh[otel]'",
                endpoint=endpoint,
                error=str(exc),
            )
        return None
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    log.info("otel_export_enabled", endpoint=endpoint)
    return TaskTracer(exporter)


def _extract(traceparent: str) -> Context:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _span_context(traceparent: str) -> SpanContext | None:
    from opentelemetry import trace as otel_trace

    span_context = otel_trace.get_current_span(_extract(traceparent)).get_span_context()
    return span_context if span_context.is_valid else None


def _pinnable_ids() -> IdGenerator:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class PinnableIds(RandomIdGenerator):
        """Random ids, except the ones `subtask_span` pins for the span it starts."""

        def generate_trace_id(self) -> int:
            pinned = _pinned.get()
            return pinned[0] if pinned is not None else super().generate_trace_id()

        def generate_span_id(self) -> int:
            pinned = _pinned.get()
            return pinned[1] if pinned is not None else super().generate_span_id()

    return PinnableIds()
