"""API errors in the AIP-193 shape: a status code, a message, and a google.rpc.ErrorInfo.

Every error the OrchestratorService returns is an `ApiError` (defined in
`orchestrator_svc.errors`, below the security interceptors that raise it too) turned into a rich
status by `abort()`: the client sees the code and message, and the `grpc-status-details-bin`
trailer carries `google.rpc.Status` with one `ErrorInfo` detail (reason, domain "octollm.v1",
metadata; metadata["field"] names the offending request field when there is one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from octollm.v1 import common_pb2

from orchestrator_svc.errors import DOMAIN as DOMAIN
from orchestrator_svc.errors import ApiError as ApiError
from orchestrator_svc.store.ports import (
    IdempotencyConflict,
    StoreClosed,
    StoreError,
    TaskClosed,
    TaskNotFound,
)


async def abort(context: grpc.aio.ServicerContext[Any, Any], err: ApiError) -> NoReturn:
    """End the RPC with `err` as a rich status."""
    await context.abort_with_status(err.to_status())
    # NOTE: abort_with_status always raises; this keeps NoReturn honest for type checkers.
    raise AssertionError("abort_with_status returned")


def error_info_of(status: status_pb2.Status) -> error_details_pb2.ErrorInfo | None:
    """The first ErrorInfo detail of a rich status, if any (clients and tests decode with it)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def failure_from(err: ApiError, *, retryable: bool = False) -> common_pb2.Failure:
    """`err` as a Failure, for recording in task events."""
    return common_pb2.Failure(
        code=err.code.value[0],
        message=err.message,
        reason=err.reason,
        retryable=retryable,
        metadata=err.metadata,
    )


def invalid_argument(
    field: str,
    message: str,
    reason: str = "INVALID_FIELD",
    metadata: Mapping[str, str] | None = None,
) -> ApiError:
    """The request itself is wrong; retrying it unchanged can never succeed."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT, message, reason=reason, field=field, metadata=metadata
    )


def failed_precondition(
    message: str,
    reason: str,
    *,
    field: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ApiError:
    """The request is well-formed but the system is not in a state to serve it (yet)."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        reason=reason,
        field=field,
        metadata=metadata,
    )


def not_found(resource: str, resource_id: str, *, field: str | None = None) -> ApiError:
    """No `resource` has this id; reason is e.g. "TASK_NOT_FOUND" for resource "task"."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{resource} {resource_id!r} not found",
        reason=f"{resource.upper()}_NOT_FOUND",
        field=field,
        metadata={f"{resource}_id": resource_id},
    )


def already_exists(
    message: str, reason: str, *, metadata: Mapping[str, str] | None = None
) -> ApiError:
    """The resource the request would create exists already, in a different form."""
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, message, reason=reason, metadata=metadata)


def from_store_error(err: StoreError) -> ApiError:
    """Map a store failure to the error the caller sees."""
    match err:
        case TaskNotFound():
            return not_found("task", err.task_id, field="task_id")
        case IdempotencyConflict():
            return already_exists(
                f"request_id {err.request_id!r} was already used for task {err.task_id} with a "
                "different request body; use a new request_id for a different request",
                "REQUEST_ID_REUSED",
                metadata={
                    "request_id": err.request_id,
                    "task_id": err.task_id,
                    "field": "request_id",
                },
            )
        case TaskClosed():
            return failed_precondition(
                f"task {err.task_id} has finished and accepts no more changes",
                "TASK_FINISHED",
                metadata={"task_id": err.task_id},
            )
        case StoreClosed():
            return ApiError(
                grpc.StatusCode.UNAVAILABLE,
                "the task store is shutting down; retry on another replica or later",
                reason="STORE_CLOSED",
            )
    return ApiError(
        grpc.StatusCode.INTERNAL, "the task store failed unexpectedly", reason="STORE_ERROR"
    )
