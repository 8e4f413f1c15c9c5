"""grpc.health.v1 with List: grpcio-health-checking's aio servicer serves only Check and Watch."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

# NOTE: grpc-go's limit; the proto lets a server answer RESOURCE_EXHAUSTED past one.
MAX_LISTED_SERVICES = 100


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]
    """The aio health servicer plus List, the status of every service that has one."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        # NOTE: _server_status is the parent's map of every service given a status ("" from the
        # start); the package is pinned (pyproject.toml) and tests/arm_sdk pins this behaviour.
        statuses = list(self._server_status.items())
        if len(statuses) > MAX_LISTED_SERVICES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"more than {MAX_LISTED_SERVICES} services have a health status",
            )
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in statuses
            }
        )
