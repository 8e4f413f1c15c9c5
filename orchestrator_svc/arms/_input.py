"""A dispatch's input read into the arm's pydantic input model, or a BAD_INPUT Failure.

The model is also where the arm's declared ``input_schema`` comes from
(``model.model_json_schema()``), so the schema and what the arm accepts cannot drift apart.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from pydantic import BaseModel, ValidationError

from arm_sdk import ArmError

M = TypeVar("M", bound=BaseModel)


def parse_input(model: type[M], data: dict[str, Any]) -> M:
    """``data`` as ``model``; raises INVALID_ARGUMENT/BAD_INPUT naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_input_from(exc) from None


def bad_input(message: str, field: str) -> ArmError:
    """A non-retryable INVALID_ARGUMENT/BAD_INPUT Failure about ``input.<field>``."""
    return ArmError(
        message,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="BAD_INPUT",
        metadata={"field": field},
    )


def bad_input_from(exc: ValidationError) -> ArmError:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "input"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return bad_input(f"input.{field}: {first['msg']}{more}", field)
