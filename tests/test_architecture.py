"""The import contracts of shared/DESIGN.md section 2, checked by import-linter.

The contracts live in pyproject.toml ([tool.importlinter]); these tests run them on the tree and
show that a forbidden import added to a copy of the tree breaks them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

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
    with (tree / "arm_sdk/structs.py").open("a") as structs:
        structs.write("\nimport orchestrator_svc.engine  # noqa: E402\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0
    assert "orchestrator_svc.brain.words -> grpc" in proc.stdout
    assert "arm_sdk.structs -> orchestrator_svc.engine" in proc.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        (
            "orchestrator_svc/arms/echo.py",
            "orchestrator_svc.engine",
            "The reference arms import only arm_sdk, the LLM library and the pure brain",
        ),
        (
            "orchestrator_svc/arms/coder.py",
            "orchestrator_svc.config",
            "The reference arms import only arm_sdk, the LLM library and the pure brain",
        ),
        (
            "orchestrator_svc/llm/client.py",
            "orchestrator_svc.config",
            "The LLM library imports nothing else of the orchestrator",
        ),
        (
            "orchestrator_svc/brain/plan_cache.py",
            "orchestrator_svc.store.cache",
            "The brain is pure: no grpc, no generated protobuf, no store, no configuration",
        ),
        (
            "orchestrator_svc/store/episodes.py",
            "orchestrator_svc.arms.retriever",
            "The store, security and telemetry are below the layers that use them",
        ),
        (
            "orchestrator_svc/security/guard.py",
            "orchestrator_svc.api.errors",
            "The store, security and telemetry are below the layers that use them",
        ),
        (
            "orchestrator_svc/telemetry/metrics.py",
            "orchestrator_svc.mesh",
            "The store, security and telemetry are below the layers that use them",
        ),
    ],
)
def test_each_split_contract_breaks_on_its_forbidden_import(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    """An arm importing the engine or the configuration, the LLM library importing the
    configuration, the brain importing a store adapter, the store importing an arm, security
    importing the API and telemetry importing the mesh each break their contract, which names
    the import."""
    tree = copy_tree(tmp_path)
    with (tree / module).open("a") as source:
        source.write(f"\nimport {forbidden}  # noqa: E402\n")
    proc = lint_imports(tree)
    assert proc.returncode != 0
    importer = module.removesuffix(".py").replace("/", ".")
    assert f"{contract} BROKEN" in proc.stdout
    assert f"{importer} -> {forbidden}" in proc.stdout


def test_no_contract_names_a_breach_the_split_removed() -> None:
    """The only named breach left is the store's use of the brain's episode types: the arm SDK,
    the reference arms, the LLM library, the brain, security and telemetry need none."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ignored = [
        line for contract in config["contracts"] for line in contract.get("ignore_imports", [])
    ]
    assert not [line for line in ignored if line.startswith(("arm_sdk", "orchestrator_svc.arms"))]
    assert not [line for line in ignored if line.startswith("orchestrator_svc.llm")]
    assert not [line for line in ignored if "-> orchestrator_svc.arms" in line]
    assert not [line for line in ignored if line.startswith("orchestrator_svc.brain")]
    assert set(ignored) == {"orchestrator_svc.store.episodes -> orchestrator_svc.brain"}
