"""Shared pieces of the mesh benchmarks (peers, scale): child processes, clients, figures.

- `arm_host(...)`: one child process serving `count` arms (each its own gRPC server, port and
  arm id): `echo` (the reference echo arm) or `slow` (sleeps `delay_s`, then answers); `more`
  adds arms of other kinds to the same process.
- `orchestrator(...)`: `octollm serve` in a child process with extra OCTOLLM_* settings; yields
  its address and pid (so its peak RSS is its own), once every expected arm is SERVING.
- `pg_schema()`: a throwaway schema on the local PostgreSQL (dropped at the end), as a DSN whose
  search_path points at it.
- `Client`: a few channels (separate connections) to an orchestrator; `run_task` submits one
  task and follows WatchTask to its terminal event.

    python -m benchmarks._mesh arms echo:10:64:0 slow:1:4:0.5   # prints "listening a1,a2,..."
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import math
import os
import signal
import socket
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
# NOTE: hang guards only, never limits on how fast things must be.
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POSTGRES_DSN = os.environ.get(
    "OCTOLLM_BENCH_POSTGRES_DSN",
    os.environ.get("OCTOLLM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
)
# Settings every benchmark orchestrator gets: quiet logs, no metrics port, generous deadlines
# (queued work must not time out while a benchmark is deliberately holding it back), no result
# cache (the echo arm is deterministic: with the cache on, repeated no-ops would never reach an
# arm, unlike Celery's and Ray's) and no task memory (nothing to remember about no-ops).
BASE_ENV = {
    "OCTOLLM_LOG_LEVEL": "warning",
    "OCTOLLM_METRICS_PORT": "-1",
    "OCTOLLM_SUBTASK_TIMEOUT_S": "3600",
    "OCTOLLM_TASK_TIMEOUT_S": "3600",
    "OCTOLLM_CACHE_TTL_S": "0",
    "OCTOLLM_MEMORY": "false",
    "GRPC_VERBOSITY": "ERROR",
}
# WatchTask events per response, where the API has batching (max_batch_size); else one each.
WATCH_BATCH = 100
WATCH_BATCHES = "max_batch_size" in pb.WatchTaskRequest.DESCRIPTOR.fields_by_name


class Unavailable(Exception):
    """Something a benchmark row needs is missing (a peer, PostgreSQL): the row is skipped."""


# -- figures ------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a live process in MiB: /proc VmRSS/VmHWM, else psutil."""
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        fields = {}
        for line in status.read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024  # kB
        return fields.get("VmRSS", math.nan), fields.get("VmHWM", math.nan)
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return math.nan, math.nan
    info = psutil.Process(pid).memory_info()
    # NOTE: without /proc there is no peak; psutil's peak_wset exists on Windows only.
    peak = getattr(info, "peak_wset", info.rss)
    return info.rss / 2**20, peak / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- child processes ----------------------------------------------------------------------------


@dataclass
class Child:
    """A benchmark child process: its pid, the address(es) it serves, where its log goes."""

    pid: int
    addresses: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return self.addresses[0]

    def log_problems(self) -> collections.Counter[str]:
        """Warnings and errors the child has logged so far, by event name."""
        found: collections.Counter[str] = collections.Counter()
        if self.log_path is None or not self.log_path.exists():
            return found
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if line.strip():
                    found["(not JSON)"] += 1
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error"):
                found[str(record.get("event", "?"))] += 1
        return found


def log_problems(*children: Child) -> collections.Counter[str]:
    """Warnings and errors the children have logged so far, by event name."""
    total: collections.Counter[str] = collections.Counter()
    for child in children:
        total.update(child.log_problems())
    return total


def problems_note(problems: collections.Counter[str]) -> str:
    """'' or 'logged: event xN, ...' (the three most frequent)."""
    if not problems:
        return ""
    return "logged: " + ", ".join(f"{event} x{n}" for event, n in problems.most_common(3))


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ArmSpec(NamedTuple):
    """`count` arms of `kind` ("echo", or any other name: an arm that waits `delay_s`, then
    answers), each granting `max_concurrency` credits."""

    kind: str = "echo"
    count: int = 1
    max_concurrency: int = 64
    delay_s: float = 0.0

    def encode(self) -> str:
        return f"{self.kind}:{self.count}:{self.max_concurrency}:{self.delay_s}"

    @classmethod
    def decode(cls, text: str) -> ArmSpec:
        kind, count, credits, delay = text.split(":")
        return cls(kind, int(count), int(credits), float(delay))


@contextlib.asynccontextmanager
async def arm_host(
    kind: str = "echo",
    count: int = 1,
    *,
    max_concurrency: int = 64,
    delay_s: float = 0.0,
    more: Sequence[ArmSpec] = (),
) -> AsyncIterator[Child]:
    """`count` arms of `kind` (and those `more` describes) in one child process; yields their
    addresses, in that order."""
    specs = [ArmSpec(kind, count, max_concurrency, delay_s), *more]
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "benchmarks._mesh", "arms"),
        *(spec.encode() for spec in specs),
        cwd=ROOT,
        env={**os.environ, "OCTOLLM_LOG_LEVEL": "warning", "GRPC_VERBOSITY": "ERROR"},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)).decode()
        if not line.startswith("listening "):
            raise RuntimeError(f"arm host did not start: {line!r}")
        yield Child(proc.pid, line.split(" ", 1)[1].strip().split(","))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        await _stop(proc)


@contextlib.asynccontextmanager
async def orchestrator(
    arm_addresses: Sequence[str], *, env: Mapping[str, str] | None = None, expect_arms: int = 0
) -> AsyncIterator[Child]:
    """`octollm serve` in a child process dialling the arms, with OCTOLLM_* `env` on top of
    BASE_ENV; yields once `expect_arms` arms (default: one per address) are SERVING."""
    address = f"127.0.0.1:{free_port()}"
    full_env = {
        **os.environ,
        **BASE_ENV,
        "OCTOLLM_LISTEN": address,
        "OCTOLLM_ARM_ENDPOINTS": ",".join(arm_addresses),
        **(env or {}),
    }
    # NOTE: the log goes to a file (JSON lines), so warnings can be counted, not interleaved.
    log_fd, log_name = tempfile.mkstemp(prefix="octollm-bench-", suffix=".log")
    log_path = Path(log_name)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "orchestrator_svc.cli",
            "serve",
            cwd=ROOT,
            env=full_env,
            stderr=log_fd,
        )
    finally:
        os.close(log_fd)
    want = expect_arms or len(arm_addresses)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.OrchestratorServiceStub(channel)
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                serving = 0
                while serving < want:
                    if proc.returncode is not None:
                        raise RuntimeError(f"orchestrator exited with {proc.returncode}")
                    try:
                        arms = await stub.ListArms(pb.ListArmsRequest(), timeout=5)
                        serving = sum(a.health == pb.ARM_HEALTH_SERVING for a in arms.arms)
                    except grpc.aio.AioRpcError:
                        serving = 0
                    if serving < want:
                        await asyncio.sleep(0.05)
        yield Child(proc.pid, [address], log_path)
    finally:
        await _stop(proc)
        _finish_log(log_path, proc.returncode)


def _finish_log(log_path: Path, returncode: int | None) -> None:
    """Show the end of the log of an orchestrator that did not stop cleanly; delete the log."""
    if returncode not in (0, -signal.SIGTERM):
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        print(f"orchestrator exited with {returncode}:", *tail, sep="\n  ", file=sys.stderr)
    log_path.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema on the benchmark PostgreSQL; yields a DSN whose search_path is that schema
    (the orchestrator migrates it at start-up), and drops it with everything in it at the end.
    Raises Unavailable when PostgreSQL cannot be reached."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    name = f"octollm_bench_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES_DSN, timeout=5, command_timeout=60)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise Unavailable(f"PostgreSQL at {POSTGRES_DSN} unreachable: {exc!r}") from exc
    try:
        await admin.execute(f'CREATE SCHEMA "{name}"')
        separator = "&" if "?" in POSTGRES_DSN else "?"
        try:
            yield f"{POSTGRES_DSN}{separator}search_path={name}"
        finally:
            await admin.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await admin.close(timeout=5)


# -- plans and clients --------------------------------------------------------------------------


def fan_plan(width: int, arm_type: str = "echo") -> pb.Plan:
    """root -> `width` parallel steps -> sink (width 3: the 5-step fan-out/fan-in DAG)."""
    plan = pb.Plan()
    plan.steps.add(step_id="root", arm_type=arm_type, description="root").input.update({"n": 0})
    mids = [f"m{i}" for i in range(width)]
    for step_id in mids:
        plan.steps.add(step_id=step_id, arm_type=arm_type, description=step_id, depends_on=["root"])
    plan.steps.add(step_id="sink", arm_type=arm_type, description="sink", depends_on=mids)
    return plan


def flat_plan(steps: int, arm_type: str = "echo") -> pb.Plan:
    """`steps` independent no-op steps."""
    plan = pb.Plan()
    for i in range(steps):
        plan.steps.add(step_id=f"s{i}", arm_type=arm_type, description="noop").input.update(
            {"n": i}
        )
    return plan


def request_for(plan: pb.Plan, goal: str = "benchmark: no-op steps") -> pb.SubmitTaskRequest:
    return pb.SubmitTaskRequest(goal=goal, plan=plan)


class Client:
    """`channels` separate connections to one or more orchestrators, used round-robin, so
    thousands of WatchTask streams are not queued behind one connection's stream limit."""

    def __init__(self, addresses: Sequence[str], channels: int = 4) -> None:
        # NOTE: a local subchannel pool per channel, or channels to one target share a socket.
        options = [("grpc.use_local_subchannel_pool", 1)]
        self._channels = [
            grpc.aio.insecure_channel(addresses[i % len(addresses)], options=options)
            for i in range(max(channels, len(addresses)))
        ]
        # NOTE: channel i goes to addresses[i % len(addresses)], so with several addresses
        # neighbouring stubs reach different orchestrators.
        self.stubs = [pb_grpc.OrchestratorServiceStub(channel) for channel in self._channels]
        self._next = itertools.count()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for channel in self._channels:
            await channel.close()

    def stub(self) -> pb_grpc.OrchestratorServiceStub:
        return self.stubs[next(self._next) % len(self.stubs)]

    def stub_pair(
        self, elsewhere: bool = False
    ) -> tuple[pb_grpc.OrchestratorServiceStub, pb_grpc.OrchestratorServiceStub]:
        """(stub to submit on, stub to watch on): the same one, or with `elsewhere` one on the
        next address (another replica when the client has several)."""
        i = next(self._next)
        return self.stubs[i % len(self.stubs)], self.stubs[(i + elsewhere) % len(self.stubs)]

    async def run_task(self, request: pb.SubmitTaskRequest) -> tuple[float, int]:
        """(ms from SubmitTask to the terminal event, terminal TaskState)."""
        stub = self.stub()
        started = time.perf_counter_ns()
        task = (await stub.SubmitTask(request, timeout=600)).task
        final = await _follow(stub, task.task_id)
        return (time.perf_counter_ns() - started) / 1e6, final

    async def submit(
        self, request: pb.SubmitTaskRequest, stub: pb_grpc.OrchestratorServiceStub | None = None
    ) -> str:
        stub = stub or self.stub()
        return str((await stub.SubmitTask(request, timeout=600)).task.task_id)

    async def wait(self, task_id: str, stub: pb_grpc.OrchestratorServiceStub | None = None) -> int:
        """Follow a task to its terminal state (returns it)."""
        return await _follow(stub or self.stub(), task_id)

    async def cancel(self, task_id: str) -> None:
        await self.stub().CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=600)


async def _follow(stub: pb_grpc.OrchestratorServiceStub, task_id: str) -> int:
    """Read WatchTask to its end; the terminal TaskState (UNSPECIFIED if none came)."""
    final: int = pb.TASK_STATE_UNSPECIFIED
    request = pb.WatchTaskRequest(task_id=task_id)
    if WATCH_BATCHES:
        request.max_batch_size = WATCH_BATCH
    async for response in stub.WatchTask(request):
        for event in response.events if WATCH_BATCHES else (response.event,):
            if event.HasField("finished"):
                final = event.finished.state
    return final


async def run_concurrently(
    client: Client, requests: Sequence[pb.SubmitTaskRequest], window: int
) -> tuple[float, list[float], int]:
    """Run the tasks with at most `window` unfinished at once; (seconds, latencies ms, errors).
    An error is a task that did not end SUCCEEDED (or whose call failed)."""
    limit = asyncio.Semaphore(window)
    latencies: list[float] = []
    errors = 0

    async def one(request: pb.SubmitTaskRequest) -> None:
        nonlocal errors
        async with limit:
            try:
                ms, final = await client.run_task(request)
            except grpc.aio.AioRpcError:
                errors += 1
                return
        latencies.append(ms)
        if final != pb.TASK_STATE_SUCCEEDED:
            errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(r) for r in requests))
    return time.perf_counter() - started, latencies, errors


# -- the arm host child -------------------------------------------------------------------------


def _build_arm(kind: str, index: int, max_concurrency: int, delay_s: float) -> object:
    from arm_sdk import Arm, SubtaskInput
    from orchestrator_svc.arms import echo

    arm_id = f"{kind}-{os.getpid()}-{index}"
    if kind == "echo":
        arm = echo.build(arm_id=arm_id)
        arm.max_concurrency = max_concurrency
        return arm
    arm = Arm(
        arm_type=kind,
        description=f"Waits {delay_s:g} s, then answers",
        capabilities=(kind,),
        max_concurrency=max_concurrency,
        cost_tier="low",
        arm_id=arm_id,
    )

    @arm.handler
    async def slow(inp: SubtaskInput) -> dict[str, object]:
        await asyncio.sleep(delay_s)
        return {"waited": delay_s}

    return arm


async def _serve_arms(specs: Sequence[ArmSpec]) -> None:
    from arm_sdk import Arm

    servers = []
    for spec in specs:
        for index in range(spec.count):
            arm = _build_arm(spec.kind, index, spec.max_concurrency, spec.delay_s)
            assert isinstance(arm, Arm)
            servers.append(await arm.start("127.0.0.1:0"))
    print("listening " + ",".join(s.address for s in servers), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
    # NOTE: EOF on a piped stdin means the parent is gone: never outlive it.
    if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        waiters.add(asyncio.ensure_future(stdin.read()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*(s.drain(grace=0) for s in servers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    arms = commands.add_parser("arms", help="serve benchmark arms until stdin closes")
    arms.add_argument(
        "specs", nargs="+", type=ArmSpec.decode, help="KIND:COUNT:CREDITS:DELAY_S (see ArmSpec)"
    )
    args = parser.parse_args(argv)
    from orchestrator_svc.telemetry import configure_logging

    configure_logging("auto", "warning")
    asyncio.run(_serve_arms(args.specs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
