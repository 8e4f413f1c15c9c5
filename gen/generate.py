"""Regenerate the Python code in gen/ from protos/ (messages, gRPC stubs, .pyi stubs).

    python gen/generate.py          # rewrite gen/octollm
    python gen/generate.py --check  # exit 1 if gen/octollm differs from what protos/ produce

NOTE: generated files record the protoc/grpc versions that made them, so grpcio-tools and
mypy-protobuf are pinned exactly in pyproject.toml; regenerate after bumping either.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
PACKAGE_INITS = ("octollm/__init__.py", "octollm/v1/__init__.py")


def generate(out: Path) -> None:
    """Run protoc over every .proto under protos/octollm into `out`."""
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "octollm").rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside the interpreter
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for init in PACKAGE_INITS:
        (out / init).write_text('"""Generated from protos/ by gen/generate.py. Do not edit."""\n')
    # PEP 561: the .pyi stubs are the package's types for whoever installs octollm-proto.
    (out / "octollm" / "py.typed").write_text("")


def stale_files(expected: Path, actual: Path) -> list[str]:
    """Relative paths that differ, are missing, or are extra in `actual`."""
    want = {p.relative_to(expected) for p in expected.rglob("*") if p.is_file()}
    have = {
        p.relative_to(actual)
        for p in actual.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    diff = sorted(str(p) for p in want ^ have)
    diff += sorted(
        str(p) for p in want & have if not filecmp.cmp(expected / p, actual / p, shallow=False)
    )
    return diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if gen/ is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "octollm" / "v1").mkdir(parents=True)
        generate(out)
        if check:
            stale = stale_files(out / "octollm", GEN / "octollm")
            if stale:
                print("gen/ is stale; run: python gen/generate.py", *stale, sep="\n  ")
                return 1
            return 0
        shutil.rmtree(GEN / "octollm", ignore_errors=True)
        shutil.copytree(out / "octollm", GEN / "octollm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
