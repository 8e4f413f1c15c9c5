"""What may run: the command allowlist, the argv path rule, and the shape of a request."""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from arm_sdk import ArmError

log = structlog.get_logger(__name__)

MAX_ARGS = 256
MAX_ARGV_BYTES = 64 << 10
MAX_SOURCE_BYTES = 256 << 10
MAX_STDIN_BYTES = 4 << 20
# What a coder step's `language` says when its `code` is Python (a plan's run step runs it).
_PYTHON = frozenset({"python", "python3", "py"})

# Commands whose arguments are never file names; every other command's arguments are checked.
NO_FILE_ARGS = frozenset({"echo", "true", "false"})

# An argument naming a path outside the scratch dir: absolute or home-relative, directly, glued
# to a short option (-f/etc/passwd) or after "=" (--file=/etc/passwd), or climbing with "..".
_OUTSIDE = re.compile(r"(?:^|=|^-[A-Za-z0-9]+)[/~]|(?:^|[/=])\.\.(?:$|/)")


@dataclass(frozen=True, slots=True)
class RunRequest:
    """One validated request: a command (argv[0] resolved) or a Python snippet."""

    argv: tuple[str, ...]
    python_source: str | None
    stdin: bytes | None
    wall_s: float


class CommandPolicy:
    """Allowlisted command names, resolved to absolute paths once, at start."""

    def __init__(self, names: Iterable[str], search_path: str) -> None:
        self.commands: dict[str, str] = {}
        for name in names:
            if "/" in name:
                log.warning("executor_allowlist_entry_ignored", command=name, why="not a name")
                continue
            found = shutil.which(name, path=search_path)
            if found is None:
                log.warning("executor_allowlist_entry_ignored", command=name, why="not found")
                continue
            self.commands[name] = os.path.abspath(found)
        self._by_path = {path: name for name, path in self.commands.items()}

    def resolve(self, argv: list[str]) -> tuple[str, ...]:
        """argv with argv[0] as the allowlisted absolute path; ArmError if it may not run."""
        name = self._by_path.get(argv[0], argv[0])
        path = self.commands.get(name)
        if path is None:
            raise ArmError(
                f"command {argv[0]!r} is not on the allowlist "
                f"({', '.join(sorted(self.commands)) or 'empty'})",
                code=grpc.StatusCode.PERMISSION_DENIED,
                reason="COMMAND_NOT_ALLOWED",
                metadata={"command": argv[0][:200]},
            )
        if name not in NO_FILE_ARGS:
            for arg in argv[1:]:
                if _OUTSIDE.search(arg):
                    raise ArmError(
                        f"argument {arg[:200]!r} names a path outside the scratch directory; "
                        "commands may only use relative paths inside it",
                        code=grpc.StatusCode.PERMISSION_DENIED,
                        reason="PATH_OUTSIDE_SCRATCH",
                        metadata={"argument": arg[:200], "enforced_by": "argv_check"},
                    )
        return (path, *argv[1:])


def dependencies_python(dependencies: object) -> str | None:
    """The Python code in the outputs of the steps a plan step depends on (a coder's
    ``{"code", "language": "python"}``), in step-id order (a Struct keeps no order); None when
    there is none."""
    if not isinstance(dependencies, Mapping):
        return None
    sources = [
        output["code"]
        for _, output in sorted(dependencies.items())
        if isinstance(output, Mapping)
        and isinstance(output.get("code"), str)
        and output["code"].strip()
        and str(output.get("language", "")).strip().lower() in _PYTHON
    ]
    return "\n\n".join(sources) if sources else None


def parse_request(
    payload: Mapping[str, Any], policy: CommandPolicy, max_wall_s: float
) -> RunRequest:
    """Validate a subtask input into a RunRequest; ArmError(INVALID_ARGUMENT) when malformed."""
    command = payload.get("command")
    source = payload.get("python")
    if command is None and source is None:
        # NOTE: a plan's "run it" step: it runs the Python the steps it depends on wrote.
        source = dependencies_python(payload.get("dependencies"))
        if source is None:
            raise _bad_input(
                "give exactly one of input.command (argv list) or input.python (code), or "
                "depend on a step whose output is Python code (code, language python)"
            )
    if command is not None and source is not None:
        raise _bad_input("give exactly one of input.command (argv list) or input.python (code)")
    stdin = payload.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise _bad_input("input.stdin must be a string", "stdin")
    stdin_bytes = stdin.encode() if stdin is not None else None
    if stdin_bytes is not None and len(stdin_bytes) > MAX_STDIN_BYTES:
        raise _bad_input(f"input.stdin is over {MAX_STDIN_BYTES} bytes", "stdin")
    wall_s = max_wall_s
    timeout = payload.get("timeout_s")
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise _bad_input("input.timeout_s must be a positive number of seconds", "timeout_s")
        wall_s = min(float(timeout), max_wall_s)
    if source is not None:
        if not isinstance(source, str) or not source.strip():
            raise _bad_input("input.python must be a non-empty string of Python code", "python")
        if len(source.encode()) > MAX_SOURCE_BYTES:
            raise _bad_input(f"input.python is over {MAX_SOURCE_BYTES} bytes", "python")
        return RunRequest(argv=(), python_source=source, stdin=stdin_bytes, wall_s=wall_s)
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(arg, str) for arg in command)
    ):
        raise _bad_input(
            'input.command must be a non-empty list of strings (argv, e.g. ["ls", "-l"]); '
            "there is no shell",
            "command",
        )
    if len(command) > MAX_ARGS or sum(len(arg.encode()) for arg in command) > MAX_ARGV_BYTES:
        raise _bad_input(f"input.command is over {MAX_ARGS} args or {MAX_ARGV_BYTES} bytes")
    if any("\x00" in arg for arg in command) or not command[0]:
        raise _bad_input("input.command has an empty program name or a NUL byte", "command")
    argv = policy.resolve(command)
    return RunRequest(argv=argv, python_source=None, stdin=stdin_bytes, wall_s=wall_s)


def _bad_input(message: str, field: str = "input") -> ArmError:
    return ArmError(
        message,
        code=grpc.StatusCode.INVALID_ARGUMENT,
        reason="BAD_INPUT",
        metadata={"field": field},
    )
