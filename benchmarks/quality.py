"""Quality: does SUCCEEDED mean the goal was served? Goals with automatic checkers, one table.

    python -m benchmarks.quality                                    # offline (no LLM)
    python -m benchmarks.quality --llm-url http://127.0.0.1:8080/v1 [--model NAME]
    python -m benchmarks.quality --category explain,security --goals 4 --verbose
    python -m benchmarks.quality --json quality.json --fail-on-false-success

Starts a real orchestrator in this process with every reference arm, as `octollm dev` does
(planner, retriever, coder, executor, judge, safety; echo only with --with-echo), indexes the
bundled sample documents and the benchmark's own corpus (benchmarks/quality_corpus), then
submits each goal (benchmarks/_quality_goals.py) over the public gRPC API (SubmitTask, WatchTask
to the terminal event, GetTask) one after another, and judges every SUCCEEDED answer with the
goal's checker (benchmarks/_quality_checks.py), which no LLM takes part in. Code answers are
tested by running the benchmark's unit tests in the executor arm's sandbox, as one-step
explicit plans through the same mesh.

Each goal ends in one of four outcomes: correct (SUCCEEDED, the checker agrees), false success
(SUCCEEDED, the checker disagrees), honest failure (not SUCCEEDED, and the offline arms could not
have served it, or the documents do not answer it), wrong failure (not SUCCEEDED although the
offline arms could have served it). The target is zero false successes, offline and with a model.
The exit code is 0 unless --fail-on-false-success is given and some answer was a false success.
"""

from __future__ import annotations

import os

# NOTE: before grpc is imported: the executor arm starts subprocesses in this process.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import contextlib
import itertools
import json
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from benchmarks._mesh import percentile
from benchmarks._quality_checks import CodeRunner, Evidence
from benchmarks._quality_goals import CATEGORIES, GOALS, Goal

CORPUS = Path(__file__).resolve().parent / "quality_corpus"
# Arms `octollm dev` starts that do real work; echo (and sleep) only stand in for them.
ROLE_ARMS = ("planner", "retriever", "coder", "executor", "judge", "safety")
# Arms that serve without an LLM: the mesh is ready once these are routable.
OFFLINE_ARMS = frozenset({"retriever", "executor", "safety"})
# NOTE: hang guards only, never limits on how fast things must be.
STARTUP_TIMEOUT_S = 60.0
RPC_TIMEOUT_S = 60.0
TEST_RUN_TIMEOUT_S = 20.0
OUTCOMES = ("correct", "false success", "honest failure", "wrong failure")


# -- the mesh -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """What the benchmark runs against: offline, or an OpenAI-compatible endpoint and model."""

    llm_url: str = ""
    model: str = ""
    with_echo: bool = False

    def describe(self) -> str:
        return f"LLM {self.llm_url} model {self.model}" if self.llm_url else "offline (no LLM)"


@dataclass(frozen=True, slots=True)
class QualityMesh:
    """A running benchmark mesh: the orchestrator's address and what it was started with."""

    address: str
    config: MeshConfig
    arms: tuple[tuple[str, str], ...]  # (arm type, health) as ListArms reports them
    corpus: str  # what was indexed, one line


@contextlib.contextmanager
def _llm_environment(config: MeshConfig) -> Iterator[None]:
    """The OCTOLLM_LLM_* variables the reference arms read, for the mesh's lifetime."""
    wanted = {"OCTOLLM_LLM_BASE_URL": config.llm_url}
    if config.llm_url:
        wanted["OCTOLLM_LLM_MODEL"] = config.model
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def _index(folder: Path, store: Path) -> str:
    """Index the sample documents and the benchmark corpus into `store`; one summary line."""
    from orchestrator_svc.arms import retriever as retriever_arm
    from orchestrator_svc.dev import SAMPLE_DOCS

    docs = folder / "docs"
    for source, name in ((SAMPLE_DOCS, "sample"), (CORPUS, "quality")):
        (docs / name).mkdir(parents=True)
        for path in sorted(source.glob("*.md")):
            shutil.copy(path, docs / name / path.name)
    report = await retriever_arm.ingest(docs, store_path=store)
    return (
        f"{report.files} documents ({len(list(CORPUS.glob('*.md')))} from "
        f"benchmarks/quality_corpus, the rest octollm's sample docs), {report.chunks} chunks"
    )


@contextlib.asynccontextmanager
async def quality_mesh(config: MeshConfig) -> AsyncIterator[QualityMesh]:
    """Every reference arm and an orchestrator in this process, over a fresh index."""
    from orchestrator_svc.arms import REFERENCE_ARMS
    from orchestrator_svc.arms import retriever as retriever_arm
    from orchestrator_svc.config import Settings
    from orchestrator_svc.server import Orchestrator

    with (
        tempfile.TemporaryDirectory(prefix="octollm-quality-") as scratch,
        _llm_environment(config),
    ):
        store = Path(scratch) / "retriever"
        corpus = await _index(Path(scratch), store)
        names = [*ROLE_ARMS, *(("echo",) if config.with_echo else ())]
        factories: dict[str, Callable[[], Any]] = {name: REFERENCE_ARMS[name] for name in names}
        factories["retriever"] = lambda: retriever_arm.build(store_path=store)
        servers = []
        orchestrator = None
        try:
            for make in factories.values():
                servers.append(await make().start("127.0.0.1:0"))
            settings = Settings(
                listen="127.0.0.1:0",
                arm_endpoints=[s.address for s in servers],
                metrics_port=-1,
                # NOTE: no task memory: one goal's plan must not be reused for the next.
                memory=False,
                llm_base_url=config.llm_url,
                llm_model=config.model or Settings().llm_model,
            )
            orchestrator = await Orchestrator(settings).start()
            await orchestrator.wait_for_arms(
                set(OFFLINE_ARMS) | ({"echo"} if config.with_echo else set()), STARTUP_TIMEOUT_S
            )
            async with grpc.aio.insecure_channel(orchestrator.address) as channel:
                arms = await _listed_arms(pb_grpc.OrchestratorServiceStub(channel), len(servers))
            yield QualityMesh(orchestrator.address, config, arms, corpus)
        finally:
            if orchestrator is not None:
                await orchestrator.stop(grace_s=1)
            for server in servers:
                await server.drain(grace=1)


async def _listed_arms(
    stub: pb_grpc.OrchestratorServiceStub, expected: int
) -> tuple[tuple[str, str], ...]:
    """(type, health) of every arm once `expected` are known and none is still connecting."""
    async with asyncio.timeout(STARTUP_TIMEOUT_S):
        while True:
            arms = (await stub.ListArms(pb.ListArmsRequest(), timeout=RPC_TIMEOUT_S)).arms
            if len(arms) >= expected and all(a.health != pb.ARM_HEALTH_UNSPECIFIED for a in arms):
                break
            await asyncio.sleep(0.05)
    return tuple(
        sorted(
            (a.descriptor.arm_type, pb.ArmHealth.Name(a.health).removeprefix("ARM_HEALTH_"))
            for a in arms
        )
    )


# -- running goals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one submitted goal ended, as the public API reports it."""

    state: str  # terminal TaskState without its prefix, or REFUSED when SubmitTask failed
    answer: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    failure: str = ""
    confidence: float = 0.0
    plan: str = ""
    seconds: float = 0.0
    tokens: int = 0

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"


async def _follow(stub: pb_grpc.OrchestratorServiceStub, task_id: str) -> None:
    """Read WatchTask until the task's terminal event."""
    request = pb.WatchTaskRequest(task_id=task_id, max_batch_size=100)
    async for response in stub.WatchTask(request):
        if any(event.HasField("finished") for event in response.events):
            return


def _plan_summary(plan: pb.Plan) -> str:
    return ", ".join(f"{s.step_id}({s.arm_type})" for s in plan.steps)


async def run_goal(stub: pb_grpc.OrchestratorServiceStub, goal: Goal, max_time_s: float) -> Outcome:
    """Submit `goal`, follow it to its end, read it back."""
    request = pb.SubmitTaskRequest(goal=goal.goal, request_id=f"quality-{uuid.uuid4().hex}")
    request.context.update(dict(goal.context))
    request.budget.max_time.FromNanoseconds(int(max_time_s * 1e9))
    started = time.perf_counter()
    try:
        task_id = (await stub.SubmitTask(request, timeout=RPC_TIMEOUT_S)).task.task_id
        await _follow(stub, task_id)
    except grpc.aio.AioRpcError as exc:
        return Outcome(
            state="REFUSED",
            failure=f"{exc.code().name}: {exc.details()}",
            seconds=time.perf_counter() - started,
        )
    seconds = time.perf_counter() - started
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=RPC_TIMEOUT_S)).task
    failure = f"{task.failure.reason}: {task.failure.message}" if task.HasField("failure") else ""
    return Outcome(
        state=pb.TaskState.Name(task.state).removeprefix("TASK_STATE_"),
        answer=task.result.answer,
        outputs=json_format.MessageToDict(task.result.outputs),
        failure=failure,
        confidence=task.result.confidence,
        plan=_plan_summary(task.plan),
        seconds=seconds,
        tokens=task.usage.tokens,
    )


class MeshCodeRunner(CodeRunner):
    """Runs Python in the executor arm's sandbox: a one-step explicit plan through the mesh."""

    def __init__(self, stub: pb_grpc.OrchestratorServiceStub) -> None:
        self._stub = stub

    async def run_python(self, source: str) -> tuple[int, str]:
        request = pb.SubmitTaskRequest(goal="Run the quality benchmark's unit tests")
        step = request.plan.steps.add(
            step_id="tests", arm_type="executor", description="Run the unit tests"
        )
        step.input.update({"python": source, "timeout_s": TEST_RUN_TIMEOUT_S})
        task_id = (await self._stub.SubmitTask(request, timeout=RPC_TIMEOUT_S)).task.task_id
        await _follow(self._stub, task_id)
        task = (
            await self._stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=RPC_TIMEOUT_S)
        ).task
        for sub in task.subtasks:
            if sub.step_id == "tests" and sub.state == pb.SUBTASK_STATE_SUCCEEDED:
                out = json_format.MessageToDict(sub.output)
                text = f"{out.get('stdout', '')}\n{out.get('stderr', '')}"
                return int(out.get("exit_code", -1)), text
            if sub.step_id == "tests" and sub.HasField("failure"):
                return -1, f"{sub.failure.reason}: {sub.failure.message}"
        return -1, f"the test run ended {pb.TaskState.Name(task.state)}"


@dataclass(frozen=True, slots=True)
class GoalResult:
    """One goal, how it ended and what the benchmark made of it."""

    goal: Goal
    outcome: Outcome
    verdict: str  # one of OUTCOMES
    why: str

    def record(self) -> dict[str, Any]:
        """The JSON form (answers cut to 600 characters)."""
        outcome = asdict(self.outcome)
        outcome["answer"] = outcome["answer"][:600]
        outcome.pop("outputs")
        return {
            "goal_id": self.goal.goal_id,
            "category": self.goal.category,
            "servable_offline": self.goal.servable_offline,
            "verdict": self.verdict,
            "why": self.why,
            **outcome,
        }


async def judge(goal: Goal, outcome: Outcome, runner: CodeRunner) -> GoalResult:
    """The goal's outcome: a SUCCEEDED answer is checked, anything else is a failure."""
    if not outcome.succeeded:
        verdict = "wrong failure" if goal.servable_offline else "honest failure"
        return GoalResult(goal, outcome, verdict, f"{outcome.state} {outcome.failure}".strip())
    checked = await goal.checker.check(Evidence(outcome.answer, outcome.outputs), runner)
    return GoalResult(goal, outcome, "correct" if checked.correct else "false success", checked.why)


async def run_goals(
    mesh: QualityMesh,
    goals: Sequence[Goal],
    max_time_s: float,
    on_result: Callable[[GoalResult], None] = lambda _: None,
) -> list[GoalResult]:
    """Run the goals one after another (a local LLM serves one request at a time)."""
    results = []
    async with grpc.aio.insecure_channel(mesh.address) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        runner = MeshCodeRunner(stub)
        for goal in goals:
            result = await judge(goal, await run_goal(stub, goal, max_time_s), runner)
            on_result(result)
            results.append(result)
    return results


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a category (or the total)."""

    label: str
    goals: int
    counts: dict[str, int]
    p50_s: float
    tokens: int


def rows(results: Sequence[GoalResult]) -> list[Row]:
    """One row per category that has goals, then the total."""
    groups = [[r for r in results if r.goal.category == c] for c in CATEGORIES]
    table = []
    for label, group in [*zip(CATEGORIES, groups, strict=True), ("total", list(results))]:
        if not group:
            continue
        table.append(
            Row(
                label=label,
                goals=len(group),
                counts={o: sum(r.verdict == o for r in group) for o in OUTCOMES},
                p50_s=percentile([r.outcome.seconds for r in group], 50),
                tokens=sum(r.outcome.tokens for r in group),
            )
        )
    return table


def format_table(table: Sequence[Row]) -> list[str]:
    header = (
        f"{'category':<15} {'goals':>5} {'correct':>8} {'false success':>14} "
        f"{'honest failure':>15} {'wrong failure':>14} {'p50 s/goal':>11} {'tokens':>8}"
    )
    lines = [header, "-" * len(header)]
    for row in table:
        if row.label == "total":
            lines.append("-" * len(header))
        c = row.counts
        lines.append(
            f"{row.label:<15} {row.goals:>5} {c['correct']:>8} {c['false success']:>14} "
            f"{c['honest failure']:>15} {c['wrong failure']:>14} {row.p50_s:>11.2f} "
            f"{row.tokens:>8}"
        )
    return lines


def report(
    command: str, mesh: QualityMesh, results: Sequence[GoalResult], notes: Sequence[str] = ()
) -> list[str]:
    """The benchmark's output: command, mesh, the table, notes, then the goals that went
    wrong."""
    table = rows(results)
    total = table[-1].counts if table else dict.fromkeys(OUTCOMES, 0)
    servable = [r for r in results if r.goal.servable_offline]
    lines = [
        f"$ {command}",
        f"mesh: {mesh.config.describe()}; arms "
        + ", ".join(f"{t} {h.lower().replace('_', ' ')}" for t, h in mesh.arms),
        f"corpus: {mesh.corpus}",
        "",
        *format_table(table),
        "",
        f"false success: {total['false success']} (target 0: "
        + ("met" if total["false success"] == 0 else "MISSED")
        + ")",
        f"goals the offline arms can serve, served correctly: "
        f"{sum(r.verdict == 'correct' for r in servable)} of {len(servable)}",
        *notes,
    ]
    wrong = [r for r in results if r.verdict in ("false success", "wrong failure")]
    if wrong:
        lines.append("")
    for r in wrong:
        lines.append(f"  {r.verdict:<14} {r.goal.goal_id:<24} {_said(r)}")
    return lines


def _said(result: GoalResult) -> str:
    """What went wrong with a goal, on one line."""
    if result.verdict == "false success":
        answer = " ".join(result.outcome.answer.split())[:90]
        return f"{result.why}; answer: {answer!r}"
    return result.why[:160]


def detail(result: GoalResult) -> str:
    """One line per goal for --verbose."""
    return (
        f"  {result.goal.goal_id:<24} {result.outcome.state:<18} {result.verdict:<14} "
        f"{result.outcome.seconds:6.2f} s  {result.why[:100]}  [{result.outcome.plan}]"
    )


def as_json(
    command: str, mesh: QualityMesh, results: Sequence[GoalResult], notes: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "command": command,
        "mesh": {"config": mesh.config.describe(), "arms": dict(mesh.arms), "corpus": mesh.corpus},
        "notes": list(notes),
        "table": [asdict(row) for row in rows(results)],
        "goals": [r.record() for r in results],
    }


# -- the command --------------------------------------------------------------------------------


def select(
    goals: Sequence[Goal], categories: Sequence[str], only: Sequence[str], count: int
) -> list[Goal]:
    """The goals of `categories` (all when empty) or with the ids in `only`; with `count`, that
    many, taken from the categories in turn; in the benchmark's order."""
    chosen = [
        g
        for g in goals
        if (not categories or g.category in categories) and (not only or g.goal_id in only)
    ]
    if count <= 0 or count >= len(chosen):
        return chosen
    by_category = [[g for g in chosen if g.category == c] for c in CATEGORIES]
    interleaved = [
        g for group in itertools.zip_longest(*by_category) for g in group if g is not None
    ]
    keep = {g.goal_id for g in interleaved[:count]}
    return [g for g in chosen if g.goal_id in keep]


async def first_model(llm_url: str) -> str:
    """The first model id the endpoint's /models lists ('' when it cannot be asked)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(llm_url.rstrip("/") + "/models")
            response.raise_for_status()
            data = response.json().get("data") or []
    except (httpx.HTTPError, ValueError):
        return ""
    return str(data[0].get("id", "")) if data else ""


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--llm-url", default="", help="OpenAI-compatible endpoint (.../v1)")
    parser.add_argument("--model", default="", help="model name (default: the endpoint's first)")
    parser.add_argument("--with-echo", action="store_true", help="also connect the echo arm")
    parser.add_argument("--category", default="", help=f"comma-separated: {','.join(CATEGORIES)}")
    parser.add_argument("--only", default="", help="comma-separated goal ids")
    parser.add_argument("--goals", type=int, default=0, help="at most N goals (categories in turn)")
    parser.add_argument(
        "--max-time",
        type=float,
        default=0.0,
        help="time budget of each goal in s (default 60 offline, 600 with an LLM)",
    )
    parser.add_argument(
        "--json", nargs="?", const="-", default="", metavar="PATH", help="JSON to PATH (or stdout)"
    )
    parser.add_argument(
        "--fail-on-false-success",
        action="store_true",
        help="exit 1 when any answer was a false success (default: always exit 0)",
    )
    parser.add_argument("--verbose", action="store_true", help="a line per goal as it ends")
    parser.add_argument(
        "--log-level", default="error", choices=("debug", "info", "warning", "error")
    )
    return parser


async def measure(args: argparse.Namespace) -> tuple[QualityMesh, list[GoalResult], list[str]]:
    """Start the mesh the arguments describe and run the goals they select; notes on the run
    (whether the LLM endpoint still answers at the end: a crashed server explains failures)."""
    categories = [c for c in args.category.split(",") if c]
    unknown = set(categories) - set(CATEGORIES)
    if unknown:
        raise SystemExit(f"unknown categories: {', '.join(sorted(unknown))}")
    goals = select(GOALS, categories, [g for g in args.only.split(",") if g], args.goals)
    if not goals:
        raise SystemExit("no goal selected")
    model = args.model
    if args.llm_url and not model:
        from orchestrator_svc.config import Settings

        model = await first_model(args.llm_url) or Settings().llm_model
    config = MeshConfig(llm_url=args.llm_url, model=model, with_echo=args.with_echo)
    max_time = args.max_time or (600.0 if args.llm_url else 60.0)

    def progress(result: GoalResult) -> None:
        if args.verbose:
            print(detail(result), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)

    async with quality_mesh(config) as mesh:
        results = await run_goals(mesh, goals, max_time, progress)
    notes = []
    if args.llm_url:
        listed = await first_model(args.llm_url)
        notes.append(
            f"LLM endpoint after the run: {'lists ' + listed if listed else 'unreachable'}"
        )
    return mesh, results, notes


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = argument_parser().parse_args(argv)
    from orchestrator_svc.telemetry import configure_logging

    configure_logging("json", args.log_level)
    command = shlex.join(["python", "-m", "benchmarks.quality", *argv])
    mesh, results, notes = asyncio.run(measure(args))
    if args.json:
        document = json.dumps(as_json(command, mesh, results, notes), indent=2)
        if args.json == "-":
            print(document)
        else:
            Path(args.json).write_text(document + "\n")
    if args.json != "-":
        print("\n".join(report(command, mesh, results, notes)))
    false_successes = sum(r.verdict == "false success" for r in results)
    return 1 if args.fail_on_false_success and false_successes else 0


if __name__ == "__main__":
    sys.exit(main())
