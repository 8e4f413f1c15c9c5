"""The client edge's gate: bearer-token auth, then per-client rate and task limits.

One grpc.aio server interceptor guards the OrchestratorService only: health and reflection stay
open for probes and `grpcurl list`. It goes AFTER the metrics interceptor, so rejected calls are
counted with their code. Rejections are rich statuses (ErrorInfo; RetryInfo for the rate limit).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ..errors import ApiError
from .auth import ClientTokens, peer_identity
from .limits import RateLimit, TaskQuota

log = structlog.get_logger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext
_SUBMIT = "SubmitTask"


class EdgeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Authenticates and rate-limits the RPCs of `service` (a full service name)."""

    def __init__(
        self,
        service: str,
        tokens: ClientTokens,
        rate: RateLimit,
        quota: TaskQuota,
    ) -> None:
        self._prefix = f"/{service}/"
        self.tokens = tokens
        self.rate = rate
        self.quota = quota

    @property
    def active(self) -> bool:
        return bool(self.tokens) or self.rate.rps > 0 or self.quota.limit > 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        name = method[len(self._prefix) :]
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                identity = await self._admit(context, name)
                if name != _SUBMIT or self.quota.limit <= 0:
                    return await inner_uu(request, context)
                return await self._submit(inner_uu, request, context, identity)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            if inspect.isasyncgenfunction(inner_us):

                async def stream_gen(request: Any, context: Context) -> AsyncIterator[Any]:
                    await self._admit(context, name)
                    async for response in inner_us(request, context):
                        yield response

                behaviour: Any = stream_gen
            else:

                async def stream_writer(request: Any, context: Context) -> None:
                    await self._admit(context, name)
                    await inner_us(request, context)

                behaviour = stream_writer
            return grpc.unary_stream_rpc_method_handler(
                behaviour, handler.request_deserializer, handler.response_serializer
            )
        # NOTE: the OrchestratorService has no client-streaming RPC; refuse rather than serve one
        # unguarded if the contract ever grows one before this does.
        log.error("unguarded_rpc_refused", method=method)
        return _refusal(handler)

    async def _admit(self, context: Context, method: str) -> str:
        """The caller's identity, or the RPC is aborted (auth first, then the rate)."""
        if self.tokens:
            try:
                identity = self.tokens.authenticate(context.invocation_metadata() or ())
            except ApiError as err:
                log.warning("client_rejected", method=method, reason=err.reason)
                await context.abort_with_status(err.to_status())
                raise AssertionError("abort_with_status returned") from None
        else:
            identity = peer_identity(context)
        wait_s = self.rate.wait_s(identity)
        if wait_s > 0:
            log.info("client_rate_limited", identity=identity, method=method, retry_s=wait_s)
            limited = ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {self.rate.rps:g} requests/s exceeded; retry later",
                reason="RATE_LIMITED",
                metadata={"identity": identity, "limit_rps": f"{self.rate.rps:g}"},
            )
            await context.abort_with_status(_with_retry(limited, wait_s))
        return identity

    async def _submit(
        self,
        inner: Callable[[Any, Context], Awaitable[Any]],
        request: Any,
        context: Context,
        identity: str,
    ) -> Any:
        if not self.quota.reserve(identity):
            log.info("client_task_quota", identity=identity, limit=self.quota.limit)
            err = ApiError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self.quota.limit} unfinished tasks per client; wait for one to end",
                reason="TOO_MANY_TASKS",
                metadata={"identity": identity, "limit": str(self.quota.limit)},
            )
            await context.abort_with_status(_with_retry(err, 1.0))
        task_id: str | None = None
        try:
            response = await inner(request, context)
            task_id = response.task.task_id or None
            return response
        finally:
            self.quota.release(identity, task_id)


def _with_retry(err: ApiError, wait_s: float) -> grpc.Status:
    """`err` as a rich status carrying ErrorInfo and a RetryInfo of `wait_s` (rounded up)."""
    status = err.to_rpc_status()
    millis = max(1, math.ceil(wait_s * 1000))
    retry = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 10**6)
    )
    detail = any_pb2.Any()
    detail.Pack(retry)
    status.details.append(detail)
    return rpc_status.to_status(status)


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this RPC is not guarded")

    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            refuse, handler.request_deserializer, handler.response_serializer
        )
    return grpc.stream_stream_rpc_method_handler(
        refuse, handler.request_deserializer, handler.response_serializer
    )
