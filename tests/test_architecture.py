"""The import contracts of shared/DESIGN.md section 2, checked by import-linter.

The contracts live in pyproject.toml ([tool.importlinter]); these tests run them on the tree and
show that a forbidden import added to a copy of the tree breaks them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{ROOT / 'gen'}"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    for package in ("orchestrator_svc", "arm_sdk"):
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tree


def test_the_import_contracts_hold() -> None:
    """Every layer and forbidden-import contract in pyproject.toml is kept by the code."""
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_a_forbidden_import_breaks_the_contracts(tmp_path: Path) -> None:
    """A brain module importing grpc, or the arm SDK importing the orchestrator, fails the check
    and names the import."""
    tree = copy_tree(tmp_path)
    with (tree / "orchestrator_svc/brain/words.py").open("a") as words:
        words.write("\nimport grpc  # noqa: E402\n")
    with (tree / "arm_sdk/_structs.py").open("a") as structs:
        structs.write("\nimport orchestrator_svc.engine  # noqa: E402\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0
    assert "orchestrator_svc.brain.words -> grpc" in proc.stdout
    assert "arm_sdk._structs -> orchestrator_svc.engine" in proc.stdout
