"""The error the orchestrator reports to a gRPC caller, in the AIP-193 shape.

An `ApiError` is a status code, a message and a google.rpc.ErrorInfo (reason, domain
"octollm.v1", metadata). It sits below every layer that raises it: the API's servicers and the
security interceptors (auth, rate limits) both do; `orchestrator_svc.api.errors` turns it into a
rich status and holds the constructors for each kind.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "octollm.v1"


class ApiError(Exception):
    """A failure to report to the caller, with a machine-readable reason."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        field: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.field = field
        self.metadata: dict[str, str] = dict(metadata or {})
        if field is not None:
            self.metadata["field"] = field

    def __repr__(self) -> str:
        return (
            f"ApiError({self.code.name}, {self.message!r}, reason={self.reason!r}, "
            f"metadata={self.metadata!r})"
        )

    def error_info(self) -> error_details_pb2.ErrorInfo:
        """The ErrorInfo detail of this error."""
        return error_details_pb2.ErrorInfo(
            reason=self.reason, domain=DOMAIN, metadata=self.metadata
        )

    def to_rpc_status(self) -> status_pb2.Status:
        """This error as a google.rpc.Status with its ErrorInfo detail."""
        detail = any_pb2.Any()
        detail.Pack(self.error_info())
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])

    def to_status(self) -> grpc.Status:
        """This error as a grpc.Status for `abort_with_status`."""
        return rpc_status.to_status(self.to_rpc_status())
