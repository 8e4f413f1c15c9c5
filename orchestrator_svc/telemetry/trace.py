"""W3C trace context (`traceparent`): read from a request, or started; a child per dispatch.

    traceparent = 00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>

OpenTelemetry export is not wired in; the ids are carried so logs of one task can be joined
across the orchestrator and every arm (each log line has `trace_id`).
"""

from __future__ import annotations

import re
import secrets

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


def parse(value: str) -> tuple[str, str, str] | None:
    """(trace_id, span_id, flags) of a valid version-00 traceparent, else None."""
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return None
    return match.group(1), match.group(2), match.group(3)


def start() -> str:
    """A new sampled trace."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def continue_or_start(value: str) -> str:
    """`value` if it is a valid traceparent, else a new trace."""
    return value.strip().lower() if parse(value) is not None else start()


def child(traceparent: str) -> str:
    """A traceparent for a new span in the same trace (a new one if `traceparent` is bad)."""
    parsed = parse(traceparent)
    if parsed is None:
        return start()
    trace_id, _, flags = parsed
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id(traceparent: str) -> str:
    parsed = parse(traceparent)
    return parsed[0] if parsed else ""
