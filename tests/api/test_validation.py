"""API validation rules and their AIP-193 errors, down to what a gRPC client decodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from orchestrator_svc.api.errors import (
    DOMAIN,
    ApiError,
    abort,
    error_info_of,
    failure_from,
    from_store_error,
    invalid_argument,
)
from orchestrator_svc.api.validation import (
    SubmitLimits,
    fingerprint,
    invalid_page_token,
    validate_arm_id,
    validate_list,
    validate_submit,
    validate_task_id,
    validate_watch,
)
from orchestrator_svc.store import IdempotencyConflict, StoreClosed, TaskClosed, TaskNotFound

ARMS = frozenset({"retriever", "coder"})
PRICED = SubmitLimits(prices_configured=True)
GOAL = "summarise the quarterly report"
TASK_ID = "0b7f1a8e-4c55-4d7a-9b1e-2f4f1c0d9a11"


def _raised(check: Callable[[], object]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check()
    return caught.value


def _assert_error(
    err: ApiError,
    code: grpc.StatusCode,
    reason: str,
    field: str | None,
    **metadata: str,
) -> None:
    """Assert the error and check its rich status decodes back to the same thing."""
    assert (err.code, err.reason) == (code, reason), err
    assert err.metadata.get("field") == field
    for key, value in metadata.items():
        assert err.metadata[key] == value

    status = err.to_status()
    assert status.code == code
    assert status.details == err.message
    ((key, raw),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(raw)
    assert rich.code == code.value[0]
    assert rich.message == err.message
    info = error_info_of(rich)
    assert info is not None
    assert info.reason == reason
    assert info.domain == DOMAIN
    assert dict(info.metadata) == err.metadata


def _submit(**fields: Any) -> pb.SubmitTaskRequest:
    fields.setdefault("goal", GOAL)
    return pb.SubmitTaskRequest(**fields)


def _steps(*specs: tuple[str, str, list[str]]) -> pb.Plan:
    return pb.Plan(
        steps=[
            pb.PlanStep(step_id=step_id, arm_type=arm_type, depends_on=deps)
            for step_id, arm_type, deps in specs
        ]
    )


def _invalid_submit(req: pb.SubmitTaskRequest, reason: str, field: str | None, **meta: str) -> str:
    err = _raised(lambda: validate_submit(req, ARMS))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, reason, field, **meta)
    return err.message


# --- SubmitTask ---------------------------------------------------------------------------


def test_valid_submit_passes() -> None:
    """A full, well-formed request with a served DAG plan passes."""
    req = _submit(
        constraints=["x" * 500] * 20,
        acceptance_criteria=["cites sources"] * 20,
        priority=pb.PRIORITY_CRITICAL,
        budget=common_pb2.Budget(
            max_tokens=0, max_cost_usd=2.5, max_time=duration_pb2.Duration(seconds=30)
        ),
        request_id="Client_1.retry:2-a",
        plan=_steps(
            ("search", "retriever", []),
            ("code", "coder", ["search"]),
            ("review", "coder", ["search", "code"]),
        ),
    )
    req.plan.steps[1].required_capabilities.extend(["code_generation", "c++", "node.js"] * 5)
    req.plan.steps[1].required_capabilities.append("x" * 64)
    validate_submit(req, ARMS, limits=PRICED)


@pytest.mark.parametrize(
    ("goal", "reason", "got"),
    [
        ("short", "GOAL_TOO_SHORT", "got 5"),
        ("   padded    ", "GOAL_TOO_SHORT", "got 6"),
        ("", "GOAL_TOO_SHORT", "got 0"),
        ("g" * 2001, "GOAL_TOO_LONG", "got 2001"),
    ],
)
def test_goal_length(goal: str, reason: str, got: str) -> None:
    """The stripped goal must be 10 to 2000 characters; the message names field, limit, length."""
    message = _invalid_submit(_submit(goal=goal), reason, "goal")
    assert message.startswith("goal must be at")
    assert got in message


@pytest.mark.parametrize("goal", ["g" * 10, "  " + "g" * 10 + "\n", "g" * 2000])
def test_goal_length_bounds_are_inclusive(goal: str) -> None:
    """Goals of exactly 10 and 2000 characters (after stripping) are accepted."""
    validate_submit(_submit(goal=goal), ARMS)


def test_goal_message_is_a_sentence() -> None:
    """The goal error reads as a sentence naming the limit and the actual length."""
    message = _invalid_submit(_submit(goal="four"), "GOAL_TOO_SHORT", "goal")
    assert message == "goal must be at least 10 characters (got 4)"


def test_too_many_constraints() -> None:
    """More than 20 constraints is TOO_MANY_CONSTRAINTS on field constraints."""
    message = _invalid_submit(
        _submit(constraints=["c"] * 21), "TOO_MANY_CONSTRAINTS", "constraints"
    )
    assert "at most 20" in message


def test_constraint_too_long() -> None:
    """A constraint over 500 characters is reported with its index."""
    req = _submit(constraints=["ok", "c" * 501])
    message = _invalid_submit(req, "CONSTRAINT_TOO_LONG", "constraints[1]")
    assert "at most 500 characters (got 501)" in message


def test_too_many_acceptance_criteria() -> None:
    """More than 20 acceptance criteria is rejected on field acceptance_criteria."""
    req = _submit(acceptance_criteria=["a"] * 21)
    _invalid_submit(req, "TOO_MANY_ACCEPTANCE_CRITERIA", "acceptance_criteria")


@pytest.mark.parametrize(
    ("budget", "reason", "field"),
    [
        (common_pb2.Budget(max_tokens=-1), "NEGATIVE_BUDGET", "budget.max_tokens"),
        (common_pb2.Budget(max_cost_usd=-0.01), "NEGATIVE_BUDGET", "budget.max_cost_usd"),
        (common_pb2.Budget(max_cost_usd=float("nan")), "INVALID_BUDGET", "budget.max_cost_usd"),
        (common_pb2.Budget(max_cost_usd=float("inf")), "INVALID_BUDGET", "budget.max_cost_usd"),
        (
            common_pb2.Budget(max_time=duration_pb2.Duration(seconds=-5)),
            "NEGATIVE_BUDGET",
            "budget.max_time",
        ),
        (
            common_pb2.Budget(max_time=duration_pb2.Duration(nanos=-1)),
            "NEGATIVE_BUDGET",
            "budget.max_time",
        ),
        (
            common_pb2.Budget(max_time=duration_pb2.Duration(nanos=1_000_000_000)),
            "INVALID_DURATION",
            "budget.max_time",
        ),
        (
            common_pb2.Budget(max_time=duration_pb2.Duration(seconds=315_576_000_001)),
            "INVALID_DURATION",
            "budget.max_time",
        ),
    ],
)
def test_budget_fields(budget: common_pb2.Budget, reason: str, field: str) -> None:
    """Budget fields must be non-negative (and finite), each reported on its own field path."""
    _invalid_submit(_submit(budget=budget), reason, field)


def test_max_time_is_bounded_by_the_server() -> None:
    """A budget.max_time beyond the server's limit (24 h by default, configurable) is
    MAX_TIME_TOO_LONG naming the limit; the limit itself passes."""
    day = common_pb2.Budget(max_time=duration_pb2.Duration(seconds=86_400))
    validate_submit(_submit(budget=day), ARMS)
    for seconds, nanos in ((86_400, 1), (315_576_000_000, 0)):
        budget = common_pb2.Budget(max_time=duration_pb2.Duration(seconds=seconds, nanos=nanos))
        message = _invalid_submit(
            _submit(budget=budget), "MAX_TIME_TOO_LONG", "budget.max_time", limit_s="86400"
        )
        assert "at most 86400s" in message
    hour = SubmitLimits(max_time_s=3600)
    err = _raised(lambda: validate_submit(_submit(budget=day), ARMS, limits=hour))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "MAX_TIME_TOO_LONG", "budget.max_time")


def test_cost_budget_without_prices_is_refused() -> None:
    """budget.max_cost_usd on a server with no LLM prices could never be enforced: it is
    FAILED_PRECONDITION COST_BUDGET_UNENFORCEABLE, after every INVALID_ARGUMENT check."""
    req = _submit(budget=common_pb2.Budget(max_cost_usd=0.05))
    err = _raised(lambda: validate_submit(req, ARMS))
    _assert_error(
        err,
        grpc.StatusCode.FAILED_PRECONDITION,
        "COST_BUDGET_UNENFORCEABLE",
        "budget.max_cost_usd",
    )
    assert "OCTOLLM_LLM_PRICE_PER_1K_PROMPT" in err.message
    validate_submit(req, ARMS, limits=PRICED)
    validate_submit(_submit(budget=common_pb2.Budget(max_tokens=100)), ARMS)
    req.request_id = "bad id"
    _invalid_submit(req, "INVALID_REQUEST_ID", "request_id")


@pytest.mark.parametrize(
    "request_id", ["has space", "x" * 129, "slash/no", "newline\n", "ünïcode", "semi;colon"]
)
def test_malformed_request_id(request_id: str) -> None:
    """request_id must be 1-128 chars of [A-Za-z0-9_.:-] (a trailing newline included)."""
    _invalid_submit(_submit(request_id=request_id), "INVALID_REQUEST_ID", "request_id")


def test_longest_request_id_passes() -> None:
    """A 128-character request_id is accepted."""
    validate_submit(_submit(request_id="r" * 128), ARMS)


def test_unknown_priority() -> None:
    """An enum value outside Priority is UNKNOWN_PRIORITY on field priority."""
    req = _submit()
    req.priority = 99  # type: ignore[assignment]
    message = _invalid_submit(req, "UNKNOWN_PRIORITY", "priority")
    assert "got 99" in message


def test_empty_plan() -> None:
    """A plan field present with no steps is EMPTY_PLAN."""
    _invalid_submit(_submit(plan=pb.Plan()), "EMPTY_PLAN", "plan.steps")


def test_plan_too_large() -> None:
    """More than 1000 steps is PLAN_TOO_LARGE; exactly 1000 is fine."""
    most = _steps(*((f"s{i}", "coder", []) for i in range(1000)))
    validate_submit(_submit(plan=most), ARMS)
    most.steps.add(step_id="s1000", arm_type="coder")
    message = _invalid_submit(_submit(plan=most), "PLAN_TOO_LARGE", "plan.steps")
    assert "at most 1000 steps (got 1001)" in message


@pytest.mark.parametrize("step_id", ["", "has space", "colon:no", "s" * 65, "ü"])
def test_invalid_step_id(step_id: str) -> None:
    """step_id must be 1-64 chars of [A-Za-z0-9_.-], reported at its index."""
    plan = _steps(("ok", "coder", []), (step_id, "coder", []))
    _invalid_submit(_submit(plan=plan), "INVALID_STEP_ID", "plan.steps[1].step_id")


def test_duplicate_step_id() -> None:
    """A repeated step_id is DUPLICATE_STEP_ID at the second occurrence."""
    plan = _steps(("a", "coder", []), ("b", "coder", []), ("a", "coder", []))
    _invalid_submit(_submit(plan=plan), "DUPLICATE_STEP_ID", "plan.steps[2].step_id", step_id="a")


def test_missing_arm_type() -> None:
    """A step without arm_type is MISSING_ARM_TYPE (INVALID_ARGUMENT, not a precondition)."""
    plan = _steps(("a", "coder", []), ("b", "", []))
    _invalid_submit(_submit(plan=plan), "MISSING_ARM_TYPE", "plan.steps[1].arm_type")


@pytest.mark.parametrize("capability", ["", "has space", "x" * 65, "semi;colon", "ü", "a\n"])
def test_invalid_required_capability(capability: str) -> None:
    """A required capability must be 1-64 chars of [A-Za-z0-9_.:+#/-], reported at its index."""
    plan = _steps(("a", "coder", []), ("b", "coder", []))
    plan.steps[1].required_capabilities.extend(["python", capability])
    _invalid_submit(
        _submit(plan=plan), "INVALID_CAPABILITY", "plan.steps[1].required_capabilities[1]"
    )


def test_too_many_required_capabilities() -> None:
    """More than 16 required capabilities on one step is TOO_MANY_CAPABILITIES."""
    plan = _steps(("a", "coder", []))
    plan.steps[0].required_capabilities.extend(f"c{i}" for i in range(17))
    message = _invalid_submit(
        _submit(plan=plan), "TOO_MANY_CAPABILITIES", "plan.steps[0].required_capabilities"
    )
    assert "got 17" in message


def test_unknown_dependency() -> None:
    """depends_on naming a step not in the plan is UNKNOWN_DEPENDENCY."""
    plan = _steps(("a", "coder", []), ("b", "coder", ["a", "ghost"]))
    _invalid_submit(
        _submit(plan=plan),
        "UNKNOWN_DEPENDENCY",
        "plan.steps[1].depends_on[1]",
        dependency="ghost",
        step_id="b",
    )


def test_self_dependency() -> None:
    """A step depending on itself is SELF_DEPENDENCY."""
    plan = _steps(("a", "coder", ["a"]))
    _invalid_submit(_submit(plan=plan), "SELF_DEPENDENCY", "plan.steps[0].depends_on[0]")


def test_plan_cycle() -> None:
    """A dependency cycle is PLAN_CYCLE with the cycle spelled out in metadata."""
    plan = _steps(
        ("a", "coder", ["c"]), ("b", "coder", ["a"]), ("c", "coder", ["b"]), ("d", "coder", [])
    )
    err = _raised(lambda: validate_submit(_submit(plan=plan), ARMS))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "PLAN_CYCLE", "plan.steps")
    cycle = err.metadata["cycle"].split(" -> ")
    assert cycle[0] == cycle[-1]
    assert sorted(cycle[:-1]) == ["a", "b", "c"]
    assert err.metadata["cycle"] in err.message


def test_unserved_arm_type_is_failed_precondition() -> None:
    """An arm type no arm serves is FAILED_PRECONDITION NO_ARM_FOR_TYPE with arm_type metadata."""
    plan = _steps(("a", "coder", []), ("b", "painter", ["a"]))
    err = _raised(lambda: validate_submit(_submit(plan=plan), ARMS))
    _assert_error(
        err,
        grpc.StatusCode.FAILED_PRECONDITION,
        "NO_ARM_FOR_TYPE",
        "plan.steps[1].arm_type",
        arm_type="painter",
    )


def test_malformed_plan_wins_over_unserved_arm() -> None:
    """INVALID_ARGUMENT problems are reported before the FAILED_PRECONDITION one."""
    plan = _steps(("a", "painter", ["b"]), ("b", "painter", ["a"]))
    _invalid_submit(_submit(plan=plan), "PLAN_CYCLE", "plan.steps")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_in_json(number: float) -> None:
    """NaN and infinities (valid doubles, not JSON) in context or a step input are
    NON_FINITE_NUMBER naming the field and the path to the number."""
    context = struct_pb2.Struct()
    context.update({"ok": 1.5, "deep": {"list": [0, {"x": number}]}})
    message = _invalid_submit(_submit(context=context), "NON_FINITE_NUMBER", "context")
    assert "context['deep']['list'][1]['x']" in message
    plan = _steps(("a", "coder", []))
    plan.steps[0].input.update({"n": number})
    _invalid_submit(_submit(plan=plan), "NON_FINITE_NUMBER", "plan.steps[0].input")


def test_json_nested_too_deep() -> None:
    """Objects and lists nested more than 20 deep in context or a step input are TOO_DEEP;
    20 deep passes."""

    def nested(depth: int) -> struct_pb2.Struct:
        value: Any = {}  # the innermost object, inside the list inside the context
        for _ in range(depth - 3):
            value = {"k": value}
        struct = struct_pb2.Struct()
        struct.update({"k": [value]})  # a list counts as a level too
        return struct

    validate_submit(_submit(context=nested(20)), ARMS)
    _invalid_submit(_submit(context=nested(21)), "TOO_DEEP", "context")
    plan = _steps(("a", "coder", []))
    plan.steps[0].input.CopyFrom(nested(21))
    _invalid_submit(_submit(plan=plan), "TOO_DEEP", "plan.steps[0].input")


def test_fingerprint_ignores_request_id_only() -> None:
    """The fingerprint is stable across request_ids and map order, and changes with the body."""
    context_a = struct_pb2.Struct()
    context_a.update({"x": 1, "y": "two"})
    context_b = struct_pb2.Struct()
    context_b.update({"y": "two", "x": 1})
    first = _submit(request_id="one", context=context_a)
    second = _submit(request_id="two", context=context_b)
    assert fingerprint(first) == fingerprint(second)
    assert first.request_id == "one"
    assert fingerprint(first) != fingerprint(_submit(goal=GOAL + "!", context=context_a))


# --- ids, listing, watching ------------------------------------------------------------


def test_task_id_is_canonicalised() -> None:
    """A UUID task id is returned in canonical lowercase hyphenated form."""
    assert validate_task_id(TASK_ID) == TASK_ID
    assert validate_task_id(TASK_ID.upper()) == TASK_ID


def test_missing_task_id() -> None:
    """An empty task id is MISSING_TASK_ID."""
    err = _raised(lambda: validate_task_id(""))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_TASK_ID", "task_id")


@pytest.mark.parametrize("task_id", ["nope", "1234", TASK_ID + "0", "x" * 10_000])
def test_malformed_task_id(task_id: str) -> None:
    """A task id that is not a UUID is MALFORMED_TASK_ID, and the message stays short."""
    err = _raised(lambda: validate_task_id(task_id))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_TASK_ID", "task_id")
    assert len(err.message) < 200


def test_list_defaults() -> None:
    """page_size 0 means 50; the token and states pass through."""
    req = pb.ListTasksRequest(page_token="abc", states=[pb.TASK_STATE_FAILED])
    assert validate_list(req) == (50, "abc", frozenset({pb.TASK_STATE_FAILED}))
    assert validate_list(pb.ListTasksRequest(page_size=1000))[0] == 1000


@pytest.mark.parametrize("page_size", [-1, 1001])
def test_list_page_size_bounds(page_size: int) -> None:
    """page_size outside 0..1000 is INVALID_PAGE_SIZE."""
    err = _raised(lambda: validate_list(pb.ListTasksRequest(page_size=page_size)))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_SIZE", "page_size")
    assert f"got {page_size}" in err.message


@pytest.mark.parametrize("state", [pb.TASK_STATE_UNSPECIFIED, 77])
def test_list_unknown_state(state: int) -> None:
    """An unknown or UNSPECIFIED state filter is UNKNOWN_TASK_STATE at its index."""
    req = pb.ListTasksRequest()
    req.states.extend([pb.TASK_STATE_PENDING, state])  # type: ignore[list-item]
    err = _raised(lambda: validate_list(req))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TASK_STATE", "states[1]")


def test_list_oversized_token() -> None:
    """A page_token longer than any issued one is INVALID_PAGE_TOKEN without reaching the store."""
    err = _raised(lambda: validate_list(pb.ListTasksRequest(page_token="t" * 5000)))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", "page_token")
    assert invalid_page_token().reason == "INVALID_PAGE_TOKEN"


def test_watch_request() -> None:
    """validate_watch returns the id, after_seq and batch size; out-of-range ones are refused."""
    assert validate_watch(pb.WatchTaskRequest(task_id=TASK_ID.upper(), after_seq=3)) == (
        TASK_ID,
        3,
        0,
    )
    assert validate_watch(pb.WatchTaskRequest(task_id=TASK_ID, max_batch_size=1000))[2] == 1000
    for size in (-1, 1001):
        err = _raised(
            lambda size=size: validate_watch(  # type: ignore[misc]
                pb.WatchTaskRequest(task_id=TASK_ID, max_batch_size=size)
            )
        )
        _assert_error(
            err, grpc.StatusCode.INVALID_ARGUMENT, "BATCH_SIZE_OUT_OF_RANGE", "max_batch_size"
        )
    err = _raised(lambda: validate_watch(pb.WatchTaskRequest(task_id=TASK_ID, after_seq=-1)))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "NEGATIVE_AFTER_SEQ", "after_seq")
    err = _raised(lambda: validate_watch(pb.WatchTaskRequest(after_seq=1)))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_TASK_ID", "task_id")


def test_arm_id() -> None:
    """arm_id must be non-empty and at most 128 characters."""
    assert validate_arm_id("a" * 128) == "a" * 128
    err = _raised(lambda: validate_arm_id(""))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ARM_ID", "arm_id")
    err = _raised(lambda: validate_arm_id("a" * 129))
    _assert_error(err, grpc.StatusCode.INVALID_ARGUMENT, "ARM_ID_TOO_LONG", "arm_id")
    assert "at most 128 characters (got 129)" in err.message


# --- error mapping ----------------------------------------------------------------------


def test_failure_from_api_error() -> None:
    """failure_from copies code, message, reason and metadata into a Failure."""
    err = invalid_argument("goal", "goal must be at least 10 characters (got 4)", "GOAL_TOO_SHORT")
    failure = failure_from(err, retryable=True)
    assert failure == common_pb2.Failure(
        code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
        message=err.message,
        reason="GOAL_TOO_SHORT",
        retryable=True,
        metadata={"field": "goal"},
    )


@pytest.mark.parametrize(
    ("store_error", "code", "reason", "field"),
    [
        (TaskNotFound(TASK_ID), grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND", "task_id"),
        (
            IdempotencyConflict("req-1", TASK_ID),
            grpc.StatusCode.ALREADY_EXISTS,
            "REQUEST_ID_REUSED",
            "request_id",
        ),
        (TaskClosed(TASK_ID), grpc.StatusCode.FAILED_PRECONDITION, "TASK_FINISHED", None),
        (StoreClosed(), grpc.StatusCode.UNAVAILABLE, "STORE_CLOSED", None),
    ],
)
def test_store_errors_map_to_statuses(
    store_error: Exception, code: grpc.StatusCode, reason: str, field: str | None
) -> None:
    """Each store error maps to its canonical code and reason."""
    err = from_store_error(store_error)  # type: ignore[arg-type]
    _assert_error(err, code, reason, field)


class _TaskLookup(pb_grpc.OrchestratorServiceServicer):
    async def GetTask(
        self, request: pb.GetTaskRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetTaskResponse:
        try:
            task_id = validate_task_id(request.task_id)
        except ApiError as err:
            await abort(context, err)
        await abort(context, from_store_error(TaskNotFound(task_id)))


@pytest.fixture
async def stub() -> AsyncIterator[pb_grpc.OrchestratorServiceStub]:
    server = grpc.aio.server()
    # NOTE: the stub marks every RPC abstract; this test servicer implements only GetTask.
    servicer = _TaskLookup()  # type: ignore[abstract]
    pb_grpc.add_OrchestratorServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.OrchestratorServiceStub(channel)
    await server.stop(None)


@pytest.mark.parametrize(
    ("task_id", "code", "reason"),
    [
        ("not-a-uuid", grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_TASK_ID"),
        (TASK_ID, grpc.StatusCode.NOT_FOUND, "TASK_NOT_FOUND"),
    ],
)
async def test_abort_reaches_a_real_client(
    stub: pb_grpc.OrchestratorServiceStub, task_id: str, code: grpc.StatusCode, reason: str
) -> None:
    """abort() ends a real RPC; the client decodes code, message and ErrorInfo from trailers."""
    call = stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await asyncio.wait_for(call, 10)
    assert caught.value.code() == code
    rich = await rpc_status.aio.from_call(call)
    assert rich is not None
    assert rich.message == caught.value.details()
    info = error_info_of(rich)
    assert info is not None
    assert (info.reason, info.domain, info.metadata["field"]) == (reason, DOMAIN, "task_id")
