"""The arm SDK stands alone: `pip install ./gen ./arm_sdk` brings none of the orchestrator.

The repository builds three distributions: `octollm-proto` (gen/, the generated code),
`octollm-arm-sdk` (arm_sdk/) and `octollm-mesh` (the orchestrator and the reference arms). An arm
author installs the first two; these tests resolve that install, import the SDK alone, and run
the README's "Write an arm" example from a fresh virtualenv against a real orchestrator.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from octollm.v1 import orchestrator_service_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
# What the orchestrator needs and an arm author must not be made to install.
ORCHESTRATOR_ONLY = {
    "asyncpg",
    "redis",
    "hiredis",
    "qdrant-client",
    "openai",
    "pydantic",
    "pydantic-settings",
    "jsonschema",
    "octollm-mesh",
}
HANG_GUARD_S = 60.0


def staged_sources(tmp_path: Path) -> tuple[Path, Path]:
    """Copies of gen/ and arm_sdk/ (pip builds in the source tree; the checkout stays clean)."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    gen = shutil.copytree(ROOT / "gen", tmp_path / "gen", ignore=skip)
    sdk = shutil.copytree(ROOT / "arm_sdk", tmp_path / "arm_sdk", ignore=skip)
    return gen, sdk


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_installing_the_sdk_resolves_none_of_the_orchestrator(tmp_path: Path) -> None:
    """pip resolves `./gen ./arm_sdk` to grpc, protobuf, structlog and prometheus-client (and
    their own dependencies): no database, cache, vector store, LLM client or pydantic."""
    gen, sdk = staged_sources(tmp_path)
    report = tmp_path / "report.json"
    # NOTE: no build isolation: the metadata is built with the venv's setuptools (the dev extra
    # brings a recent one with grpcio-tools), offline and quickly; only the resolution is checked.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-build-isolation",
            "--quiet",
            "--report",
            str(report),
            str(gen),
            str(sdk),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = {
        item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]
    }
    assert {"octollm-proto", "octollm-arm-sdk", "grpcio", "protobuf", "structlog"} <= installed
    assert installed & ORCHESTRATOR_ONLY == set()


def test_the_sdk_declares_only_grpc_protobuf_and_the_generated_code() -> None:
    """arm_sdk/pyproject.toml depends on what arm_sdk imports and nothing the orchestrator adds;
    the orchestrator depends on the SDK, never the other way."""
    sdk = tomllib.loads((ROOT / "arm_sdk" / "pyproject.toml").read_text())["project"]
    proto = tomllib.loads((ROOT / "gen" / "pyproject.toml").read_text())["project"]
    mesh = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert names(sdk["dependencies"]) == {
        "octollm-proto",
        "grpcio",
        "grpcio-health-checking",
        "grpcio-reflection",
        "protobuf",
        "structlog",
        "prometheus-client",
    }
    assert names(proto["dependencies"]) == {"grpcio", "protobuf"}
    assert {"octollm-arm-sdk", "octollm-proto"} <= names(mesh["dependencies"])


def test_importing_the_sdk_loads_nothing_of_the_orchestrator() -> None:
    """`import arm_sdk` (every public submodule) in a fresh interpreter loads no orchestrator_svc
    module and none of the orchestrator's libraries."""
    probe = (
        "import json, sys\n"
        "import arm_sdk\n"
        "from arm_sdk import grpc_options, health, metrics_http, structs, tls\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT / "tests",  # NOTE: not the repo root, whose orchestrator_svc/ would be on sys.path
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert "arm_sdk" in loaded
    roots = {name.split(".")[0] for name in loaded}
    assert roots & {"orchestrator_svc", "asyncpg", "redis", "qdrant_client", "openai"} == set()
    assert roots & {"pydantic", "pydantic_settings"} == set()


def readme_arm_example() -> str:
    """The Python block of the README's "Write an arm" section."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Write an arm\s*$(.*?)(?=^##\s)", text, re.M | re.S)
    assert section is not None, "README.md has no '## Write an arm' section"
    (example,) = re.findall(r"```python\n(.*?)```", section.group(1), re.S)
    return example


SERVE_ON_ANY_PORT = """\
import asyncio, sys

from shouter import arm


async def main() -> None:
    server = await arm.start("127.0.0.1:0")
    print("ADDRESS", server.address, flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the test closes stdin
    await server.drain(grace=5.0)


asyncio.run(main())
"""


async def served_address(stdout: asyncio.StreamReader) -> str:
    """The address the arm prints (its structlog lines go to stdout too)."""
    while line := (await stdout.readline()).decode():
        if line.startswith("ADDRESS "):
            return line.split()[1]
    raise AssertionError("the arm exited before it served")


async def test_an_arm_from_a_fresh_venv_with_only_the_sdk_serves_a_real_orchestrator(
    tmp_path: Path, start_orchestrator: Any, connect: Any
) -> None:
    """A new virtualenv with `pip install ./gen ./arm_sdk` (and nothing else) runs the README's
    shouter arm; the orchestrator routes a step to it and the task succeeds with its output."""
    gen, sdk = staged_sources(tmp_path)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    for command in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", str(gen), str(sdk)],
    ):
        done = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    listed = await asyncio.to_thread(
        subprocess.run,
        [str(python), "-m", "pip", "list", "--format=json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = {item["name"].lower() for item in json.loads(listed.stdout)}
    assert "octollm-arm-sdk" in installed
    assert installed & ORCHESTRATOR_ONLY == set()

    (tmp_path / "shouter.py").write_text(readme_arm_example())
    (tmp_path / "serve.py").write_text(SERVE_ON_ANY_PORT)
    arm = await asyncio.create_subprocess_exec(
        str(python),
        str(tmp_path / "serve.py"),
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert arm.stdin is not None
    assert arm.stdout is not None
    try:
        address = await asyncio.wait_for(served_address(arm.stdout), HANG_GUARD_S)
        # NOTE: keep reading the arm's log lines, so a full pipe never blocks it.
        drain = asyncio.create_task(arm.stdout.read())
        orchestrator = await start_orchestrator([address], wait_for=("shouter",))
        stub = connect(orchestrator.address)
        request = pb.SubmitTaskRequest(goal="Shout a greeting")
        request.plan.steps.add(step_id="shout", arm_type="shouter").input.update(
            {"text": "hello from a lone sdk"}
        )
        task = (await stub.SubmitTask(request)).task
        async for _ in stub.WatchTask(
            pb.WatchTaskRequest(task_id=task.task_id), timeout=HANG_GUARD_S
        ):
            pass
        task = (await stub.GetTask(pb.GetTaskRequest(task_id=task.task_id))).task
        assert task.state == pb.TASK_STATE_SUCCEEDED, task
        shout = task.result.outputs.fields["shout"].struct_value.fields["text"]
        assert shout.string_value == "HELLO FROM A LONE SDK"
    finally:
        arm.stdin.close()
        try:
            await asyncio.wait_for(arm.wait(), HANG_GUARD_S)
        except TimeoutError:
            arm.kill()
            await arm.wait()
    assert b"arm_stopped" in await drain
