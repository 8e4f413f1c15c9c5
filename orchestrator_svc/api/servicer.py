"""`octollm.v1.OrchestratorService`: validation, status mapping, idempotency, WatchTask replay."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from ..engine import TaskRunner
from ..engine import events as task_events
from ..mesh import Mesh, mesh_failure
from ..store.ports import StoreError, TaskClosed, TaskStore
from ..store.projection import TERMINAL_TASK_STATES
from ..store.shared import encode_page_token, order_key
from ..telemetry import trace
from ..telemetry.metrics import Metrics
from . import validation, views
from .errors import ApiError, abort, failed_precondition, from_store_error, not_found

Context: TypeAlias = grpc.aio.ServicerContext


class OrchestratorServicer(pb_grpc.OrchestratorServiceServicer):
    """Thin edge: checks requests, maps failures to statuses, delegates to store/runner/mesh."""

    def __init__(self, store: TaskStore, runner: TaskRunner, mesh: Mesh, metrics: Metrics) -> None:
        self._metrics = metrics
        self._store = store
        self._runner = runner
        self._mesh = mesh
        self.accepting = True
        settings = runner.settings
        self._limits = validation.SubmitLimits(
            max_time_s=settings.max_task_time_s,
            prices_configured=settings.llm_price_per_1k_prompt > 0
            or settings.llm_price_per_1k_completion > 0,
        )

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: Context
    ) -> pb.SubmitTaskResponse:
        try:
            if not self.accepting:
                raise ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    "the orchestrator is shutting down; submit to another replica or retry later",
                    reason="SHUTTING_DOWN",
                )
            served = self._mesh.arm_types()
            validation.validate_submit(request, served, limits=self._limits)
            if not request.HasField("plan") and not served:
                raise failed_precondition(
                    "no arm is connected to the orchestrator yet; start an arm or retry later",
                    "NO_ARMS",
                )
            task = pb.Task(
                task_id=str(uuid.uuid4()),
                request_id=request.request_id,
                goal=request.goal.strip(),
                constraints=request.constraints,
                priority=request.priority or pb.PRIORITY_NORMAL,
                acceptance_criteria=request.acceptance_criteria,
                state=pb.TASK_STATE_PENDING,
            )
            for name in ("context", "budget", "plan"):
                if request.HasField(name):
                    getattr(task, name).CopyFrom(getattr(request, name))
            metadata = dict(context.invocation_metadata() or ())
            task.traceparent = trace.continue_or_start(str(metadata.get("traceparent", "")))
            task_events.stamp_now(task.create_time)
            task.update_time.CopyFrom(task.create_time)
            stored, created = await self._store.create(task, validation.fingerprint(request))
        except ApiError as err:
            await abort(context, err)
        except StoreError as err:
            await abort(context, from_store_error(err))
        if created:
            self._metrics.tasks_accepted.inc()
            self._runner.start(stored)
        return pb.SubmitTaskResponse(task=stored)

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        try:
            task_id = validation.validate_task_id(request.task_id)
            view = validation.validate_view(request.view, views.FULL)
            return pb.GetTaskResponse(task=views.task_view(await self._store.get(task_id), view))
        except ApiError as err:
            await abort(context, err)
        except StoreError as err:
            await abort(context, from_store_error(err))

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        try:
            page_size, token, states = validation.validate_list(request)
            view = validation.validate_view(request.view, views.BASIC)
            tasks, next_token = await self._store.list(page_size, token, states)
            if view == views.BASIC:
                tasks = [views.basic_task(t) for t in tasks]
            elif (fits := views.page_that_fits(tasks)) < len(tasks):
                tasks = tasks[:fits]
                next_token = encode_page_token(order_key(tasks[-1]))
        except ApiError as err:
            await abort(context, err)
        except ValueError:
            await abort(context, validation.invalid_page_token())
        except StoreError as err:
            await abort(context, from_store_error(err))
        return pb.ListTasksResponse(tasks=tasks, next_page_token=next_token)

    async def CancelTask(
        self, request: pb.CancelTaskRequest, context: Context
    ) -> pb.CancelTaskResponse:
        try:
            task_id = validation.validate_task_id(request.task_id)
            reason = request.reason.strip()[:500] or "cancelled by client"
            task = await self._store.get(task_id)
            if task.state not in TERMINAL_TASK_STATES:
                await self._runner.cancel(task_id, reason)
                task = await self._store.get(task_id)
            if task.state not in TERMINAL_TASK_STATES:
                # Accepted but not running here (e.g. its runner is gone): end it in the log.
                failure = mesh_failure(grpc.StatusCode.CANCELLED, "TASK_CANCELLED", reason, False)
                event = task_events.finished(pb.TASK_STATE_CANCELLED, failure=failure)
                with contextlib.suppress(TaskClosed):  # it ended meanwhile: return how
                    await self._store.append(task_id, [event])
                task = await self._store.get(task_id)
            try:
                return pb.CancelTaskResponse(task=views.full_task(task))
            except ApiError:
                # NOTE: the cancel happened: say so, without the outputs that do not fit.
                return pb.CancelTaskResponse(task=views.basic_task(task))
        except ApiError as err:
            await abort(context, err)
        except StoreError as err:
            await abort(context, from_store_error(err))

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Context
    ) -> AsyncIterator[pb.WatchTaskResponse]:
        try:
            task_id, after_seq, batch = validation.validate_watch(request)
            view = validation.validate_view(request.view, views.FULL)
            if batch == 0:
                async for event in self._store.watch(task_id, after_seq):
                    for shown in views.events_in_view((event,), view):
                        yield pb.WatchTaskResponse(event=shown)
                return
            async for events in self._store.watch_batches(task_id, after_seq, batch):
                yield pb.WatchTaskResponse(events=views.events_in_view(events, view))
        except ApiError as err:
            await abort(context, err)
        except StoreError as err:
            await abort(context, from_store_error(err))

    async def ListArms(self, request: pb.ListArmsRequest, context: Context) -> pb.ListArmsResponse:
        arms = [
            c.to_proto()
            for c in self._mesh.arms()
            if not request.arm_type or c.arm_type == request.arm_type
        ]
        return pb.ListArmsResponse(arms=arms)

    async def GetArm(self, request: pb.GetArmRequest, context: Context) -> pb.GetArmResponse:
        try:
            arm_id = validation.validate_arm_id(request.arm_id)
            conn = self._mesh.arm(arm_id)
            if conn is None:
                raise not_found("arm", arm_id, field="arm_id")
        except ApiError as err:
            await abort(context, err)
        return pb.GetArmResponse(arm=conn.to_proto())
