"""The protobuf contracts: buf lint, fresh generated code, file options and service shapes."""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import ServiceDescriptor

from tests.tools import buf_binary

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"
PROTO_FILES = sorted(PROTOS.rglob("*.proto"))
GO_PACKAGE = "github.com/octollm/mesh/gen/go/octollm/v1;octollmv1"
JAVA_PACKAGE = "io.octollm.v1"
TOOL_TIMEOUT_S = 300.0  # hang guard only

# Method name -> (client_streaming, server_streaming).
SERVICES: dict[str, tuple[str, dict[str, tuple[bool, bool]]]] = {
    "OrchestratorService": (
        "octollm.v1.orchestrator_service_pb2",
        {
            "SubmitTask": (False, False),
            "GetTask": (False, False),
            "ListTasks": (False, False),
            "CancelTask": (False, False),
            "WatchTask": (False, True),
            "ListArms": (False, False),
            "GetArm": (False, False),
        },
    ),
    "ArmService": (
        "octollm.v1.arm_service_pb2",
        {"DescribeArm": (False, False), "Execute": (True, True)},
    ),
}


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False
    )


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("octollm_gen_generate", GEN / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module_for(proto: Path) -> ModuleType:
    relative = proto.relative_to(PROTOS).with_suffix("")
    return importlib.import_module(".".join(relative.parts) + "_pb2")


def _file_proto(proto: Path) -> descriptor_pb2.FileDescriptorProto:
    file_proto = descriptor_pb2.FileDescriptorProto()
    _module_for(proto).DESCRIPTOR.CopyToProto(file_proto)
    return file_proto


def _service(name: str) -> ServiceDescriptor:
    module = importlib.import_module(SERVICES[name][0])
    service: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
    return service


def test_proto_files_exist() -> None:
    """The contracts live in protos/octollm/v1 as the three documented files."""
    assert [p.relative_to(PROTOS).as_posix() for p in PROTO_FILES] == [
        "octollm/v1/arm_service.proto",
        "octollm/v1/common.proto",
        "octollm/v1/orchestrator_service.proto",
    ]


def test_buf_lint_passes() -> None:
    """buf lint (STANDARD + COMMENTS, per buf.yaml) reports nothing on protos/."""
    proc = _run([str(buf_binary()), "lint"], ROOT)
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"


def test_buf_lint_rejects_undocumented_field(tmp_path: Path) -> None:
    """buf.yaml really enforces comments: removing one field comment fails lint."""
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(PROTOS, tmp_path / "protos")
    target = tmp_path / "protos" / "octollm" / "v1" / "arm_service.proto"
    text = target.read_text()
    comment = "  // Opaque value echoed back in Pong.\n"
    assert comment in text
    target.write_text(text.replace(comment, "", 1))

    proc = _run([str(buf_binary()), "lint", "--error-format=json"], tmp_path)

    assert proc.returncode != 0
    findings = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [(f["path"], f["type"]) for f in findings] == [
        ("protos/octollm/v1/arm_service.proto", "COMMENT_FIELD")
    ], proc.stdout + proc.stderr
    assert '"nonce"' in findings[0]["message"]


def test_generated_code_is_fresh() -> None:
    """gen/ matches what gen/generate.py produces from protos/ today."""
    proc = _run([sys.executable, str(GEN / "generate.py"), "--check"], ROOT)
    assert proc.returncode == 0, f"gen/ is stale:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("tamper", ["modified", "missing", "extra"])
def test_staleness_check_reports_tampered_file(tmp_path: Path, tamper: str) -> None:
    """stale_files() names a generated file that was edited, deleted, or added by hand."""
    generator = _load_generator()
    fresh = tmp_path / "fresh"
    (fresh / "octollm" / "v1").mkdir(parents=True)
    generator.generate(fresh)
    committed = tmp_path / "committed"
    shutil.copytree(
        GEN / "octollm", committed, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    assert generator.stale_files(fresh / "octollm", committed) == []

    victim = "v1/common_pb2.py"
    if tamper == "modified":
        with (committed / victim).open("a") as handle:
            handle.write("# edited by hand\n")
    elif tamper == "missing":
        (committed / victim).unlink()
    else:
        victim = "v1/stray_pb2.py"
        (committed / victim).write_text("")

    assert generator.stale_files(fresh / "octollm", committed) == [victim]


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda p: p.name)
def test_proto_declares_package(proto: Path) -> None:
    """Each .proto declares `package octollm.v1`, in its source and its generated descriptor."""
    assert re.search(r"^package octollm\.v1;$", proto.read_text(), re.MULTILINE)
    assert _file_proto(proto).package == "octollm.v1"


@pytest.mark.parametrize("proto", PROTO_FILES, ids=lambda p: p.name)
def test_proto_declares_go_and_java_options(proto: Path) -> None:
    """Each .proto sets go_package, java_package and java_multiple_files for other languages."""
    options = _file_proto(proto).options
    assert options.go_package == GO_PACKAGE
    assert options.java_package == JAVA_PACKAGE
    assert options.HasField("java_multiple_files")
    assert options.java_multiple_files


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_has_expected_methods(name: str) -> None:
    """Each service exposes exactly the documented RPCs with the documented streaming shape."""
    service = _service(name)
    expected = SERVICES[name][1]
    assert set(service.methods_by_name) == set(expected)
    for method_name, streaming in expected.items():
        method = service.methods_by_name[method_name]
        assert (method.client_streaming, method.server_streaming) == streaming, method_name


def test_execute_is_bidi_stream_of_request_response_wrappers() -> None:
    """ArmService.Execute streams ExecuteRequest down and ExecuteResponse up."""
    execute = _service("ArmService").methods_by_name["Execute"]
    assert execute.client_streaming
    assert execute.server_streaming
    assert execute.input_type.full_name == "octollm.v1.ExecuteRequest"
    assert execute.output_type.full_name == "octollm.v1.ExecuteResponse"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_grpc_modules_expose_stub_and_servicer(name: str) -> None:
    """The generated *_pb2_grpc module has a stub, a servicer with every RPC, and a registrar."""
    grpc_module = importlib.import_module(SERVICES[name][0] + "_grpc")
    servicer = getattr(grpc_module, f"{name}Servicer")
    assert hasattr(grpc_module, f"{name}Stub")
    assert callable(getattr(grpc_module, f"add_{name}Servicer_to_server"))
    for method_name in SERVICES[name][1]:
        assert callable(getattr(servicer, method_name)), method_name


async def test_execute_round_trips_over_real_channel() -> None:
    """Generated ArmService stub and servicer interoperate: the raw baseline echoes dispatches."""
    from benchmarks._raw import run_raw

    figures = await asyncio.wait_for(run_raw(20, 200, 8, warmup=5), 60)

    assert set(figures) == {
        "pingpong_p50_ms",
        "pingpong_p99_ms",
        "pingpong_round_trips_per_s",
        "pipelined_msgs_per_s",
    }
    assert all(value > 0 for value in figures.values())
    assert figures["pingpong_p50_ms"] <= figures["pingpong_p99_ms"]
