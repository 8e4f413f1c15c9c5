"""The benchmarks run and print their tables (tiny sizes; no figure is checked).

One `python -m benchmarks --smoke --only durability,peers,scale` run covers the runner and the
durability, peers and scale tables. The mesh rows must run (PostgreSQL rows too under CI,
where PostgreSQL runs); Celery and Ray rows run when the `bench` extra is installed and say
`skipped:` when not.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools import in_ci

ROOT = Path(__file__).resolve().parent.parent.parent
# A row's figures: a label, then numbers (not "skipped: ...").
_FIGURES = r"\s{2,}[\d.]+"


@pytest.fixture(scope="module")
def output() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--only", "durability,peers,scale"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # hang guard only
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _row(output: str, label: str) -> str:
    rows = [line for line in output.splitlines() if line.strip().startswith(label)]
    assert rows, f"no row {label!r} in:\n{output}"
    return rows[0]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def test_peers_table_has_mesh_rows_and_targets(output: str) -> None:
    assert re.search("mesh, in-process store" + _FIGURES, _row(output, "mesh, in-process store"))
    pg = _row(output, "mesh, PostgreSQL store")
    assert re.search(_FIGURES, pg) or ("skipped:" in pg and not in_ci()), pg
    for target in (
        "mesh subtasks/s vs Celery",
        "mesh subtasks/s vs Ray",
        "mesh DAG p50 vs Ray",
        "mesh on PostgreSQL subtasks/s vs Celery",
    ):
        assert _row(output, target)


@pytest.mark.parametrize(("label", "module"), [("Celery + Redis", "celery"), ("Ray local", "ray")])
def test_peer_rows_run_or_say_skipped(output: str, label: str, module: str) -> None:
    row = _row(output, label)
    if _installed(module):
        assert re.search(_FIGURES, row) or "skipped:" in row, row
    else:
        assert "skipped:" in row, row
        assert "not installed" in row, row
        assert "skipped" in _row(output, f"mesh subtasks/s vs {label.split()[0]}")


def test_scale_tables(output: str) -> None:
    for label in ("1 orchestrator, in-process store", "2 replicas, one PostgreSQL schema"):
        row = _row(output, label)
        assert re.search(_FIGURES, row) or ("skipped:" in row and not in_ci()), row
    assert "cost growth with tasks" in output
    assert "cost growth with arms" in output
    assert _row(output, "baseline, nothing queued")
    assert _row(output, "slow arm in flight, max seen")


def test_summary_gathers_the_verdicts(output: str) -> None:
    summary = output[output.index("summary: targets") :]
    assert "peers (ok" in summary
    assert "scale (ok" in summary
    assert "mesh subtasks/s vs Celery" in summary


def test_durability_table(output: str) -> None:
    """Both stores have a row with figures, and the two ratios state their verdict."""
    assert re.search("in-process" + _FIGURES, _row(output, "in-process "))
    pg = _row(output, "PostgreSQL ")
    assert re.search(_FIGURES, pg) or ("skipped:" in pg and not in_ci()), pg
    if "skipped:" not in pg:
        assert re.search(r"throughput\s+[\d.]+x\s+target >= 0.5x\s+(met|MISSED)", output)
        assert re.search(r"DAG p50\s+[\d.]+x\s+target <= 1.5x\s+(met|MISSED)", output)
