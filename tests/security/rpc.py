"""Decoding rich statuses in the security tests."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2


def details(exc: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = dict(exc.trailing_metadata() or ())["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo detail a failed call carried."""
    for detail in details(exc).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo detail")


def retry_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo:
    """The google.rpc.RetryInfo detail a failed call carried."""
    for detail in details(exc).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no RetryInfo detail")
