"""Static checks run as tests: ruff lint and format, and mypy strict on the hand-written code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint_is_clean() -> None:
    """`ruff check` reports nothing (rules and reasoned ignores live in pyproject.toml)."""
    proc = run("ruff", "check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean() -> None:
    """The code is formatted as `ruff format` would write it."""
    proc = run("ruff", "format", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_is_clean() -> None:
    """mypy --strict (configured in pyproject.toml) passes on orchestrator_svc and arm_sdk."""
    proc = run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
