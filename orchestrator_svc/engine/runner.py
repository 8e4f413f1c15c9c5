"""The task runner: plan, run the DAG on the mesh, integrate, record every transition.

Each accepted task runs as one asyncio task. Ready steps run in parallel (bounded per task);
a step's input carries its dependencies' outputs under `dependencies`; retryable failures are
retried with jittered backoff; the task's time budget bounds everything; cancellation stops the
running subtasks at their arms and skips the rest.
"""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections.abc import Callable
from graphlib import TopologicalSorter

import grpc
import structlog
from google.protobuf import json_format, struct_pb2
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from ..brain import plan_single_step
from ..config import Settings
from ..mesh import Mesh, MeshEvent, Outcome, mesh_failure
from ..store.ports import TaskStore
from ..store.projection import TERMINAL_TASK_STATES, subtask_id_for
from ..telemetry.metrics import Metrics
from . import events
from .events import TaskEventLog
from .recovery import RecoveryBudget

log = structlog.get_logger(__name__)


_SUBTASK_STATE_OF = {
    "queued": pb.SUBTASK_STATE_READY,
    "dispatched": pb.SUBTASK_STATE_DISPATCHED,
    "accepted": pb.SUBTASK_STATE_RUNNING,
}


class TaskStopped(Exception):
    """Ends a task early with a terminal state (deadline, failure) and a Failure."""

    def __init__(self, state: pb.TaskState.ValueType, failure: common_pb2.Failure) -> None:
        super().__init__(failure.message)
        self.state = state
        self.failure = failure


class TaskRunner:
    """Runs accepted tasks to a terminal state; see the module docstring."""

    def __init__(
        self, store: TaskStore, mesh: Mesh, settings: Settings, metrics: Metrics | None = None
    ) -> None:
        self._metrics = metrics or Metrics()
        self._store = store
        self._mesh = mesh
        self._settings = settings
        self._running: dict[str, asyncio.Task[None]] = {}
        # NOTE: accepted tasks beyond the limit wait here in PENDING; none is dropped.
        self._slots = asyncio.Semaphore(settings.max_concurrent_tasks)
        self._cancel_reasons: dict[str, str] = {}

    @property
    def running(self) -> int:
        return len(self._running)

    def start(self, task: pb.Task) -> None:
        """Begin running an accepted task in the background."""
        if task.task_id in self._running or task.state in TERMINAL_TASK_STATES:
            return
        runner = asyncio.create_task(self._run(task), name=f"task {task.task_id}")
        self._running[task.task_id] = runner
        runner.add_done_callback(lambda _: self._running.pop(task.task_id, None))

    async def cancel(self, task_id: str, reason: str) -> None:
        """Cancel a running task and wait until its CANCELLED state is recorded."""
        runner = self._running.get(task_id)
        if runner is None:
            return
        self._cancel_reasons[task_id] = reason
        runner.cancel()
        await asyncio.wait([runner])

    async def drain(self, grace_s: float) -> None:
        """Let running tasks finish for up to `grace_s`, then cancel what is left."""
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=grace_s)
        for task_id in list(self._running):
            await self.cancel(task_id, "orchestrator shutting down")

    # -- one task ------------------------------------------------------------------------------

    async def _run(self, task: pb.Task) -> None:
        try:
            async with self._slots:
                await self._run_admitted(task)
        except asyncio.CancelledError:
            if task.task_id not in self._cancel_reasons:
                raise
            # Cancelled while waiting for a slot: nothing ran, so only the end is recorded.
            reason = self._cancel_reasons.pop(task.task_id)
            failure = mesh_failure(grpc.StatusCode.CANCELLED, "TASK_CANCELLED", reason, False)
            event = events.finished(pb.TASK_STATE_CANCELLED, failure=failure)
            self._metrics.observe(event, task.create_time.ToNanoseconds())
            await self._store.append(task.task_id, [event])

    async def _run_admitted(self, task: pb.Task) -> None:
        task_log = log.bind(task_id=task.task_id)
        created_ns = task.create_time.ToNanoseconds()
        events_log = TaskEventLog(
            self._store,
            task.task_id,
            common_pb2.Usage(),
            observe=lambda event: self._metrics.observe(event, created_ns),
        )
        state = [task.state]

        def move(to: pb.TaskState.ValueType, reason: str) -> None:
            events_log.emit(events.state_changed(state[0], to, reason))
            state[0] = to

        outputs: dict[str, struct_pb2.Struct] = {}
        confidences: list[float] = []
        timeout = self._task_timeout(task)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            async with asyncio.timeout_at(deadline):
                plan = self._plan(task, move)
                events_log.emit(pb.TaskEvent(plan_created=pb.PlanCreated(plan=plan)))
                move(pb.TASK_STATE_EXECUTING, f"running {len(plan.steps)} step(s)")
                await self._run_dag(task, plan, events_log, outputs, confidences, deadline)
                move(pb.TASK_STATE_INTEGRATING, "combining step outputs")
                result = self._integrate(plan, outputs, confidences, events_log.usage)
                move(pb.TASK_STATE_VALIDATING, "checking every step succeeded")
                events_log.emit(events.finished(pb.TASK_STATE_SUCCEEDED, result=result))
            task_log.info("task_succeeded")
        except TimeoutError:
            failure = mesh_failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "TASK_DEADLINE_EXCEEDED",
                f"task did not finish within {timeout:.3f}s",
                retryable=False,
            )
            self._stop(events_log, pb.TASK_STATE_DEADLINE_EXCEEDED, failure, outputs)
            task_log.info("task_deadline_exceeded")
        except TaskStopped as stop:
            self._stop(events_log, stop.state, stop.failure, outputs)
            task_log.info(
                "task_stopped", state=pb.TaskState.Name(stop.state), reason=stop.failure.reason
            )
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop(task.task_id, "cancelled")
            failure = mesh_failure(grpc.StatusCode.CANCELLED, "TASK_CANCELLED", reason, False)
            self._stop(events_log, pb.TASK_STATE_CANCELLED, failure, outputs)
            task_log.info("task_cancelled", reason=reason)
        except Exception as exc:
            task_log.exception("task_crashed")
            failure = mesh_failure(
                grpc.StatusCode.INTERNAL, "INTERNAL", f"{type(exc).__name__}: {exc}", False
            )
            self._stop(events_log, pb.TASK_STATE_FAILED, failure, outputs)
        await events_log.flush()

    def _stop(
        self,
        events_log: TaskEventLog,
        state: pb.TaskState.ValueType,
        failure: common_pb2.Failure,
        outputs: dict[str, struct_pb2.Struct],
    ) -> None:
        partial = pb.TaskResult(usage=events_log.usage)
        _put_outputs(partial.outputs, outputs)
        events_log.emit(events.finished(state, result=partial, failure=failure))

    def _task_timeout(self, task: pb.Task) -> float:
        budget = task.budget.max_time.ToNanoseconds() / 1e9 if task.HasField("budget") else 0.0
        return budget if budget > 0 else self._settings.task_timeout_s

    def _plan(self, task: pb.Task, move: Callable[[pb.TaskState.ValueType, str], None]) -> pb.Plan:
        if task.HasField("plan") and task.plan.steps:
            move(pb.TASK_STATE_PLANNING, "using the plan given with the task")
            plan = pb.Plan()
            plan.CopyFrom(task.plan)
        else:
            move(pb.TASK_STATE_PARSING, "reading the goal")
            move(pb.TASK_STATE_PLANNING, "planning")
            steps = plan_single_step(
                task.goal, task.constraints, task.acceptance_criteria, self._mesh.arm_types()
            )
            if not steps:
                raise TaskStopped(
                    pb.TASK_STATE_FAILED,
                    mesh_failure(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "NO_ARMS",
                        "no arm is connected, so the task cannot be planned",
                        retryable=True,
                    ),
                )
            plan = pb.Plan()
            for s in steps:
                step = plan.steps.add(
                    step_id=s.step_id,
                    description=s.description,
                    arm_type=s.arm_type,
                    depends_on=s.depends_on,
                    acceptance_criteria=s.acceptance_criteria,
                )
                step.input.update(s.input)
        if not plan.plan_id:
            plan.plan_id = str(uuid.uuid4())
        return plan

    async def _run_dag(
        self,
        task: pb.Task,
        plan: pb.Plan,
        events_log: TaskEventLog,
        outputs: dict[str, struct_pb2.Struct],
        confidences: list[float],
        deadline: float,
    ) -> None:
        steps = {s.step_id: s for s in plan.steps}
        graph = TopologicalSorter({s.step_id: set(s.depends_on) for s in plan.steps})
        graph.prepare()
        limit = asyncio.Semaphore(self._settings.max_parallel_subtasks)
        running: dict[str, asyncio.Task[Outcome]] = {}
        # NOTE: completions arrive on a queue, so each costs O(1); asyncio.wait over every
        # running step would make a wide DAG quadratic.
        finished: asyncio.Queue[str] = asyncio.Queue()
        started: set[str] = set()
        failed: Outcome | None = None
        stopped: TaskStopped | None = None

        async def run_step(step: pb.PlanStep) -> Outcome:
            async with limit:
                return await self._run_step(task, step, outputs, events_log, deadline)

        try:
            while graph.is_active() and failed is None:
                for step_id in graph.get_ready():
                    runner = asyncio.create_task(run_step(steps[step_id]))
                    runner.add_done_callback(functools.partial(_report_done, finished, step_id))
                    running[step_id] = runner
                    started.add(step_id)
                if not running:
                    break
                step_id = await finished.get()
                outcome = running.pop(step_id).result()
                if outcome.result is not None:
                    outputs[step_id] = outcome.result.output
                    confidences.append(outcome.result.confidence)
                    graph.done(step_id)
                    over = self._over_budget(task, events_log.usage)
                    if over is not None:
                        stopped = TaskStopped(pb.TASK_STATE_BUDGET_EXCEEDED, over)
                        break
                elif failed is None:
                    failed = outcome
        finally:
            for runner in running.values():
                runner.cancel()
            if running:
                await asyncio.wait(running.values())
            # Steps that started record their own terminal state; the others are skipped.
            for step in plan.steps:
                if step.step_id not in started:
                    sub = self._subtask(task, step, pb.SUBTASK_STATE_SKIPPED)
                    sub.failure.CopyFrom(
                        mesh_failure(
                            grpc.StatusCode.ABORTED,
                            "SKIPPED",
                            "an earlier step did not succeed",
                            False,
                        )
                    )
                    events_log.emit(events.subtask_changed(sub))
        if stopped is not None:
            raise stopped
        if failed is not None and failed.failure is not None:
            raise TaskStopped(pb.TASK_STATE_FAILED, failed.failure)

    @staticmethod
    def _over_budget(task: pb.Task, usage: common_pb2.Usage) -> common_pb2.Failure | None:
        """A Failure when the task has spent more tokens or money than its budget allows."""
        budget = task.budget
        spent = None
        if budget.max_tokens and usage.tokens > budget.max_tokens:
            spent = f"{usage.tokens} tokens of a {budget.max_tokens}-token budget"
        elif budget.max_cost_usd and usage.cost_usd > budget.max_cost_usd:
            spent = f"${usage.cost_usd:.4f} of a ${budget.max_cost_usd:.4f} budget"
        if spent is None:
            return None
        return mesh_failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "BUDGET_EXCEEDED",
            f"the task spent {spent}; stopped with the results so far",
            retryable=False,
        )

    @staticmethod
    def _subtask(task: pb.Task, step: pb.PlanStep, state: pb.SubtaskState.ValueType) -> pb.Subtask:
        return pb.Subtask(
            subtask_id=subtask_id_for(task.task_id, step.step_id),
            step_id=step.step_id,
            arm_type=step.arm_type,
            state=state,
        )

    async def _run_step(
        self,
        task: pb.Task,
        step: pb.PlanStep,
        outputs: dict[str, struct_pb2.Struct],
        events_log: TaskEventLog,
        deadline: float,
    ) -> Outcome:
        step_log = log.bind(task_id=task.task_id, step_id=step.step_id)
        # NOTE: READY means "waiting for an arm with credit": it is recorded only when the mesh
        # reports the subtask queued, not for one dispatched at once.
        sub = self._subtask(task, step, pb.SUBTASK_STATE_READY)
        dispatch = arm_pb.Dispatch(
            subtask_id=sub.subtask_id,
            task_id=task.task_id,
            step_id=step.step_id,
            description=step.description,
            acceptance_criteria=step.acceptance_criteria,
        )
        dispatch.input.CopyFrom(step.input)
        if step.depends_on:
            # Struct to Struct copies stay in C; a round trip through dicts costs far more.
            _put_outputs(
                dispatch.input.fields["dependencies"].struct_value,
                {d: outputs[d] for d in step.depends_on},
            )
        dispatch.context.CopyFrom(task.context)
        if task.HasField("budget"):
            dispatch.budget.max_tokens = task.budget.max_tokens
            dispatch.budget.max_cost_usd = task.budget.max_cost_usd

        def on_event(event: MeshEvent) -> None:
            if event.kind == "progress":
                events_log.emit(
                    pb.TaskEvent(
                        subtask_progress=pb.SubtaskProgress(
                            subtask_id=sub.subtask_id,
                            step_id=step.step_id,
                            fraction=event.fraction,
                            message=event.message,
                        )
                    )
                )
                return
            sub.state = _SUBTASK_STATE_OF[event.kind]
            sub.arm_id, sub.attempt = event.arm_id, event.attempt
            events_log.emit(events.subtask_changed(sub))

        recovery = RecoveryBudget(transient_retries=self._settings.max_retries)
        timeout_s = self._settings.subtask_timeout_s
        avoid = ""
        try:
            while True:
                # The mesh raises attempt itself on failover, so count on from where it left off.
                dispatch.attempt += 1
                outcome = await self._mesh.execute(
                    step.arm_type,
                    dispatch,
                    # The arm learns the real limit: never more than the task has left.
                    timeout_s=min(timeout_s, deadline - asyncio.get_running_loop().time()),
                    on_event=on_event,
                    avoid_arm=avoid,
                )
                if outcome.failure is None:
                    break
                retry = recovery.next(outcome.failure, outcome.arm_id)
                if retry is None:
                    break
                step_log.info(
                    "subtask_retry",
                    kind=retry.kind,
                    attempt=dispatch.attempt,
                    reason=outcome.failure.reason,
                    arm_id=outcome.arm_id,
                )
                self._metrics.retries.labels(retry.kind).inc()
                timeout_s *= retry.timeout_factor
                avoid = retry.avoid_arm
                if retry.delay_s:
                    await asyncio.sleep(retry.delay_s)
        except asyncio.CancelledError:
            sub.state = pb.SUBTASK_STATE_CANCELLED
            sub.failure.CopyFrom(
                mesh_failure(grpc.StatusCode.CANCELLED, "CANCELLED", "the task was stopped", False)
            )
            events_log.emit(events.subtask_changed(sub))
            raise
        sub.arm_id, sub.attempt = outcome.arm_id or sub.arm_id, outcome.attempt
        if outcome.result is not None:
            sub.state = pb.SUBTASK_STATE_SUCCEEDED
            sub.output.CopyFrom(outcome.result.output)
            sub.confidence = outcome.result.confidence
            sub.provenance.CopyFrom(outcome.result.provenance)
            usage = events_log.usage
            usage.tokens += outcome.result.provenance.usage.tokens
            usage.cost_usd += outcome.result.provenance.usage.cost_usd
        else:
            sub.state = pb.SUBTASK_STATE_FAILED
            if outcome.failure is not None:
                sub.failure.CopyFrom(outcome.failure)
        events_log.emit(events.subtask_changed(sub))
        return outcome

    @staticmethod
    def _integrate(
        plan: pb.Plan,
        outputs: dict[str, struct_pb2.Struct],
        confidences: list[float],
        usage: common_pb2.Usage,
    ) -> pb.TaskResult:
        """Deterministic merge: the outputs of the plan's sink steps, as text."""
        depended_on = {d for s in plan.steps for d in s.depends_on}
        sinks = [s.step_id for s in plan.steps if s.step_id not in depended_on]
        texts = []
        for step_id in sinks:
            out = json_format.MessageToDict(outputs[step_id]) if step_id in outputs else {}
            text = next((out[k] for k in ("answer", "text") if isinstance(out.get(k), str)), None)
            texts.append(str(text) if text is not None else json.dumps(out, sort_keys=True))
        result = pb.TaskResult(
            answer="\n\n".join(texts),
            confidence=min(confidences) if confidences else 0.0,
            usage=usage,
        )
        _put_outputs(result.outputs, outputs)
        return result


def _report_done(finished: asyncio.Queue[str], step_id: str, _: asyncio.Task[Outcome]) -> None:
    finished.put_nowait(step_id)


def _put_outputs(target: struct_pb2.Struct, outputs: dict[str, struct_pb2.Struct]) -> None:
    """target[step_id] = output for every step, as nested Structs."""
    for step_id, output in outputs.items():
        target.fields[step_id].struct_value.CopyFrom(output)
