"""The soak run, short: mixed load while arms are killed, every task terminal, RSS and fds flat.

The long run is `python -m tests.chaos.soak --minutes 10` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.chaos.soak import ROOT


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_minute_soak_keeps_every_task_and_stays_flat() -> None:
    """`tests.chaos.soak --minutes 1` exits 0: all its checks held."""
    run = subprocess.run(
        [sys.executable, "-m", "tests.chaos.soak", "--minutes", "1", "--restart-every", "10"],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert "ok   every accepted task terminal" in run.stdout
    assert "FAIL" not in run.stdout
