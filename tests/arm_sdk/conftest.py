"""Fixtures for arm_sdk tests: real arm servers on port 0 and real channels to them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from arm_sdk import ArmServer, grpc_options
from tests.arm_sdk.arm_stream import ArmStream, Connect, OpenStream, Serve


@pytest.fixture
def serve(start_arm: Serve) -> Serve:
    """Start arms on 127.0.0.1:0 (the suite-wide `start_arm`); drained after the test."""
    return start_arm


@pytest.fixture
async def connect(serve: Serve) -> AsyncIterator[Connect]:
    """Open channels to arm servers, with the orchestrator's options; close them after."""
    channels: list[grpc.aio.Channel] = []

    def open_channel(server: ArmServer) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(server.address, options=grpc_options.CHANNEL_OPTIONS)
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        await channel.close()


@pytest.fixture
def open_stream(connect: Connect) -> OpenStream:
    """Open an Execute stream to an arm and read its Hello and initial Credit."""

    async def open_(server: ArmServer) -> ArmStream:
        stream = ArmStream(connect(server))
        await stream.handshake()
        return stream

    return open_
