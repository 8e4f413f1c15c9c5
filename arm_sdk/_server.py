"""A running arm server, and its graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

import grpc
import structlog
from grpc_health.v1 import health_pb2
from octollm.v1 import arm_service_pb2 as arm_pb

from arm_sdk._session import ArmRuntime
from arm_sdk.health import HealthServicer

log = structlog.get_logger(__name__)

ARM_SERVICE_NAME = arm_pb.DESCRIPTOR.services_by_name["ArmService"].full_name
STOP_HOOK_TIMEOUT_S = 5.0
# How long past its grace the gRPC server may take to stop before the drain goes on without it.
SERVER_STOP_SLACK_S = 5.0

StopHook = Callable[[], Awaitable[None]]
StartHook = Callable[["ArmServer"], Awaitable[None]]


class ArmServer:
    """A listening grpc.aio server for one arm (ArmService + health + reflection)."""

    def __init__(
        self,
        server: grpc.aio.Server,
        runtime: ArmRuntime,
        health: HealthServicer,
        host: str,
        port: int,
        *,
        on_stop: Sequence[StopHook] = (),
    ) -> None:
        """`on_stop`: hooks run after the drain, last first (see ``Arm.on_stop``)."""
        self._server = server
        self._stop_hooks = tuple(on_stop)
        self._runtime = runtime
        self._health = health
        self._host = host
        self._port = port
        self._drain: asyncio.Task[None] | None = None
        self._description = runtime.descriptor.description
        self.not_serving_reason = ""
        self.metrics_port = -1  # set when started with a metrics endpoint

    @property
    def port(self) -> int:
        """The bound TCP port (the real one when started on port 0)."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` as bound, e.g. ``127.0.0.1:50061``."""
        return f"{self._host}:{self._port}"

    @property
    def arm_id(self) -> str:
        """Id of the arm this server serves."""
        return self._runtime.descriptor.arm_id

    @property
    def draining(self) -> bool:
        """True once ``drain()`` has begun."""
        return self._runtime.draining

    async def drain(self, grace: float = 10.0) -> None:
        """Shut down gracefully, finishing in-flight subtasks within ``grace`` seconds.

        Health turns NOT_SERVING first (so routers stop sending), new dispatches are refused with
        UNAVAILABLE/ARM_DRAINING and no more credit is granted; running handlers get up to
        ``grace`` seconds, then Execute streams are closed (handlers still running are
        cancelled) and the server stops with whatever grace is left. Calling it again waits for
        the first drain.
        """
        if self._drain is None:
            self._drain = asyncio.create_task(self._drain_now(grace))
        await asyncio.shield(self._drain)

    async def set_serving(self, serving: bool, reason: str = "") -> None:
        """Report SERVING or NOT_SERVING on grpc.health.v1 (overall and for ArmService).

        Use it when the arm temporarily cannot do its work (a dependency is down): the
        orchestrator stops routing to it at once and resumes when it is SERVING again.
        In-flight subtasks keep running. ``reason`` (NOT_SERVING only) says why: it is logged,
        kept in ``not_serving_reason`` and put first in the description that DescribeArm and
        the Hello of new Execute streams carry ("NOT SERVING (reason): description").
        """
        reason = "" if serving else reason.strip()
        if reason != self.not_serving_reason:
            self.not_serving_reason = reason
            self._runtime.descriptor.description = (
                f"NOT SERVING ({reason}): {self._description}" if reason else self._description
            )
            if reason:
                log.warning("arm_not_serving", arm_id=self.arm_id, reason=reason)
            else:
                log.info("arm_serving_again", arm_id=self.arm_id)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", ARM_SERVICE_NAME):
            await self._health.set(service, status)

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped."""
        await self._server.wait_for_termination()

    async def _drain_now(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        await self._health.enter_graceful_shutdown()
        runtime = self._runtime
        runtime.draining = True
        in_flight = runtime.in_flight()
        log.info("arm_draining", arm_id=self.arm_id, in_flight=len(in_flight), grace=grace)
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=max(0.0, grace))
            if pending:
                log.warning("drain_grace_expired", arm_id=self.arm_id, cancelled=len(pending))
        for session in list(runtime.sessions):
            session.close()
        # NOTE: let the closed streams end with OK (their writers flush, then finish) before
        # stop() cancels whatever is still open; otherwise the peer sees CANCELLED.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - loop.time(), 1.0)):
                while runtime.sessions:  # noqa: ASYNC110 (once per drain, bounded)
                    await asyncio.sleep(0.01)
        grace_left = max(0.0, deadline - loop.time())
        try:
            # NOTE: bounded beyond the grace: a gRPC server that never finishes stopping must
            # not keep the arm (and its stop hooks) from ending.
            async with asyncio.timeout(grace_left + SERVER_STOP_SLACK_S):
                await self._server.stop(grace_left)
        except TimeoutError:
            log.warning("arm_server_stop_abandoned", arm_id=self.arm_id)
        if self._runtime.metrics is not None:
            await asyncio.to_thread(self._runtime.metrics.close)
        for hook in reversed(self._stop_hooks):
            await self._run_stop_hook(hook)
        log.info("arm_stopped", arm_id=self.arm_id)

    async def _run_stop_hook(self, hook: StopHook) -> None:
        name = getattr(hook, "__qualname__", repr(hook))
        timeout_s = STOP_HOOK_TIMEOUT_S
        limit = asyncio.timeout(timeout_s)
        try:
            async with limit:
                await hook()
        except Exception:
            if limit.expired():
                log.warning(
                    "arm_stop_hook_timed_out", arm_id=self.arm_id, hook=name, after_s=timeout_s
                )
            else:
                log.exception("arm_stop_hook_failed", arm_id=self.arm_id, hook=name)
