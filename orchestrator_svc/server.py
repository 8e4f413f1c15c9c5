"""The orchestrator process: gRPC server, health, reflection, mesh, runner, graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS
from arm_sdk.health import HealthServicer
from arm_sdk.tls import listen

from .api.malformed import MalformedRequestInterceptor
from .api.servicer import OrchestratorServicer
from .brain import Brain
from .config import Settings
from .engine import ArmHistoryKeeper, LeaseKeeper, TaskRunner, routing
from .llm.cached import with_response_cache
from .llm.configured import client_from_settings
from .mesh import Discovery, Mesh
from .security import arm_channel_credentials, arm_channel_options, edge_guard, server_tls
from .store import Cache, open_cache, open_store
from .store.episodes import memory_from_settings
from .store.ports import ArmHistory, TaskStore
from .telemetry.metrics import Metrics

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["OrchestratorService"].full_name
# How long one step of the shutdown (closing the server, the arm channels, the store, ...) may
# take before it is abandoned with a warning: a close that hangs (a gRPC channel that never
# finishes closing, say) must not keep the process from exiting.
STOP_STEP_TIMEOUT_S = 5.0


class Orchestrator:
    """One orchestrator: `await Orchestrator(settings).start()`, later `await .stop()`."""

    def __init__(self, settings: Settings, store: TaskStore | None = None) -> None:
        """`store` overrides the one the settings choose (opened in start())."""
        self.settings = settings
        self._given_store = store
        self.metrics = Metrics()
        self.mesh = Mesh(
            channel_options=[*CHANNEL_OPTIONS, *arm_channel_options(settings)],
            default_timeout_s=settings.subtask_timeout_s,
            picker=routing.pick,
            credentials=arm_channel_credentials(settings),
            rpc_metrics=self.metrics.client,
        )
        self.discovery = Discovery(self.mesh, settings.arm_endpoints, settings.dns_refresh_s)
        self.metrics.watch_mesh(self.mesh)
        self.llm = client_from_settings(settings)
        self.cache: Cache | None = None
        # Opened in the background by start() (Qdrant takes a while), closed by stop().
        self.memory = memory_from_settings(settings)
        # Set by start(), once the store is open.
        self.store: TaskStore
        self.runner: TaskRunner
        self.servicer: OrchestratorServicer
        self.leases: LeaseKeeper | None = None
        self.arm_history: ArmHistoryKeeper | None = None
        self.health = HealthServicer()
        # NOTE: the guard sits after metrics, so rejected calls are counted with their code.
        interceptors = [self.metrics.interceptor()]
        self.guard = edge_guard(settings, SERVICE_NAME, self._task_unfinished)
        if self.guard.active:
            interceptors.append(self.guard)
        interceptors.append(MalformedRequestInterceptor(SERVICE_NAME))
        self.server = grpc.aio.server(
            options=[
                *SERVER_OPTIONS,
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ],
            interceptors=interceptors,
        )
        self.port = 0
        self.metrics_port = -1
        self._stopping: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def _brain(self) -> Brain:
        """The brain, asking the configured LLM unless `/v1/models` shows it misconfigured (the
        model not listed, the key refused): then offline, and every task's events say why."""
        if self.llm is None:
            return Brain(cache=self.cache)
        status = await self.llm.check_endpoint()
        if status.permanent:
            log.error("llm_misconfigured", model=self.llm.model, reason=status.reason)
            return Brain(cache=self.cache, offline_reason=status.reason)
        if not status.usable:
            log.warning("llm_endpoint_not_usable_yet", model=self.llm.model, reason=status.reason)
        return Brain(with_response_cache(self.llm, self.cache), cache=self.cache)

    async def start(self) -> Orchestrator:
        """Open the store, serve, and start dialling arms. Raises StoreError (store down or
        unmigratable) and OSError (cannot listen) with readable messages."""
        self.store = self._given_store or await open_store(
            self.settings, startup_wait_s=self.settings.postgres_startup_wait_s
        )
        self.cache = await open_cache(self.settings, self.metrics.observe_cache)
        brain = await self._brain()
        self.runner = TaskRunner(
            self.store,
            self.mesh,
            self.settings,
            self.metrics,
            brain,
            memory=self.memory,
            cache=self.cache,
        )
        self.servicer = OrchestratorServicer(self.store, self.runner, self.mesh, self.metrics)
        if isinstance(self.store, ArmHistory):
            self.arm_history = ArmHistoryKeeper(self.store, self.mesh)
        if self.runner.leases is not None:
            self.leases = LeaseKeeper(
                self.runner.leases, self.runner, max_tasks=self.settings.max_concurrent_tasks
            )
        pb_grpc.add_OrchestratorServiceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = listen(
            self.server,
            self.settings.listen,
            server_tls(self.settings),
            what="orchestrator",
            allow_insecure=self.settings.allow_insecure,
        )
        self.discovery.start()
        await self.server.start()
        self.memory.start()
        if self.leases is not None:
            # NOTE: after the server and discovery start: claimed tasks need arms to run on.
            self.leases.start()
        if self.arm_history is not None:
            self.arm_history.start()
        if self.settings.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port
            )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "orchestrator_listening",
            address=self.address,
            metrics_port=self.metrics_port,
            arms=self.settings.arm_endpoints,
        )
        return self

    def _task_unfinished(self, task_id: str) -> bool:
        # NOTE: the runner keeps a task until its terminal state is recorded (PENDING included).
        return self.runner.is_running(task_id)

    async def wait_for_arms(self, arm_types: set[str], timeout_s: float) -> None:
        """Wait until an arm of every type in `arm_types` is routable."""
        async with asyncio.timeout(timeout_s):
            await self.mesh.wait_until(lambda: arm_types <= self.mesh.routable_types())

    async def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first, then stop accepting and drain in-flight work within the grace.

        Calling it again waits for the first call.
        """
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(grace))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace: float) -> None:
        log.info("orchestrator_draining", grace_s=grace, running_tasks=self.runner.running)
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self.servicer.accepting = False  # SubmitTask is UNAVAILABLE from here on
        if self.leases is not None:
            self.leases.stop_claiming()
        await self.runner.drain(grace)
        if self.leases is not None:
            await self.leases.close()
        if self.arm_history is not None:
            await self.arm_history.close()
        # NOTE: before the store closes: remembering a finished task reads it from the store.
        await self.memory.close()
        # Every task has ended, so the streams still open are idle watches (e.g. health Watch):
        # give responses a moment to flush, then stop. NOTE: grpc.aio must not be stopped twice
        # concurrently (it can crash), so there is exactly one server.stop call.
        await _bounded("server", self.server.stop(min(max(deadline - loop.time(), 0.0), 1.0)))
        await _bounded("discovery", self.discovery.close())
        await _bounded("arm channels", self.mesh.close())
        await _bounded("store", self.store.close())
        if self.cache is not None:
            await _bounded("cache", self.cache.close())
        await _bounded("metrics", self.metrics.close())
        if self.runner.otel is not None:
            await _bounded("otel", asyncio.to_thread(self.runner.otel.shutdown))
        if self.llm is not None:
            await _bounded("llm client", self.llm.aclose())
        log.info("orchestrator_stopped")


async def _bounded(step: str, closing: Awaitable[object]) -> None:
    """One shutdown step, abandoned with a warning after STOP_STEP_TIMEOUT_S."""
    try:
        async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
            await closing
    except TimeoutError:
        log.warning("shutdown_step_abandoned", step=step, timeout_s=STOP_STEP_TIMEOUT_S)
