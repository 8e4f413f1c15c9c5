"""grpc.health.v1 List: every service's status, from a bare server, an arm and grpcurl."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arm_sdk.health import MAX_LISTED_SERVICES, HealthServicer
from orchestrator_svc.arms import REFERENCE_ARMS
from tests.arm_sdk.arm_stream import HANG_GUARD_S, Connect, Serve
from tests.tools import grpcurl

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
async def health() -> AsyncIterator[tuple[HealthServicer, health_pb2_grpc.HealthStub]]:
    """A grpc.aio server on port 0 serving only health, and a stub on a real channel to it."""
    servicer = HealthServicer()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, health_pb2_grpc.HealthStub(channel)
    await channel.close()
    await server.stop(0)


async def statuses(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
    reply = await stub.List(health_pb2.HealthListRequest(), timeout=HANG_GUARD_S)
    return {service: response.status for service, response in reply.statuses.items()}


async def test_list_returns_every_service_given_a_status(
    health: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    """List answers the overall status and each set service's, and follows set() and shutdown."""
    servicer, stub = health
    assert await statuses(stub) == {"": SERVING}
    await servicer.set("a.v1.Up", SERVING)
    await servicer.set("b.v1.Down", NOT_SERVING)
    assert await statuses(stub) == {"": SERVING, "a.v1.Up": SERVING, "b.v1.Down": NOT_SERVING}
    await servicer.enter_graceful_shutdown()
    assert set((await statuses(stub)).values()) == {NOT_SERVING}


async def test_list_of_too_many_services_is_resource_exhausted(
    health: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    """Up to MAX_LISTED_SERVICES services are listed; one more is RESOURCE_EXHAUSTED."""
    servicer, stub = health
    for i in range(MAX_LISTED_SERVICES - 1):  # plus "", which is there from the start
        await servicer.set(f"s{i}.v1.Service", SERVING)
    assert len(await statuses(stub)) == MAX_LISTED_SERVICES
    await servicer.set("one.v1.TooMany", SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await statuses(stub)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_arm_lists_its_health(serve: Serve, connect: Connect) -> None:
    """A served arm lists the overall and ArmService status, NOT_SERVING once it says so."""
    server = await serve(REFERENCE_ARMS["echo"]())
    stub = health_pb2_grpc.HealthStub(connect(server))
    assert await statuses(stub) == {"": SERVING, "octollm.v1.ArmService": SERVING}
    await server.set_serving(False)
    assert await statuses(stub) == {"": NOT_SERVING, "octollm.v1.ArmService": NOT_SERVING}


async def test_grpcurl_calls_list_on_an_arm(serve: Serve) -> None:
    """`grpcurl ADDR grpc.health.v1.Health/List` works through reflection alone."""
    server = await serve(REFERENCE_ARMS["echo"]())
    listed = json.loads(await grpcurl(server.address, "grpc.health.v1.Health/List"))
    assert listed == {
        "statuses": {"": {"status": "SERVING"}, "octollm.v1.ArmService": {"status": "SERVING"}}
    }
