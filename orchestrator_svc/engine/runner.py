"""The task runner: parse, plan, run the DAG on the mesh, integrate, validate, repair.

Each accepted task runs as one asyncio task (`TaskRun`). Ready steps run in parallel (bounded
per task); a step's input carries its dependencies' outputs under `dependencies`; failures follow
the recovery table (recovery.py); the task's time, token and cost budgets bound everything;
cancellation stops the running subtasks at their arms and skips the rest. Every transition is an
event in the task's log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Iterable, Mapping
from graphlib import TopologicalSorter
from typing import Any

import grpc
import structlog
from google.protobuf import struct_pb2
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from arm_sdk.structs import struct_to_dict

from ..brain import (
    NOT_COVERED,
    Brain,
    ExecutionPlan,
    GivenInputs,
    Integration,
    MissingCapability,
    NoArmsAvailable,
    PlanBudget,
    ValidationReport,
    answer_steps,
)
from ..config import Settings
from ..llm import CallLimits, LLMUsage, StallGuard
from ..mesh import Mesh, MeshEvent, Outcome, mesh_failure
from ..store.cache import Cache
from ..store.episodes import TaskMemory
from ..store.ports import StoreError, TaskLeases, TaskStore
from ..store.projection import TERMINAL_TASK_STATES, subtask_id_for
from ..telemetry import trace
from ..telemetry.metrics import Metrics
from ..telemetry.otel import tracer_from_settings
from . import convert, events
from .admission import TaskAdmission, effective_priority
from .events import TaskEventLog
from .output_check import OutputChecker
from .recovery import RecoveryBudget
from .result_cache import SubtaskResultCache

log = structlog.get_logger(__name__)

MAX_REPAIRS = 3
# Of the time a task has left, what one brain step's LLM calls may not use: the fallback and
# the steps after it need time too.
LLM_FALLBACK_MARGIN = 0.5
LLM_FALLBACK_MARGIN_MIN_S = 0.5
JUDGE_CONTEXT_CHARS = 20_000
# The most a client should trust an answer nothing verified against criteria.
UNVERIFIED_CONFIDENCE = 0.5

_ANSWER_SOURCES = {
    "llm": pb.ANSWER_SOURCE_LLM,
    "rules": pb.ANSWER_SOURCE_RULES,
    "retrieval": pb.ANSWER_SOURCE_RETRIEVAL,
}

# A task resumed in one of these states has its plan; it goes on with the steps not yet done.
_PLANNED_STATES = frozenset(
    {
        pb.TASK_STATE_EXECUTING,
        pb.TASK_STATE_INTEGRATING,
        pb.TASK_STATE_VALIDATING,
        pb.TASK_STATE_REPAIRING,
    }
)

_SUBTASK_STATE_OF = {
    "queued": pb.SUBTASK_STATE_READY,
    "dispatched": pb.SUBTASK_STATE_DISPATCHED,
    "accepted": pb.SUBTASK_STATE_RUNNING,
}


class TaskStopped(Exception):
    """Ends a task early with a terminal state (deadline, failure) and a Failure."""

    def __init__(
        self,
        state: pb.TaskState.ValueType,
        failure: common_pb2.Failure,
        result: pb.TaskResult | None = None,
    ) -> None:
        super().__init__(failure.message)
        self.state = state
        self.failure = failure
        self.result = result


class TaskRunner:
    """Runs accepted tasks to a terminal state; see the module docstring."""

    def __init__(
        self,
        store: TaskStore,
        mesh: Mesh,
        settings: Settings,
        metrics: Metrics | None = None,
        brain: Brain | None = None,
        memory: TaskMemory | None = None,
        cache: Cache | None = None,
    ) -> None:
        """`memory`: past tasks for the planner; succeeded tasks are remembered there.
        `cache`: results of deterministic arms are reused from it for the same work."""
        self.store = store
        self.memory = memory
        self.mesh = mesh
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.brain = brain or Brain()
        self.output_checker = OutputChecker()
        self.result_cache = SubtaskResultCache(cache, mesh)
        self.otel = tracer_from_settings(settings)
        # Leases, when the store is shared by several replicas (engine/leases.py keeps them).
        self.leases = store if isinstance(store, TaskLeases) else None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, TaskRun] = {}
        # NOTE: accepted tasks beyond the limit wait here in PENDING, highest priority first;
        # none is dropped.
        self._slots = TaskAdmission(settings.max_concurrent_tasks)
        self._cancel_reasons: dict[str, str] = {}
        # Tasks this replica stopped running without recording an end (lost or handed off).
        self._abandoned: set[str] = set()

    @property
    def running(self) -> int:
        return len(self._running)

    def running_ids(self) -> set[str]:
        return set(self._running)

    def is_running(self, task_id: str) -> bool:
        """True from start() until the task's terminal state is recorded (waiting included)."""
        return task_id in self._running

    def start(self, task: pb.Task, *, resumed: bool = False) -> None:
        """Begin running an accepted task in the background.

        `resumed`: the task comes from the store as another replica left it (its lease
        expired); it goes on from its event log: done steps keep their outputs, steps that
        were in flight are dispatched again with the same subtask id and the next attempt.
        """
        if task.task_id in self._running or task.state in TERMINAL_TASK_STATES:
            return
        self._abandoned.discard(task.task_id)
        runner = asyncio.create_task(self._run(task, resumed), name=f"task {task.task_id}")
        self._running[task.task_id] = runner
        runner.add_done_callback(lambda _: self._running.pop(task.task_id, None))

    def abandon(self, task_id: str, why: str) -> None:
        """Stop running a task here without recording anything: another replica owns it now
        (or will), and its subtasks in flight here are cancelled at their arms."""
        runner = self._running.get(task_id)
        if runner is None or task_id in self._abandoned:
            return
        log.warning("task_abandoned", task_id=task_id, why=why)
        self._abandoned.add(task_id)
        run = self._runs.get(task_id)
        if run is not None:
            run.events.stop_recording(why)
        runner.cancel()

    def abandoned(self, task_id: str) -> bool:
        return task_id in self._abandoned

    def ended(self, task_id: str) -> bool:
        """True once the task's run has recorded its terminal event (it may still be flushing)."""
        run = self._runs.get(task_id)
        return run is not None and run.events.ended

    async def cancel(self, task_id: str, reason: str) -> None:
        """Cancel a running task and wait until its CANCELLED state is recorded."""
        runner = self._running.get(task_id)
        if runner is None:
            return
        self._cancel_reasons[task_id] = reason
        runner.cancel()
        await asyncio.wait([runner])

    async def drain(self, grace_s: float) -> None:
        """Let running tasks finish for up to `grace_s`; then hand what is left to the other
        replicas (shared store: their leases are released, nothing is recorded), or cancel it
        (a store of this process alone)."""
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=grace_s)
        left = list(self._running)
        if self.leases is None or not left:
            for task_id in left:
                await self.cancel(task_id, "orchestrator shutting down")
            return
        runners = [self._running[task_id] for task_id in left]
        for task_id in left:
            self.abandon(task_id, "handed off at shutdown")
        await asyncio.wait(runners)
        try:
            await self.leases.release(left)
        except StoreError as exc:
            # NOTE: nothing is lost: the leases expire by themselves a little later.
            log.warning("task_leases_release_failed", tasks=len(left), error=str(exc))
        log.info("tasks_handed_off", tasks=len(left))

    async def _run(self, task: pb.Task, resumed: bool) -> None:
        run = self._runs[task.task_id] = TaskRun(self, task, resumed=resumed)
        try:
            async with self._slots.slot(task.priority):
                await run.run()
        except asyncio.CancelledError:
            if task.task_id in self._abandoned:
                return
            if task.task_id not in self._cancel_reasons:
                raise
            # Cancelled while waiting for a slot: nothing ran, so only the end is recorded.
            await run.cancelled(self._cancel_reasons.pop(task.task_id))
        else:
            self._cancel_reasons.pop(task.task_id, None)
        finally:
            self._runs.pop(task.task_id, None)

    def cancel_reason(self, task_id: str) -> str:
        return self._cancel_reasons.get(task_id, "cancelled")


class TaskRun:
    """One task's execution state, from admission to its terminal event."""

    def __init__(self, runner: TaskRunner, task: pb.Task, *, resumed: bool = False) -> None:
        self.r = runner
        self.task = task
        self.resumed = resumed
        self.log = log.bind(task_id=task.task_id, trace_id=trace.trace_id(task.traceparent))
        created_ns = task.create_time.ToNanoseconds()
        usage = common_pb2.Usage()
        if resumed:
            usage.CopyFrom(task.usage)
        self.events = TaskEventLog(
            runner.store,
            task.task_id,
            usage,
            observe=lambda event: runner.metrics.observe(event, created_ns),
            record_append=runner.metrics.store_append_seconds.observe,
            last_seq=task.last_seq,
            on_lost=lambda why: runner.abandon(task.task_id, str(why)),
        )
        self.state = task.state
        self.outputs: dict[str, struct_pb2.Struct] = {}
        self.confidences: dict[str, float] = {}
        self.attempts: dict[str, int] = {}
        # Who produced each step's output: the arm (a repair prefers another) and its model.
        self.arm_ids: dict[str, str] = {}
        self.models: dict[str, str] = {}
        if resumed:
            for sub in task.subtasks:
                self.attempts[sub.step_id] = sub.attempt
                if sub.state == pb.SUBTASK_STATE_SUCCEEDED:
                    self.outputs[sub.step_id] = sub.output
                    self.confidences[sub.step_id] = sub.confidence
                    self.arm_ids[sub.step_id] = sub.arm_id
                    self.models[sub.step_id] = sub.provenance.model
        self.deadline = 0.0
        self.side_calls = 0  # judge and safety calls made outside the plan, for their ids
        self.llm_stalls = StallGuard()  # once an LLM call of this task timed out, no more
        self.waves = 0  # waves of ready steps dispatched so far
        # What planning and integration see: the safety arm's redaction when OCTOLLM_SAFETY=on.
        self.goal = task.goal
        self.constraints = list(task.constraints)
        self.domain = ""

    # -- lifecycle ------------------------------------------------------------------------------

    def move(self, to: pb.TaskState.ValueType, reason: str, notes: Iterable[str] = ()) -> None:
        detail = "; ".join(n for n in notes if n)
        self.events.emit(
            events.state_changed(self.state, to, f"{reason} ({detail})" if detail else reason)
        )
        self.state = to

    async def run(self) -> None:
        """Run the task to its terminal event (inside an OpenTelemetry span when exporting)."""
        otel = self.r.otel
        if otel is None:
            await self._run()
            return
        # NOTE: with the safety arm on, the raw goal may hold secrets: keep it out of the span.
        goal = "" if self.r.settings.safety else self.goal
        with otel.task_span(self.task.task_id, self.task.traceparent, goal):
            await self._run()

    async def _run(self) -> None:
        timeout = self._task_timeout()
        planned = self.resumed and self.task.state in _PLANNED_STATES
        succeeded = False
        try:
            self.deadline = asyncio.get_running_loop().time() + timeout
            if planned:
                # NOTE: a resumed task's deadline counts from its creation, not from now.
                self.deadline -= max(0.0, time.time() - self.task.create_time.ToSeconds())
            async with asyncio.timeout_at(self.deadline):
                guarded = await self._guard_input() if self.r.settings.safety else ()
                if planned:
                    plan = self.task.plan
                    self._announce_resume(plan, guarded)
                    await self._run_dag(plan, only=self._steps_not_done(plan))
                else:
                    plan, notes = await self._plan(guarded)
                    self.events.emit(pb.TaskEvent(plan_created=pb.PlanCreated(plan=plan)))
                    self.move(pb.TASK_STATE_EXECUTING, f"running {len(plan.steps)} step(s)", notes)
                    await self._run_dag(plan)
                result = await self._integrate_and_validate(plan)
                self.events.emit(events.finished(pb.TASK_STATE_SUCCEEDED, result=result))
                succeeded = True
            self.log.info("task_succeeded")
        except TimeoutError:
            failure = mesh_failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "TASK_DEADLINE_EXCEEDED",
                f"task did not finish within {timeout:.3f}s",
                retryable=False,
            )
            self._stop(pb.TASK_STATE_DEADLINE_EXCEEDED, failure)
            self.log.info("task_deadline_exceeded")
        except TaskStopped as stop:
            self._stop(stop.state, stop.failure, stop.result)
            self.log.info(
                "task_stopped", state=pb.TaskState.Name(stop.state), reason=stop.failure.reason
            )
        except asyncio.CancelledError:
            if self.r.abandoned(self.task.task_id):
                self.log.info("task_left_to_another_replica")
                raise
            reason = self.r.cancel_reason(self.task.task_id)
            failure = mesh_failure(grpc.StatusCode.CANCELLED, "TASK_CANCELLED", reason, False)
            self._stop(pb.TASK_STATE_CANCELLED, failure)
            self.log.info("task_cancelled", reason=reason)
        except Exception as exc:
            self.log.exception("task_crashed")
            failure = mesh_failure(
                grpc.StatusCode.INTERNAL, "INTERNAL", f"{type(exc).__name__}: {exc}", False
            )
            self._stop(pb.TASK_STATE_FAILED, failure)
        await self.events.flush()
        memory = self.r.memory
        if succeeded and memory is not None and self.events.lost is None:
            # NOTE: from the store, after the flush, so the memory sees the task as recorded.
            memory.remember_soon(
                functools.partial(self.r.store.get, self.task.task_id),
                goal=self.goal,
                domain=self.domain,
            )

    def _announce_resume(self, plan: pb.Plan, guarded: tuple[str, ...]) -> None:
        done = len(self.outputs.keys() & {step.step_id for step in plan.steps})
        owner = self.r.leases.owner if self.r.leases is not None else "this replica"
        self.move(
            pb.TASK_STATE_EXECUTING,
            f"resumed by {owner} from the event log: {done} of {len(plan.steps)} step(s) done",
            guarded,
        )
        self.log.info("task_resumed", steps_done=done, steps=len(plan.steps))

    def _plan_in_task_row(self) -> bool:
        """The plan came with the task, so it was committed with the task itself."""
        return self.task.HasField("plan") and bool(self.task.plan.steps) and not self.resumed

    def _steps_not_done(self, plan: pb.Plan) -> set[str]:
        return {step.step_id for step in plan.steps if step.step_id not in self.outputs}

    async def cancelled(self, reason: str) -> None:
        """Record the end of a task cancelled before it was admitted."""
        failure = mesh_failure(grpc.StatusCode.CANCELLED, "TASK_CANCELLED", reason, False)
        self.events.emit(events.finished(pb.TASK_STATE_CANCELLED, failure=failure))
        await self.events.flush()

    def _stop(
        self,
        state: pb.TaskState.ValueType,
        failure: common_pb2.Failure,
        result: pb.TaskResult | None = None,
    ) -> None:
        if result is None:
            result = pb.TaskResult(usage=self.events.usage)
            _put_outputs(result.outputs, self.outputs)
        self.events.emit(events.finished(state, result=result, failure=failure))

    def _task_timeout(self) -> float:
        task = self.task
        budget = task.budget.max_time.ToNanoseconds() / 1e9 if task.HasField("budget") else 0.0
        return budget if budget > 0 else self.r.settings.task_timeout_s

    def _spend(self, usage: LLMUsage, step: str) -> None:
        """Add what a brain call spent to the task's usage (and count LLM use in metrics), then
        stop the task BUDGET_EXCEEDED if that took it over its budget."""
        self.r.metrics.observe_llm(step, usage.total_tokens, usage.cost_usd)
        self.events.usage.tokens += usage.total_tokens
        self.events.usage.cost_usd += usage.cost_usd
        self._check_budget()

    def _check_budget(self) -> None:
        """Stop the task BUDGET_EXCEEDED (with the results so far) when it is over budget."""
        over = self._over_budget()
        if over is not None:
            raise TaskStopped(pb.TASK_STATE_BUDGET_EXCEEDED, over)

    def _tokens_left(self) -> int | None:
        """Tokens the task's budget has left (None: no token budget)."""
        budget = self.task.budget.max_tokens
        return max(0, budget - self.events.usage.tokens) if budget else None

    def _llm_limits(self) -> CallLimits:
        """What one brain step's LLM calls may use: half the task's time left (the fallback and
        the steps after it need the rest), the tokens its budget has left, and nothing once an
        LLM call of the task timed out. Checks the budget first."""
        self._check_budget()
        left = self.deadline - asyncio.get_running_loop().time()
        margin = max(LLM_FALLBACK_MARGIN_MIN_S, LLM_FALLBACK_MARGIN * left)
        return CallLimits.within(left - margin, self._tokens_left(), self.llm_stalls)

    # -- brain ----------------------------------------------------------------------------------

    async def _plan(self, guarded: tuple[str, ...] = ()) -> tuple[pb.Plan, tuple[str, ...]]:
        task, brain = self.task, self.r.brain
        if task.HasField("plan") and task.plan.steps:
            self.move(pb.TASK_STATE_PLANNING, "using the plan given with the task", guarded)
            plan = pb.Plan()
            plan.CopyFrom(task.plan)
            if not plan.plan_id:
                plan.plan_id = str(uuid.uuid4())
            convert.estimate_plan(plan)
            return plan, ()
        self.move(pb.TASK_STATE_PARSING, "reading the goal", guarded)
        parsed = await brain.parse(
            self.goal, self.constraints, struct_to_dict(task.context), limits=self._llm_limits()
        )
        self._spend(parsed.usage, "parse")
        intent = parsed.intent
        self.domain = intent.domain
        self.move(
            pb.TASK_STATE_PLANNING,
            f"planning a {intent.complexity} {intent.domain} task",
            parsed.notes,
        )
        budget = task.budget
        memory = self.r.memory
        past = await memory.recall(self.goal) if memory is not None else []
        mesh = self.r.mesh
        try:
            outcome = await brain.plan(
                intent,
                # NOTE: arms that cannot serve (no LLM, say) must not shape the plan; arms only
                # briefly unavailable (draining, reconnecting) may: their steps wait for them.
                convert.arm_capabilities(
                    c for c in mesh.arms() if c.routable or c.cannot_serve is None
                ),
                PlanBudget(
                    max_tokens=budget.max_tokens,
                    max_cost_usd=budget.max_cost_usd,
                    max_time_s=self._task_timeout(),
                ),
                acceptance_criteria=list(task.acceptance_criteria),
                past=past,
                given=GivenInputs.from_context(struct_to_dict(task.context)),
                limits=self._llm_limits(),
            )
        except MissingCapability as exc:
            raise TaskStopped(pb.TASK_STATE_FAILED, self._missing_capability(exc)) from None
        except NoArmsAvailable as exc:
            raise TaskStopped(
                pb.TASK_STATE_FAILED,
                mesh_failure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "NO_ARM_FOR_TYPE",
                    str(exc),
                    retryable=True,
                    metadata={"missing_arm_types": ",".join(exc.missing_types)},
                ),
            ) from None
        self._spend(outcome.usage, "plan")
        return convert.plan_to_proto(outcome.plan), outcome.notes

    def _missing_capability(self, exc: MissingCapability) -> common_pb2.Failure:
        """The Failure of a goal that needs a role no arm can serve, naming the capabilities,
        the arm types and what the mesh knows of them (no arm, or connected but not serving)."""
        status = "; ".join(
            f"{arm_type}: {self.r.mesh.availability(arm_type).reason or 'serving'}"
            for arm_type in exc.missing_types
        )
        self.log.info("task_missing_capability", capabilities=exc.capabilities, arm_status=status)
        return mesh_failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            "MISSING_CAPABILITY",
            f"{exc} ({status}); the task was not run",
            retryable=True,
            metadata={
                "missing_capabilities": ",".join(exc.capabilities),
                "missing_arm_types": ",".join(exc.missing_types),
                "steps": ",".join(m.step_id for m in exc.missing),
                "arm_status": status[:500],
            },
        )

    async def _integrate_and_validate(self, plan: pb.Plan) -> pb.TaskResult:
        """Integrate, validate; on failure re-run the failing steps (with the issues as
        feedback, uncached, on another arm of their type when there is one) and try again, up
        to MAX_REPAIRS times, or until a round's outputs are the previous round's."""
        brain, task = self.r.brain, self.task
        criteria = list(task.acceptance_criteria)
        execution_plan = convert.plan_from_proto(plan)
        repairs = 0
        while True:
            outputs = convert.OutputsView(self.outputs)
            self.move(pb.TASK_STATE_INTEGRATING, "combining step outputs")
            integrated = await brain.integrate(
                self.goal,
                execution_plan,
                outputs,
                self.confidences,
                acceptance_criteria=criteria,
                models=self.models,
                limits=self._llm_limits(),
                fresh=repairs > 0,
            )
            self._spend(integrated.usage, "integrate")
            answer = integrated.integration.answer
            guarded: tuple[str, ...] = ()
            if self.r.settings.safety:
                answer, guarded = await self._safety(answer, "answer")
            self.move(
                pb.TASK_STATE_VALIDATING,
                f"checking the answer against {len(criteria)} acceptance criteria",
                (*integrated.notes, *guarded),
            )
            report, notes = await self._validate(
                answer, outputs, criteria, execution_plan, fresh=repairs > 0
            )
            if report.passed or repairs == MAX_REPAIRS or not report.failing_steps:
                break
            repairs += 1
            rerun = convert.dependants_closure(plan, report.failing_steps)
            self.move(
                pb.TASK_STATE_REPAIRING,
                f"repair {repairs} of {MAX_REPAIRS}: re-running {', '.join(sorted(rerun))}",
                (*report.issues[:3], *notes),
            )
            before = {step_id: self.outputs.pop(step_id, None) for step_id in rerun}
            for step_id in rerun:
                self.confidences.pop(step_id, None)
            await self._run_dag(plan, only=rerun, feedback=report)
            if all(self.outputs.get(step_id) == output for step_id, output in before.items()):
                # NOTE: the same outputs make the same answer and the same verdict: another
                # round would only repeat this one.
                self.move(
                    pb.TASK_STATE_VALIDATING,
                    f"repair {repairs} gave the same outputs as the round before: "
                    "stopped repairing",
                )
                break
        result = self._result(answer, integrated.integration, report, repairs)
        if not report.passed:
            raise TaskStopped(pb.TASK_STATE_FAILED, self._not_served(report, repairs), result)
        return result

    def _result(
        self, answer: str, integration: Integration, report: ValidationReport, repairs: int
    ) -> pb.TaskResult:
        """The task's result: the answer and how far to trust it (what wrote it, whether it
        was verified; confidence at most UNVERIFIED_CONFIDENCE when it was not)."""
        confidence = integration.confidence
        if not report.verified:
            confidence = min(confidence, UNVERIFIED_CONFIDENCE)
        result = pb.TaskResult(
            answer=answer,
            confidence=confidence,
            usage=self.events.usage,
            validation=pb.ValidationReport(
                passed=report.passed,
                score=report.score,
                issues=report.issues,
                failing_steps=report.failing_steps,
                repairs=repairs,
                verified_by=report.verified_by,
            ),
            answer_source=_ANSWER_SOURCES[integration.source],
            verified=report.verified,
        )
        _put_outputs(result.outputs, self.outputs)
        return result

    def _not_served(self, report: ValidationReport, repairs: int) -> common_pb2.Failure:
        """Why a task whose answer failed validation did not succeed."""
        if any(c.rule == "addresses_goal" and c.detail == NOT_COVERED for c in report.checks):
            llm = (
                "the LLM did not write an answer (see the events)"
                if self.r.brain.uses_llm
                else "no LLM is configured to answer from anything else"
            )
            return mesh_failure(
                grpc.StatusCode.FAILED_PRECONDITION,
                "ANSWER_NOT_FOUND",
                f"the indexed documents do not cover the goal and {llm}",
                retryable=False,
            )
        return mesh_failure(
            grpc.StatusCode.FAILED_PRECONDITION,
            "VALIDATION_FAILED",
            f"the answer still fails its acceptance criteria after {repairs} repair(s): "
            + "; ".join(report.issues[:3]),
            retryable=False,
        )

    async def _guard_input(self) -> tuple[str, ...]:
        """Redact the goal and constraints with the safety arm before anything plans on them."""
        self.goal, goal_notes = await self._safety(self.goal, "goal")
        notes = list(goal_notes)
        if self.constraints:
            joined, constraint_notes = await self._safety(
                "\n".join(self.constraints), "constraints"
            )
            self.constraints = joined.split("\n")
            notes += constraint_notes
        return tuple(notes)

    async def _safety(self, text: str, what: str) -> tuple[str, tuple[str, ...]]:
        """(redacted text, notes naming the kinds found, never the secrets). Fails closed."""
        answered = await self._side_call(
            "safety",
            f"scan the task's {what} for secrets, PII and prompt injection",
            {"text": text},
        )
        if answered is None:
            raise TaskStopped(
                pb.TASK_STATE_FAILED,
                mesh_failure(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "SAFETY_UNAVAILABLE",
                    f"OCTOLLM_SAFETY is on but no safety arm could check the {what}",
                    retryable=True,
                ),
            )
        scan, _ = answered
        kinds = sorted({str(f.get("kind", "?")) for f in scan.get("findings", [])})
        injection = scan.get("injection", [])
        notes = []
        if kinds:
            notes.append(
                f"safety redacted {len(scan['findings'])} finding(s) in the {what}: "
                + ", ".join(kinds)
            )
        if injection:
            notes.append(
                f"safety flagged {len(injection)} prompt-injection pattern(s) in the {what}"
            )
        if not notes:
            notes.append(f"safety found nothing in the {what}")
        return str(scan.get("redacted", text)), tuple(notes)

    async def _validate(
        self,
        answer: str,
        outputs: Mapping[str, dict[str, Any]],
        criteria: list[str],
        plan: ExecutionPlan,
        *,
        fresh: bool = False,
    ) -> tuple[ValidationReport, tuple[str, ...]]:
        """The brain's rule (or LLM) check, overruled by a judge arm when one is routable and
        the task has criteria; the brain still names the steps to re-run."""
        checked = await self.r.brain.validate(
            answer,
            outputs,
            criteria,
            plan=plan,
            goal=self.goal,
            limits=self._llm_limits(),
            fresh=fresh,
        )
        self._spend(checked.usage, "validate")
        if not criteria or "judge" not in self.r.mesh.routable_types():
            return checked.report, checked.notes
        verdict = await self._ask_judge(answer, outputs, criteria, plan)
        if verdict is None:
            return checked.report, (*checked.notes, "the judge arm did not answer; rules decided")
        passed, score, issues, judge_id = verdict
        # NOTE: the judge checks the criteria; whether the answer addresses the goal at all is
        # the brain's check, and the judge cannot overrule it.
        off_goal = [c for c in checked.report.checks if c.rule == "addresses_goal" and not c.passed]
        passed = passed and not off_goal
        issues += [f"{c.criterion!r} failed: {c.detail}" for c in off_goal]
        failing = () if passed else tuple(answer_steps(plan, outputs) or plan.sinks())
        report = dataclasses.replace(
            checked.report,
            passed=passed,
            score=score,
            issues=tuple(issues),
            failing_steps=failing,
            verified_by=f"judge {judge_id}",
        )
        return report, (*checked.notes, f"judged by {judge_id}")

    async def _ask_judge(
        self,
        answer: str,
        outputs: Mapping[str, dict[str, Any]],
        criteria: list[str],
        plan: ExecutionPlan,
    ) -> tuple[bool, float, list[str], str] | None:
        # Everything the answer may legitimately draw on: the goal, the step descriptions (the
        # answer's headings) and the step outputs; the judge flags facts found in none of them.
        context = "\n".join(
            [
                self.goal,
                *self.constraints,
                *(step.description for step in plan.steps),
                *(json.dumps(o, sort_keys=True) for o in outputs.values()),
            ]
        )[:JUDGE_CONTEXT_CHARS]
        answered = await self._side_call(
            "judge",
            "validate the task's answer against its acceptance criteria",
            {"output": answer, "criteria": criteria, "context": context},
        )
        if answered is None:
            return None
        verdict, judge_id = answered
        issues = [str(i) for i in verdict.get("issues", [])]
        return bool(verdict.get("passed")), float(verdict.get("score", 0.0)), issues, judge_id

    async def _side_call(
        self, arm_type: str, description: str, inputs: dict[str, Any]
    ) -> tuple[dict[str, Any], str] | None:
        """One subtask outside the plan (judge, safety): (output, arm id), or None when no
        arm of the type is routable or it failed. Counted in the task's usage."""
        if arm_type not in self.r.mesh.routable_types():
            return None
        self._check_budget()
        task = self.task
        self.side_calls += 1
        dispatch = arm_pb.Dispatch(
            subtask_id=f"{task.task_id}:{arm_type}-{self.side_calls}",
            task_id=task.task_id,
            step_id=f"{arm_type}-{self.side_calls}",
            description=description,
            traceparent=trace.child(task.traceparent),
            attempt=1,
        )
        dispatch.input.update(inputs)
        self._put_budget_left(dispatch)
        remaining = self.deadline - asyncio.get_running_loop().time()
        outcome = await self.r.mesh.execute(
            arm_type,
            dispatch,
            timeout_s=min(self.r.settings.subtask_timeout_s, remaining),
            priority=effective_priority(task.priority),
        )
        if outcome.result is None:
            reason = outcome.failure.reason if outcome.failure else ""
            self.log.warning("side_call_failed", arm_type=arm_type, reason=reason)
            return None
        self._spend_arm(outcome.result.provenance.usage)
        self._check_budget()
        return struct_to_dict(outcome.result.output), outcome.arm_id

    def _spend_arm(self, usage: common_pb2.Usage) -> None:
        self.events.usage.tokens += usage.tokens
        self.events.usage.cost_usd += usage.cost_usd

    # -- the DAG -------------------------------------------------------------------------------

    async def _run_dag(
        self,
        plan: pb.Plan,
        only: set[str] | None = None,
        feedback: ValidationReport | None = None,
    ) -> None:
        """Run the plan's steps (or just `only`, whose other dependencies are done)."""
        steps = {s.step_id: s for s in plan.steps if only is None or s.step_id in only}
        graph = TopologicalSorter(
            {sid: set(s.depends_on) & steps.keys() for sid, s in steps.items()}
        )
        graph.prepare()
        limit = asyncio.Semaphore(self.r.settings.max_parallel_subtasks)
        running: dict[str, asyncio.Task[Outcome]] = {}
        # NOTE: completions arrive on a queue, so each costs O(1); asyncio.wait over every
        # running step would make a wide DAG quadratic.
        finished: asyncio.Queue[str] = asyncio.Queue()
        started: set[str] = set()
        failed: Outcome | None = None
        stopped: TaskStopped | None = None

        async def run_step(step: pb.PlanStep) -> Outcome:
            async with limit:
                return await self._run_step(step, feedback)

        try:
            while graph.is_active() and failed is None:
                ready = graph.get_ready()
                if ready and (self.waves or not self._plan_in_task_row()):
                    # NOTE: what a step acts on (the plan, its dependencies' results) is
                    # committed before it is dispatched: a crash never loses an input that a
                    # dispatched step already used. One commit per wave of ready steps (none
                    # for the first wave of a plan that came with the task: its row has it).
                    await self.events.flush()
                self.waves += bool(ready)
                for step_id in ready:
                    runner = asyncio.create_task(run_step(steps[step_id]))
                    runner.add_done_callback(functools.partial(_report_done, finished, step_id))
                    running[step_id] = runner
                    started.add(step_id)
                if not running:
                    break
                step_id = await finished.get()
                outcome = running.pop(step_id).result()
                if outcome.result is not None:
                    self.outputs[step_id] = outcome.result.output
                    self.confidences[step_id] = outcome.result.confidence
                    self.arm_ids[step_id] = outcome.arm_id
                    self.models[step_id] = outcome.result.provenance.model
                    graph.done(step_id)
                    over = self._over_budget()
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
            for step_id, step in steps.items():
                if step_id not in started:
                    sub = self._subtask(step, pb.SUBTASK_STATE_SKIPPED)
                    sub.failure.CopyFrom(
                        mesh_failure(
                            grpc.StatusCode.ABORTED,
                            "SKIPPED",
                            "an earlier step did not succeed",
                            False,
                        )
                    )
                    self.events.emit(events.subtask_changed(sub))
        if stopped is not None:
            raise stopped
        if failed is not None and failed.failure is not None:
            raise TaskStopped(pb.TASK_STATE_FAILED, failed.failure)

    def _over_budget(self) -> common_pb2.Failure | None:
        """A Failure when the task has spent more tokens or money than its budget allows."""
        budget, usage = self.task.budget, self.events.usage
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

    def _subtask(self, step: pb.PlanStep, state: pb.SubtaskState.ValueType) -> pb.Subtask:
        return pb.Subtask(
            subtask_id=subtask_id_for(self.task.task_id, step.step_id),
            step_id=step.step_id,
            arm_type=step.arm_type,
            state=state,
        )

    def _dispatch(
        self, step: pb.PlanStep, feedback: ValidationReport | None, traceparent: str
    ) -> arm_pb.Dispatch:
        task = self.task
        dispatch = arm_pb.Dispatch(
            subtask_id=subtask_id_for(task.task_id, step.step_id),
            task_id=task.task_id,
            step_id=step.step_id,
            description=step.description,
            acceptance_criteria=step.acceptance_criteria,
            required_capabilities=step.required_capabilities,
            # The mesh raises attempt itself on failover, so count on from where it left off.
            attempt=self.attempts.get(step.step_id, 0),
        )
        dispatch.input.CopyFrom(step.input)
        if step.depends_on:
            # Struct to Struct copies stay in C; a round trip through dicts costs far more.
            _put_outputs(
                dispatch.input.fields["dependencies"].struct_value,
                {d: self.outputs[d] for d in step.depends_on},
            )
        if feedback is not None:
            dispatch.input.update({"repair": {"issues": list(feedback.issues)}})
        dispatch.context.CopyFrom(task.context)
        dispatch.traceparent = traceparent
        self._put_budget_left(dispatch)
        return dispatch

    def _put_budget_left(self, dispatch: arm_pb.Dispatch) -> None:
        """What the task's budget has left, for the arm to honour (0 stays "no limit")."""
        budget, usage = self.task.budget, self.events.usage
        if budget.max_tokens:
            dispatch.budget.max_tokens = max(1, budget.max_tokens - usage.tokens)
        if budget.max_cost_usd:
            dispatch.budget.max_cost_usd = max(1e-9, budget.max_cost_usd - usage.cost_usd)

    async def _run_step(self, step: pb.PlanStep, feedback: ValidationReport | None) -> Outcome:
        """Run one step with its recoveries (inside an OpenTelemetry span when exporting)."""
        traceparent = trace.child(self.task.traceparent)
        otel = self.r.otel
        if otel is None:
            return await self._run_step_attempts(step, feedback, traceparent)
        with otel.subtask_span(traceparent, step.step_id, step.arm_type):
            return await self._run_step_attempts(step, feedback, traceparent)

    async def _run_step_attempts(
        self, step: pb.PlanStep, feedback: ValidationReport | None, traceparent: str
    ) -> Outcome:
        step_log = self.log.bind(step_id=step.step_id)
        settings, mesh = self.r.settings, self.r.mesh
        # NOTE: READY means "waiting for an arm with credit": it is recorded only when the mesh
        # reports the subtask queued, not for one dispatched at once.
        sub = self._subtask(step, pb.SUBTASK_STATE_READY)
        dispatch = self._dispatch(step, feedback, traceparent)

        def on_event(event: MeshEvent) -> None:
            if event.kind == "progress":
                self.events.emit(
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
            self.events.emit(events.subtask_changed(sub))
            if event.kind == "queued" and event.message:
                # NOTE: no arm of the type is routable, but one may be back soon (an arm type
                # that cannot serve at all fails in the mesh instead): say why it waits.
                self.events.emit(
                    pb.TaskEvent(
                        subtask_progress=pb.SubtaskProgress(
                            subtask_id=sub.subtask_id,
                            step_id=step.step_id,
                            message=f"waiting for arm type {step.arm_type!r}, {event.message}; "
                            "waiting within the deadline",
                        )
                    )
                )

        recovery = RecoveryBudget(transient_retries=settings.max_retries)
        timeout_s = settings.subtask_timeout_s
        # NOTE: a repair asks another arm of the type when there is one: the same arm given the
        # same work tends to give the same answer.
        avoid = self.arm_ids.get(step.step_id, "") if feedback is not None else ""
        try:
            while True:
                dispatch.attempt += 1
                cached = await self.r.result_cache.lookup(step.arm_type, dispatch)
                if cached is not None:
                    step_log.debug("subtask_result_cached", arm_id=cached.provenance.arm_id)
                    outcome = Outcome(cached.provenance.arm_id, dispatch.attempt, result=cached)
                    break
                outcome = await mesh.execute(
                    step.arm_type,
                    dispatch,
                    # The arm learns the real limit: never more than the task has left.
                    timeout_s=min(timeout_s, self.deadline - asyncio.get_running_loop().time()),
                    on_event=on_event,
                    avoid_arm=avoid,
                    priority=effective_priority(self.task.priority),
                )
                result = outcome.result
                if result is not None:
                    conn = mesh.arm(outcome.arm_id)
                    descriptor = conn.descriptor if conn is not None else None
                    invalid = self.r.output_checker.check(descriptor, result.output)
                    if invalid is not None:
                        outcome = Outcome(outcome.arm_id, outcome.attempt, failure=invalid)
                    else:
                        await self.r.result_cache.store(descriptor, dispatch, result)
                failed = outcome.failure
                if failed is None:
                    break
                retry = recovery.next(
                    failed,
                    outcome.arm_id,
                    remaining_s=self.deadline - asyncio.get_running_loop().time(),
                    other_arm=any(
                        c.routable and c.arm_type == step.arm_type and c.arm_id != outcome.arm_id
                        for c in mesh.arms()
                    ),
                )
                if retry is None:
                    if recovery.gave_up_because:
                        why = f"{failed.message} ({recovery.gave_up_because})"
                        given, failed = failed, common_pb2.Failure()
                        failed.CopyFrom(given)
                        failed.message = why
                        outcome = Outcome(outcome.arm_id, outcome.attempt, failure=failed)
                    break
                step_log.info(
                    "subtask_retry",
                    kind=retry.kind,
                    attempt=dispatch.attempt,
                    reason=failed.reason,
                    arm_id=outcome.arm_id,
                )
                self.r.metrics.retries.labels(retry.kind).inc()
                timeout_s = settings.subtask_timeout_s * retry.timeout_factor
                avoid = retry.avoid_arm
                if retry.delay_s:
                    await asyncio.sleep(retry.delay_s)
        except asyncio.CancelledError:
            sub.state = pb.SUBTASK_STATE_CANCELLED
            sub.failure.CopyFrom(
                mesh_failure(grpc.StatusCode.CANCELLED, "CANCELLED", "the task was stopped", False)
            )
            self.events.emit(events.subtask_changed(sub))
            raise
        finally:
            self.attempts[step.step_id] = dispatch.attempt
        sub.arm_id, sub.attempt = outcome.arm_id or sub.arm_id, outcome.attempt
        if outcome.result is not None:
            sub.state = pb.SUBTASK_STATE_SUCCEEDED
            sub.output.CopyFrom(outcome.result.output)
            sub.confidence = outcome.result.confidence
            sub.provenance.CopyFrom(outcome.result.provenance)
            self._spend_arm(outcome.result.provenance.usage)
        else:
            sub.state = pb.SUBTASK_STATE_FAILED
            if outcome.failure is not None:
                sub.failure.CopyFrom(outcome.failure)
        self.events.emit(events.subtask_changed(sub))
        return outcome


def _report_done(finished: asyncio.Queue[str], step_id: str, _: asyncio.Task[Outcome]) -> None:
    finished.put_nowait(step_id)


def _put_outputs(target: struct_pb2.Struct, outputs: Mapping[str, struct_pb2.Struct]) -> None:
    """target[step_id] = output for every step, as nested Structs."""
    for step_id, output in outputs.items():
        target.fields[step_id].struct_value.CopyFrom(output)
