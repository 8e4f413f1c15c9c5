"""Raw grpc.aio baseline for the dispatch benchmark: the floor the mesh is measured against.

A server process answers every `ExecuteRequest{dispatch}` on `octollm.v1.ArmService/Execute`
with one `ExecuteResponse{result}` whose output is the dispatch's input: the same messages the
mesh sends, minus its protocol (no Hello, Credit or Accepted) and its scheduling. The client,
in this process, measures on one stream each:

- ping-pong: sequential round trips -> p50/p99 latency (ms) and round trips/s;
- pipelined: messages with a fixed window in flight -> msgs/s.

    python -m benchmarks._raw                   # run with defaults, print the figures
    python -m benchmarks._raw serve --port 0    # server only; prints its port; stops on
                                                # SIGINT/SIGTERM or EOF of a piped stdin
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import stat
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc

# NOTE: the production options (keepalive, message sizes), so the baseline differs from the mesh
# only in what the mesh adds on top.
from arm_sdk.grpc_options import CHANNEL_OPTIONS, SERVER_OPTIONS

ROOT = Path(__file__).resolve().parent.parent
N_PINGPONG = 2000
N_PIPELINED = 20000
WINDOW = 64
WARMUP = 200
# NOTE: hang guards only, never limits on how fast things must be.
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 30.0


class EchoArm(arm_grpc.ArmServiceServicer):
    """Answers each Dispatch with one Result carrying the dispatch's input as output."""

    async def DescribeArm(
        self, request: arm_pb.DescribeArmRequest, context: grpc.aio.ServicerContext
    ) -> arm_pb.DescribeArmResponse:
        return arm_pb.DescribeArmResponse(
            descriptor=arm_pb.ArmDescriptor(
                arm_id="raw-echo",
                arm_type="echo",
                description="Raw grpc.aio baseline: returns its input",
                cost_tier=arm_pb.COST_TIER_LOW,
            )
        )

    async def Execute(
        self,
        request_iterator: AsyncIterator[arm_pb.ExecuteRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[arm_pb.ExecuteResponse]:
        async for request in request_iterator:
            if request.WhichOneof("kind") != "dispatch":
                continue
            dispatch = request.dispatch
            yield arm_pb.ExecuteResponse(
                result=arm_pb.Result(
                    subtask_id=dispatch.subtask_id, output=dispatch.input, attempt=dispatch.attempt
                )
            )


async def serve(port: int) -> None:
    """Serve EchoArm on 127.0.0.1:`port`, print the bound port, stop on stdin EOF or SIGTERM."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    arm_grpc.add_ArmServiceServicer_to_server(EchoArm(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(bound, flush=True)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waiters: set[asyncio.Future[object]] = {asyncio.ensure_future(stop.wait())}
    # NOTE: when stdin is a pipe from the parent, EOF means the parent is gone (even if it was
    # SIGKILLed): never outlive it. Other stdins (a tty, /dev/null) cannot be watched this way.
    if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        waiters.add(asyncio.ensure_future(stdin.read()))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    await server.stop(grace=1.0)


@contextlib.asynccontextmanager
async def server_process() -> AsyncIterator[str]:
    """Run `serve` in a child process and yield its address; stop it on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks._raw",
        "serve",
        "--port",
        "0",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    if proc.stdin is None or proc.stdout is None:
        raise RuntimeError("raw server started without pipes")
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
        if not line.strip().isdigit():
            raise RuntimeError(f"raw server did not report a port (got {line!r})")
        yield f"127.0.0.1:{int(line)}"
    finally:
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.communicate(), SHUTDOWN_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.communicate()


def _dispatch(seq: int, payload: struct_pb2.Struct) -> arm_pb.ExecuteRequest:
    return arm_pb.ExecuteRequest(
        dispatch=arm_pb.Dispatch(subtask_id=f"s{seq}", attempt=1, task_id="t", input=payload)
    )


def _check(response: arm_pb.ExecuteResponse, seq: int, payload: struct_pb2.Struct) -> None:
    result = response.result
    if result.subtask_id != f"s{seq}" or result.output != payload:
        raise RuntimeError(f"unexpected answer to dispatch s{seq}: {response}")


async def _pingpong(
    stub: arm_grpc.ArmServiceStub, n: int, warmup: int, payload: struct_pb2.Struct
) -> dict[str, float]:
    call = stub.Execute()
    latencies_ms: list[float] = []
    started = 0
    for seq in range(warmup + n):
        if seq == warmup:
            started = time.perf_counter_ns()
        request = _dispatch(seq, payload)
        sent = time.perf_counter_ns()
        await call.write(request)
        response = await call.read()
        if seq >= warmup:
            latencies_ms.append((time.perf_counter_ns() - sent) / 1e6)
        _check(response, seq, payload)
    elapsed_s = (time.perf_counter_ns() - started) / 1e9
    await call.done_writing()
    if await call.read() is not grpc.aio.EOF:
        raise RuntimeError("raw server sent more answers than dispatches")
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return {
        "pingpong_p50_ms": cuts[49],
        "pingpong_p99_ms": cuts[98],
        "pingpong_round_trips_per_s": n / elapsed_s,
    }


async def _pipelined(
    stub: arm_grpc.ArmServiceStub, n: int, window: int, payload: struct_pb2.Struct
) -> dict[str, float]:
    call = stub.Execute()
    in_flight = asyncio.Semaphore(window)

    async def send() -> None:
        for seq in range(n):
            await in_flight.acquire()
            await call.write(_dispatch(seq, payload))
        await call.done_writing()

    async def receive() -> None:
        for seq in range(n):
            response = await call.read()
            in_flight.release()
            _check(response, seq, payload)
        if await call.read() is not grpc.aio.EOF:
            raise RuntimeError("raw server sent more answers than dispatches")

    started = time.perf_counter_ns()
    async with asyncio.TaskGroup() as group:
        group.create_task(send())
        group.create_task(receive())
    elapsed_s = (time.perf_counter_ns() - started) / 1e9
    return {"pipelined_msgs_per_s": n / elapsed_s}


async def run_raw(
    n_pingpong: int = N_PINGPONG,
    n_pipelined: int = N_PIPELINED,
    window: int = WINDOW,
    *,
    warmup: int = WARMUP,
) -> dict[str, float]:
    """Measure raw grpc.aio bidi streaming against a server in another process.

    Returns pingpong_p50_ms, pingpong_p99_ms, pingpong_round_trips_per_s, pipelined_msgs_per_s.
    """
    if n_pingpong < 2 or n_pipelined < 1 or window < 1 or warmup < 0:
        raise ValueError("need n_pingpong >= 2, n_pipelined >= 1, window >= 1, warmup >= 0")
    payload = struct_pb2.Struct()
    payload.update({"text": "hello"})
    async with (
        server_process() as address,
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
    ):
        await asyncio.wait_for(channel.channel_ready(), STARTUP_TIMEOUT_S)
        stub = arm_grpc.ArmServiceStub(channel)
        figures = await _pingpong(stub, n_pingpong, warmup, payload)
        figures |= await _pipelined(stub, n_pipelined, window, payload)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve_cmd = commands.add_parser("serve", help="run only the echo server")
    serve_cmd.add_argument("--port", type=int, default=0)
    parser.add_argument("--pingpong", type=int, default=N_PINGPONG, help="timed round trips")
    parser.add_argument("--pipelined", type=int, default=N_PIPELINED, help="pipelined messages")
    parser.add_argument("--window", type=int, default=WINDOW, help="messages in flight")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed round trips first")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(serve(args.port))
        return 0
    figures = asyncio.run(run_raw(args.pingpong, args.pipelined, args.window, warmup=args.warmup))
    print(
        f"raw grpc.aio bidi, one stream, payload {{'text': 'hello'}}: "
        f"ping-pong n={args.pingpong} (warm-up {args.warmup}), "
        f"pipelined n={args.pipelined} window={args.window}"
    )
    for name, value in figures.items():
        print(f"  {name:<28} {value:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
