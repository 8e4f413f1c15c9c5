"""SubmitTask fuzzed through a real channel into one real orchestrator (echo and sleep arms).

Every response is OK or a precise client-error status with a google.rpc.ErrorInfo detail, never
UNKNOWN or INTERNAL; every accepted task reaches a terminal state with a consistent history.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from hypothesis import event, example, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from octollm.v1 import orchestrator_service_pb2 as pb

from tests.chaos.history import assert_consistent_history, finished_history, watch_until_finished
from tests.fuzz.fuzzing import FuzzMesh, answer, any_text, error_info, fuzz_settings, identifiers

pytestmark = pytest.mark.asyncio(loop_scope="module")

CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# A message too deep for protobuf's parser (a Struct 35 objects deep) is not a request at all.
MALFORMED = "MALFORMED_REQUEST"
# NOTE: a hang guard for one accepted task on a busy 2-core machine, not a speed target.
TASK_WAIT_S = 60.0
GOAL = "Fuzz the orchestrator with a reasonable goal"


# -- strategies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """How to draw one request field: a `valid` value, or `anything` (valid or not)."""

    valid: st.SearchStrategy[Any]
    anything: st.SearchStrategy[Any]

    def draw(self, draw: Any, broken: bool) -> Any:
        return draw(st.one_of(self.valid, self.anything) if broken else self.valid)


goals = Field(
    st.builds(lambda t: f"{GOAL} {t}", any_text.filter(lambda s: len(s) < 300)),
    st.one_of(
        any_text,
        st.sampled_from([0, 9, 10, 2000, 2001, 100_000]).map(lambda n: "g" * n),
        st.tuples(st.text(" \t\n\r\x0b\x0c\x00\u2028", max_size=3000), st.just(GOAL)).map("".join),
    ),
)

short_texts = any_text.filter(lambda s: len(s) < 100)
constraint_lists = Field(
    st.lists(short_texts, max_size=20),
    st.lists(any_text.filter(lambda s: len(s) <= 600), max_size=22)
    | st.just(["c" * 501])
    | st.just(["c"] * 21),
)
criteria_lists = Field(st.lists(short_texts, max_size=3), st.lists(short_texts, max_size=22))

finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | any_text.filter(lambda s: len(s) < 200),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(any_text.filter(lambda s: len(s) < 40), children, max_size=4)
    ),
    max_leaves=25,
)
# Any JSON value a Struct holds: NaN and infinities are valid protobuf doubles, but not JSON.
json_values = st.recursive(
    finite_json | st.floats(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(short_texts, children),
    max_leaves=10,
)
keys = any_text.filter(lambda s: len(s) < 40)
finite_objects = st.dictionaries(keys, finite_json, max_size=6)
json_objects = st.dictionaries(keys, json_values, max_size=6)


def nested(depth: int, leaf: Any) -> dict[str, Any]:
    """{"k": {"k": ... leaf}} `depth` levels deep (Struct inside Value inside Struct ...)."""
    value: Any = leaf
    for _ in range(depth):
        value = {"k": value}
    return value if isinstance(value, dict) else {"k": value}


# NOTE: a Struct costs three message levels per object (Struct, map entry, Value) and protobuf's
# parser allows 100, so the deepest of these do not parse at the server (MALFORMED_REQUEST).
contexts = Field(
    finite_objects,
    json_objects | st.tuples(st.integers(0, 60), json_values).map(lambda t: nested(*t)),
)

durations = Field(
    st.tuples(st.integers(0, 600), st.integers(0, 999_999_999)),
    st.tuples(
        st.integers(-5, 5) | st.integers(-(2**63), 2**63 - 1),
        st.sampled_from([-1, 1, 999_999_999, 10**9]) | st.integers(-(2**31), 2**31 - 1),
    ),
)

valid_budgets = st.fixed_dictionaries(
    {},
    optional={
        "max_tokens": st.integers(0, 10**9),
        "max_cost_usd": st.floats(0, 1e6),
        "max_time": durations.valid,
    },
)

budgets = Field(
    valid_budgets,
    st.fixed_dictionaries(
        {},
        optional={
            "max_tokens": st.integers(-(2**63), 2**63 - 1),
            "max_cost_usd": st.floats(),
            "max_time": durations.anything,
        },
    ),
)

request_ids = Field(
    st.just("") | st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
    st.sampled_from(["fuzz-1", "fuzz-2", "x" * 128, "x" * 129, "a\n", "ä"])
    | any_text.filter(lambda s: len(s) < 200),
)

priorities = Field(
    st.sampled_from(sorted(pb.Priority.values())),
    st.integers(-2, 6) | st.integers(-(2**31), 2**31 - 1),
)


@st.composite
def plans(draw: Any, valid_inputs: bool = True) -> pb.Plan:
    """0..2000 steps: a DAG on earlier steps plus cycles, self, missing and duplicate ids."""
    n = draw(st.sampled_from([0, 1, 3, 1000, 1001, 2000]) | st.integers(0, 40))
    rng: random.Random = draw(st.randoms(use_true_random=False))
    fault_rate = draw(st.sampled_from([0.0, 0.0, 0.01, 0.3]))
    arm_types = draw(
        st.lists(st.sampled_from(["echo", "sleep", "wizard", ""]) | identifiers, min_size=1)
    )
    odd_ids = draw(st.lists(identifiers, min_size=1, max_size=4))
    inputs = draw(
        st.lists(finite_objects if valid_inputs else json_objects, min_size=1, max_size=3)
    )
    capability = st.from_regex(r"[A-Za-z0-9_.:+#/-]{1,64}", fullmatch=True)
    capability_lists = draw(
        st.lists(
            st.lists(capability | any_text, max_size=17)
            if fault_rate
            else st.lists(capability, max_size=3),
            min_size=1,
            max_size=3,
        )
    )
    plan = pb.Plan(plan_id=draw(st.just("") | identifiers))
    ids: list[str] = []
    for i in range(n):
        if ids and rng.random() < fault_rate / 3:
            step_id = rng.choice(ids)
        elif rng.random() < fault_rate:
            step_id = rng.choice(odd_ids)
        else:
            step_id = f"s{i}"
        deps = rng.sample(ids, min(len(ids), rng.randint(0, 3)))
        if rng.random() < fault_rate:
            deps.append(rng.choice([step_id, "ghost", f"s{i + 1}", *odd_ids]))
        arm_type = rng.choice(["echo", *arm_types]) if fault_rate else "echo"
        step = plan.steps.add(step_id=step_id, arm_type=arm_type, depends_on=deps)
        step.input.update(rng.choice(inputs))
        step.required_capabilities.extend(rng.choice(capability_lists))
        if arm_type == "sleep":
            step.input.update({"seconds": 0})  # NOTE: the fuzz is about shape, not waiting
        ids.append(step_id)
    return plan


BROKEN = ("goal", "constraints", "criteria", "context", "budget", "request_id", "priority")


@st.composite
def submit_requests(draw: Any) -> pb.SubmitTaskRequest:
    """Any SubmitTaskRequest a client can build: each field valid, except (mostly) one field
    drawn from anything, so the later checks (the plan's) and running tasks get fuzzed too."""
    broken = set(draw(st.sampled_from([(), (), *((b,) for b in BROKEN), BROKEN])))
    req = pb.SubmitTaskRequest(
        goal=goals.draw(draw, "goal" in broken),
        constraints=constraint_lists.draw(draw, "constraints" in broken),
        acceptance_criteria=criteria_lists.draw(draw, "criteria" in broken),
        request_id=request_ids.draw(draw, "request_id" in broken),
        priority=priorities.draw(draw, "priority" in broken),
    )
    if draw(st.booleans()):
        req.context.update(contexts.draw(draw, "context" in broken))
    budget = draw(st.none() | st.just(budgets.draw(draw, "budget" in broken)))
    if budget is not None:
        req.budget.SetInParent()
        req.budget.max_tokens = budget.get("max_tokens", 0)
        req.budget.max_cost_usd = budget.get("max_cost_usd", 0.0)
        if "max_time" in budget:
            req.budget.max_time.seconds, req.budget.max_time.nanos = budget["max_time"]
    if draw(st.integers(0, 4)):
        req.plan.CopyFrom(draw(plans(valid_inputs=not broken)))
    return req


# -- checks -----------------------------------------------------------------------------------


def finite(value: struct_pb2.Value) -> bool:
    """True if no number anywhere in `value` is NaN or infinite."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return math.isfinite(value.number_value)
    if kind == "struct_value":
        return all(finite(v) for v in value.struct_value.fields.values())
    if kind == "list_value":
        return all(finite(v) for v in value.list_value.values)
    return True


def struct_is_finite(struct: struct_pb2.Struct) -> bool:
    return all(finite(v) for v in struct.fields.values())


def statistic(label: str) -> None:
    """Count `label` in hypothesis's statistics (when running under @given)."""
    if currently_in_test_context():
        event(label)


def bucket(n: int) -> str:
    """A size class of `n` steps, for hypothesis's statistics."""
    return next(f"<={top}" for top in (1, 10, 100, 1000, 10**9) if n <= top)


def chain(n: int, width: int = 1) -> pb.Plan:
    """n echo steps in layers of `width`, each step depending on the layer before."""
    plan = pb.Plan()
    for i in range(n):
        layer = i // width
        deps = [f"s{j}" for j in range((layer - 1) * width, layer * width)] if layer else []
        plan.steps.add(step_id=f"s{i}", arm_type="echo", depends_on=deps)
    return plan


async def check_submit(mesh: FuzzMesh, request: pb.SubmitTaskRequest) -> None:
    """Submit `request`; assert a proper status, and a consistent end for an accepted task."""
    response = await answer(mesh.stub.SubmitTask(request, timeout=30))
    if isinstance(response, grpc.aio.AioRpcError):
        assert response.code() in CLIENT_ERRORS, f"{response.code().name}: {response.details()}"
        info = error_info(response)
        statistic(f"{response.code().name}/{info.reason}")
        if response.code() == grpc.StatusCode.INVALID_ARGUMENT and info.reason != MALFORMED:
            assert info.metadata.get("field"), f"{info.reason} names no field"
        return
    # Non-finite numbers cannot be passed on as JSON to the arms and the brain.
    assert struct_is_finite(request.context)
    assert all(struct_is_finite(s.input) for s in request.plan.steps)
    accepted = response.task
    steps = len(request.plan.steps)
    statistic("accepted, planned by the brain" if not steps else f"accepted, {bucket(steps)} steps")
    assert accepted.task_id
    events, task = await finished_history(mesh.stub, accepted.task_id, timeout_s=TASK_WAIT_S)
    assert_consistent_history(events, task)
    # grpcurl and every proto3-JSON client must be able to show what they read.
    for message in (task, *events):
        json_format.MessageToJson(message)
    # A crash of the task runner is recorded as INTERNAL: never an acceptable end.
    assert task.failure.code != grpc.StatusCode.INTERNAL.value[0], task.failure


@fuzz_settings(150)
@given(request=submit_requests())
@example(request=pb.SubmitTaskRequest(goal=GOAL, context={"x": math.nan}))
@example(request=pb.SubmitTaskRequest(goal=GOAL, budget={"max_time": {"nanos": 1}}))
@example(
    request=pb.SubmitTaskRequest(
        goal=GOAL, plan={"steps": [{"step_id": "a", "arm_type": "echo", "input": {"x": math.inf}}]}
    )
)
@example(request=pb.SubmitTaskRequest(goal=GOAL, plan=chain(1000)))
@example(request=pb.SubmitTaskRequest(goal=GOAL, plan=chain(2000)))
async def test_submit_answers_ok_or_a_precise_client_error(
    fuzz_mesh: FuzzMesh, request: pb.SubmitTaskRequest
) -> None:
    """Any SubmitTask: OK or a client error with ErrorInfo; accepted tasks end consistent."""
    await check_submit(fuzz_mesh, request)


async def test_an_accepted_wide_plan_stays_readable(fuzz_mesh: FuzzMesh) -> None:
    """1000 echo steps (500 feeding 500) finish and can be read back: the task with every
    output is too large for one response, so GetTask says so precisely (TASK_TOO_LARGE) and
    the BASIC view reads it; WatchTask replays the whole history, every output included."""
    stub = fuzz_mesh.stub
    request = pb.SubmitTaskRequest(goal=GOAL, plan=chain(1000, width=500))
    accepted = (await stub.SubmitTask(request, timeout=30)).task
    events = await watch_until_finished(stub, accepted.task_id, timeout_s=TASK_WAIT_S)
    full = await answer(stub.GetTask(pb.GetTaskRequest(task_id=accepted.task_id), timeout=30))
    assert isinstance(full, grpc.aio.AioRpcError)
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, full.details()
    info = error_info(full)
    assert info.reason == "TASK_TOO_LARGE"
    assert int(info.metadata["size_bytes"]) > int(info.metadata["limit_bytes"])
    basic = pb.GetTaskRequest(task_id=accepted.task_id, view=pb.TASK_VIEW_BASIC)
    task = (await stub.GetTask(basic, timeout=30)).task
    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert_consistent_history(events, task, basic=True)
    basic_events = await watch_until_finished(
        stub, accepted.task_id, timeout_s=TASK_WAIT_S, view=pb.TASK_VIEW_BASIC
    )
    assert [e.seq for e in basic_events] == [e.seq for e in events]
    assert not basic_events[-1].finished.result.HasField("outputs")
    outputs = {
        e.subtask_changed.subtask.step_id
        for e in events
        if e.subtask_changed.subtask.state == pb.SUBTASK_STATE_SUCCEEDED
        and e.subtask_changed.subtask.HasField("output")
    }
    assert outputs == {s.step_id for s in request.plan.steps}
