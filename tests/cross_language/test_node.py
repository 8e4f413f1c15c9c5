"""Cross-language proof: a Node.js client and a Node.js arm work with the Python orchestrator.

node/client.js (an OrchestratorService client) and node/arm.js (the "shouter" ArmService arm,
with a hand-written grpc.health.v1) are written against protos/ alone, with @grpc/grpc-js and
@grpc/proto-loader; node_modules is installed on demand by `npm ci` (tests.tools.node_modules).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import Arm, ArmServer
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.server import Orchestrator
from tests.tools import node_modules, tool_unavailable

NODE_DIR = Path(__file__).resolve().parent / "node"
# A hang guard, never a speed assertion.
HANG_GUARD_S = 60.0
GOAL = "Shout every part of this message"

StartArm = Callable[[Arm], Awaitable[ArmServer]]
StartOrchestrator = Callable[..., Awaitable[Orchestrator]]
Connect = Callable[[str], pb_grpc.OrchestratorServiceStub]


class NodeArm:
    """A running `node arm.js 0`: its port, and its stdout and stderr lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Condition()
        assert proc.stdout is not None
        assert proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(proc.stdout, self.stdout)),
            asyncio.create_task(self._read(proc.stderr, self.stderr)),
        ]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _read(self, stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            async with self._changed:
                lines.append(line.decode().rstrip("\n"))
                self._changed.notify_all()

    async def wait_for_stdout(self, line: str) -> None:
        """Wait until the arm has printed `line` on stdout."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: line in self.stdout), HANG_GUARD_S
            )

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the arm, wait for it to exit (kill it if it hangs); return its exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await asyncio.gather(*self._readers)
        assert self.proc.returncode is not None
        return self.proc.returncode


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with the pinned node_modules installed next to the Node sources."""
    binary = shutil.which("node")
    if binary is None:
        tool_unavailable("node not found on PATH; the cross-language tests need Node.js 20+")
    node_modules(NODE_DIR)
    return binary


@pytest.fixture
async def start_node_arm(node: str) -> AsyncIterator[Callable[[], Awaitable[NodeArm]]]:
    """Start `node arm.js 0` processes; every one is stopped (killed if need be) at the end."""
    arms: list[NodeArm] = []
    procs: list[asyncio.subprocess.Process] = []

    async def start() -> NodeArm:
        proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "arm.js"),
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stderr is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), HANG_GUARD_S)).decode()
        if not first.startswith("listening "):
            proc.kill()
            _, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
            pytest.fail(f"arm.js did not start: {first!r}\n{err.decode()}")
        arm = NodeArm(proc, int(first.split()[1]))
        arms.append(arm)
        return arm

    try:
        yield start
    finally:
        for arm in arms:
            await arm.stop()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def run_client(
    node: str, address: str, goal: str, plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run `node client.js address goal [plan]` and return the one JSON line it prints."""
    args = [str(NODE_DIR / "client.js"), address, goal]
    if plan is not None:
        args.append(json.dumps(plan))
    proc = await asyncio.create_subprocess_exec(
        node, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"client.js exited {proc.returncode}: {err.decode()}"
    lines = out.decode().splitlines()
    assert len(lines) == 1, f"client.js must print one JSON line, got: {lines}"
    report: dict[str, Any] = json.loads(lines[0])
    return report


def shout_step(step_id: str, **input_: Any) -> pb.PlanStep:
    step = pb.PlanStep(step_id=step_id, description=f"shout {step_id}", arm_type="shouter")
    step.input.update(input_)
    return step


async def watch_to_end(
    stub: pb_grpc.OrchestratorServiceStub,
    task_id: str,
    on_event: Callable[[pb.TaskEvent], Awaitable[None]] | None = None,
) -> pb.Task:
    """Follow the task's events until it finishes; return the task as GetTask then shows it."""

    async def follow() -> None:
        call = stub.WatchTask(pb.WatchTaskRequest(task_id=task_id))
        try:
            async for response in call:
                if on_event is not None:
                    await on_event(response.event)
                if response.event.HasField("finished"):
                    return
        finally:
            call.cancel()

    await asyncio.wait_for(follow(), HANG_GUARD_S)
    task: pb.Task = (await stub.GetTask(pb.GetTaskRequest(task_id=task_id))).task
    return task


async def node_arm_mesh(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
) -> tuple[NodeArm, Orchestrator]:
    arm = await start_node_arm()
    orch = await start_orchestrator([arm.address], wait_for=("shouter",))
    return arm, orch


async def test_node_client_follows_a_task_on_the_python_orchestrator(
    node: str, start_arm: StartArm, start_orchestrator: StartOrchestrator, connect: Connect
) -> None:
    """Node client: SubmitTask, WatchTask seq 1..N to `finished`, GetTask, ListArms, ErrorInfo."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",))

    shouted = "EVERY PART OF THIS MESSAGE, SHOUTED BACK BY THE ECHO ARM"
    plan = {"steps": [{"step_id": "shout", "arm_type": "echo", "input": {"text": shouted}}]}
    report = await run_client(node, orch.address, GOAL, plan)

    assert report["state"] == "TASK_STATE_SUCCEEDED"
    assert report["seqs_ok"] is True
    assert report["events"] == report["last_seq"] > 0
    assert shouted in report["answer"]
    assert report["arm_types"] == ["echo"]
    assert report["bad_id_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert report["bad_id_status_code"] == report["bad_id_code"]
    assert report["bad_id_reason"] == "MALFORMED_TASK_ID"
    assert report["bad_id_domain"] == "octollm.v1"
    assert report["bad_id_field"] == "task_id"
    task = (await connect(orch.address).GetTask(pb.GetTaskRequest(task_id=report["task_id"]))).task
    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert task.goal == GOAL


async def test_node_arm_speaks_the_execute_protocol(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
) -> None:
    """On a raw Execute stream the Node arm sends Hello, Credit 8, answers Ping and a Dispatch."""
    arm = await start_node_arm()
    async with grpc.aio.insecure_channel(arm.address) as channel:
        call = arm_grpc.ArmServiceStub(channel).Execute()

        async def read() -> arm_pb.ExecuteResponse:
            msg = await asyncio.wait_for(call.read(), HANG_GUARD_S)
            assert isinstance(msg, arm_pb.ExecuteResponse)
            return msg

        hello = await read()
        assert hello.hello.descriptor.arm_type == "shouter"
        assert (await read()).credit.n == 8
        await call.write(arm_pb.ExecuteRequest(ping=arm_pb.Ping(nonce=42)))
        assert (await read()).pong.nonce == 42
        dispatch = arm_pb.Dispatch(subtask_id="s-1", attempt=2, description="unused")
        dispatch.input.update({"text": "quiet words"})
        await call.write(arm_pb.ExecuteRequest(dispatch=dispatch))
        assert (await read()).accepted == arm_pb.Accepted(subtask_id="s-1", attempt=2)
        assert (await read()).progress.subtask_id == "s-1"
        result = (await read()).result
        assert json_format.MessageToDict(result.output) == {"text": "QUIET WORDS"}
        assert (result.subtask_id, result.attempt, result.confidence) == ("s-1", 2, 1.0)
        assert result.provenance.arm_id == hello.hello.descriptor.arm_id
        assert result.provenance.attempt == 2
        assert (await read()).credit.n == 1
        await call.done_writing()
        assert await asyncio.wait_for(call.read(), HANG_GUARD_S) is grpc.aio.EOF


async def test_node_arm_runs_a_fan_in_plan(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
    connect: Connect,
) -> None:
    """Three parallel shouter steps and one depending on them all succeed, upper-cased."""
    arm, orch = await node_arm_mesh(start_node_arm, start_orchestrator)
    stub = connect(orch.address)
    parts = [shout_step(f"part-{i}", text=f"part {i}") for i in (1, 2, 3)]
    join = shout_step("join")
    join.depends_on.extend(p.step_id for p in parts)
    submitted = await stub.SubmitTask(
        pb.SubmitTaskRequest(goal=GOAL, plan=pb.Plan(steps=[*parts, join]))
    )

    task = await watch_to_end(stub, submitted.task.task_id)

    assert task.state == pb.TASK_STATE_SUCCEEDED
    assert json_format.MessageToDict(task.result.outputs) == {
        "part-1": {"text": "PART 1"},
        "part-2": {"text": "PART 2"},
        "part-3": {"text": "PART 3"},
        "join": {"text": "SHOUT JOIN"},
    }
    assert task.result.answer == "SHOUT JOIN"
    node_arm_id = task.subtasks[0].arm_id
    assert node_arm_id.startswith("node-shouter-")
    for sub in task.subtasks:
        assert sub.state == pb.SUBTASK_STATE_SUCCEEDED
        assert (sub.arm_id, sub.provenance.arm_id) == (node_arm_id, node_arm_id)
        assert sub.provenance.attempt == sub.attempt == 1
    assert arm.proc.returncode is None


async def test_node_arm_is_listed_serving_with_its_descriptor(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
    connect: Connect,
) -> None:
    """ListArms shows the Node arm SERVING with the descriptor it gives DescribeArm and Hello."""
    arm, orch = await node_arm_mesh(start_node_arm, start_orchestrator)

    listed = (await connect(orch.address).ListArms(pb.ListArmsRequest())).arms

    assert len(listed) == 1
    (view,) = listed
    assert view.address == arm.address
    assert view.health == pb.ARM_HEALTH_SERVING
    assert view.descriptor.arm_id.startswith("node-shouter-")
    assert view.descriptor.arm_type == "shouter"
    assert view.descriptor.max_concurrency == 8
    assert view.descriptor.cost_tier == arm_pb.COST_TIER_LOW
    assert "shout" in view.descriptor.capabilities
    async with grpc.aio.insecure_channel(arm.address) as channel:
        described = await arm_grpc.ArmServiceStub(channel).DescribeArm(
            arm_pb.DescribeArmRequest(), timeout=HANG_GUARD_S
        )
        assert described.descriptor == view.descriptor
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "octollm.v1.ArmService"):
            checked = await health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=HANG_GUARD_S
            )
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await health.Check(
                health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=HANG_GUARD_S
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_node_arm_failure_fails_the_task_with_its_reason(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
    connect: Connect,
) -> None:
    """A step with input {"fail": true} fails once, not retried: the task is FAILED, BAD_INPUT."""
    _, orch = await node_arm_mesh(start_node_arm, start_orchestrator)
    stub = connect(orch.address)
    bad = shout_step("bad", text="never shouted", fail=True)
    after = shout_step("after")
    after.depends_on.append("bad")
    submitted = await stub.SubmitTask(
        pb.SubmitTaskRequest(goal=GOAL, plan=pb.Plan(steps=[bad, after]))
    )

    task = await watch_to_end(stub, submitted.task.task_id)

    assert task.state == pb.TASK_STATE_FAILED
    assert task.failure.reason == "BAD_INPUT"
    assert task.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    states = {sub.step_id: sub for sub in task.subtasks}
    assert states["bad"].state == pb.SUBTASK_STATE_FAILED
    assert states["bad"].attempt == 1
    assert states["bad"].failure.retryable is False
    assert states["after"].state == pb.SUBTASK_STATE_SKIPPED


async def test_cancel_task_reaches_the_node_arm(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
    connect: Connect,
) -> None:
    """CancelTask on a slow shouter step ends the task CANCELLED and the Node arm sees Cancel."""
    arm, orch = await node_arm_mesh(start_node_arm, start_orchestrator)
    stub = connect(orch.address)
    submitted = await stub.SubmitTask(
        pb.SubmitTaskRequest(goal=GOAL, plan=pb.Plan(steps=[shout_step("slow", delay_ms=5000)]))
    )
    task_id = submitted.task.task_id
    running: list[str] = []

    async def cancel_once_running(event: pb.TaskEvent) -> None:
        sub = event.subtask_changed.subtask
        if sub.state == pb.SUBTASK_STATE_RUNNING and not running:
            running.append(sub.subtask_id)
            await stub.CancelTask(pb.CancelTaskRequest(task_id=task_id, reason="changed my mind"))

    task = await watch_to_end(stub, task_id, cancel_once_running)

    assert task.state == pb.TASK_STATE_CANCELLED
    assert task.failure.message == "changed my mind"
    assert task.subtasks[0].state == pb.SUBTASK_STATE_CANCELLED
    await arm.wait_for_stdout(f"cancelled {running[0]}")


async def test_node_client_through_python_orchestrator_to_node_arm(
    node: str,
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
) -> None:
    """Node client -> Python orchestrator -> Node arm: an explicit fan-in plan, end to end."""
    _, orch = await node_arm_mesh(start_node_arm, start_orchestrator)
    plan = {
        "steps": [
            {"step_id": "a", "description": "a", "arm_type": "shouter", "input": {"text": "hi"}},
            {"step_id": "b", "description": "b", "arm_type": "shouter", "input": {"text": "yo"}},
            {
                "step_id": "both",
                "description": "all together now",
                "arm_type": "shouter",
                "depends_on": ["a", "b"],
            },
        ]
    }

    report = await run_client(node, orch.address, GOAL, plan)

    assert report["state"] == "TASK_STATE_SUCCEEDED"
    assert report["answer"] == "ALL TOGETHER NOW"
    assert report["seqs_ok"] is True
    assert report["events"] == report["last_seq"] > 0
    assert report["arm_types"] == ["shouter"]
    assert report["bad_id_reason"] == "MALFORMED_TASK_ID"


async def test_node_arm_drains_and_exits_cleanly_on_sigterm(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
    start_orchestrator: StartOrchestrator,
    connect: Connect,
) -> None:
    """SIGTERM: the Node arm exits 0 and the orchestrator stops routing to it."""
    arm, orch = await node_arm_mesh(start_node_arm, start_orchestrator)
    stub = connect(orch.address)

    assert await arm.stop(signal.SIGTERM) == 0

    async def unroutable() -> None:
        while True:
            (view,) = (await stub.ListArms(pb.ListArmsRequest())).arms
            if view.health != pb.ARM_HEALTH_SERVING:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(unroutable(), HANG_GUARD_S)
    assert any('"arm_stopped"' in line for line in arm.stderr), arm.stderr


async def test_node_arm_drain_finishes_running_work_and_refuses_new(
    start_node_arm: Callable[[], Awaitable[NodeArm]],
) -> None:
    """SIGTERM: health NOT_SERVING, running work still answers, new work gets ARM_DRAINING."""
    arm = await start_node_arm()
    async with grpc.aio.insecure_channel(arm.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        serving = health_pb2.HealthCheckResponse.SERVING
        assert (await asyncio.wait_for(watch.read(), HANG_GUARD_S)).status == serving
        call = arm_grpc.ArmServiceStub(channel).Execute()
        slow = arm_pb.Dispatch(subtask_id="slow", attempt=1, description="almost done")
        slow.input.update({"delay_ms": 3000})
        await call.write(arm_pb.ExecuteRequest(dispatch=slow))

        arm.proc.send_signal(signal.SIGTERM)
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert (await asyncio.wait_for(watch.read(), HANG_GUARD_S)).status == not_serving
        await call.write(arm_pb.ExecuteRequest(dispatch=arm_pb.Dispatch(subtask_id="new")))
        received: list[arm_pb.ExecuteResponse] = []
        while (msg := await asyncio.wait_for(call.read(), HANG_GUARD_S)) is not grpc.aio.EOF:
            assert isinstance(msg, arm_pb.ExecuteResponse)
            received.append(msg)

    results = [m.result for m in received if m.HasField("result")]
    failures = [m.failure for m in received if m.HasField("failure")]
    assert [(r.subtask_id, json_format.MessageToDict(r.output)) for r in results] == [
        ("slow", {"text": "ALMOST DONE"})
    ]
    assert [(f.subtask_id, f.failure.reason, f.failure.retryable) for f in failures] == [
        ("new", "ARM_DRAINING", True)
    ]
    assert await arm.stop() == 0
