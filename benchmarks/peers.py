"""The mesh side by side with Celery (Redis broker) and Ray, measured in the same run.

    python -m benchmarks.peers [--quick] [--subtasks 10000] [--dags 200] [--systems ...]

The same no-op work on each system, on this machine, in this run:

- Throughput: N no-op units of work, all submitted at once, until every result is back.
  Mesh: N echo steps as ceil(N/1000) tasks of up to 1000 independent steps (the API's limit
  per plan), submitted together over gRPC to `octollm serve` in its own process, routed to the
  echo arm in a third process, each followed on WatchTask to its terminal event (which carries
  every step's output). Celery/Ray: N independent no-op tasks, then every result fetched.
  A second mesh row runs N one-step tasks (200 unfinished at a time): the per-task cost of
  SubmitTask, WatchTask, planning, integration and validation on top of one subtask.
- DAG latency: a -> (b, c, d) -> e, sequentially, from submission to the final result. Mesh:
  SubmitTask -> terminal WatchTask event. Celery: chain(a, group(b, c, d), e) (a chord).
  Ray: ObjectRefs passed between remote calls, ray.get on the last.

Systems: `mesh` (in-process store), `mesh-pg` (PostgreSQL store, a throwaway schema dropped at
the end), `celery` (Redis broker and result backend on database 11 of 127.0.0.1:6379, or
OCTOLLM_BENCH_REDIS_URL, flushed before and after; worker in a subprocess; best of the prefork
pool (2 processes) and the threads pool (4 threads)), `ray` (local, num_cpus=2; ray.init outside
the timed region). A system that cannot run (peer not installed: `pip install -e ".[bench]"`,
Redis or PostgreSQL down) prints `skipped: <why>` in its rows.

Mesh settings: OCTOLLM_MAX_CONCURRENT_TASKS=64 and OCTOLLM_MAX_PARALLEL_SUBTASKS=64 (defaults 10
and 16), offline brain, explicit plans, log level warning.

Targets: throughput >= 4x Celery and >= 1.5x Ray; DAG p50 <= 0.5x Ray's; with PostgreSQL
durability, throughput >= 2x Celery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb

from benchmarks._mesh import (
    ROOT,
    WATCH_BATCH,
    WATCH_BATCHES,
    Client,
    Unavailable,
    arm_host,
    fan_plan,
    flat_plan,
    log_problems,
    orchestrator,
    percentile,
    pg_schema,
    problems_note,
    request_for,
    run_concurrently,
)

SYSTEMS = ("mesh", "mesh-pg", "celery", "ray")
MAX_STEPS_PER_TASK = 1000  # the API's plan limit
MESH_ENV = {"OCTOLLM_MAX_CONCURRENT_TASKS": "64", "OCTOLLM_MAX_PARALLEL_SUBTASKS": "64"}
ONE_STEP_WINDOW = 200
CELERY_POOLS = (("prefork", 2), ("threads", 4))
SIZES = {  # subtasks, DAGs, warm-up DAGs
    "full": (10_000, 200, 20),
    "quick": (2_000, 50, 5),
}
# NOTE: hang guards only.
CHILD_TIMEOUT_S = 1800.0
RESULT_TIMEOUT_S = 600.0

Figures = dict[str, Any]


# -- the mesh -----------------------------------------------------------------------------------


def _split(n: int, size: int) -> list[int]:
    """n as ceil(n/size) near-equal parts."""
    parts = max(1, math.ceil(n / size))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


async def mesh_figures(
    arm_addresses: list[str], n_subtasks: int, n_dags: int, warmup: int, *, postgres: bool = False
) -> Figures:
    """Throughput and DAG latency through `octollm serve` and the echo arm."""
    if postgres:
        async with pg_schema() as dsn:
            env = {"OCTOLLM_POSTGRES_DSN": dsn}
            return await _mesh_figures(arm_addresses, n_subtasks, n_dags, warmup, env)
    return await _mesh_figures(arm_addresses, n_subtasks, n_dags, warmup, {})


async def _mesh_figures(
    arm_addresses: list[str], n_subtasks: int, n_dags: int, warmup: int, env: dict[str, str]
) -> Figures:
    figures: Figures = {}
    async with (
        orchestrator(arm_addresses, env={**MESH_ENV, **env}) as orch,
        Client([orch.address]) as client,
    ):
        # Warm-up: connections, code paths, the arm's handler.
        await run_concurrently(client, [request_for(flat_plan(20))] * 5, 5)
        dag = request_for(fan_plan(3), "benchmark: fan out to three echoes and back in")
        for _ in range(warmup):
            await client.run_task(dag)

        parts = _split(n_subtasks, MAX_STEPS_PER_TASK)
        seconds, _, errors = await run_concurrently(
            client, [request_for(flat_plan(n)) for n in parts], len(parts)
        )
        figures["throughput"] = n_subtasks / seconds
        figures["throughput_how"] = f"{len(parts)} task(s) x {parts[0]} steps"

        one_step = request_for(flat_plan(1))
        seconds, _, one_errors = await run_concurrently(
            client, [one_step] * n_subtasks, ONE_STEP_WINDOW
        )
        figures["one_step_tasks"] = n_subtasks / seconds

        latencies = []
        for _ in range(n_dags):
            ms, final = await client.run_task(dag)
            latencies.append(ms)
            errors += final != pb.TASK_STATE_SUCCEEDED
        figures["dag_p50"] = percentile(latencies, 50)
        figures["dag_p95"] = percentile(latencies, 95)
        figures["errors"] = errors + one_errors
        figures["logged"] = problems_note(log_problems(orch))
    return figures


# -- Celery (child process) ---------------------------------------------------------------------


def celery_figures(n_subtasks: int, n_dags: int, warmup: int) -> Figures:
    try:
        import redis
        from celery import chain, group  # type: ignore[import-untyped, unused-ignore]

        from benchmarks._celery_app import REDIS_URL, noop
    except ImportError as exc:
        raise Unavailable(f"Celery not installed ({exc}): pip install -e '.[bench]'") from exc
    broker = redis.Redis.from_url(REDIS_URL)
    try:
        broker.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis at {REDIS_URL} unreachable: {exc}") from exc

    def dag() -> None:
        chain(noop.s(), group(noop.s(), noop.s(), noop.s()), noop.s())().get(
            timeout=RESULT_TIMEOUT_S
        )

    figures: Figures = {"pools": {}}
    broker.flushdb()
    try:
        for pool, concurrency in CELERY_POOLS:
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "benchmarks._celery_app", "worker"),
                    *("--pool", pool, "--concurrency", str(concurrency), "--loglevel", "warning"),
                    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                noop.delay().get(timeout=60)  # the worker is up
                for _ in range(10):
                    noop.delay().get(timeout=RESULT_TIMEOUT_S)
                for _ in range(warmup):
                    dag()
                started = time.perf_counter()
                results = [noop.delay() for _ in range(n_subtasks)]
                for result in results:
                    result.get(timeout=RESULT_TIMEOUT_S)
                throughput = n_subtasks / (time.perf_counter() - started)
                latencies = []
                for _ in range(n_dags):
                    started = time.perf_counter()
                    dag()
                    latencies.append((time.perf_counter() - started) * 1e3)
            finally:
                worker.terminate()
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
            figures["pools"][f"{pool} x{concurrency}"] = {
                "throughput": throughput,
                "dag_p50": percentile(latencies, 50),
                "dag_p95": percentile(latencies, 95),
            }
    finally:
        broker.flushdb()
    pools = figures["pools"]
    best = max(pools, key=lambda p: pools[p]["throughput"])
    fastest = min(pools, key=lambda p: pools[p]["dag_p50"])
    figures |= {
        "throughput": pools[best]["throughput"],
        "throughput_how": best,
        "dag_p50": pools[fastest]["dag_p50"],
        "dag_p95": pools[fastest]["dag_p95"],
        "dag_how": fastest,
    }
    return figures


# -- Ray (child process) ------------------------------------------------------------------------


def ray_figures(n_subtasks: int, n_dags: int, warmup: int) -> Figures:
    try:
        import ray  # type: ignore[import-not-found, unused-ignore]
    except ImportError as exc:
        raise Unavailable(f"Ray not installed ({exc}): pip install -e '.[bench]'") from exc
    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    init_s = time.perf_counter() - started
    try:

        @ray.remote  # type: ignore[untyped-decorator, unused-ignore]
        def noop(*args: Any) -> None:
            return None

        def dag() -> None:
            root = noop.remote()
            mids = [noop.remote(root) for _ in range(3)]
            ray.get(noop.remote(*mids), timeout=RESULT_TIMEOUT_S)

        ray.get([noop.remote() for _ in range(200)], timeout=RESULT_TIMEOUT_S)
        for _ in range(warmup):
            dag()
        started = time.perf_counter()
        ray.get([noop.remote() for _ in range(n_subtasks)], timeout=RESULT_TIMEOUT_S)
        throughput = n_subtasks / (time.perf_counter() - started)
        latencies = []
        for _ in range(n_dags):
            started = time.perf_counter()
            dag()
            latencies.append((time.perf_counter() - started) * 1e3)
    finally:
        ray.shutdown()
    return {
        "throughput": throughput,
        "throughput_how": f"ray.init {init_s:.1f} s, untimed",
        "dag_p50": percentile(latencies, 50),
        "dag_p95": percentile(latencies, 95),
    }


CHILDREN: dict[str, Callable[[int, int, int], Figures]] = {
    "celery": celery_figures,
    "ray": ray_figures,
}


def run_child(system: str, n_subtasks: int, n_dags: int, warmup: int) -> Figures:
    """A peer measured in a child process of its own (its imports and threads stay there)."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.peers", "--child", system),
            *("--subtasks", str(n_subtasks), "--dags", str(n_dags), "--warmup", str(warmup)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            figures: Figures = json.loads(line.removeprefix("RESULT "))
            return figures
    tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
    return {"skipped": f"{system} failed (exit {proc.returncode}): {tail[-300:]}"}


def _child_main(system: str, n_subtasks: int, n_dags: int, warmup: int) -> int:
    try:
        figures = CHILDREN[system](n_subtasks, n_dags, warmup)
    except Unavailable as exc:
        figures = {"skipped": str(exc)}
    print("RESULT " + json.dumps(figures), flush=True)
    return 0


# -- the table ----------------------------------------------------------------------------------


def _ratio_row(label: str, ours: float, theirs: float, target: str, ok: bool) -> str:
    ratio = ours / theirs
    return f"  {label:<44}{ratio:>8.2f}x  {target:<10} {'met' if ok else 'MISSED'}"


def report(results: dict[str, Figures], n_subtasks: int, n_dags: int) -> list[str]:
    lines = [
        f"peers: no-op throughput (N={n_subtasks}) and 5-step DAG a -> (b,c,d) -> e latency "
        f"({n_dags} sequential), same machine, same run",
        "  mesh clients read WatchTask "
        + (f"in batches (max_batch_size={WATCH_BATCH})" if WATCH_BATCHES else "one event a time")
        + "; mesh result cache and task memory off",
        f"  {'system':<34}{'subtasks/s':>12}{'DAG p50 ms':>12}{'DAG p95 ms':>12}  how",
    ]
    names = {
        "mesh": "mesh, in-process store",
        "mesh-pg": "mesh, PostgreSQL store",
        "celery": "Celery + Redis (best pool)",
        "ray": "Ray local, num_cpus=2",
    }
    for system, figures in results.items():
        name = names[system]
        if "skipped" in figures:
            lines.append(f"  {name:<34}skipped: {figures['skipped']}")
            continue
        how = figures.get("throughput_how", "")
        if "dag_how" in figures:
            how += f"; DAG: {figures['dag_how']}"
        if figures.get("errors"):
            how += f"; {figures['errors']} ERRORS"
        if figures.get("logged"):
            how += f"; {figures['logged']}"
        lines.append(
            f"  {name:<34}{figures['throughput']:>12.0f}"
            f"{figures['dag_p50']:>12.2f}{figures['dag_p95']:>12.2f}  {how}"
        )
        if "one_step_tasks" in figures:
            label = "  one task per no-op (tasks/s)"
            lines.append(f"  {label:<34}{figures['one_step_tasks']:>12.0f}")
        for pool, pool_figures in figures.get("pools", {}).items():
            label = f"  pool {pool}"
            lines.append(
                f"  {label:<34}{pool_figures['throughput']:>12.0f}"
                f"{pool_figures['dag_p50']:>12.2f}{pool_figures['dag_p95']:>12.2f}"
            )
    mesh, pg = results.get("mesh", {}), results.get("mesh-pg", {})
    celery, ray = results.get("celery", {}), results.get("ray", {})
    lines.append(f"  {'target (ratio, this run)':<44}{'measured':>9}  {'target':<10} verdict")

    def have(*figures: Figures) -> bool:
        return all(f and "skipped" not in f for f in figures)

    checks: list[tuple[str, Figures, Figures, str, str, float]] = [
        ("mesh subtasks/s vs Celery", mesh, celery, "throughput", ">=", 4.0),
        ("mesh subtasks/s vs Ray", mesh, ray, "throughput", ">=", 1.5),
        ("mesh DAG p50 vs Ray", mesh, ray, "dag_p50", "<=", 0.5),
        ("mesh on PostgreSQL subtasks/s vs Celery", pg, celery, "throughput", ">=", 2.0),
    ]
    for label, ours, theirs, key, op, bound in checks:
        if not have(ours, theirs):
            lines.append(f"  {label:<44}skipped: a system it compares was skipped")
            continue
        ratio = ours[key] / theirs[key]
        ok = ratio >= bound if op == ">=" else ratio <= bound
        lines.append(_ratio_row(label, ours[key], theirs[key], f"{op} {bound:g}x", ok))
    if have(mesh, celery):
        ratio = mesh["one_step_tasks"] / celery["throughput"]
        lines.append(f"  {'(no target) one task per no-op vs Celery':<44}{ratio:>8.2f}x")
    if have(mesh, ray):
        ratio = mesh["one_step_tasks"] / ray["throughput"]
        lines.append(f"  {'(no target) one task per no-op vs Ray':<44}{ratio:>8.2f}x")
    return lines


async def _mesh_results(
    systems: list[str], n_subtasks: int, n_dags: int, warmup: int
) -> dict[str, Figures]:
    results: dict[str, Figures] = {}
    if not systems:
        return results
    async with arm_host("echo") as arms:
        for system in systems:
            try:
                results[system] = await mesh_figures(
                    arms.addresses, n_subtasks, n_dags, warmup, postgres=system == "mesh-pg"
                )
            except Unavailable as exc:
                results[system] = {"skipped": str(exc)}
    return results


def run(systems: list[str], n_subtasks: int, n_dags: int, warmup: int) -> list[str]:
    mesh_systems = [s for s in systems if s.startswith("mesh")]
    results = asyncio.run(_mesh_results(mesh_systems, n_subtasks, n_dags, warmup))
    # NOTE: Ray last: its local cluster's processes linger a moment after ray.shutdown().
    for system in ("celery", "ray"):
        if system in systems:
            results[system] = run_child(system, n_subtasks, n_dags, warmup)
    ordered = {s: results[s] for s in SYSTEMS if s in results}
    return report(ordered, n_subtasks, n_dags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about a minute)")
    parser.add_argument("--subtasks", type=int, help="no-op units for throughput")
    parser.add_argument("--dags", type=int, help="timed sequential DAGs")
    parser.add_argument("--warmup", type=int, help="untimed DAGs first")
    parser.add_argument(
        "--systems", default=",".join(SYSTEMS), help=f"comma-separated, of {','.join(SYSTEMS)}"
    )
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    subtasks, dags, warmup = SIZES["quick" if args.quick else "full"]
    subtasks = args.subtasks or subtasks
    dags = args.dags or dags
    warmup = args.warmup if args.warmup is not None else warmup
    if args.child:
        return _child_main(args.child, subtasks, dags, warmup)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    for line in run(systems, subtasks, dags, warmup):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
