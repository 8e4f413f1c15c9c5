"""Results of deterministic arms from the cache, against real arms on a real mesh."""

from __future__ import annotations

from typing import Any

from octollm.v1 import arm_service_pb2 as arm_pb

from arm_sdk import Arm, SubtaskInput
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.engine.result_cache import SubtaskResultCache
from orchestrator_svc.mesh import Mesh
from orchestrator_svc.telemetry.metrics import Metrics
from tests.cache.conftest import MakeCache, lookups


def dispatch(subtask_id: str, attempt: int = 1, **inputs: Any) -> arm_pb.Dispatch:
    d = arm_pb.Dispatch(
        subtask_id=subtask_id,
        attempt=attempt,
        task_id=f"task-of-{subtask_id}",
        step_id="answer",
        description="repeat the input",
        traceparent=f"00-{subtask_id:0>32}-00f067aa0ba902b7-01",
    )
    d.input.update(inputs)
    return d


async def run_and_store(
    mesh: Mesh, cache: SubtaskResultCache, d: arm_pb.Dispatch, arm_type: str = "echo"
) -> arm_pb.Result:
    """What the runner does on a miss: execute on the mesh, then store the result."""
    outcome = await mesh.execute(arm_type, d, timeout_s=10)
    assert outcome.result is not None
    conn = mesh.arm(outcome.arm_id)
    await cache.store(conn.descriptor if conn is not None else None, d, outcome.result)
    return outcome.result


def test_the_echo_arm_declares_itself_deterministic() -> None:
    """The reference echo arm sets ArmDescriptor.deterministic; arms default to not."""
    assert REFERENCE_ARMS["echo"]().descriptor().deterministic
    assert not Arm(arm_type="plain").descriptor().deterministic


async def test_a_deterministic_result_is_reused_for_the_same_work(
    start_arm, start_orchestrator, make_cache: MakeCache, metrics: Metrics
) -> None:  # type: ignore[no-untyped-def]
    """Same arm type, version and input in another task: the cached result answers it, with the
    new ids and zero usage."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    results = SubtaskResultCache(make_cache(), orch.mesh)
    first = dispatch("s1", goal="hello", dependencies={"find": {"text": "found"}})
    assert await results.lookup("echo", first) is None
    produced = await run_and_store(orch.mesh, results, first)

    later = dispatch("s2", attempt=3, goal="hello", dependencies={"find": {"text": "found"}})
    hit = await results.lookup("echo", later)
    assert hit is not None
    assert hit.output == produced.output
    assert (hit.subtask_id, hit.attempt, hit.provenance.attempt) == ("s2", 3, 3)
    assert hit.provenance.arm_id == echo.arm_id
    assert hit.provenance.usage.tokens == 0
    assert hit.provenance.duration.ToNanoseconds() == 0
    assert lookups(metrics, "result", "miss") == 1
    assert lookups(metrics, "result", "hit") == 1


async def test_other_input_dependencies_or_description_miss(
    start_arm, start_orchestrator, make_cache: MakeCache
) -> None:  # type: ignore[no-untyped-def]
    """A different input, dependency output or description is different work."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    results = SubtaskResultCache(make_cache(), orch.mesh)
    await run_and_store(orch.mesh, results, dispatch("s1", goal="hello", dependencies={"a": {}}))
    other_input = dispatch("s2", goal="bye", dependencies={"a": {}})
    assert await results.lookup("echo", other_input) is None
    other_dep = dispatch("s3", goal="hello", dependencies={"a": {"x": 1}})
    assert await results.lookup("echo", other_dep) is None
    other_text = dispatch("s4", goal="hello", dependencies={"a": {}})
    other_text.description = "something else"
    assert await results.lookup("echo", other_text) is None
    same = dispatch("s5", goal="hello", dependencies={"a": {}})
    assert await results.lookup("echo", same) is not None


async def test_a_non_deterministic_arm_is_never_cached(
    start_arm, start_orchestrator, make_cache: MakeCache, metrics: Metrics
) -> None:  # type: ignore[no-untyped-def]
    """An arm that does not declare itself deterministic runs every time: nothing is stored or
    even looked up."""
    dice = Arm(arm_type="dice")
    rolls = 0

    @dice.handler
    async def roll(inp: SubtaskInput) -> dict[str, Any]:
        nonlocal rolls
        rolls += 1
        return {"roll": rolls}

    server = await start_arm(dice)
    orch = await start_orchestrator([server.address], wait_for=("dice",))
    results = SubtaskResultCache(make_cache(), orch.mesh)
    await run_and_store(orch.mesh, results, dispatch("s1", sides=6), "dice")
    assert await results.lookup("dice", dispatch("s2", sides=6)) is None
    descriptor = orch.mesh.arms()[0].descriptor
    assert descriptor is not None
    assert await results.lookup(descriptor, dispatch("s3", sides=6)) is None
    assert lookups(metrics, "result", "miss") == lookups(metrics, "result", "hit") == 0


async def test_a_repair_dispatch_is_neither_looked_up_nor_stored(
    start_arm, start_orchestrator, make_cache: MakeCache, metrics: Metrics
) -> None:  # type: ignore[no-untyped-def]
    """A dispatch with repair feedback must reach the arm, and its result is not kept."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    results = SubtaskResultCache(make_cache(), orch.mesh)
    repair = dispatch("s1", goal="hello", repair={"issues": ["too short"]})
    assert await results.lookup("echo", repair) is None
    await run_and_store(orch.mesh, results, repair)
    again = dispatch("s2", goal="hello", repair={"issues": ["too short"]})
    assert await results.lookup("echo", again) is None
    assert lookups(metrics, "result", "miss") == 0


async def test_an_arm_of_another_version_does_not_answer(
    start_arm, start_orchestrator, make_cache: MakeCache
) -> None:  # type: ignore[no-untyped-def]
    """A result cached from echo 0.1.0 is not used when only echo 0.2.0 is routable."""
    old = await start_arm(REFERENCE_ARMS["echo"]())
    cache = make_cache()
    orch = await start_orchestrator([old.address], wait_for=("echo",))
    await run_and_store(orch.mesh, SubtaskResultCache(cache, orch.mesh), dispatch("s1", goal="hi"))
    newer = REFERENCE_ARMS["echo"]()
    newer.version = "0.2.0"
    new_server = await start_arm(newer)
    orch_new = await start_orchestrator([new_server.address], wait_for=("echo",))
    results = SubtaskResultCache(cache, orch_new.mesh)
    assert await results.lookup("echo", dispatch("s2", goal="hi")) is None
    assert await SubtaskResultCache(cache, orch.mesh).lookup("echo", dispatch("s3", goal="hi"))


async def test_without_a_cache_nothing_is_found(start_arm, start_orchestrator) -> None:  # type: ignore[no-untyped-def]
    """SubtaskResultCache(None, mesh) is the runner's no-cache default: always a miss."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))
    results = SubtaskResultCache(None, orch.mesh)
    await run_and_store(orch.mesh, results, dispatch("s1", goal="hi"))
    assert await results.lookup("echo", dispatch("s2", goal="hi")) is None
