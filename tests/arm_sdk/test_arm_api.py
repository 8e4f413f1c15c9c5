"""The public surface of arm_sdk and the Arm declaration rules."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest
from octollm.v1 import arm_service_pb2 as arm_pb

import arm_sdk
from arm_sdk import Arm, ArmError, SubtaskInput, SubtaskOutput, grpc_options

MIB = 1024 * 1024


def test_public_surface_is_exactly_this() -> None:
    """arm_sdk exports these names and nothing else leaks through __all__."""
    assert sorted(arm_sdk.__all__) == [
        "Arm",
        "ArmError",
        "ArmServer",
        "Budget",
        "Handler",
        "ServerTLS",
        "SubtaskInput",
        "SubtaskOutput",
        "grpc_options",
        "health",
        "metrics_http",
        "report_progress",
        "structs",
        "tls",
    ]
    for name in arm_sdk.__all__:
        assert getattr(arm_sdk, name) is not None


def test_channel_options_detect_dead_peers() -> None:
    """CHANNEL_OPTIONS carry the documented keepalive, message size and backoff numbers."""
    assert dict(grpc_options.CHANNEL_OPTIONS) == {
        "grpc.keepalive_time_ms": 10_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.http2.ping_timeout_ms": 5_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.http2.max_pings_without_data": 0,
        "grpc.max_receive_message_length": 16 * MIB,
        "grpc.max_send_message_length": 16 * MIB,
        "grpc.initial_reconnect_backoff_ms": 200,
        "grpc.max_reconnect_backoff_ms": 5_000,
    }


def test_server_options_permit_the_client_ping_rate() -> None:
    """SERVER_OPTIONS accept a ping every 5 s or slower, below the client's 10 s interval, and
    never share a port with another server."""
    options = dict(grpc_options.SERVER_OPTIONS)
    assert options == {
        "grpc.keepalive_time_ms": 20_000,
        "grpc.keepalive_timeout_ms": 5_000,
        "grpc.http2.ping_timeout_ms": 5_000,
        "grpc.http2.min_recv_ping_interval_without_data_ms": 5_000,
        "grpc.http2.max_ping_strikes": 0,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.max_receive_message_length": 16 * MIB,
        "grpc.max_send_message_length": 16 * MIB,
        "grpc.so_reuseport": 0,
    }
    client_interval = dict(grpc_options.CHANNEL_OPTIONS)["grpc.keepalive_time_ms"]
    assert options["grpc.http2.min_recv_ping_interval_without_data_ms"] <= client_interval


async def noop(inp: SubtaskInput) -> dict[str, Any]:
    return {}


def test_default_arm_id_is_type_plus_short_hex() -> None:
    """Without arm_id, an arm is named "<arm_type>-<6 hex>", unique per instance."""
    first, second = Arm(arm_type="coder"), Arm(arm_type="coder")
    assert re.fullmatch(r"coder-[0-9a-f]{6}", first.arm_id)
    assert first.arm_id != second.arm_id
    assert Arm(arm_type="coder", arm_id="coder-main").arm_id == "coder-main"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("low", arm_pb.COST_TIER_LOW),
        ("Medium", arm_pb.COST_TIER_MEDIUM),
        ("high", arm_pb.COST_TIER_HIGH),
        (arm_pb.COST_TIER_HIGH, arm_pb.COST_TIER_HIGH),
    ],
)
def test_cost_tier_accepts_enum_or_name(given: Any, expected: int) -> None:
    """cost_tier takes a CostTier value or its name, case-insensitively."""
    assert Arm(arm_type="a", cost_tier=given).descriptor().cost_tier == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arm_type": ""},
        {"arm_type": "a", "cost_tier": "cheap"},
        {"arm_type": "a", "cost_tier": 99},
        {"arm_type": "a", "max_concurrency": 0},
    ],
)
def test_invalid_declarations_are_refused(kwargs: dict[str, Any]) -> None:
    """Empty arm_type, unknown cost tiers and non-positive concurrency raise ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        Arm(**kwargs)


def test_handler_must_be_async_and_unique() -> None:
    """A sync handler is a TypeError; a second handler is a RuntimeError."""
    arm = Arm(arm_type="a")

    def sync(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    with pytest.raises(TypeError, match="async"):
        arm.handler(sync)  # type: ignore[arg-type]
    assert arm.handler(noop) is noop
    with pytest.raises(RuntimeError, match="already has a handler"):
        arm.handler(noop)


async def test_start_without_handler_is_refused() -> None:
    """Starting an arm that has no handler raises instead of serving nothing."""
    with pytest.raises(RuntimeError, match="no handler"):
        await Arm(arm_type="a").start()


def test_arm_error_defaults_and_metadata() -> None:
    """ArmError defaults to INTERNAL/ARM_ERROR, not retryable; metadata values become str."""
    error = ArmError("nope")
    assert (error.message, error.code, error.reason, error.retryable, error.metadata) == (
        "nope",
        grpc.StatusCode.INTERNAL,
        "ARM_ERROR",
        False,
        {},
    )
    assert str(error) == "nope"
    assert ArmError("x", metadata={"n": 3}).metadata == {"n": "3"}  # type: ignore[dict-item]


def test_subtask_output_defaults() -> None:
    """SubtaskOutput needs only output; the rest default to full confidence and no cost."""
    out = SubtaskOutput(output={"a": 1})
    assert (out.confidence, out.model, out.tokens, out.cost_usd) == (1.0, "", 0, 0.0)
