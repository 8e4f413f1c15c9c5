"""What durability costs: one orchestrator with its state in process memory, one on PostgreSQL.

    python -m benchmarks.durability [--tasks 1000] [--window 64] [--dag-tasks 200]

Two `octollm serve` children (echo arms in a third process) run at once, one with the
in-process store, one with OCTOLLM_POSTGRES_DSN pointing at a throwaway schema on the local
PostgreSQL, and the same two loads go to each in five alternating rounds (so a machine that
speeds up or slows down during the run weighs on both alike):

1. throughput: `--tasks` tasks of 5 independent no-op steps, `--window` unfinished at once;
   subtasks/s = 5 x tasks / seconds from the first SubmitTask to the last terminal event.
2. latency: `--dag-tasks` 5-step fan-out/fan-in DAGs (1 -> 3 -> 1) one after another,
   SubmitTask -> terminal WatchTask event, p50/p95 over all rounds, and the ratio per round.

With PostgreSQL every event is committed before a watcher sees it or the runner acts on it (a
step's result before its dependants are dispatched), SubmitTask answers after the task's row
is committed, and appends of concurrent tasks share transactions (group commit).
Targets: PostgreSQL throughput >= 0.5x in-process, DAG p50 <= 1.5x in-process.

Two reference rows follow. The floor: one append's worth of work (5 event rows and a 3 KB row
rewritten, one autocommit statement) timed alone with asyncpg on the same server, times the
four commits on the DAG's critical path (the task's row before SubmitTask answers, the two
waves after the first, the terminal event), over the in-process p50. The store alone: the last
DAG's create and its three critical-path appends replayed through a PostgresTaskStore in this
process with nothing else running, over the in-process p50.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb

from benchmarks._mesh import (
    Client,
    Unavailable,
    arm_host,
    fan_plan,
    flat_plan,
    orchestrator,
    percentile,
    pg_schema,
    request_for,
    run_concurrently,
)

STEPS = 5
FAN_WIDTH = 3  # the DAG: root -> FAN_WIDTH parallel steps -> sink
CRITICAL_PATH_COMMITS = 4
_FLOOR_TABLES = """
CREATE TABLE floor_tasks (task_id uuid PRIMARY KEY, last_seq bigint NOT NULL, body bytea NOT NULL);
CREATE TABLE floor_events (
    task_id uuid NOT NULL, seq bigint NOT NULL, body bytea NOT NULL, PRIMARY KEY (task_id, seq)
);
"""
_FLOOR_APPEND = """
WITH projected AS (
    UPDATE floor_tasks SET last_seq = $2 + 5, body = $3 WHERE task_id = $1 AND last_seq = $2
    RETURNING task_id
)
INSERT INTO floor_events (task_id, seq, body)
SELECT task_id, $2 + n, $4 FROM projected, generate_series(1, 5) AS n
"""


async def commit_floor(dsn: str, appends: int = 500) -> float:
    """p50 ms of one append-sized autocommit statement on scratch tables in `dsn`'s schema."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(_FLOOR_TABLES)
        task_id, body, event = uuid.uuid4(), os.urandom(3000), os.urandom(300)
        await conn.execute("INSERT INTO floor_tasks VALUES ($1, 0, '')", task_id)
        times = []
        for i in range(appends):
            started = time.perf_counter()
            await conn.execute(_FLOOR_APPEND, task_id, 5 * i, body, event)
            times.append((time.perf_counter() - started) * 1e3)
            await asyncio.sleep(0.001)  # a DAG's commits come a millisecond or more apart
        return percentile(times, 50)
    finally:
        await conn.close(timeout=5)


async def store_floor(dsn: str, dags: int = 300) -> tuple[float, float]:
    """p50 ms of the store's own create and append, alone: the last DAG the orchestrator ran in
    `dsn`'s schema, replayed through a PostgresTaskStore of this process as the runner wrote
    it (create, then its events in the three appends of its critical path), `dags` times."""
    import asyncpg  # type: ignore[import-untyped, unused-ignore]

    from orchestrator_svc.store.postgres import PostgresTaskStore

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        row = await conn.fetchrow("SELECT task_id, body FROM tasks ORDER BY create_ns DESC LIMIT 1")
        rows = await conn.fetch(
            "SELECT body FROM task_events WHERE task_id = $1 ORDER BY seq", row["task_id"]
        )
    finally:
        await conn.close(timeout=5)
    finished = pb.Task.FromString(row["body"])
    events = [pb.TaskEvent.FromString(r["body"]) for r in rows]
    for event in events:  # as the runner hands them over: the store numbers them
        event.ClearField("task_id")
        event.ClearField("seq")
    waves = _critical_path_appends(events)
    store = await PostgresTaskStore.connect(dsn)
    creates: list[float] = []
    appends: list[float] = []
    try:
        for _ in range(dags):
            task = pb.Task(goal=finished.goal, plan=finished.plan)
            started = time.perf_counter()
            created, _ = await store.create(task, "")
            creates.append((time.perf_counter() - started) * 1e3)
            for wave in waves:
                await asyncio.sleep(0.001)
                started = time.perf_counter()
                await store.append(created.task_id, wave, as_owner=True)
                appends.append((time.perf_counter() - started) * 1e3)
            await asyncio.sleep(0.001)
    finally:
        await store.close()
    return percentile(creates, 50), percentile(appends, 50)


def _critical_path_appends(events: list[pb.TaskEvent]) -> list[list[pb.TaskEvent]]:
    """The fan-out DAG's events as its runner appends them: up to the root's result, up to the
    last fan-out result, the rest (the sink's result and `finished`)."""
    waves: list[list[pb.TaskEvent]] = [[]]
    succeeded = 0
    for event in events:
        waves[-1].append(event)
        if (
            event.HasField("subtask_changed")
            and event.subtask_changed.subtask.state == pb.SUBTASK_STATE_SUCCEEDED
        ):
            succeeded += 1
            if succeeded in (1, 1 + FAN_WIDTH):
                waves.append([])
    return waves


ROUNDS = 5  # the loads are cut into rounds that alternate between the two orchestrators
WARMUP_TASKS = 50
WARMUP_DAGS = 20


async def measure(
    arm_addresses: list[str],
    stores: Mapping[str, Mapping[str, str]],
    tasks: int,
    window: int,
    dag_tasks: int,
) -> dict[str, dict[str, Any]]:
    """Throughput and DAG latency through one orchestrator per entry of `stores` (its env on top
    of the defaults), all running at once and measured in alternating rounds, so a machine that
    slows down or speeds up during the run weighs on every store alike."""
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for name, env in stores.items():
            settings = {"OCTOLLM_MAX_CONCURRENT_TASKS": str(window), **env}
            orch = await stack.enter_async_context(orchestrator(arm_addresses, env=settings))
            clients[name] = await stack.enter_async_context(Client([orch.address], channels=4))
        dag = request_for(fan_plan(FAN_WIDTH), goal="benchmark: fan out to three echoes and back")
        for client in clients.values():
            warmup = [request_for(flat_plan(STEPS)) for _ in range(min(WARMUP_TASKS, tasks))]
            await run_concurrently(client, warmup, window)
            for _ in range(WARMUP_DAGS):
                await client.run_task(dag)

        seconds = dict.fromkeys(clients, 0.0)
        errors = dict.fromkeys(clients, 0)
        latencies: dict[str, list[float]] = {name: [] for name in clients}
        round_p50s: dict[str, list[float]] = {name: [] for name in clients}
        order = list(clients)
        for round_ in range(ROUNDS):
            share = tasks // ROUNDS + (round_ < tasks % ROUNDS)
            for name in order:
                requests = [request_for(flat_plan(STEPS)) for _ in range(share)]
                spent, _, failed = await run_concurrently(clients[name], requests, window)
                seconds[name] += spent
                errors[name] += failed
            order.reverse()  # neither store always goes first
        for round_ in range(ROUNDS):
            share = dag_tasks // ROUNDS + (round_ < dag_tasks % ROUNDS)
            if share == 0:
                continue
            for name in order:
                this_round = []
                for _ in range(share):
                    ms, final = await clients[name].run_task(dag)
                    errors[name] += final != pb.TASK_STATE_SUCCEEDED
                    this_round.append(ms)
                latencies[name] += this_round
                round_p50s[name].append(percentile(this_round, 50))
            order.reverse()
    return {
        name: {
            "subtasks_per_s": STEPS * tasks / seconds[name],
            "dag_p50_ms": percentile(latencies[name], 50),
            "dag_p95_ms": percentile(latencies[name], 95),
            "errors": float(errors[name]),
            "round_p50s": round_p50s[name],
        }
        for name in clients
    }


async def run(tasks: int, window: int, dag_tasks: int) -> list[str]:
    memory_env: dict[str, str] = {}
    durable: dict[str, Any] | None = None
    async with arm_host("echo", 2, max_concurrency=64) as arms:
        try:
            async with pg_schema() as dsn:
                stores = {"in-process": memory_env, "PostgreSQL": {"OCTOLLM_POSTGRES_DSN": dsn}}
                figures = await measure(arms.addresses, stores, tasks, window, dag_tasks)
                memory, durable = figures["in-process"], figures["PostgreSQL"]
                commit_ms = await commit_floor(dsn)
                create_ms, append_ms = await store_floor(dsn)
        except Unavailable as exc:
            why = str(exc)
            memory = (
                await measure(arms.addresses, {"in-process": memory_env}, tasks, window, dag_tasks)
            )["in-process"]
    lines = [
        f"{tasks} tasks x {STEPS} no-op steps ({window} at once), then {dag_tasks} sequential "
        "5-step DAGs; one orchestrator per store, 2 echo arms, the stores measured in "
        f"{ROUNDS} alternating rounds",
        f"  {'store':<12} {'subtasks/s':>11} {'DAG p50 ms':>11} {'DAG p95 ms':>11} {'errors':>7}",
    ]
    for name, shown in (("in-process", memory), ("PostgreSQL", durable)):
        if shown is None:
            lines.append(f"  {name:<12} skipped: {why}")
            continue
        lines.append(
            f"  {name:<12} {shown['subtasks_per_s']:>11,.0f} {shown['dag_p50_ms']:>11.2f} "
            f"{shown['dag_p95_ms']:>11.2f} {shown['errors']:>7.0f}"
        )
    if durable is not None:
        throughput = durable["subtasks_per_s"] / memory["subtasks_per_s"]
        latency = durable["dag_p50_ms"] / memory["dag_p50_ms"]
        floor_ms = memory["dag_p50_ms"] + CRITICAL_PATH_COMMITS * commit_ms
        store_ms = memory["dag_p50_ms"] + create_ms + (CRITICAL_PATH_COMMITS - 1) * append_ms
        lines += [
            f"  PostgreSQL / in-process throughput {throughput:5.2f}x   target >= 0.5x  "
            + ("met" if throughput >= 0.5 else "MISSED"),
            f"  PostgreSQL / in-process DAG p50    {latency:5.2f}x   target <= 1.5x  "
            + ("met" if latency <= 1.5 else "MISSED"),
            "  DAG p50 ratio round by round: "
            + ", ".join(
                f"{pg / mem:.2f}x"
                for pg, mem in zip(durable["round_p50s"], memory["round_p50s"], strict=True)
            ),
            f"  floor: one append-sized commit alone p50 {commit_ms:.3f} ms; in-process DAG p50 + "
            f"{CRITICAL_PATH_COMMITS} of them = {floor_ms:.2f} ms = "
            f"{floor_ms / memory['dag_p50_ms']:.2f}x",
            f"  the store alone: create p50 {create_ms:.3f} ms, append p50 {append_ms:.3f} ms; "
            f"in-process DAG p50 + a create and 3 appends = {store_ms:.2f} ms = "
            f"{store_ms / memory['dag_p50_ms']:.2f}x",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--dag-tasks", type=int, default=200)
    args = parser.parse_args(argv)
    for line in asyncio.run(run(args.tasks, args.window, args.dag_tasks)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
