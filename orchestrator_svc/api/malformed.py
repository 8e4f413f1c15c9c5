"""Request bytes that do not parse as the RPC's message: INVALID_ARGUMENT, not UNKNOWN.

grpc.aio parses the request before any handler runs and turns a parse failure into UNKNOWN
("Unexpected <class 'DecodeError'>"), with no ErrorInfo. That is what a corrupt body gets, and
also a well-formed message nested deeper than protobuf's parser allows (100 levels: a `context`
Struct 35 objects deep). This interceptor gives the service's methods a parser that
returns a `MalformedRequest` marker instead of raising, and handlers that answer the marker with
INVALID_ARGUMENT / MALFORMED_REQUEST. It goes innermost (after metrics and the edge guard), so
such calls are authenticated, rate-limited and counted like any other.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from .errors import ApiError, abort

Context: TypeAlias = grpc.aio.ServicerContext


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Stands in for a request whose bytes did not parse."""

    message_type: str
    error: str

    def to_error(self) -> ApiError:
        return ApiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request body is not a valid {self.message_type} message: {self.error}",
            reason="MALFORMED_REQUEST",
            metadata={"message_type": self.message_type},
        )


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers unparsable requests to the unary and server-streaming RPCs of `service`."""

    def __init__(self, service: str) -> None:
        self._prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.request_streaming or not method.startswith(self._prefix):
            return handler
        parse = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                if isinstance(request, MalformedRequest):
                    await abort(context, request.to_error())
                return await inner_uu(request, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, parse, handler.response_serializer
            )
        inner_us = handler.unary_stream
        if inspect.isasyncgenfunction(inner_us):

            async def stream_gen(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, MalformedRequest):
                    await abort(context, request.to_error())
                async for response in inner_us(request, context):
                    yield response

            behaviour: Any = stream_gen
        else:

            async def stream_writer(request: Any, context: Context) -> None:
                if isinstance(request, MalformedRequest):
                    await abort(context, request.to_error())
                await inner_us(request, context)

            behaviour = stream_writer
        return grpc.unary_stream_rpc_method_handler(behaviour, parse, handler.response_serializer)


def _tolerant(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`parse`, returning a MalformedRequest where it would raise DecodeError."""
    if parse is None:
        return None
    message_class = getattr(parse, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = str(getattr(descriptor, "full_name", "request"))

    def tolerant(raw: bytes) -> Any:
        try:
            return parse(raw)
        except DecodeError as exc:
            return MalformedRequest(message_type, str(exc))

    return tolerant
