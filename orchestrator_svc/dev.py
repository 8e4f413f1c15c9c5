"""`octollm dev`: the orchestrator and every reference arm in one process, and a sample task.

The retriever gets a fresh index of the bundled sample documents (orchestrator_svc/sample_docs)
unless OCTOLLM_RETRIEVER_PATH points at one; arms that cannot work on this machine (the coder
without an LLM) start NOT_SERVING and are simply not used.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from .client import follow
from .config import Settings
from .server import Orchestrator
from .signals import wait_for_signal

SAMPLE_DOCS = Path(__file__).resolve().parent / "sample_docs"
SAMPLE_GOAL = "Explain how credit-based flow control keeps the mesh safe, and compute 2^10"
# Arms the sample needs; the others are started too but only when they can work.
NEEDED = ("retriever", "executor", "judge")


def sample_plan(have: set[str]) -> pb.Plan:
    """Retrieval over the sample documents and a Python snippet, checked by the judge."""
    plan = pb.Plan()
    search = plan.steps.add(
        step_id="search", arm_type="retriever", description="Find how credits work"
    )
    search.input.update({"query": "How does credit-based flow control work?", "top_k": 3})
    compute = plan.steps.add(step_id="compute", description="Compute 2^10 with Python")
    if "executor" in have:
        compute.arm_type = "executor"
        compute.input.update({"python": "print(2 ** 10)"})
    else:  # NOTE: only until the executor arm ships: the DAG keeps its shape.
        compute.arm_type = "echo"
        compute.input.update({"answer": str(2**10)})
    review = plan.steps.add(
        step_id="review",
        arm_type="judge",
        description="Check the findings mention credits",
        depends_on=["search", "compute"],
    )
    review.input.update({"criteria": ["mentions credit"]})
    return plan


async def run(settings: Settings, once: bool, emit: Callable[[str], None]) -> int:
    """Serve everything, run the sample task with live progress, then serve until signalled
    (or return at once with `once`); the exit code says whether the sample task succeeded."""
    from orchestrator_svc.arms import REFERENCE_ARMS
    from orchestrator_svc.arms import retriever as retriever_arm

    with tempfile.TemporaryDirectory(prefix="octollm-dev-") as scratch:
        store = os.environ.get("OCTOLLM_RETRIEVER_PATH") or str(Path(scratch) / "retriever")
        if "OCTOLLM_RETRIEVER_PATH" not in os.environ:
            report = await retriever_arm.ingest(SAMPLE_DOCS, store_path=store)
            emit(report.summary())
        factories: dict[str, Callable[[], Any]] = dict(REFERENCE_ARMS)
        factories["retriever"] = lambda: retriever_arm.build(store_path=store)
        arm_servers = [await make().start("127.0.0.1:0") for make in factories.values()]
        settings = settings.model_copy(update={"arm_endpoints": [s.address for s in arm_servers]})
        orchestrator = await Orchestrator(settings).start()
        try:
            needed = {name for name in NEEDED if name in factories}
            await orchestrator.wait_for_arms(needed | {"echo"}, timeout_s=30)
            emit(f"OctoLLM mesh listening on {orchestrator.address}")
            for conn in orchestrator.mesh.arms():
                health = "serving" if conn.routable else "not serving"
                emit(f"  arm {conn.arm_type:<10} {conn.address:<22} {health}")
            async with grpc.aio.insecure_channel(orchestrator.address) as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                request = pb.SubmitTaskRequest(
                    goal=SAMPLE_GOAL,
                    plan=sample_plan(set(factories)),
                    acceptance_criteria=["mentions credit"],
                )
                task = (await stub.SubmitTask(request, timeout=10)).task
                emit(f"sample task {task.task_id}")
                state = await follow(stub, task.task_id, emit)
            if once:
                return 0 if state == pb.TASK_STATE_SUCCEEDED else 1
            emit(
                f"\nServing on {orchestrator.address} until Ctrl-C. Try:\n"
                f"  grpcurl -plaintext {orchestrator.address} list\n"
                f"  grpcurl -plaintext {orchestrator.address} "
                "octollm.v1.OrchestratorService/ListArms"
            )
            await wait_for_signal()
            return 0
        finally:
            await orchestrator.stop()
            for server in arm_servers:
                await server.drain(grace=settings.shutdown_grace_s)
