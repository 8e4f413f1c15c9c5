"""Dispatch overhead: the mesh against raw grpc.aio bidi streaming, measured in the same run.

    python -m benchmarks.dispatch [--pingpong 2000] [--pipelined 20000] [--window 64]

Baseline (benchmarks._raw): a hand-written echo servicer in another process, one bidi stream,
ExecuteRequest{dispatch} in, ExecuteResponse{result} out; ping-pong round trips and pipelined
messages with `window` in flight.

Mesh: the orchestrator's `Mesh` in this process dispatching to the reference echo arm
(`octollm arm echo`, built with arm_sdk) in another process, through the full protocol: Hello,
credits, Accepted, Result, Credit. Ping-pong is one `Mesh.execute` at a time; pipelined keeps
`window` executes outstanding (the arm grants 64 credits, so the window is its credit too).

Targets (ratios, because absolute figures swing 2-4x between these machines):
mesh p50 <= 1.5x raw p50, mesh p99 <= 3x raw p99, mesh pipelined >= 0.5x raw pipelined.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator

from google.protobuf import struct_pb2
from octollm.v1 import arm_service_pb2 as arm_pb

from arm_sdk.grpc_options import CHANNEL_OPTIONS
from benchmarks._raw import N_PINGPONG, N_PIPELINED, ROOT, WARMUP, WINDOW, run_raw
from orchestrator_svc.mesh import Mesh
from orchestrator_svc.telemetry.metrics import Metrics

STARTUP_TIMEOUT_S = 30.0  # hang guard only


@contextlib.asynccontextmanager
async def echo_arm_process() -> AsyncIterator[str]:
    """`octollm arm echo` on a free loopback port in a child process; yields its address."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator_svc.cli",
        "arm",
        "echo",
        "--listen",
        "127.0.0.1:0",
        cwd=ROOT,
        env={**os.environ, "OCTOLLM_LOG_LEVEL": "warning"},
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)).decode()
        if "listening on" not in line:
            raise RuntimeError(f"echo arm did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        proc.terminate()
        await proc.wait()


def _dispatch(seq: int, payload: struct_pb2.Struct) -> arm_pb.Dispatch:
    return arm_pb.Dispatch(subtask_id=f"s{seq}", attempt=1, task_id="t", input=payload)


async def run_mesh(
    n_pingpong: int = N_PINGPONG,
    n_pipelined: int = N_PIPELINED,
    window: int = WINDOW,
    *,
    warmup: int = WARMUP,
) -> dict[str, float]:
    """The same work as `run_raw`, through the mesh and the arm SDK."""
    payload = struct_pb2.Struct()
    payload.update({"text": "hello"})
    async with echo_arm_process() as address:
        # NOTE: with the orchestrator's gRPC client metrics, so what they cost is in the figures.
        mesh = Mesh(channel_options=list(CHANNEL_OPTIONS), rpc_metrics=Metrics().client)
        mesh.add(address)
        async with asyncio.timeout(STARTUP_TIMEOUT_S):
            await mesh.wait_until(lambda: "echo" in mesh.routable_types())
        try:
            latencies_ms: list[float] = []
            started = 0
            for seq in range(warmup + n_pingpong):
                if seq == warmup:
                    started = time.perf_counter_ns()
                sent = time.perf_counter_ns()
                outcome = await mesh.execute("echo", _dispatch(seq, payload), timeout_s=30)
                if seq >= warmup:
                    latencies_ms.append((time.perf_counter_ns() - sent) / 1e6)
                if outcome.result is None:
                    raise RuntimeError(f"dispatch s{seq} failed: {outcome.failure}")
            pingpong_s = (time.perf_counter_ns() - started) / 1e9

            limit = asyncio.Semaphore(window)

            async def one(seq: int) -> None:
                async with limit:
                    outcome = await mesh.execute("echo", _dispatch(seq, payload), timeout_s=60)
                if outcome.result is None:
                    raise RuntimeError(f"dispatch s{seq} failed: {outcome.failure}")

            started = time.perf_counter_ns()
            await asyncio.gather(*(one(seq) for seq in range(n_pipelined)))
            pipelined_s = (time.perf_counter_ns() - started) / 1e9
        finally:
            await mesh.close()
    cuts = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return {
        "pingpong_p50_ms": cuts[49],
        "pingpong_p99_ms": cuts[98],
        "pingpong_round_trips_per_s": n_pingpong / pingpong_s,
        "pipelined_msgs_per_s": n_pipelined / pipelined_s,
    }


def report(raw: dict[str, float], mesh: dict[str, float]) -> list[str]:
    """The table of figures, ratios and targets."""
    rows = [
        ("ping-pong p50 (ms)", "pingpong_p50_ms", "<= 1.5x", lambda r: r <= 1.5),
        ("ping-pong p99 (ms)", "pingpong_p99_ms", "<= 3x", lambda r: r <= 3.0),
        ("ping-pong round trips/s", "pingpong_round_trips_per_s", "", None),
        ("pipelined subtasks/s", "pipelined_msgs_per_s", ">= 0.5x", lambda r: r >= 0.5),
    ]
    lines = [f"{'figure':<26}{'raw grpc.aio':>14}{'mesh':>12}{'mesh/raw':>10}  target"]
    for label, key, target, ok in rows:
        ratio = mesh[key] / raw[key]
        verdict = "" if ok is None else ("met" if ok(ratio) else "MISSED")
        lines.append(
            f"{label:<26}{raw[key]:>14.3f}{mesh[key]:>12.3f}{ratio:>9.2f}x  {target} {verdict}"
        )
    return lines


async def run(n_pingpong: int, n_pipelined: int, window: int, warmup: int) -> list[str]:
    raw = await run_raw(n_pingpong, n_pipelined, window, warmup=warmup)
    mesh = await run_mesh(n_pingpong, n_pipelined, window, warmup=warmup)
    return report(raw, mesh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pingpong", type=int, default=N_PINGPONG)
    parser.add_argument("--pipelined", type=int, default=N_PIPELINED)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    args = parser.parse_args(argv)
    print(
        f"dispatch: ping-pong n={args.pingpong} (warm-up {args.warmup}), "
        f"pipelined n={args.pipelined} window={args.window}, payload {{'text': 'hello'}}"
    )
    for line in asyncio.run(run(args.pingpong, args.pipelined, args.window, args.warmup)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
