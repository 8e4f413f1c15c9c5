"""Logging configured at the edge: structlog and stdlib records share one JSON format."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def test_stdlib_log_records_are_rendered_as_json_lines() -> None:
    """A record from a stdlib logger (as grpc or asyncpg write them) comes out as a JSON line with
    its level, logger name and timestamp, beside structlog's own events."""
    program = textwrap.dedent(
        """
        import logging, structlog
        from orchestrator_svc.telemetry import configure_logging
        configure_logging("json", "info")
        configure_logging("json", "info")  # twice: still one line per record
        logging.getLogger("grpc._cython").warning("stream %s reset", "7")
        logging.getLogger("quiet").debug("below the level")
        structlog.get_logger("x").info("task_started", task_id="t1")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["stream 7 reset", "task_started"]
    stdlib = lines[0]
    assert stdlib["level"] == "warning"
    assert stdlib["logger"] == "grpc._cython"
    assert "timestamp" in stdlib
    assert lines[1]["task_id"] == "t1"
