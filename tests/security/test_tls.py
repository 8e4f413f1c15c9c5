"""TLS and mTLS on the client edge and the orchestrator->arm streams, with certs made here."""

from __future__ import annotations

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import orchestrator_service_pb2 as pb
from octollm.v1 import orchestrator_service_pb2_grpc as pb_grpc
from pydantic import ValidationError

from arm_sdk.tls import ServerTLS, is_loopback
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.config import Settings
from orchestrator_svc.server import Orchestrator
from tests.role_arms import scribe
from tests.security.certs import Pki


def tls_settings(pki: Pki, *, mutual: bool) -> dict[str, str]:
    settings = {"tls_cert": str(pki.server.cert_path), "tls_key": str(pki.server.key_path)}
    if mutual:
        settings["tls_client_ca"] = str(pki.ca_path)
    return settings


async def check(channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=10
    )
    return int(reply.status)


async def test_tls_handshake_with_the_ca(start_orchestrator, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """A client trusting the CA talks TLS to the orchestrator; a plaintext client cannot."""
    orch = await start_orchestrator([], **tls_settings(pki, mutual=False))
    address = f"localhost:{orch.port}"
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    async with grpc.aio.secure_channel(address, creds) as channel:
        assert await check(channel) == health_pb2.HealthCheckResponse.SERVING
        await pb_grpc.OrchestratorServiceStub(channel).ListArms(pb.ListArmsRequest(), timeout=10)
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_rejects_a_client_without_a_cert(start_orchestrator, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """With OCTOLLM_TLS_CLIENT_CA set, only clients presenting a cert from that CA get in."""
    orch = await start_orchestrator([], **tls_settings(pki, mutual=True))
    address = f"localhost:{orch.port}"
    no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca)
    async with grpc.aio.secure_channel(address, no_cert) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check(channel)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = grpc.ssl_channel_credentials(pki.ca, pki.client.key, pki.client.cert)
    async with grpc.aio.secure_channel(address, with_cert) as channel:
        assert await check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_mtls_identity_keys_the_rate_limit(start_orchestrator, pki: Pki) -> None:  # type: ignore[no-untyped-def]
    """Under mTLS without tokens, a client is known by its certificate's common name."""
    orch = await start_orchestrator([], rate_limit_rps=0.01, **tls_settings(pki, mutual=True))
    creds = grpc.ssl_channel_credentials(pki.ca, pki.client.key, pki.client.cert)
    async with grpc.aio.secure_channel(f"localhost:{orch.port}", creds) as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        await stub.ListArms(pb.ListArmsRequest(), timeout=10)
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(grpc.aio.AioRpcError) as caught,
        ):
            await stub.ListArms(pb.ListArmsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [e["identity"] for e in logs if e["event"] == "client_rate_limited"] == ["cn:client"]


async def test_orchestrator_runs_a_task_on_an_mtls_arm(
    start_orchestrator, connect, pki: Pki
) -> None:  # type: ignore[no-untyped-def]
    """An arm serving mTLS is reached with OCTOLLM_ARM_TLS_* and answers a task."""
    arm = await scribe().start("127.0.0.1:0", tls=pki.server_tls(mutual=True))
    try:
        orch = await start_orchestrator(
            [f"localhost:{arm.port}"],
            wait_for=("scribe",),
            arm_tls_ca=str(pki.ca_path),
            arm_tls_cert=str(pki.client.cert_path),
            arm_tls_key=str(pki.client.key_path),
        )
        stub = connect(orch.address)
        task = (await stub.SubmitTask(pb.SubmitTaskRequest(goal="echo hello"), timeout=10)).task
        call = stub.WatchTask(pb.WatchTaskRequest(task_id=task.task_id), timeout=20)
        events = [r.event async for r in call]
        assert events[-1].finished.state == pb.TASK_STATE_SUCCEEDED
    finally:
        await arm.drain(grace=0)


async def test_an_mtls_arm_refuses_an_orchestrator_without_a_cert(pki: Pki) -> None:
    """An orchestrator trusting the CA but holding no client cert never gets an mTLS arm."""
    arm = await REFERENCE_ARMS["echo"]().start("127.0.0.1:0", tls=pki.server_tls(mutual=True))
    config = Settings(
        listen="127.0.0.1:0",
        metrics_port=-1,
        arm_endpoints=[f"localhost:{arm.port}"],
        arm_tls_ca=str(pki.ca_path),
    )
    orch = await Orchestrator(config).start()
    try:
        with pytest.raises(TimeoutError):
            await orch.wait_for_arms({"echo"}, timeout_s=1.5)
    finally:
        await orch.stop(grace_s=0)
        await arm.drain(grace=0)


async def test_insecure_non_loopback_listen_needs_the_flag_then_warns(
    start_orchestrator,
) -> None:  # type: ignore[no-untyped-def]
    """Plaintext off loopback is refused without allow_insecure, and warned about with it."""
    from arm_sdk.tls import InsecureListenRefused

    with pytest.raises(InsecureListenRefused, match="OCTOLLM_ALLOW_INSECURE"):
        await REFERENCE_ARMS["echo"]().start("0.0.0.0:0")
    with pytest.raises(InsecureListenRefused, match="orchestrator"):
        await start_orchestrator([], listen="0.0.0.0:0")
    with structlog.testing.capture_logs() as logs:
        arm = await REFERENCE_ARMS["echo"]().start("0.0.0.0:0", allow_insecure=True)
        await arm.drain(grace=0)
        loop_arm = await REFERENCE_ARMS["echo"]().start("127.0.0.1:0")
        await loop_arm.drain(grace=0)
    warnings = [e for e in logs if e["event"] == "insecure_listen"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["address"] == "0.0.0.0:0"


def test_loopback_addresses() -> None:
    """Loopback is 127.0.0.0/8, ::1 and localhost; anything else is not."""
    assert all(map(is_loopback, ["127.0.0.1:1", "127.8.0.1:1", "[::1]:1", "localhost:1"]))
    assert not any(map(is_loopback, ["0.0.0.0:1", "[::]:1", "10.0.0.1:1", "arms.local:1"]))


def test_half_a_tls_config_is_refused(pki: Pki) -> None:
    """A cert without its key (or a client CA without a cert) is a configuration error."""
    with pytest.raises(ValidationError, match="TLS_CERT and OCTOLLM_TLS_KEY"):
        Settings(tls_cert=str(pki.server.cert_path))
    with pytest.raises(ValidationError, match="TLS_CLIENT_CA"):
        Settings(tls_client_ca=str(pki.ca_path))
    with pytest.raises(ValidationError, match="ARM_TLS_CA"):
        Settings(arm_tls_cert="c.pem", arm_tls_key="k.pem")
    with pytest.raises(ValueError, match="must be set together"):
        ServerTLS.from_env({"OCTOLLM_TLS_KEY": "k.pem"})
    assert ServerTLS.from_env({}) is None
    env = {
        "OCTOLLM_TLS_CERT": str(pki.server.cert_path),
        "OCTOLLM_TLS_KEY": str(pki.server.key_path),
        "OCTOLLM_TLS_CLIENT_CA": str(pki.ca_path),
    }
    tls = ServerTLS.from_env(env)
    assert tls is not None
    assert tls.mutual
    assert "PRIVATE" not in repr(tls)
