"""Request validation: pure functions that return normalised values or raise ApiError.

Checks run in a fixed order and the first violation is reported, so a caller fixing errors one
at a time sees them in the order of the request's fields. Everything that makes a request
malformed is INVALID_ARGUMENT; "no arm serves this type" and "this server cannot enforce a
cost budget" are FAILED_PRECONDITION because the same request may succeed once such an arm
joins or the server is configured with prices.
"""

from __future__ import annotations

import graphlib
import hashlib
import math
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass

from google.protobuf import struct_pb2
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.api.errors import ApiError, failed_precondition, invalid_argument

GOAL_MIN_CHARS = 10
GOAL_MAX_CHARS = 2000
MAX_CONSTRAINTS = 20
CONSTRAINT_MAX_CHARS = 500
MAX_ACCEPTANCE_CRITERIA = 20
MAX_PLAN_STEPS = 1000
MAX_REQUIRED_CAPABILITIES = 16
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 1024
MAX_ARM_ID_CHARS = 128
MAX_JSON_DEPTH = 20
_MAX_DURATION_NANOS = 999_999_999
_MAX_DURATION_SECONDS = 315_576_000_000  # google.protobuf.Duration's range, ~10,000 years

# NOTE: matched with fullmatch: `$` would also accept a trailing newline.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_STEP_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CAPABILITY = re.compile(r"[A-Za-z0-9_.:+#/-]{1,64}")

_PRIORITIES = frozenset(pb.Priority.values())
_TASK_STATES = frozenset(pb.TaskState.values()) - {pb.TASK_STATE_UNSPECIFIED}


@dataclass(frozen=True, slots=True)
class SubmitLimits:
    """What this server can honour (from its settings): the longest `budget.max_time` it
    accepts, and whether it knows LLM prices (without them no spend is counted, so a
    `budget.max_cost_usd` could never stop a task)."""

    max_time_s: float = 86_400.0
    prices_configured: bool = False


DEFAULT_LIMITS = SubmitLimits()


def fingerprint(req: pb.SubmitTaskRequest) -> str:
    """Hash of the request body without its request_id, to tell a retry from a new request."""
    body = pb.SubmitTaskRequest()
    body.CopyFrom(req)
    body.ClearField("request_id")
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def validate_submit(
    req: pb.SubmitTaskRequest,
    served_arm_types: Collection[str],
    *,
    limits: SubmitLimits = DEFAULT_LIMITS,
) -> None:
    """Check a SubmitTaskRequest; `served_arm_types` are the arm types some arm serves now,
    `limits` what this server can honour."""
    _check_goal(req.goal)
    _check_constraints(req.constraints)
    _check_json(req.context, "context")
    if len(req.acceptance_criteria) > MAX_ACCEPTANCE_CRITERIA:
        raise invalid_argument(
            "acceptance_criteria",
            f"acceptance_criteria must have at most {MAX_ACCEPTANCE_CRITERIA} entries "
            f"(got {len(req.acceptance_criteria)})",
            "TOO_MANY_ACCEPTANCE_CRITERIA",
        )
    if req.HasField("budget"):
        _check_budget(req.budget, limits.max_time_s)
    if req.request_id and not _REQUEST_ID.fullmatch(req.request_id):
        raise invalid_argument(
            "request_id",
            "request_id must be 1 to 128 characters of letters, digits, '_', '.', ':' or '-'",
            "INVALID_REQUEST_ID",
        )
    if req.priority not in _PRIORITIES:
        raise invalid_argument(
            "priority",
            f"priority must be a known Priority value (got {req.priority})",
            "UNKNOWN_PRIORITY",
        )
    if req.HasField("plan"):
        _check_plan(req.plan, served_arm_types)
    if req.budget.max_cost_usd > 0 and not limits.prices_configured:
        raise failed_precondition(
            "budget.max_cost_usd cannot be enforced: this server has no LLM prices configured "
            "(OCTOLLM_LLM_PRICE_PER_1K_PROMPT and OCTOLLM_LLM_PRICE_PER_1K_COMPLETION are 0), "
            "so it counts no spend; drop the cost budget or configure the prices",
            "COST_BUDGET_UNENFORCEABLE",
            field="budget.max_cost_usd",
        )


def validate_task_id(task_id: str, field: str = "task_id") -> str:
    """Check a task id is a UUID and return it in canonical (lowercase, hyphenated) form."""
    if not task_id:
        raise invalid_argument(field, f"{field} is required", "MISSING_TASK_ID")
    try:
        parsed = uuid.UUID(task_id)
    except ValueError:
        shown = task_id if len(task_id) <= 64 else task_id[:64] + "..."
        raise invalid_argument(
            field, f"{field} must be a UUID (got {shown!r})", "MALFORMED_TASK_ID"
        ) from None
    return str(parsed)


def validate_list(req: pb.ListTasksRequest) -> tuple[int, str, frozenset[int]]:
    """Check a ListTasksRequest; return (page_size, page_token, states) with defaults applied."""
    page_size = req.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise invalid_argument(
            "page_size",
            f"page_size must be between 0 and {MAX_PAGE_SIZE} (got {req.page_size})",
            "INVALID_PAGE_SIZE",
        )
    if len(req.page_token) > MAX_PAGE_TOKEN_CHARS:
        raise invalid_page_token()
    for index, state in enumerate(req.states):
        if state not in _TASK_STATES:
            raise invalid_argument(
                f"states[{index}]",
                f"states[{index}] must be a known TaskState other than "
                f"TASK_STATE_UNSPECIFIED (got {state})",
                "UNKNOWN_TASK_STATE",
            )
    return page_size, req.page_token, frozenset(req.states)


MAX_WATCH_BATCH = 1000


def invalid_page_token() -> ApiError:
    """The error for a page_token this server did not issue (the store raised ValueError)."""
    return invalid_argument(
        "page_token",
        "page_token is not a token returned by ListTasks; start again with an empty page_token",
        "INVALID_PAGE_TOKEN",
    )


def validate_watch(req: pb.WatchTaskRequest) -> tuple[str, int, int]:
    """Check a WatchTaskRequest; return (canonical task_id, after_seq, max_batch_size)."""
    task_id = validate_task_id(req.task_id)
    if req.after_seq < 0:
        raise invalid_argument(
            "after_seq", f"after_seq must be 0 or more (got {req.after_seq})", "NEGATIVE_AFTER_SEQ"
        )
    if not 0 <= req.max_batch_size <= MAX_WATCH_BATCH:
        raise invalid_argument(
            "max_batch_size",
            f"max_batch_size must be 0 (one event per response) to {MAX_WATCH_BATCH} "
            f"(got {req.max_batch_size})",
            "BATCH_SIZE_OUT_OF_RANGE",
        )
    return task_id, req.after_seq, req.max_batch_size


_TASK_VIEWS = frozenset(pb.TaskView.values())


def validate_view(
    view: pb.TaskView.ValueType, default: pb.TaskView.ValueType
) -> pb.TaskView.ValueType:
    """Check a request's TaskView; return it, or `default` when it is unset."""
    if view not in _TASK_VIEWS:
        raise invalid_argument(
            "view",
            f"view must be TASK_VIEW_BASIC or TASK_VIEW_FULL, or unset (got {view})",
            "UNKNOWN_TASK_VIEW",
        )
    return view or default


def validate_arm_id(arm_id: str, field: str = "arm_id") -> str:
    """Check an arm id is present and at most 128 characters; return it."""
    if not arm_id:
        raise invalid_argument(field, f"{field} is required", "MISSING_ARM_ID")
    if len(arm_id) > MAX_ARM_ID_CHARS:
        raise invalid_argument(
            field,
            f"{field} must be at most {MAX_ARM_ID_CHARS} characters (got {len(arm_id)})",
            "ARM_ID_TOO_LONG",
        )
    return arm_id


def _check_goal(goal: str) -> None:
    length = len(goal.strip())
    if length < GOAL_MIN_CHARS:
        raise invalid_argument(
            "goal",
            f"goal must be at least {GOAL_MIN_CHARS} characters (got {length})",
            "GOAL_TOO_SHORT",
        )
    if length > GOAL_MAX_CHARS:
        raise invalid_argument(
            "goal",
            f"goal must be at most {GOAL_MAX_CHARS} characters (got {length})",
            "GOAL_TOO_LONG",
        )


def _check_constraints(constraints: Collection[str]) -> None:
    if len(constraints) > MAX_CONSTRAINTS:
        raise invalid_argument(
            "constraints",
            f"constraints must have at most {MAX_CONSTRAINTS} entries (got {len(constraints)})",
            "TOO_MANY_CONSTRAINTS",
        )
    for index, constraint in enumerate(constraints):
        if len(constraint) > CONSTRAINT_MAX_CHARS:
            raise invalid_argument(
                f"constraints[{index}]",
                f"constraints[{index}] must be at most {CONSTRAINT_MAX_CHARS} characters "
                f"(got {len(constraint)})",
                "CONSTRAINT_TOO_LONG",
            )


def _check_json(struct: struct_pb2.Struct, field: str) -> None:
    """A Struct is JSON for the arms and the brain: no NaN or Infinity (valid doubles on the
    wire, not JSON), and at most MAX_JSON_DEPTH objects and lists deep (protobuf parses 100
    message levels, and the Task, events and dispatches that carry the Struct add some)."""
    pending: list[tuple[str, int, struct_pb2.Value]] = [
        (f"[{key!r}]", 1, value) for key, value in struct.fields.items()
    ]
    while pending:
        path, depth, value = pending.pop()
        kind = value.WhichOneof("kind")
        shown = path if len(path) <= 200 else path[:200] + "..."
        if kind == "number_value" and not math.isfinite(value.number_value):
            raise invalid_argument(
                field,
                f"{field}{shown} must be a finite number (got {value.number_value}); "
                "JSON has no NaN or Infinity",
                "NON_FINITE_NUMBER",
            )
        if kind in ("struct_value", "list_value") and depth >= MAX_JSON_DEPTH:
            raise invalid_argument(
                field,
                f"{field} must nest objects and lists at most {MAX_JSON_DEPTH} deep "
                f"(deeper at {shown})",
                "TOO_DEEP",
            )
        if kind == "struct_value":
            pending.extend(
                (f"{path}[{k!r}]", depth + 1, v) for k, v in value.struct_value.fields.items()
            )
        elif kind == "list_value":
            pending.extend(
                (f"{path}[{i}]", depth + 1, v) for i, v in enumerate(value.list_value.values)
            )


def _check_budget(budget: common_pb2.Budget, max_time_s: float) -> None:
    if budget.max_tokens < 0:
        raise invalid_argument(
            "budget.max_tokens",
            f"budget.max_tokens must be 0 or more (got {budget.max_tokens})",
            "NEGATIVE_BUDGET",
        )
    if math.isnan(budget.max_cost_usd) or math.isinf(budget.max_cost_usd):
        raise invalid_argument(
            "budget.max_cost_usd",
            f"budget.max_cost_usd must be a finite number (got {budget.max_cost_usd})",
            "INVALID_BUDGET",
        )
    if budget.max_cost_usd < 0:
        raise invalid_argument(
            "budget.max_cost_usd",
            f"budget.max_cost_usd must be 0 or more (got {budget.max_cost_usd})",
            "NEGATIVE_BUDGET",
        )
    max_time = budget.max_time
    if max_time.seconds < 0 or max_time.nanos < 0:
        raise invalid_argument(
            "budget.max_time",
            f"budget.max_time must not be negative (got {max_time.seconds}s {max_time.nanos}ns)",
            "NEGATIVE_BUDGET",
        )
    if max_time.nanos > _MAX_DURATION_NANOS:
        raise invalid_argument(
            "budget.max_time",
            f"budget.max_time.nanos must be at most {_MAX_DURATION_NANOS} (got {max_time.nanos})",
            "INVALID_DURATION",
        )
    if max_time.seconds > _MAX_DURATION_SECONDS:
        # NOTE: beyond google.protobuf.Duration's range no JSON client could show the task.
        raise invalid_argument(
            "budget.max_time",
            f"budget.max_time.seconds must be at most {_MAX_DURATION_SECONDS} "
            f"(got {max_time.seconds})",
            "INVALID_DURATION",
        )
    if max_time.ToNanoseconds() > max_time_s * 1e9:
        limit = f"{max_time_s:g}"
        raise invalid_argument(
            "budget.max_time",
            f"budget.max_time must be at most {limit}s on this server "
            f"(got {max_time.seconds}.{max_time.nanos:09d}s)",
            "MAX_TIME_TOO_LONG",
            {"limit_s": limit},
        )


def _check_capabilities(capabilities: Collection[str], step: str) -> None:
    field = f"{step}.required_capabilities"
    if len(capabilities) > MAX_REQUIRED_CAPABILITIES:
        raise invalid_argument(
            field,
            f"{field} must have at most {MAX_REQUIRED_CAPABILITIES} entries "
            f"(got {len(capabilities)})",
            "TOO_MANY_CAPABILITIES",
        )
    for index, capability in enumerate(capabilities):
        if not _CAPABILITY.fullmatch(capability):
            raise invalid_argument(
                f"{field}[{index}]",
                f"{field}[{index}] must be 1 to 64 characters of letters, digits, "
                f"'_', '.', ':', '+', '#', '/' or '-' (got {capability[:80]!r})",
                "INVALID_CAPABILITY",
            )


def _check_plan(plan: pb.Plan, served_arm_types: Collection[str]) -> None:
    steps = plan.steps
    if not steps:
        raise invalid_argument("plan.steps", "plan.steps must have at least 1 step", "EMPTY_PLAN")
    if len(steps) > MAX_PLAN_STEPS:
        raise invalid_argument(
            "plan.steps",
            f"plan.steps must have at most {MAX_PLAN_STEPS} steps (got {len(steps)})",
            "PLAN_TOO_LARGE",
        )

    seen: set[str] = set()
    for index, step in enumerate(steps):
        field = f"plan.steps[{index}].step_id"
        if not _STEP_ID.fullmatch(step.step_id):
            raise invalid_argument(
                field,
                f"{field} must be 1 to 64 characters of letters, digits, '_', '.' or '-' "
                f"(got {step.step_id[:80]!r})",
                "INVALID_STEP_ID",
            )
        if step.step_id in seen:
            raise invalid_argument(
                field,
                f"{field} {step.step_id!r} is used by an earlier step; step ids must be unique",
                "DUPLICATE_STEP_ID",
                {"step_id": step.step_id},
            )
        seen.add(step.step_id)
        if not step.arm_type:
            raise invalid_argument(
                f"plan.steps[{index}].arm_type",
                f"plan.steps[{index}].arm_type is required",
                "MISSING_ARM_TYPE",
            )
        _check_json(step.input, f"plan.steps[{index}].input")
        _check_capabilities(step.required_capabilities, f"plan.steps[{index}]")

    for index, step in enumerate(steps):
        for dep_index, dependency in enumerate(step.depends_on):
            field = f"plan.steps[{index}].depends_on[{dep_index}]"
            if dependency == step.step_id:
                raise invalid_argument(
                    field,
                    f"{field}: step {step.step_id!r} cannot depend on itself",
                    "SELF_DEPENDENCY",
                    {"step_id": step.step_id},
                )
            if dependency not in seen:
                raise invalid_argument(
                    field,
                    f"{field} names step {dependency[:80]!r}, which is not in the plan",
                    "UNKNOWN_DEPENDENCY",
                    {"step_id": step.step_id, "dependency": dependency},
                )

    sorter = graphlib.TopologicalSorter({step.step_id: step.depends_on for step in steps})
    try:
        sorter.prepare()
    except graphlib.CycleError as err:
        cycle = " -> ".join(err.args[1])
        raise invalid_argument(
            "plan.steps",
            f"plan.steps must form a DAG, but these steps depend on each other: {cycle}",
            "PLAN_CYCLE",
            {"cycle": cycle},
        ) from None

    for index, step in enumerate(steps):
        if step.arm_type not in served_arm_types:
            field = f"plan.steps[{index}].arm_type"
            raise failed_precondition(
                f"{field}: no connected arm serves arm type {step.arm_type[:80]!r}",
                "NO_ARM_FOR_TYPE",
                field=field,
                metadata={"arm_type": step.arm_type},
            )
