"""Scale, cost growth and flow control of one orchestrator process (and of two replicas).

    python -m benchmarks.scale             # the issue's sizes (several minutes)
    python -m benchmarks.scale --quick     # smaller sizes, about a minute or two

Every orchestrator is `octollm serve` in a child process of its own (offline brain, explicit
plans, in-process store unless said otherwise), so its peak RSS (VmHWM) is its own; arms are
another child process, the client is this one. Tasks are the 5-step fan-out/fan-in DAG
a -> (b, c, d) -> e on echo arms (64 credits each), followed on WatchTask to their terminal event.

1. Scale: N tasks submitted at once (OCTOLLM_MAX_CONCURRENT_TASKS=N, so all run together) to one
   orchestrator with 2 echo arms: completion time, p50/p99 task latency (submission to terminal
   event), errors (any task not SUCCEEDED), peak RSS (target: under 1 GiB, no errors). Then the
   same against 2 replicas on one PostgreSQL schema (half the tasks to each; a task runs on the
   replica it was submitted to).
2. Cost growth with tasks: N tasks queued at once on default settings (10 run at a time, the
   rest wait PENDING), for several N: time and memory per task should stay flat (largest /
   smallest <= 2x across the sizes: "roughly linear").
3. Cost growth with arms: the same workload with 1, 10, 100 echo arm connections (one server
   each, all in one child process): time to all SERVING, idle memory per arm, time per task
   (flat: largest / smallest <= 2x).
4. Flow control: a slow arm granting 4 credits (each subtask waits `--slow-delay-s`) with Q
   subtasks queued for it (Q/1000 tasks of 1000 independent steps, all admitted), while the echo
   arm serves sequential DAG probes: the orchestrator's RSS must stay flat while the queue is
   held (max over the window within 10% of the RSS once queued), the slow arm never has more
   than 4 in flight, and the probes' p50 stays within 1.5x of the baseline measured just before
   (same run). The queued tasks are then cancelled (timed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from octollm.v1 import orchestrator_service_pb2 as pb

from benchmarks._mesh import (
    ArmSpec,
    Child,
    Client,
    Unavailable,
    arm_host,
    fan_plan,
    flat_plan,
    free_port,
    log_problems,
    memory_mib,
    orchestrator,
    percentile,
    pg_schema,
    problems_note,
    request_for,
)

SECTIONS = ("scale", "replicas", "tasks", "arms", "flow")
SIZES: dict[str, dict[str, object]] = {
    "full": {
        "tasks": 1000,
        "growth_tasks": "100,1000,10000",
        "growth_arms": "1,10,100",
        "arm_tasks": 1000,
        "queued": 10_000,
        "probes": 100,
    },
    "quick": {
        "tasks": 1000,
        "growth_tasks": "100,300,1000",
        "growth_arms": "1,10,100",
        "arm_tasks": 300,
        "queued": 10_000,
        "probes": 30,
    },
}
RSS_TARGET_MIB = 1024.0
LINEAR_SPREAD = 2.0  # per-unit cost, largest / smallest size
SLOW_CREDIT = 4
PROBE_P50_LIMIT = 1.5  # probe p50 during the flood / baseline p50
RSS_FLAT_LIMIT = 1.10  # max RSS while held / RSS once queued
SUBMIT_WINDOW = 64
WATCH_WINDOW = 64
QUEUE_WAIT_S = 600.0  # hang guard only

DAG = request_for(fan_plan(3), "benchmark: fan out to three echoes and back in")
SINGLE = "1 orchestrator, in-process store"
REPLICAS = "2 replicas, one PostgreSQL schema"
ELSEWHERE = "2 replicas, watched on the other replica"


@dataclass
class Run:
    seconds: float
    latencies: list[float]
    errors: int
    first_error: str = ""


async def run_tasks(
    client: Client, n: int, *, watch_window: int | None = None, elsewhere: bool = False
) -> Run:
    """Submit `n` DAG tasks (SUBMIT_WINDOW submissions in flight) and follow each to its end,
    with at most `watch_window` WatchTask streams open (None: one per task, all at once), on
    the orchestrator it was submitted to (`elsewhere`: on the client's next address)."""
    submits = asyncio.Semaphore(SUBMIT_WINDOW)
    watches = asyncio.Semaphore(watch_window or n)
    latencies: list[float] = []
    errors = 0
    first_error = ""

    async def one() -> None:
        nonlocal errors, first_error
        started = time.perf_counter()
        submit_on, watch_on = client.stub_pair(elsewhere)
        try:
            async with submits:
                task_id = await client.submit(DAG, submit_on)
            async with watches:
                final = await client.wait(task_id, watch_on)
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"[:200]
            return
        latencies.append((time.perf_counter() - started) * 1e3)
        if final != pb.TASK_STATE_SUCCEEDED:
            errors += 1
            first_error = first_error or f"a task ended {pb.TaskState.Name(final)}"

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return Run(time.perf_counter() - started, latencies, errors, first_error)


def _note(orch: Child, run: Run) -> str:
    """What the orchestrator logged and the first error, if any."""
    return "; ".join(n for n in (problems_note(log_problems(orch)), run.first_error) if n)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# -- 1. scale -----------------------------------------------------------------------------------


async def scale_rows(
    arm_addresses: Sequence[str], n_tasks: int, replicas: bool, single: bool
) -> list[str]:
    env = {"OCTOLLM_MAX_CONCURRENT_TASKS": str(max(n_tasks, 1))}
    lines = [
        f"scale: {n_tasks} concurrent 5-step DAG tasks, 2 echo arms, offline brain",
        f"  {'setup':<44}{'errors':>7}{'total s':>9}{'tasks/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'peak RSS MiB':>14}  target: RSS < 1 GiB, no errors",
    ]
    if single:
        async with (
            orchestrator(arm_addresses, env=env) as orch,
            Client([orch.address], channels=4) as client,
        ):
            run = await run_tasks(client, n_tasks)
            peak = memory_mib(orch.pid)[1]
            logged = log_problems(orch)
        lines.append(_scale_row(SINGLE, n_tasks, run, [peak], logged))
    if replicas:
        try:
            async with pg_schema() as dsn, contextlib.AsyncExitStack() as stack:
                pg_env = {**env, "OCTOLLM_POSTGRES_DSN": dsn}
                # NOTE: started together: migrations take an advisory lock, so this is safe.
                orchs = await asyncio.gather(
                    *(
                        stack.enter_async_context(orchestrator(arm_addresses, env=pg_env))
                        for _ in range(2)
                    )
                )
                client = await stack.enter_async_context(
                    Client([o.address for o in orchs], channels=4)
                )
                for label, elsewhere in ((REPLICAS, False), (ELSEWHERE, True)):
                    before = log_problems(*orchs)
                    run = await run_tasks(client, n_tasks, elsewhere=elsewhere)
                    peaks = [memory_mib(o.pid)[1] for o in orchs]
                    logged = log_problems(*orchs) - before
                    lines.append(_scale_row(label, n_tasks, run, peaks, logged))
        except Unavailable as exc:
            lines.append(f"  {REPLICAS:<44}skipped: {exc}")
    return lines


def _scale_row(label: str, n: int, run: Run, peaks: Sequence[float], logged: Counter[str]) -> str:
    peak_text = "/".join(f"{p:.0f}" for p in peaks)
    ok = max(peaks) < RSS_TARGET_MIB and run.errors == 0
    note = "; ".join(n for n in (problems_note(logged), run.first_error) if n)
    return (
        f"  {label:<44}{run.errors:>7}{run.seconds:>9.2f}{n / run.seconds:>9.0f}"
        f"{percentile(run.latencies, 50):>9.0f}{percentile(run.latencies, 99):>9.0f}"
        f"{peak_text:>14}  {_verdict(ok)}{'; ' + note if note else ''}"
    )


# -- 2. cost growth with tasks ------------------------------------------------------------------


async def task_growth_rows(arm_addresses: Sequence[str], sizes: Sequence[int]) -> list[str]:
    lines = [
        "cost growth with tasks: N DAG tasks queued at once, default settings (10 run at a time;"
        " the in-process store keeps every finished task, so memory grows with N by design)",
        f"  {'tasks':>7}{'errors':>7}{'total s':>9}{'ms/task':>9}{'idle MiB':>10}"
        f"{'peak MiB':>10}{'KiB/task':>10}",
    ]
    per_task_ms, per_task_kib = [], []
    for n in sizes:
        async with (
            orchestrator(arm_addresses) as orch,
            Client([orch.address], channels=2) as client,
        ):
            idle = memory_mib(orch.pid)[0]
            run = await run_tasks(client, n, watch_window=WATCH_WINDOW)
            peak = memory_mib(orch.pid)[1]
            note = _note(orch, run)
        per_task_ms.append(run.seconds / n * 1e3)
        per_task_kib.append((peak - idle) * 1024 / n)
        lines.append(
            f"  {n:>7}{run.errors:>7}{run.seconds:>9.2f}{run.seconds / n * 1e3:>9.2f}"
            f"{idle:>10.0f}{peak:>10.0f}{(peak - idle) * 1024 / n:>10.1f}  {note}".rstrip()
        )
    lines += _linear("ms/task", per_task_ms) + _linear("KiB/task", per_task_kib)
    return lines


def _linear(what: str, values: Sequence[float]) -> list[str]:
    """'Roughly linear': the per-unit cost's largest / smallest across the sizes <= 2."""
    if len(values) < 2 or min(values) <= 0:
        return []
    spread = max(values) / min(values)
    return [
        f"  {what}, largest / smallest: {spread:.2f}x (flat per unit = linear growth; target <= "
        f"{LINEAR_SPREAD:g}x) {_verdict(spread <= LINEAR_SPREAD)}"
    ]


# -- 3. cost growth with arms -------------------------------------------------------------------


async def arm_growth_rows(counts: Sequence[int], n_tasks: int) -> list[str]:
    lines = [
        f"cost growth with arms: {n_tasks} DAG tasks (100 at a time) over N echo arm connections",
        f"  {'arms':>7}{'ready s':>10}{'idle MiB':>10}{'KiB/arm':>9}{'errors':>7}"
        f"{'total s':>9}{'ms/task':>9}{'peak MiB':>10}",
    ]
    env = {"OCTOLLM_MAX_CONCURRENT_TASKS": "100"}
    base_idle = math.nan
    per_task_ms = []
    for count in counts:
        async with arm_host("echo", count) as arms:
            started = time.perf_counter()  # ready: from the orchestrator's start to all SERVING
            async with (
                orchestrator(arms.addresses, env=env) as orch,
                Client([orch.address], channels=2) as client,
            ):
                ready_s = time.perf_counter() - started
                idle = memory_mib(orch.pid)[0]
                if math.isnan(base_idle):
                    base_idle, base_count = idle, count
                run = await run_tasks(client, n_tasks, watch_window=100)
                peak = memory_mib(orch.pid)[1]
                note = _note(orch, run)
        per_task_ms.append(run.seconds / n_tasks * 1e3)
        per_arm = (idle - base_idle) * 1024 / (count - base_count) if count > base_count else 0
        per_arm_text = f"{per_arm:>9.0f}" if count > base_count else f"{'-':>9}"
        lines.append(
            f"  {count:>7}{ready_s:>10.2f}{idle:>10.0f}{per_arm_text}{run.errors:>7}"
            f"{run.seconds:>9.2f}{run.seconds / n_tasks * 1e3:>9.2f}{peak:>10.0f}  {note}".rstrip()
        )
    return lines + _linear("ms/task", per_task_ms)


# -- 4. flow control ----------------------------------------------------------------------------


def _queue_depth(metrics_port: int, arm_type: str) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    wanted = f'octollm_dispatch_queue_depth{{arm_type="{arm_type}"}}'
    for line in text.splitlines():
        if line.startswith(wanted):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _probe(client: Client, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        ms, final = await client.run_task(DAG)
        if final != pb.TASK_STATE_SUCCEEDED:
            raise RuntimeError(f"a probe DAG ended {pb.TaskState.Name(final)}")
        latencies.append(ms)
    return latencies


async def flow_rows(n_queued: int, n_probes: int, delay_s: float) -> list[str]:
    slow_tasks = max(1, math.ceil(n_queued / 1000))
    steps = math.ceil(n_queued / slow_tasks)
    n_queued = slow_tasks * steps
    metrics_port = free_port()
    env = {
        "OCTOLLM_MAX_CONCURRENT_TASKS": str(slow_tasks + 10),
        "OCTOLLM_MAX_PARALLEL_SUBTASKS": str(steps),
        "OCTOLLM_METRICS_PORT": str(metrics_port),
    }
    async with (
        arm_host("slow", 1, max_concurrency=SLOW_CREDIT, delay_s=delay_s, more=[ArmSpec()]) as arms,
        orchestrator(arms.addresses, env=env) as orch,
        Client([orch.address], channels=2) as client,
    ):
        await _probe(client, 5)  # warm-up
        rss_before = memory_mib(orch.pid)[0]
        baseline = await _probe(client, n_probes)
        rss_baseline = memory_mib(orch.pid)[0]

        slow_plan = request_for(flat_plan(steps, "slow"), "benchmark: flood the slow arm")
        started = time.perf_counter()
        flood = [await client.submit(slow_plan) for _ in range(slow_tasks)]

        def all_queued(depth: float) -> bool:
            # Every subtask is queued but those the slow arm has taken or finished meanwhile.
            taken = SLOW_CREDIT * (1 + (time.perf_counter() - started) / delay_s)
            return depth >= n_queued - taken

        async with asyncio.timeout(QUEUE_WAIT_S):
            while True:
                depth = await asyncio.to_thread(_queue_depth, metrics_port, "slow")
                if all_queued(depth):
                    break
                await asyncio.sleep(0.1)
        queue_s = time.perf_counter() - started
        rss_queued = memory_mib(orch.pid)[0]

        samples: list[float] = []
        max_in_flight = 0

        async def sample() -> None:
            nonlocal max_in_flight
            while True:
                samples.append(memory_mib(orch.pid)[0])
                listed = await client.stub().ListArms(pb.ListArmsRequest(arm_type="slow"))
                max_in_flight = max([max_in_flight, *(a.in_flight for a in listed.arms)])
                await asyncio.sleep(0.2)

        sampler = asyncio.create_task(sample())
        try:
            during = await _probe(client, n_probes)
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        depth_after = await asyncio.to_thread(_queue_depth, metrics_port, "slow")

        started = time.perf_counter()
        await asyncio.gather(*(client.cancel(task_id) for task_id in flood))
        cancel_s = time.perf_counter() - started
        rss_end = memory_mib(orch.pid)[0]
        note = problems_note(log_problems(orch))

    p50_ratio = percentile(during, 50) / percentile(baseline, 50)
    rss_ratio = max(samples or [rss_queued]) / rss_queued
    per_queued = (rss_queued - rss_baseline) * 1024 / n_queued
    return [
        f"flow control: slow arm ({SLOW_CREDIT} credits, {delay_s:g} s per subtask), "
        f"{n_queued} subtasks queued for it ({slow_tasks} task(s) x {steps} steps); "
        f"{n_probes} sequential echo DAG probes",
        f"  {'phase':<36}{'probe p50 ms':>13}{'p99 ms':>9}{'RSS MiB':>14}{'slow queue':>11}",
        f"  {'baseline, nothing queued':<36}{percentile(baseline, 50):>13.2f}"
        f"{percentile(baseline, 99):>9.2f}{rss_baseline:>14.0f}{0:>11}",
        f"  {'slow subtasks queued':<36}{percentile(during, 50):>13.2f}"
        f"{percentile(during, 99):>9.2f}"
        f"{f'{min(samples or [rss_queued]):.0f}-{max(samples or [rss_queued]):.0f}':>14}"
        f"{depth_after:>11.0f}",
        f"  queueing took {queue_s:.2f} s; RSS {rss_before:.0f} MiB before, {rss_queued:.0f} MiB "
        f"once queued ({per_queued:.1f} KiB per queued subtask), {rss_end:.0f} MiB after "
        f"cancelling them all in {cancel_s:.2f} s",
        f"  probe p50 with the queue / baseline: {p50_ratio:.2f}x (target <= {PROBE_P50_LIMIT}x) "
        + _verdict(p50_ratio <= PROBE_P50_LIMIT),
        f"  RSS while held / once queued: {rss_ratio:.2f}x (target <= {RSS_FLAT_LIMIT}x) "
        + _verdict(rss_ratio <= RSS_FLAT_LIMIT),
        f"  slow arm in flight, max seen: {max_in_flight} (target <= {SLOW_CREDIT}) "
        + _verdict(max_in_flight <= SLOW_CREDIT),
        *([f"  orchestrator {note}"] if note else []),
    ]


# -- main ---------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> list[str]:
    sections = set(args.sections.split(","))
    lines: list[str] = []
    if sections & {"scale", "replicas", "tasks"}:
        async with arm_host("echo", 2) as arms:
            if sections & {"scale", "replicas"}:
                lines += await scale_rows(
                    arms.addresses, args.tasks, "replicas" in sections, "scale" in sections
                )
            if "tasks" in sections:
                sizes = [int(n) for n in args.growth_tasks.split(",")]
                lines += await task_growth_rows(arms.addresses[:1], sizes)
    if "arms" in sections:
        lines += await arm_growth_rows(
            [int(n) for n in args.growth_arms.split(",")], args.arm_tasks
        )
    if "flow" in sections:
        lines += await flow_rows(args.queued, args.probes, args.slow_delay_s)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--tasks", type=int, help="concurrent tasks for the scale rows")
    parser.add_argument("--growth-tasks", help="comma-separated task counts")
    parser.add_argument("--growth-arms", help="comma-separated arm connection counts")
    parser.add_argument("--arm-tasks", type=int, help="tasks per arm-growth row")
    parser.add_argument("--queued", type=int, help="subtasks queued for the slow arm")
    parser.add_argument("--probes", type=int, help="echo DAG probes per flow-control phase")
    parser.add_argument("--slow-delay-s", type=float, default=1.0, help="slow arm, per subtask")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}"
    )
    args = parser.parse_args(argv)
    for name, value in SIZES["quick" if args.quick else "full"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    for line in asyncio.run(run(args)):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
