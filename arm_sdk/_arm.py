"""``Arm``: declare an arm, register its handler, serve it."""

from __future__ import annotations

import asyncio
import inspect
import secrets
import signal
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc

from arm_sdk import grpc_options
from arm_sdk._metrics import ArmMetrics
from arm_sdk._server import ArmServer, StartHook, StopHook
from arm_sdk._servicer import ArmServicer
from arm_sdk._session import ArmRuntime
from arm_sdk._subtask import Handler
from arm_sdk.health import HealthServicer
from arm_sdk.tls import ServerTLS, listen

log = structlog.get_logger(__name__)

ARM_SERVICE_NAME = arm_pb.DESCRIPTOR.services_by_name["ArmService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

_COST_TIERS: Mapping[str, arm_pb.CostTier.ValueType] = {
    "unspecified": arm_pb.COST_TIER_UNSPECIFIED,
    "low": arm_pb.COST_TIER_LOW,
    "medium": arm_pb.COST_TIER_MEDIUM,
    "high": arm_pb.COST_TIER_HIGH,
}
_INT32_MAX = 2**31 - 1


class Arm:
    """An arm: its descriptor plus one async handler, served over gRPC.

    ::

        arm = Arm(arm_type="echo", description="Returns its input", capabilities=("echo",))

        @arm.handler
        async def run(inp: SubtaskInput) -> SubtaskOutput | dict[str, Any]:
            return {"echo": inp.input}

        server = await arm.start("127.0.0.1:0")
    """

    def __init__(
        self,
        arm_type: str,
        description: str = "",
        capabilities: tuple[str, ...] | list[str] = (),
        max_concurrency: int = 64,
        cost_tier: arm_pb.CostTier.ValueType | str = arm_pb.COST_TIER_UNSPECIFIED,
        version: str = "0.1.0",
        input_schema: Mapping[str, Any] | None = None,
        output_schema: Mapping[str, Any] | None = None,
        arm_id: str | None = None,
        available: Callable[[], bool] | None = None,
        deterministic: bool = False,
    ) -> None:
        """`available`, when given, says whether the arm can do its work at all (e.g. an LLM is
        configured); when it returns False at start the arm serves NOT_SERVING, so routers leave
        it alone, and says why in its log. `deterministic=True` promises that the output depends
        only on the dispatch's description, input, context and acceptance criteria, so the
        orchestrator may answer a repeated dispatch from its cache (keyed by arm type and
        `version`: bump the version when the output for the same input changes)."""
        if not arm_type:
            raise ValueError("arm_type must not be empty")
        if not 1 <= max_concurrency <= _INT32_MAX:
            raise ValueError(f"max_concurrency must be 1..{_INT32_MAX}, got {max_concurrency}")
        self.arm_type = arm_type
        self.arm_id = arm_id or f"{arm_type}-{secrets.token_hex(3)}"
        self.description = description
        self.capabilities = tuple(capabilities)
        self.max_concurrency = max_concurrency
        self.cost_tier = _cost_tier(cost_tier)
        self.version = version
        self.input_schema = dict(input_schema) if input_schema is not None else None
        self.output_schema = dict(output_schema) if output_schema is not None else None
        self._handler: Handler | None = None
        self._available = available
        self._stop_hooks: list[StopHook] = []
        self._start_hooks: list[StartHook] = []
        self.deterministic = deterministic

    def handler(self, fn: Handler) -> Handler:
        """Register the arm's one async handler (use as a decorator); returns it unchanged."""
        if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
            raise TypeError(f"the handler must be an async function, got {fn!r}")
        if self._handler is not None:
            raise RuntimeError(f"arm {self.arm_type!r} already has a handler")
        self._handler = fn
        return fn

    def on_stop(self, fn: StopHook) -> StopHook:
        """Register an async callable to run when a server of this arm stops (use as a decorator,
        or ``arm.on_stop(client.aclose)``); returns it unchanged.

        Hooks run after the drain, once no handler is running, last registered first; each gets
        5 seconds, and one that fails or hangs is logged, never raised out of the drain. A server
        runs the hooks registered before it started."""
        if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
            raise TypeError(f"a stop hook must be an async callable, got {fn!r}")
        self._stop_hooks.append(fn)
        return fn

    def on_start(self, fn: StartHook) -> StartHook:
        """Register an async callable run with the ``ArmServer`` once it listens and reports its
        first health (use as a decorator); returns it unchanged. ``start()`` returns after the
        hooks, so a hook can check a dependency and ``set_serving`` before anyone is told the
        address, and start a background watch that a stop hook ends. A hook that fails is
        logged, never raised out of ``start()``."""
        if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
            raise TypeError(f"a start hook must be an async callable, got {fn!r}")
        self._start_hooks.append(fn)
        return fn

    def descriptor(self) -> arm_pb.ArmDescriptor:
        """The ArmDescriptor sent in Hello and returned by DescribeArm."""
        descriptor = arm_pb.ArmDescriptor(
            arm_id=self.arm_id,
            arm_type=self.arm_type,
            capabilities=self.capabilities,
            cost_tier=self.cost_tier,
            max_concurrency=self.max_concurrency,
            version=self.version,
            description=self.description,
            deterministic=self.deterministic,
        )
        if self.input_schema is not None:
            descriptor.input_schema.CopyFrom(_struct(self.input_schema))
        if self.output_schema is not None:
            descriptor.output_schema.CopyFrom(_struct(self.output_schema))
        return descriptor

    async def start(
        self,
        address: str = "127.0.0.1:0",
        *,
        tls: ServerTLS | None = None,
        metrics: tuple[str, int] | None = None,
        allow_insecure: bool = False,
    ) -> ArmServer:
        """Start serving on ``address`` (``host:port``; port 0 picks one); return once listening.

        With ``tls`` the arm serves TLS only (mTLS when it names a client CA); without it a
        non-loopback address needs ``allow_insecure=True``. With ``metrics``
        ``(host, port)`` it serves Prometheus /metrics there (port 0 picks one; see
        ``ArmServer.metrics_port``)."""
        if self._handler is None:
            raise RuntimeError(
                f"arm {self.arm_type!r} has no handler; decorate one with @arm.handler"
            )
        runtime = ArmRuntime(descriptor=self.descriptor(), handler=self._handler)
        runtime.metrics = ArmMetrics(
            self.arm_type,
            in_flight=lambda: len(runtime.in_flight()),
            streams=lambda: len(runtime.sessions),
        )
        server = grpc.aio.server(options=grpc_options.SERVER_OPTIONS)
        health = HealthServicer()
        arm_grpc.add_ArmServiceServicer_to_server(ArmServicer(runtime), server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (ARM_SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = listen(server, address, tls, what="arm", allow_insecure=allow_insecure)
        await server.start()
        host = address.rpartition(":")[0]
        arm_server = ArmServer(server, runtime, health, host, port, on_stop=self._stop_hooks)
        if metrics is not None:
            arm_server.metrics_port = runtime.metrics.serve(*metrics)
        serving = self._available is None or self._available()
        await arm_server.set_serving(serving)
        if not serving:
            log.warning("arm_unavailable", arm_id=self.arm_id, description=self.description)
        for hook in self._start_hooks:
            try:
                await hook(arm_server)
            except Exception:
                log.exception("arm_start_hook_failed", arm_id=self.arm_id)
        log.info(
            "arm_serving", arm_id=self.arm_id, arm_type=self.arm_type, address=arm_server.address
        )
        return arm_server

    def run(
        self,
        address: str,
        *,
        grace: float = 10.0,
        tls: ServerTLS | None = None,
        allow_insecure: bool = False,
    ) -> None:
        """Serve until SIGINT or SIGTERM, then drain within ``grace`` seconds (blocking)."""
        asyncio.run(self._serve_until_signalled(address, grace, tls, allow_insecure))

    async def _serve_until_signalled(
        self, address: str, grace: float, tls: ServerTLS | None, allow_insecure: bool
    ) -> None:
        server = await self.start(address, tls=tls, allow_insecure=allow_insecure)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
        log.info("arm_signalled", arm_id=self.arm_id, grace=grace)
        await server.drain(grace)


def _cost_tier(value: arm_pb.CostTier.ValueType | str) -> arm_pb.CostTier.ValueType:
    if isinstance(value, str):
        try:
            return _COST_TIERS[value.strip().lower()]
        except KeyError:
            raise ValueError(
                f"cost_tier must be one of {sorted(_COST_TIERS)} or a CostTier, got {value!r}"
            ) from None
    if value not in arm_pb.CostTier.values():
        raise ValueError(f"unknown CostTier value {value!r}")
    return value


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct
