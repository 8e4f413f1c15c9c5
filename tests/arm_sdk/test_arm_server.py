"""What a user sees of a running arm: DescribeArm, health, reflection, grpcurl, arm.run()."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc

from arm_sdk import SubtaskInput, grpc_options
from orchestrator_svc.arms import REFERENCE_ARMS
from tests.arm_sdk.arm_stream import HANG_GUARD_S, ArmStream, Connect, Serve, make_arm
from tests.tools import grpcurl

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED_SERVICES = {
    "octollm.v1.ArmService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


async def handler(inp: SubtaskInput) -> dict[str, Any]:
    return {}


async def test_describe_arm_returns_the_hello_descriptor(serve: Serve, connect: Connect) -> None:
    """DescribeArm returns the same descriptor as Hello, schemas included as Structs."""
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    arm = make_arm(
        handler,
        arm_type="retriever",
        description="Finds documents",
        capabilities=("search", "rag"),
        max_concurrency=8,
        cost_tier="high",
        version="1.2.3",
        input_schema=schema,
        output_schema={"type": "object"},
        arm_id="retriever-1",
    )
    server = await serve(arm)
    channel = connect(server)
    reply = await arm_grpc.ArmServiceStub(channel).DescribeArm(arm_pb.DescribeArmRequest())
    descriptor = reply.descriptor
    assert descriptor.arm_id == "retriever-1"
    assert descriptor.arm_type == "retriever"
    assert descriptor.description == "Finds documents"
    assert list(descriptor.capabilities) == ["search", "rag"]
    assert descriptor.max_concurrency == 8
    assert descriptor.cost_tier == arm_pb.COST_TIER_HIGH
    assert descriptor.version == "1.2.3"
    assert json_format.MessageToDict(descriptor.input_schema) == schema
    assert json_format.MessageToDict(descriptor.output_schema) == {"type": "object"}
    hello, _ = await ArmStream(channel).handshake()
    assert hello.descriptor == descriptor
    assert server.arm_id == "retriever-1"
    assert server.address == f"127.0.0.1:{server.port}"


async def test_health_reports_serving_once_started(serve: Serve, connect: Connect) -> None:
    """grpc.health.v1 answers SERVING for the server and for octollm.v1.ArmService."""
    server = await serve(make_arm(handler))
    health = health_pb2_grpc.HealthStub(connect(server))
    for service in ("", "octollm.v1.ArmService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_services(serve: Serve, connect: Connect) -> None:
    """Server reflection lists ArmService, health and reflection, and serves ArmService's file."""
    server = await serve(make_arm(handler))
    stub = reflection_pb2_grpc.ServerReflectionStub(connect(server))
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="octollm.v1.ArmService"),
    ]
    replies = [reply async for reply in stub.ServerReflectionInfo(iter(requests))]
    listed = {s.name for s in replies[0].list_services_response.service}
    assert listed == EXPECTED_SERVICES
    assert replies[1].WhichOneof("message_response") == "file_descriptor_response"
    assert replies[1].file_descriptor_response.file_descriptor_proto


async def test_grpcurl_lists_and_calls_the_arm(serve: Serve) -> None:
    """`grpcurl -plaintext ADDR list` works with no proto files, and so does DescribeArm."""
    server = await serve(REFERENCE_ARMS["echo"]())
    listed = await grpcurl(server.address, "list")
    assert set(listed.split()) == EXPECTED_SERVICES
    described = json.loads(
        await grpcurl(server.address, "octollm.v1.ArmService/DescribeArm", data={})
    )
    assert described["descriptor"]["arm_type"] == "echo"
    assert described["descriptor"]["arm_id"] == server.arm_id


async def test_run_serves_until_sigterm_then_drains(tmp_path: Path) -> None:
    """arm.run() serves until SIGTERM, then drains and exits 0."""
    script = (
        "from orchestrator_svc.arms import REFERENCE_ARMS\n"
        "REFERENCE_ARMS['sleep'](arm_id='sleep-run').run('127.0.0.1:0', grace=5.0)\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        address = await asyncio.wait_for(_serving_address(proc.stdout), HANG_GUARD_S)
        async with grpc.aio.insecure_channel(
            address, options=grpc_options.CHANNEL_OPTIONS
        ) as channel:
            stream = ArmStream(channel)
            hello, _ = await stream.handshake()
            assert hello.descriptor.arm_id == "sleep-run"
            await stream.dispatch("nap", {"seconds": 0.3})
            await stream.recv_until("accepted")
            proc.send_signal(signal.SIGTERM)
            result, _ = await stream.recv_until("result")
            assert result.result.subtask_id == "nap"
            assert await stream.recv_end() == []
        rest = await asyncio.wait_for(proc.stdout.read(), HANG_GUARD_S)
        assert await asyncio.wait_for(proc.wait(), HANG_GUARD_S) == 0
        assert b"arm_stopped" in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _serving_address(stdout: asyncio.StreamReader) -> str:
    while line := await stdout.readline():
        text = re.sub(r"\x1b\[[0-9;]*m", "", line.decode())
        if "arm_serving" in text:
            match = re.search(r"address=(\S+)", text)
            assert match, text
            return match.group(1)
    raise AssertionError("arm exited before serving")


async def test_arm_serves_its_own_metrics(start_arm) -> None:  # type: ignore[no-untyped-def]
    """An arm started with a metrics endpoint counts its subtasks by outcome."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from orchestrator_svc.arms import REFERENCE_ARMS
    from tests.arm_sdk.arm_stream import ArmStream

    server = await REFERENCE_ARMS["echo"]().start("127.0.0.1:0", metrics=("127.0.0.1", 0))
    try:
        assert server.metrics_port > 0
        async with grpc.aio.insecure_channel(server.address) as channel:
            stream = ArmStream(channel)
            await stream.handshake()
            await stream.dispatch("m1", {"x": 1})
            await stream.recv_until("result", "m1")

        def scrape() -> str:
            url = f"http://127.0.0.1:{server.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(scrape)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        key = ("octollm_arm_subtasks_total", (("arm_type", "echo"), ("outcome", "result")))
        assert samples[key] == 1
        assert samples[("octollm_arm_subtask_seconds_count", (("arm_type", "echo"),))] == 1
    finally:
        await server.drain(grace=0)
