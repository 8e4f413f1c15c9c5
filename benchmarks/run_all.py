"""Every benchmark in one command: dispatch, dag, durability, peers, scale; then one table.

    python -m benchmarks                 # quick sizes (several minutes in all)
    python -m benchmarks --full          # the issue's sizes
    python -m benchmarks --only peers,scale
    python -m benchmarks --smoke         # tiny sizes: checks that everything runs (seconds)

Each benchmark runs as a child process (`python -m benchmarks.<name> ...`), one after another,
and its table is printed as it finishes; at the end every line that states a target verdict
(`met` / `MISSED`) or a skipped row is gathered into one summary table. Absolute figures on
these shared 2-core machines swing 2-4x between runs: read the ratios.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

from benchmarks._mesh import ROOT

# name -> arguments for each size: quick (the default), full (the issue's), smoke (tiny: only
# checks that everything runs; its figures mean nothing)
BENCHMARKS: dict[str, dict[str, list[str]]] = {
    "dispatch": {
        "quick": ["--pingpong", "500", "--pipelined", "5000", "--warmup", "100"],
        "full": [],
        "smoke": ["--pingpong", "20", "--pipelined", "50", "--window", "8", "--warmup", "5"],
    },
    "dag": {
        "quick": ["--tasks", "50", "--warmup", "5", "--sizes", "100,1000"],
        "full": [],
        "smoke": ["--tasks", "3", "--warmup", "1", "--sizes", "10"],
    },
    "durability": {
        "quick": ["--tasks", "300", "--dag-tasks", "50"],
        "full": [],
        "smoke": ["--tasks", "5", "--dag-tasks", "2"],
    },
    "peers": {
        "quick": ["--quick"],
        "full": [],
        "smoke": ["--subtasks", "20", "--dags", "3", "--warmup", "1"],
    },
    "scale": {
        "quick": ["--quick"],
        "full": [],
        "smoke": [
            *("--tasks", "10", "--growth-tasks", "5", "--growth-arms", "1"),
            *("--arm-tasks", "5", "--queued", "20", "--probes", "3", "--slow-delay-s", "0.2"),
        ],
    },
}
CHILD_TIMEOUT_S = 3 * 3600.0  # hang guard only
_VERDICT = re.compile(r"\b(met|MISSED)\b|skipped:")


def run_one(name: str, args: list[str]) -> tuple[int, list[str], float]:
    """Run one benchmark, echoing its output; (exit code, its lines, seconds)."""
    started = time.perf_counter()
    print(f"== {name}: python -m benchmarks.{name} {' '.join(args)}".rstrip(), flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    code = proc.wait(CHILD_TIMEOUT_S)
    seconds = time.perf_counter() - started
    print(f"== {name}: exit {code}, {seconds:.0f} s", flush=True)
    return code, lines, seconds


def summary(results: dict[str, tuple[int, list[str], float]]) -> list[str]:
    """One table: every target verdict and skipped row, by benchmark."""
    out = ["summary: targets (ratios measured in this run)"]
    for name, (code, lines, seconds) in results.items():
        picked = [line.strip() for line in lines if _VERDICT.search(line)]
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        out.append(f"  {name} ({status}, {seconds:.0f} s)")
        out += [f"    {line}" for line in picked]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--full", action="store_true", help="the issue's sizes (much longer)")
    sizes.add_argument("--smoke", action="store_true", help="tiny sizes: does everything run?")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated, of {','.join(BENCHMARKS)}"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    results = {}
    size = "full" if args.full else "smoke" if args.smoke else "quick"
    for name in names:
        results[name] = run_one(name, BENCHMARKS[name][size])
    print()
    for line in summary(results):
        print(line)
    return 0 if all(code == 0 for code, _, _ in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
