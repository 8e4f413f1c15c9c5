"""Test harness for the LLM-backed arms (planner, coder, judge): real streams, fake LLMs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2

from arm_sdk import Arm, ArmServer, grpc_options
from orchestrator_svc.llm import OpenAICompatibleClient
from tests.arm_sdk.arm_stream import ArmStream
from tests.llm.fake_openai import FakeOpenAI, Script

OpenStream = Callable[[Arm], Awaitable[tuple[ArmStream, arm_pb.ArmDescriptor]]]
StartLLM = Callable[[Script], Awaitable[tuple[FakeOpenAI, OpenAICompatibleClient]]]


class StreamOpener:
    """Serves arms (through the suite's `start_arm`) and opens Execute streams to them."""

    def __init__(self, start_arm: Callable[[Arm], Awaitable[ArmServer]]) -> None:
        self._start_arm = start_arm
        self.channels: list[grpc.aio.Channel] = []
        self.servers: list[ArmServer] = []

    async def open(self, arm: Arm) -> tuple[ArmStream, arm_pb.ArmDescriptor]:
        """Serve `arm` on port 0; open a stream, read Hello and Credit; return the descriptor."""
        server = await self._start_arm(arm)
        self.servers.append(server)
        channel = grpc.aio.insecure_channel(server.address, options=grpc_options.CHANNEL_OPTIONS)
        self.channels.append(channel)
        stream = ArmStream(channel)
        hello, _ = await stream.handshake()
        return stream, hello.descriptor

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


class FakeLLMs:
    """Fake OpenAI servers and clients of them, closed together."""

    def __init__(self) -> None:
        self._started: list[tuple[FakeOpenAI, OpenAICompatibleClient]] = []

    async def start(self, script: Script) -> tuple[FakeOpenAI, OpenAICompatibleClient]:
        """A fake server playing `script` and a quick-failing client of it."""
        fake = await FakeOpenAI(script).start()
        client = OpenAICompatibleClient(
            fake.base_url, api_key="sk-test", model="fake-model", timeout_s=5, max_retries=0
        )
        self._started.append((fake, client))
        return fake, client

    async def close(self) -> None:
        for fake, client in self._started:
            await client.aclose()
            await fake.close()


async def run(stream: ArmStream, payload: dict[str, Any], **fields: Any) -> arm_pb.ExecuteResponse:
    """Dispatch one subtask and return its Result or Failure message."""
    await stream.dispatch("s1", payload, **fields)
    while True:
        message = await stream.recv()
        if message.WhichOneof("kind") in ("result", "failure"):
            return message


def failure_of(message: arm_pb.ExecuteResponse) -> common_pb2.Failure:
    """The Failure in a message that must be one."""
    assert message.WhichOneof("kind") == "failure", message
    return message.failure.failure


def assert_true_to_schema(descriptor: arm_pb.ArmDescriptor, output: dict[str, Any]) -> None:
    """`output` validates against the output schema the arm declares."""
    schema = json_format.MessageToDict(descriptor.output_schema)
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(output)]
    assert errors == []
