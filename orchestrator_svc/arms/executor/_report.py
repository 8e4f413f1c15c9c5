"""Turning a run's outcome into the arm's output, or into the Failure of the limit it hit."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import grpc

from arm_sdk import ArmError
from orchestrator_svc.arms.executor._sandbox import RunOutcome
from orchestrator_svc.arms.executor._settings import ExecutorSettings

_TAIL_CHARS = 1000
_MEMORY = re.compile(
    r"\bMemoryError\b|Cannot allocate memory|memory exhausted|std::bad_alloc|out of memory",
    re.IGNORECASE,
)
_FILE_TOO_LARGE = re.compile(r"File too large")
_PERMISSION = re.compile(r"^PermissionError: \[Errno 13\] Permission denied: '(?P<path>.*)'$")


def limit_failure(
    outcome: RunOutcome, settings: ExecutorSettings, wall_s: float
) -> ArmError | None:
    """The Failure for a run that a limit or the sandbox stopped; None for an ordinary exit
    (whatever its exit code: a program failing on its own is a result, not a Failure)."""
    stderr = _text(outcome.stderr)
    last = _last_line(stderr)
    meta = {"exit_code": str(outcome.exit_code), "stderr_tail": stderr[-_TAIL_CHARS:]}
    if outcome.timed_out:
        return ArmError(
            f"the run did not finish within its {wall_s:g} s wall-clock limit and was killed",
            code=grpc.StatusCode.DEADLINE_EXCEEDED,
            reason="EXECUTION_TIMEOUT",
            metadata={**meta, "limit_s": f"{wall_s:g}"},
        )
    if outcome.truncated:
        return None
    if outcome.setup_error is not None:
        return ArmError(
            f"the sandbox could not start the program: {outcome.setup_error}",
            code=grpc.StatusCode.INTERNAL,
            reason="SANDBOX_SETUP_FAILED",
            metadata=meta,
        )
    killed_by = -outcome.exit_code if outcome.exit_code < 0 else 0
    cpu = outcome.cpu_s or 0.0
    if killed_by == signal.SIGXCPU or (killed_by == signal.SIGKILL and cpu >= settings.cpu_s):
        return ArmError(
            f"the run used its {settings.cpu_s} s of CPU time and was killed",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason="CPU_LIMIT",
            metadata={**meta, "limit_s": str(settings.cpu_s), "cpu_s": f"{cpu:g}"},
        )
    if outcome.exit_code == 0:
        return None
    if killed_by == signal.SIGXFSZ or _FILE_TOO_LARGE.search(last):
        return ArmError(
            f"the run tried to write a file over {settings.file_bytes} bytes",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason="FILE_SIZE_LIMIT",
            metadata={**meta, "limit_bytes": str(settings.file_bytes)},
        )
    if _MEMORY.search(last):
        return ArmError(
            f"the run ran out of its {settings.memory_mb} MiB of address space",
            code=grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason="MEMORY_LIMIT",
            metadata={**meta, "limit_mb": str(settings.memory_mb)},
        )
    denied = _PERMISSION.match(last)
    if denied and outcome.isolation.landlock_fs:
        path = denied.group("path")
        if not _inside(os.path.join(outcome.scratch, path), outcome.scratch):
            return ArmError(
                f"the sandbox refused access to {path!r}, outside the scratch directory",
                code=grpc.StatusCode.PERMISSION_DENIED,
                reason="PATH_OUTSIDE_SCRATCH",
                metadata={**meta, "path": path[:200], "enforced_by": "landlock"},
            )
    return None


ANSWER_CHARS = 500


def output(outcome: RunOutcome, settings: ExecutorSettings, wall_s: float) -> dict[str, Any]:
    """The arm's output for a run that ended on its own or was cut at the output limit."""
    iso = outcome.isolation
    stdout = _text(outcome.stdout)
    return {
        # A one-line summary the orchestrator's integrator can show as this step's answer.
        "answer": f"exit {outcome.exit_code}: {stdout.strip()[:ANSWER_CHARS]}".rstrip(": "),
        "stdout": stdout,
        "stderr": _text(outcome.stderr),
        "exit_code": outcome.exit_code,
        "duration_s": round(outcome.duration_s, 6),
        "truncated": outcome.truncated,
        "limits": {
            "cpu_s": settings.cpu_s,
            "wall_s": wall_s,
            "memory_mb": settings.memory_mb,
            "output_bytes": settings.output_bytes,
            "max_procs": settings.max_procs,
            "file_bytes": settings.file_bytes,
            "network": iso.network,
            "filesystem": "confined" if iso.landlock_fs else "not confined",
            "pid_namespace": iso.pid_namespace,
            "uid": iso.uid,
        },
    }


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)
