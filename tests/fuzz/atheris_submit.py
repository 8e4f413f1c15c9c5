"""Coverage-guided fuzzing (atheris, libFuzzer) of SubmitTask validation and plan repair.

Not part of the test suite (pytest does not collect it): run it by hand for as long as you like,

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/atheris_submit.py -atheris_runs=200000      # or -max_total_time=60

(any libFuzzer flag works; a corpus folder as last argument keeps what it found, else a
temporary one starts from a few valid requests). Each input is
bytes parsed as an octollm.v1.SubmitTaskRequest, exactly what the server's parser sees. The
target crashes (and libFuzzer saves the input) when validation raises anything but a client
error with a reason, or when a request validation accepts breaks what comes after it: the
engine's conversion of its plan, and the brain's plan checks and repair.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import grpc
    from google.protobuf.message import DecodeError
    from octollm.v1 import orchestrator_service_pb2 as pb

    from orchestrator_svc.api.errors import ApiError
    from orchestrator_svc.api.validation import fingerprint, validate_submit
    from orchestrator_svc.brain import ArmCapability, repair_plan, validate_plan
    from orchestrator_svc.brain.plan_checks import UNREPAIRABLE
    from orchestrator_svc.engine.convert import plan_from_proto

SERVED = ("echo", "sleep")
ARMS = [ArmCapability("echo", ("echo", "general")), ArmCapability("sleep", ("sleep",))]
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}


def one_input(data: bytes) -> None:
    """Validate one request; raise (a crash to libFuzzer) on anything but proper behaviour."""
    try:
        request = pb.SubmitTaskRequest.FromString(data)
    except DecodeError:
        return  # MALFORMED_REQUEST at the server (orchestrator_svc/api/malformed.py)
    try:
        validate_submit(request, SERVED)
    except ApiError as err:
        if err.code not in CLIENT_ERRORS or not err.reason or not err.message:
            raise
        return
    fingerprint(request)
    if request.HasField("plan"):
        plan = plan_from_proto(request.plan)
        validate_plan(plan, SERVED)
        repaired = repair_plan(plan, ARMS)
        left = {p.kind for p in validate_plan(repaired, SERVED)}
        if not left <= UNREPAIRABLE | {"no_steps"}:
            raise AssertionError(f"repair left {left}")


def seed_requests() -> list[pb.SubmitTaskRequest]:
    """Valid requests to start from: random bytes rarely get past the goal check."""
    plan = pb.Plan()
    plan.steps.add(step_id="a", arm_type="echo").input.update({"n": [1, {"m": "x"}]})
    plan.steps.add(step_id="b", arm_type="sleep", depends_on=["a"])
    plan.steps.add(step_id="c", arm_type="searcher", depends_on=["a", "b"])
    goal = "Explain what a service mesh does"
    full = pb.SubmitTaskRequest(goal=goal, plan=plan, constraints=["short"], request_id="r-1")
    full.context.update({"user": {"tags": ["a", "b"]}})
    full.budget.max_tokens = 10
    full.budget.max_time.FromMilliseconds(1500)
    return [pb.SubmitTaskRequest(goal=goal), full]


def main() -> None:
    argv = list(sys.argv)
    if not any(Path(arg).is_dir() for arg in argv[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="octollm-atheris-"))
        for index, request in enumerate(seed_requests()):
            (corpus / f"seed-{index}").write_bytes(request.SerializeToString())
        argv.append(str(corpus))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
