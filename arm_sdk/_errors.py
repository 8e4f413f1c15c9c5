"""The one error type an arm handler raises to fail a subtask on purpose."""

from __future__ import annotations

from collections.abc import Mapping

import grpc


class ArmError(Exception):
    """Fails the current subtask with a precise ``Failure``.

    ``code`` is the canonical gRPC status code, ``reason`` a machine-readable UPPER_SNAKE_CASE
    word, ``retryable`` tells the orchestrator whether the same work may succeed if tried again,
    and ``metadata`` gives structured context for the reason (like ``google.rpc.ErrorInfo``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.INTERNAL,
        reason: str = "ARM_ERROR",
        retryable: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        self.retryable = retryable
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (metadata or {}).items()}

    def __repr__(self) -> str:
        return (
            f"ArmError({self.message!r}, code={self.code.name}, reason={self.reason!r}, "
            f"retryable={self.retryable})"
        )
