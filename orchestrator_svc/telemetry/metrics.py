"""Prometheus metrics: standard gRPC server and client metrics plus the mesh's own, on a separate
HTTP port.

Every metric is listed in the README ("Metrics"). Each orchestrator owns a registry, so several
can live in one process (tests). Live state (queues, credits, health) is read at scrape time by a
collector instead of being mirrored into gauges on the hot path.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sized
from typing import Any, Protocol, TypeAlias

import grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from arm_sdk.metrics_http import MetricsEndpoint

from .grpc_client import ClientMetrics


class ArmGauges(Protocol):
    """What the metrics read of one arm connection."""

    @property
    def arm_type(self) -> str: ...
    @property
    def arm_id(self) -> str: ...
    @property
    def credits(self) -> int: ...
    @property
    def in_flight(self) -> Sized: ...
    @property
    def routable(self) -> bool: ...


class MeshGauges(Protocol):
    """What the metrics read of the mesh at scrape time (the mesh fits; telemetry imports none
    of it)."""

    def queue_depths(self) -> Mapping[str, int]: ...
    def arms(self) -> Iterable[ArmGauges]: ...


_SUBTASK_OUTCOMES = {
    pb.SUBTASK_STATE_SUCCEEDED: "succeeded",
    pb.SUBTASK_STATE_FAILED: "failed",
    pb.SUBTASK_STATE_CANCELLED: "cancelled",
    pb.SUBTASK_STATE_SKIPPED: "skipped",
}

Context: TypeAlias = grpc.aio.ServicerContext

# Latency buckets from 0.5 ms to 60 s: dispatch round trips are sub-millisecond, tasks minutes.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The orchestrator's metrics, registered in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._endpoint = MetricsEndpoint()
        r = self.registry
        method = ["grpc_type", "grpc_service", "grpc_method"]
        self.rpc_started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", method, registry=r
        )
        self.rpc_handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            [*method, "grpc_code"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC (for streams, until the stream ends).",
            method,
            buckets=_BUCKETS,
            registry=r,
        )
        self.rpc_in_flight = Gauge(
            "grpc_server_in_flight", "RPCs being handled now.", method, registry=r
        )
        # The orchestrator's calls to arms; give it to the Mesh (rpc_metrics=).
        self.client = ClientMetrics(r, _BUCKETS)
        self.tasks_accepted = Counter(
            "octollm_tasks_accepted_total", "Tasks accepted by SubmitTask.", registry=r
        )
        self.tasks_finished = Counter(
            "octollm_tasks_finished_total",
            "Tasks that reached a terminal state.",
            ["state"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "octollm_task_duration_seconds",
            "Time from acceptance to terminal state.",
            ["state"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.subtasks_finished = Counter(
            "octollm_subtasks_finished_total",
            "Subtasks that ended, by arm type and outcome (succeeded, failed, cancelled, skipped).",
            ["arm_type", "outcome"],
            registry=r,
        )
        self.subtask_seconds = Histogram(
            "octollm_subtask_duration_seconds",
            "Time an arm spent on a succeeded subtask, by arm type.",
            ["arm_type"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "octollm_subtask_retries_total",
            "Subtask retries by kind: timeout, reroute, transient, cooldown.",
            ["kind"],
            registry=r,
        )
        self.llm_calls = Counter(
            "octollm_llm_calls_total",
            "Brain steps answered with the LLM's help, by step (parse, plan, integrate, validate).",
            ["step"],
            registry=r,
        )
        self.llm_tokens = Counter(
            "octollm_llm_tokens_total", "LLM tokens the brain spent, by step.", ["step"], registry=r
        )
        self.llm_cost = Counter(
            "octollm_llm_cost_usd_total",
            "LLM spend of the brain in US dollars, by step.",
            ["step"],
            registry=r,
        )
        self.store_append_seconds = Histogram(
            "octollm_store_append_seconds",
            "Time to commit one batch of task events to the store.",
            buckets=_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("octollm_tokens_total", "LLM tokens reported by arms.", registry=r)
        self.cost = Counter(
            "octollm_cost_usd_total",
            "Spend in US dollars reported by arms.",
            registry=r,
        )
        self.cache_requests = Counter(
            "octollm_cache_requests_total",
            "Cache lookups by namespace (llm, plan, result) and outcome (hit, miss, error, "
            "skipped: Redis not asked while its breaker is open).",
            ["namespace", "outcome"],
            registry=r,
        )

    def observe_cache(self, namespace: str, outcome: str) -> None:
        """Count one cache lookup (the cache adapters' observer)."""
        self.cache_requests.labels(namespace, outcome).inc()

    def observe_llm(self, step: str, tokens: int, cost_usd: float) -> None:
        """Count one brain step that used the LLM (tokens > 0), with what it spent."""
        if tokens <= 0:
            return
        self.llm_calls.labels(step).inc()
        self.llm_tokens.labels(step).inc(tokens)
        self.llm_cost.labels(step).inc(cost_usd)

    def observe(self, event: pb.TaskEvent, create_time_ns: int) -> None:
        """Count what a task event says: a task or subtask that ended, tokens and cost spent."""
        kind = event.WhichOneof("kind")
        if kind == "finished":
            state = pb.TaskState.Name(event.finished.state).removeprefix("TASK_STATE_").lower()
            self.tasks_finished.labels(state).inc()
            self.task_seconds.labels(state).observe(max(time.time_ns() - create_time_ns, 0) / 1e9)
        elif kind == "subtask_changed":
            sub = event.subtask_changed.subtask
            outcome = _SUBTASK_OUTCOMES.get(sub.state)
            if outcome is None:
                return
            self.subtasks_finished.labels(sub.arm_type, outcome).inc()
            if sub.state == pb.SUBTASK_STATE_SUCCEEDED:
                provenance = sub.provenance
                self.subtask_seconds.labels(sub.arm_type).observe(
                    provenance.duration.ToNanoseconds() / 1e9
                )
                self.tokens.inc(provenance.usage.tokens)
                self.cost.inc(provenance.usage.cost_usd)

    def watch_mesh(self, mesh: MeshGauges) -> None:
        """Export the mesh's live state (queues, credits, health) at scrape time."""
        self.registry.register(_MeshCollector(mesh))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP on a daemon thread; return the bound port."""
        return self._endpoint.start(self.registry, host, port)

    async def close(self) -> None:
        """Stop the HTTP endpoint, if it was started."""
        await asyncio.to_thread(self._endpoint.close)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _MetricsInterceptor(self)


class _MeshCollector(Collector):
    def __init__(self, mesh: MeshGauges) -> None:
        self._mesh = mesh

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # NOTE: runs on the HTTP server's thread; it only reads, and list() snapshots are atomic
        # under the GIL, so a scrape never blocks or breaks the event loop.
        queued = GaugeMetricFamily(
            "octollm_dispatch_queue_depth",
            "Subtasks waiting for an arm with credit, by arm type.",
            labels=["arm_type"],
        )
        for arm_type, depth in self._mesh.queue_depths().items():
            queued.add_metric([arm_type], depth)
        credits = GaugeMetricFamily(
            "octollm_arm_credits",
            "Dispatch credit an arm has granted and not used.",
            labels=["arm_type", "arm_id"],
        )
        in_flight = GaugeMetricFamily(
            "octollm_arm_in_flight", "Subtasks in flight on an arm.", labels=["arm_type", "arm_id"]
        )
        routable = GaugeMetricFamily(
            "octollm_arm_routable",
            "1 when the arm is SERVING with an open stream (gets traffic), else 0.",
            labels=["arm_type", "arm_id"],
        )
        for conn in self._mesh.arms():
            labels = [conn.arm_type, conn.arm_id]
            credits.add_metric(labels, conn.credits)
            in_flight.add_metric(labels, len(conn.in_flight))
            routable.add_metric(labels, 1.0 if conn.routable else 0.0)
        yield from (queued, credits, in_flight, routable)


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC, by method and final status code."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, name = _split(handler_call_details.method)
        m = self._m
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary
            labels = ("unary", service, name)

            async def unary_unary(request: Any, context: Context) -> Any:
                start = _begin(m, labels)
                try:
                    return await inner_uu(request, context)
                finally:
                    _end(m, labels, context, start)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            labels = ("server_stream", service, name)
            if inspect.isasyncgenfunction(inner_us):

                async def stream_gen(request: Any, context: Context) -> AsyncIterator[Any]:
                    start = _begin(m, labels)
                    try:
                        async for response in inner_us(request, context):
                            yield response
                    finally:
                        _end(m, labels, context, start)

                behaviour: Any = stream_gen
            else:
                # A handler that writes with context.write() (e.g. health Watch) and returns.
                async def stream_writer(request: Any, context: Context) -> None:
                    start = _begin(m, labels)
                    try:
                        await inner_us(request, context)
                    finally:
                        _end(m, labels, context, start)

                behaviour = stream_writer
            return grpc.unary_stream_rpc_method_handler(
                behaviour, handler.request_deserializer, handler.response_serializer
            )
        # Client-streaming and bidi RPCs are not served by the orchestrator (reflection's stream
        # is bidi): count them without wrapping, so nothing about their semantics changes.
        m.rpc_started.labels("bidi_stream", service, name).inc()
        return handler


def _begin(m: Metrics, labels: tuple[str, str, str]) -> float:
    m.rpc_started.labels(*labels).inc()
    m.rpc_in_flight.labels(*labels).inc()
    return time.perf_counter()


def _end(
    m: Metrics, labels: tuple[str, str, str], context: grpc.aio.ServicerContext, start: float
) -> None:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        name = code.name
    elif context.cancelled():
        name = "CANCELLED"
    else:
        name = "OK"
    m.rpc_handled.labels(*labels, name).inc()
    m.rpc_seconds.labels(*labels).observe(time.perf_counter() - start)
    m.rpc_in_flight.labels(*labels).dec()
