"""DAG latency and scheduling cost, against raw grpc.aio round trips measured in the same run.

    python -m benchmarks.dag [--tasks 200] [--sizes 100,1000,10000]

1. Yardstick: raw grpc.aio bidi ping-pong p50 between two processes (benchmarks._raw).
2. End to end: a client submits a 5-step fan-out/fan-in plan (a -> b, c, d -> e) to
   `octollm serve` in its own process, routed to `octollm arm echo` in a third process, and
   waits for the terminal WatchTask event; p50/p95 over sequential tasks, in raw round trips.
   Targets: p50 <= 10 round trips (the critical path needs about 4), p95 <= 20.
   The floor row runs the same client against `Floor`: a raw grpc.aio OrchestratorService
   that sends the plan's five Dispatch messages over one raw Execute stream (1, then 3, then 1)
   to the same echo arm and answers WatchTask with the terminal event alone. It is what the
   wire costs with no orchestration at all (no event log, routing, checks or integration).
3. Scheduling cost: one orchestrator in this process runs a root -> (N-2 parallel) -> sink
   plan of N nodes (2N-4 edges) on the same echo arm; time per node should stay flat as N grows
   (work linear in nodes + edges). Plans this large bypass the API's 1000-step limit on purpose:
   they are handed to the runner directly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from benchmarks._mesh import orchestrator
from benchmarks._raw import ROOT, run_raw
from benchmarks.dispatch import STARTUP_TIMEOUT_S, echo_arm_process
from orchestrator_svc.cli import loop_factory
from orchestrator_svc.config import Settings
from orchestrator_svc.server import Orchestrator

WATCH_BATCH = 100


def fan_plan(width: int) -> pb.Plan:
    """root -> `width` parallel steps -> sink, all on echo."""
    plan = pb.Plan()
    plan.steps.add(step_id="root", arm_type="echo", description="root").input.update({"n": 0})
    mids = [f"m{i}" for i in range(width)]
    for step_id in mids:
        plan.steps.add(step_id=step_id, arm_type="echo", description=step_id, depends_on=["root"])
    plan.steps.add(step_id="sink", arm_type="echo", description="sink", depends_on=mids)
    return plan


class Floor(pb_grpc.OrchestratorServiceServicer):
    """The 5-step plan's messages and nothing else: SubmitTask starts the five dispatches on
    one Execute stream to the arm; WatchTask waits for them and sends only the terminal event."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call
        self._results: dict[str, asyncio.Future[arm_pb.Result]] = {}
        self._done: dict[str, asyncio.Future[None]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def read_results(self) -> None:
        async for response in self._call:
            if response.WhichOneof("kind") == "result":
                self._results.pop(response.result.subtask_id).set_result(response.result)

    async def _send(self, task_id: str, step: pb.PlanStep) -> asyncio.Future[arm_pb.Result]:
        subtask_id = f"{task_id}:{step.step_id}"
        future = self._results[subtask_id] = asyncio.get_running_loop().create_future()
        dispatch = arm_pb.Dispatch(subtask_id=subtask_id, task_id=task_id, input=step.input)
        await self._call.write(arm_pb.ExecuteRequest(dispatch=dispatch))
        return future

    async def _run(self, task_id: str, plan: pb.Plan, done: asyncio.Future[None]) -> None:
        root, *mids, sink = plan.steps
        await (await self._send(task_id, root))
        # NOTE: one write at a time on a stream (grpc.aio refuses concurrent writes).
        await asyncio.gather(*[await self._send(task_id, step) for step in mids])
        await (await self._send(task_id, sink))
        done.set_result(None)

    async def SubmitTask(
        self, request: pb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitTaskResponse:
        task_id = str(uuid.uuid4())
        done = self._done[task_id] = asyncio.get_running_loop().create_future()
        running = asyncio.create_task(self._run(task_id, request.plan, done))
        self._running.add(running)
        running.add_done_callback(self._running.discard)
        return pb.SubmitTaskResponse(task=pb.Task(task_id=task_id, state=pb.TASK_STATE_PENDING))

    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchTaskResponse]:
        await self._done.pop(request.task_id)
        event = pb.TaskEvent(finished=pb.TaskFinished(state=pb.TASK_STATE_SUCCEEDED))
        if request.max_batch_size:
            yield pb.WatchTaskResponse(events=[event])
        else:
            yield pb.WatchTaskResponse(event=event)


async def serve_floor(arm_address: str) -> None:
    """Serve Floor on a free port (printed), dispatching to `arm_address`, until terminated."""
    async with grpc.aio.insecure_channel(arm_address) as channel:
        floor = Floor(arm_grpc.ArmServiceStub(channel).Execute())
        reader = asyncio.create_task(floor.read_results())
        server = grpc.aio.server()
        pb_grpc.add_OrchestratorServiceServicer_to_server(floor, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()
        reader.cancel()


@contextlib.asynccontextmanager
async def floor_process(arm_address: str) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.dag",
        "--floor",
        arm_address,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.asynccontextmanager
async def orchestrator_process(arm_address: str) -> AsyncIterator[str]:
    """`octollm serve` in a child process dialling the echo arm (benchmarks._mesh settings:
    quiet logs, no metrics port, no result cache: every task repeats the same echo work)."""
    async with orchestrator([arm_address]) as child:
        yield child.address


async def end_to_end(
    arm_address: str, n_tasks: int, warmup: int, batch: int = 0, floor: bool = False
) -> list[float]:
    """Latency (ms) of SubmitTask -> terminal event for the 5-step plan, sequentially; `batch`
    is the WatchTask max_batch_size (0: one event per response); `floor`: against Floor."""
    request = pb.SubmitTaskRequest(goal="Fan out to three echoes and fan back in", plan=fan_plan(3))
    latencies: list[float] = []
    server = floor_process if floor else orchestrator_process
    async with (
        server(arm_address) as address,
        grpc.aio.insecure_channel(address) as channel,
    ):
        stub = pb_grpc.OrchestratorServiceStub(channel)
        for i in range(warmup + n_tasks):
            started = time.perf_counter_ns()
            task = (await stub.SubmitTask(request)).task
            final = pb.TASK_STATE_UNSPECIFIED
            watch = pb.WatchTaskRequest(task_id=task.task_id, max_batch_size=batch)
            async for response in stub.WatchTask(watch):
                for event in response.events if batch else (response.event,):
                    if event.HasField("finished"):
                        final = event.finished.state
            if final != pb.TASK_STATE_SUCCEEDED:
                raise RuntimeError(f"task {task.task_id} ended {pb.TaskState.Name(final)}")
            if i >= warmup:
                latencies.append((time.perf_counter_ns() - started) / 1e6)
    return latencies


async def scheduling(arm_address: str, sizes: list[int]) -> list[tuple[int, float, float]]:
    """(nodes, total seconds, microseconds per node) for root -> fan -> sink plans."""
    settings = Settings(
        listen="127.0.0.1:0",
        arm_endpoints=[arm_address],
        max_parallel_subtasks=64,
        task_timeout_s=3600,
        metrics_port=-1,
        cache_ttl_s=0,
        memory=False,
    )
    orchestrator = await Orchestrator(settings).start()
    rows = []
    try:
        await orchestrator.wait_for_arms({"echo"}, STARTUP_TIMEOUT_S)
        for nodes in sizes:
            task = pb.Task(goal=f"Schedule {nodes} nodes", state=pb.TASK_STATE_PENDING)
            task.plan.CopyFrom(fan_plan(nodes - 2))
            task.create_time.GetCurrentTime()
            stored, _ = await orchestrator.store.create(task, fingerprint=f"bench-{nodes}")
            started = time.perf_counter_ns()
            orchestrator.runner.start(stored)
            async for event in orchestrator.store.watch(stored.task_id, 0):
                if event.HasField("finished") and event.finished.state != pb.TASK_STATE_SUCCEEDED:
                    raise RuntimeError(f"{nodes}-node task ended {event.finished}")
            seconds = (time.perf_counter_ns() - started) / 1e9
            rows.append((nodes, seconds, seconds / nodes * 1e6))
    finally:
        await orchestrator.stop(grace_s=1)
    return rows


async def run(n_tasks: int, warmup: int, sizes: list[int]) -> list[str]:
    raw = await run_raw(n_pingpong=1000, n_pipelined=1, window=1, warmup=100)
    rt = raw["pingpong_p50_ms"]
    async with echo_arm_process() as arm_address:
        batched = await end_to_end(arm_address, n_tasks, warmup, batch=WATCH_BATCH)
        single = await end_to_end(arm_address, n_tasks, warmup, batch=0)
        bare = await end_to_end(arm_address, n_tasks, warmup, batch=WATCH_BATCH, floor=True)
        rows = await scheduling(arm_address, sizes)
    lines = [
        f"raw grpc.aio bidi round trip p50: {rt:.3f} ms (the yardstick)",
        f"5-step DAG (a -> b,c,d -> e), {n_tasks} tasks, SubmitTask -> terminal event:",
    ]

    def p50_p95(latencies: list[float]) -> tuple[float, float]:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        return cuts[49], cuts[94]

    for label, latencies in (
        (f"WatchTask max_batch_size={WATCH_BATCH}", batched),
        ("WatchTask one event per response", single),
    ):
        p50, p95 = p50_p95(latencies)
        lines += [
            f" {label}:",
            f"  p50 {p50:8.3f} ms = {p50 / rt:6.1f} round trips   target <= 10  "
            + ("met" if p50 / rt <= 10 else "MISSED"),
            f"  p95 {p95:8.3f} ms = {p95 / rt:6.1f} round trips   target <= 20  "
            + ("met" if p95 / rt <= 20 else "MISSED"),
        ]
    floor_p50, floor_p95 = p50_p95(bare)
    lines += [
        " floor: the same client and arm, no orchestration (Floor, max_batch_size as above):",
        f"  p50 {floor_p50:8.3f} ms = {floor_p50 / rt:6.1f} round trips"
        f"   orchestration adds {p50_p95(batched)[0] - floor_p50:.3f} ms at p50",
        f"  p95 {floor_p95:8.3f} ms = {floor_p95 / rt:6.1f} round trips",
    ]
    lines += [
        "scheduling (root -> N-2 parallel -> sink, echo arm):",
        f"  {'nodes':>7} {'edges':>7} {'total s':>9} {'us/node':>9}",
    ]
    for nodes, seconds, per_node in rows:
        lines.append(f"  {nodes:>7} {2 * nodes - 4:>7} {seconds:>9.3f} {per_node:>9.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--floor", metavar="ARM_ADDRESS", help="serve Floor (internal)")
    args = parser.parse_args(argv)
    if args.floor:
        # NOTE: on the event loop `octollm serve` runs on, so the floor differs only in logic.
        with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
            runner.run(serve_floor(args.floor))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    for line in asyncio.run(run(args.tasks, args.warmup, sizes)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
