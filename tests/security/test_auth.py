"""Bearer-token auth on the OrchestratorService: a real orchestrator, real client channels."""

from __future__ import annotations

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.config import Settings
from orchestrator_svc.security import ClientTokens
from orchestrator_svc.server import Orchestrator
from tests.security.rpc import error_info

TOKENS = "alice:s3cret-alice-token,bare-token-for-bob"


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def guarded(start_arm, start_orchestrator, connect):  # type: ignore[no-untyped-def]
    """An orchestrator (with an echo arm) that requires a token, and a client stub without one."""
    echo = await start_arm(REFERENCE_ARMS["echo"]())
    orch = await start_orchestrator([echo.address], wait_for=("echo",), auth_tokens=TOKENS)
    return orch, connect(orch.address)


async def test_missing_token_is_unauthenticated(guarded) -> None:  # type: ignore[no-untyped-def]
    """A call without `authorization` fails UNAUTHENTICATED with reason MISSING_CREDENTIALS."""
    _, stub = guarded
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListArms(pb.ListArmsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = error_info(caught.value)
    assert (info.reason, info.domain) == ("MISSING_CREDENTIALS", "octollm.v1")


async def test_unknown_token_is_unauthenticated(guarded) -> None:  # type: ignore[no-untyped-def]
    """A token the server does not know fails UNAUTHENTICATED with reason INVALID_TOKEN."""
    _, stub = guarded
    for metadata in (bearer("nope"), (("authorization", "Basic s3cret-alice-token"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListArms(pb.ListArmsRequest(), metadata=metadata, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "MISSING_CREDENTIALS"


async def test_valid_tokens_pass(guarded) -> None:  # type: ignore[no-untyped-def]
    """Named and bare tokens both admit unary and streaming calls."""
    _, stub = guarded
    await stub.ListArms(pb.ListArmsRequest(), metadata=bearer("s3cret-alice-token"), timeout=10)
    task = (
        await stub.SubmitTask(
            pb.SubmitTaskRequest(goal="echo hello"),
            metadata=bearer("bare-token-for-bob"),
            timeout=10,
        )
    ).task
    watch = stub.WatchTask(
        pb.WatchTaskRequest(task_id=task.task_id), metadata=bearer("bare-token-for-bob"), timeout=10
    )
    first = await watch.read()
    assert first.event.task_id == task.task_id
    watch.cancel()


async def test_stream_without_token_is_rejected(guarded) -> None:  # type: ignore[no-untyped-def]
    """WatchTask (server streaming) is guarded like the unary RPCs."""
    _, stub = guarded
    call = stub.WatchTask(pb.WatchTaskRequest(task_id="t-1"), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_stays_open(guarded) -> None:  # type: ignore[no-untyped-def]
    """grpc.health.v1 answers without a token (Kubernetes probes carry none)."""
    orch, _ = guarded
    async with grpc.aio.insecure_channel(orch.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_rejections_are_counted_and_tokens_never_logged(guarded) -> None:  # type: ignore[no-untyped-def]
    """Metrics count UNAUTHENTICATED calls; log events never contain a presented token."""
    orch, stub = guarded
    with structlog.testing.capture_logs() as logs:
        for token in ("wrong-token-value", "s3cret-alice-tokenX"):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ListArms(pb.ListArmsRequest(), metadata=bearer(token), timeout=10)
        await stub.ListArms(pb.ListArmsRequest(), metadata=bearer("s3cret-alice-token"), timeout=10)
    handled = orch.metrics.registry.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_type": "unary",
            "grpc_service": "octollm.v1.OrchestratorService",
            "grpc_method": "ListArms",
            "grpc_code": "UNAUTHENTICATED",
        },
    )
    assert handled == 2
    assert any(e["event"] == "client_rejected" for e in logs)
    text = repr(logs)
    assert "wrong-token-value" not in text
    assert "s3cret-alice-token" not in text


def test_token_spec_parsing() -> None:
    """`name:token` keeps its name; a bare token gets a digest name that does not reveal it."""
    tokens = ClientTokens.parse(" alice:tok-a , tok-b ,")
    assert len(tokens) == 2
    assert tokens.authenticate(bearer("tok-a")) == "alice"
    bob = tokens.authenticate(bearer("tok-b"))
    assert bob.startswith("token-")
    assert "tok-b" not in bob
    assert "tok-a" not in repr(tokens._tokens)
    assert not ClientTokens.parse("")
    with pytest.raises(ValueError, match="name:token"):
        ClientTokens.parse("alice:")


def test_a_malformed_token_list_stops_start_up_without_echoing_it() -> None:
    """OCTOLLM_AUTH_TOKENS with an empty name or token is refused, and the error hides it."""
    with pytest.raises(ValueError, match="name:token") as caught:
        Orchestrator(Settings(auth_tokens="alice:", metrics_port=-1))
    assert "alice:" not in str(caught.value).replace("`name:token`", "")
