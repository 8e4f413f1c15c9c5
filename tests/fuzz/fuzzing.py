"""Hypothesis settings shared by the fuzz tests, and a few strategies more than one test uses.

Bounded in count, never in wall-clock time (`deadline=None`): a slow example on a busy 2-core
machine is not a failure, a crash or a wrong status is. Examples are random on a developer
machine and derandomized (the same every run) under CI, so CI never goes red by luck; set
OCTOLLM_FUZZ_EXAMPLES to fuzz longer locally, e.g. `OCTOLLM_FUZZ_EXAMPLES=2000 .venv/bin/python
-m pytest tests/fuzz`. No example database is written (the test prints the failing example).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc

from arm_sdk import ArmServer
from orchestrator_svc.server import Orchestrator
from tests.tools import in_ci

T = TypeVar("T")


def fuzz_settings(max_examples: int) -> settings:
    """Settings for one fuzz test: `max_examples` (or OCTOLLM_FUZZ_EXAMPLES), no deadline."""
    override = os.environ.get("OCTOLLM_FUZZ_EXAMPLES", "").strip()
    return settings(
        max_examples=int(override) if override else max_examples,
        deadline=None,
        database=None,
        derandomize=in_ci(),
        # NOTE: big plans and bodies are the point; drawing them is allowed to be slow.
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# Text of any Unicode code point a protobuf string can carry (no lone surrogates), with
# control and format characters drawn often: they are what breaks naive parsers.
any_text = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"), st.characters(categories=["Cc", "Cf", "Zl", "Zp"])
    )
)

# Names a step id or an arm type may have: valid ones, near misses and garbage.
identifiers = st.one_of(
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
    st.sampled_from(["a", "b", "step", "x" * 64, "x" * 65, "", " ", "a b", "a\nb", "é", "a/b"]),
    any_text.filter(lambda s: len(s) <= 80),
)


@dataclass(frozen=True)
class FuzzMesh:
    """The orchestrator under fuzz, its arms (by type), and a client on a real channel to it."""

    orchestrator: Orchestrator
    arms: dict[str, ArmServer]
    channel: grpc.aio.Channel
    stub: pb_grpc.OrchestratorServiceStub


async def answer(call: Awaitable[T]) -> T | grpc.aio.AioRpcError:
    """The call's response, or the error it ended with (asserted on outside `except`)."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        return exc


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo detail of a failed call (fails the test when there is none)."""
    raw = dict(exc.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw, f"{exc.code().name} without status details: {exc.details()}"
    status = status_pb2.Status.FromString(raw)
    assert status.code == exc.code().value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert infos, f"{exc.code().name} without an ErrorInfo detail: {exc.details()}"
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.domain == "octollm.v1"
    assert info.reason
    return info
