"""The ``octollm.v1.ArmService`` servicer: DescribeArm and the Execute stream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import structlog
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc

from arm_sdk._session import ArmRuntime, ExecuteSession

log = structlog.get_logger(__name__)


class ArmServicer(arm_grpc.ArmServiceServicer):
    """Serves one arm: its descriptor, and one ExecuteSession per Execute stream."""

    def __init__(self, runtime: ArmRuntime) -> None:
        self.runtime = runtime

    async def DescribeArm(
        self, request: arm_pb.DescribeArmRequest, context: grpc.aio.ServicerContext
    ) -> arm_pb.DescribeArmResponse:
        return arm_pb.DescribeArmResponse(descriptor=self.runtime.descriptor)

    async def Execute(
        self,
        request_iterator: AsyncIterator[arm_pb.ExecuteRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[arm_pb.ExecuteResponse]:
        arm_id = self.runtime.descriptor.arm_id
        # NOTE: read the peer once, up front: the generator may be finalized after the server
        # has freed the call, and context.peer() on a freed call crashes the process.
        peer = context.peer()
        log.info("execute_stream_opened", arm_id=arm_id, peer=peer)
        try:
            async for response in ExecuteSession(self.runtime).stream(request_iterator):
                yield response
        finally:
            log.info("execute_stream_closed", arm_id=arm_id, peer=peer)
