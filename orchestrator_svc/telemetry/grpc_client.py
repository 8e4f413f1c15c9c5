"""gRPC client metrics of the orchestrator's calls to arms, named as go-grpc-prometheus names them.

Unary and server-streaming calls (the health Watch; any unary call, e.g. DescribeArm) are counted
by channel interceptors. The Execute stream is counted by its connection through a `CallMeter`,
one counter inc a message: with a grpc.aio stream-stream interceptor every write goes through a
queue and a new task, which cost ~15-20% more orchestrator CPU a subtask in the dispatch benchmark.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram


class ClientMetrics:
    """grpc_client_* counters and histogram, registered in the orchestrator's registry."""

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float]) -> None:
        r = registry
        method = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_client_started_total", "RPCs started to arms.", method, registry=r
        )
        self.handled = Counter(
            "grpc_client_handled_total",
            "RPCs to arms that completed, by status code.",
            [*method, "grpc_code"],
            registry=r,
        )
        self.seconds = Histogram(
            "grpc_client_handling_seconds",
            "Time from the start of an RPC to arms to its status (streams: until they end).",
            method,
            buckets=buckets,
            registry=r,
        )
        self.msg_sent = Counter(
            "grpc_client_msg_sent_total", "Messages sent on RPCs to arms.", method, registry=r
        )
        self.msg_received = Counter(
            "grpc_client_msg_received_total",
            "Messages received on RPCs to arms.",
            method,
            registry=r,
        )
        self._meters: dict[tuple[str, str], CallMeter] = {}

    def meter(self, grpc_type: str, method: str) -> CallMeter:
        """The counters of one method (``/package.Service/Method``), resolved once."""
        key = (grpc_type, method)
        meter = self._meters.get(key)
        if meter is None:
            service, _, name = method.lstrip("/").rpartition("/")
            meter = self._meters[key] = CallMeter(self, (grpc_type, service, name))
        return meter

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """Interceptors for a channel to an arm: they count its unary and server-stream calls."""
        return [_UnaryUnaryMetrics(self), _UnaryStreamMetrics(self)]


class CallMeter:
    """One method's counters: `start`/`end` around each call, ``msg_*.inc()`` per message."""

    __slots__ = ("_handled", "_labels", "_seconds", "_started", "msg_received", "msg_sent")

    def __init__(self, metrics: ClientMetrics, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._started = metrics.started.labels(*labels)
        self._handled = metrics.handled
        self._seconds = metrics.seconds.labels(*labels)
        self.msg_sent = metrics.msg_sent.labels(*labels)
        self.msg_received = metrics.msg_received.labels(*labels)

    def start(self) -> float:
        """Count a started call; returns the start time to give `end`."""
        self._started.inc()
        return time.perf_counter()

    def end(self, code: grpc.StatusCode, started: float) -> None:
        """Count a call that ended with ``code``, and how long it took."""
        self._handled.labels(*self._labels, code.name).inc()
        self._seconds.observe(time.perf_counter() - started)


def _method(details: grpc.aio.ClientCallDetails) -> str:
    method = details.method
    return method.decode() if isinstance(method, bytes) else str(method)


class _UnaryUnaryMetrics(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: ClientMetrics) -> None:
        self._m = metrics

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        meter = self._m.meter("unary", _method(client_call_details))
        started = meter.start()
        meter.msg_sent.inc()
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(client_call_details, request)
            # NOTE: awaited here so the status and the time are the call's; the caller awaiting
            # the call again gets the same response.
            await call
            code = grpc.StatusCode.OK
            meter.msg_received.inc()
            return call
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            meter.end(code, started)


class _UnaryStreamMetrics(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: ClientMetrics) -> None:
        self._m = metrics

    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> AsyncIterator[Any]:
        meter = self._m.meter("server_stream", _method(client_call_details))
        started = meter.start()
        meter.msg_sent.inc()
        call = await continuation(client_call_details, request)
        return _counted(call, meter, started)


async def _counted(call: Any, meter: CallMeter, started: float) -> AsyncIterator[Any]:
    """The call's responses, counted; the call is counted as handled when they end."""
    code = grpc.StatusCode.OK
    try:
        async for response in call:
            meter.msg_received.inc()
            yield response
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        raise
    except (asyncio.CancelledError, GeneratorExit):
        code = grpc.StatusCode.CANCELLED
        raise
    finally:
        meter.end(code, started)
