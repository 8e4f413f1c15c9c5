"""Graceful drain: health flips first, new work is refused, in-flight work finishes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from arm_sdk import ArmServer, SubtaskInput
from tests.arm_sdk.arm_stream import HANG_GUARD_S, ArmStream, Connect, Serve, kinds, make_arm

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ARM_SERVICE = "octollm.v1.ArmService"


async def wait_until_draining(server: ArmServer) -> None:
    """Wait for the drain task to pass the health flip and start refusing work."""
    async with asyncio.timeout(HANG_GUARD_S):
        # NOTE: polling is fine here: `draining` is a plain flag with no event to wait on.
        while not server.draining:
            await asyncio.sleep(0.01)


async def test_drain_refuses_new_work_and_finishes_in_flight(
    serve: Serve, connect: Connect
) -> None:
    """drain(): NOT_SERVING via Check and Watch, ARM_DRAINING for new dispatches, no more
    credit, the in-flight subtask still delivers its Result, then the stream and server end."""
    release = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await release.wait()
        return {"done": inp.subtask_id}

    server = await serve(make_arm(handler))
    channel = connect(server)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", ARM_SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service=ARM_SERVICE))
    assert (await asyncio.wait_for(watch.read(), HANG_GUARD_S)).status == SERVING

    stream = ArmStream(channel)
    await stream.handshake()
    await stream.dispatch("in-flight")
    await stream.recv_until("accepted")

    drain = asyncio.create_task(server.drain(grace=HANG_GUARD_S))
    assert (await asyncio.wait_for(watch.read(), HANG_GUARD_S)).status == NOT_SERVING
    for service in ("", ARM_SERVICE):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == NOT_SERVING
    await wait_until_draining(server)

    await stream.dispatch("late", attempt=2)
    refused = await stream.recv()
    f = refused.failure
    assert (f.subtask_id, f.attempt) == ("late", 2)
    assert f.failure.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert f.failure.reason == "ARM_DRAINING"
    assert f.failure.retryable is True
    assert not drain.done()

    release.set()
    rest = await stream.recv_end()
    assert kinds(rest) == ["result"]
    assert rest[0].result.subtask_id == "in-flight"
    assert await stream.call.code() == grpc.StatusCode.OK

    watch.cancel()
    await asyncio.wait_for(drain, HANG_GUARD_S)
    await asyncio.wait_for(server.wait_for_termination(), HANG_GUARD_S)


async def test_stream_opened_while_draining_gets_hello_but_no_credit(
    serve: Serve, connect: Connect
) -> None:
    """A stream that opens during a drain learns who the arm is but gets no credit."""
    release = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        await release.wait()
        return {}

    server = await serve(make_arm(handler))
    channel = connect(server)
    first = ArmStream(channel)
    await first.handshake()
    await first.dispatch("hold")
    await first.recv_until("accepted")
    drain = asyncio.create_task(server.drain(grace=HANG_GUARD_S))
    await wait_until_draining(server)

    late = ArmStream(channel)
    hello = await late.recv()
    assert hello.WhichOneof("kind") == "hello"
    await late.dispatch("x")
    refused = await late.recv()
    assert refused.failure.failure.reason == "ARM_DRAINING"

    release.set()
    assert kinds(await first.recv_end()) == ["result"]
    assert await late.recv_end() == []
    await asyncio.wait_for(drain, HANG_GUARD_S)


async def test_drain_grace_expiry_cancels_stragglers(serve: Serve, connect: Connect) -> None:
    """Handlers still running when the grace runs out are cancelled and the server stops."""
    saw_cancel = asyncio.Event()

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            saw_cancel.set()
            raise
        return {}

    server = await serve(make_arm(handler))
    stream = ArmStream(connect(server))
    await stream.handshake()
    await stream.dispatch("stuck")
    await stream.recv_until("accepted")
    await asyncio.wait_for(server.drain(grace=0.05), HANG_GUARD_S)
    await asyncio.wait_for(saw_cancel.wait(), HANG_GUARD_S)
    assert await stream.recv_end() == []
    await asyncio.wait_for(server.wait_for_termination(), HANG_GUARD_S)


async def test_drain_twice_waits_for_the_same_drain(serve: Serve) -> None:
    """A second drain() call returns once the first drain has finished."""

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    server = await serve(make_arm(handler))
    await asyncio.wait_for(
        asyncio.gather(server.drain(grace=1.0), server.drain(grace=1.0)), HANG_GUARD_S
    )
    assert server.draining


ROOT = Path(__file__).resolve().parents[2]

_FLOOD_THEN_DRAIN = """
import asyncio, gc
import grpc
import pytest
from arm_sdk import SubtaskInput, report_progress
from tests.arm_sdk.arm_stream import ArmStream, make_arm

async def main():
    async def handler(inp: SubtaskInput):
        for _ in range(2000):
            await report_progress(0.5, "x" * 4000)  # far more than the HTTP/2 window
            await asyncio.sleep(0)
        return {}
    server = await make_arm(handler).start("127.0.0.1:0")
    channel = grpc.aio.insecure_channel(server.address)
    stream = ArmStream(channel)
    await stream.handshake()
    await stream.dispatch("flood")
    await asyncio.sleep(0.5)  # the arm blocks on flow control: this client never reads
    await server.drain(grace=0)
    await channel.close()
    for _ in range(5):
        gc.collect()
        await asyncio.sleep(0.05)
    print("survived", flush=True)

asyncio.run(main())
"""


async def test_drain_while_blocked_on_a_full_stream_does_not_crash() -> None:
    """Draining while a stream is stuck on flow control ends cleanly (no use of a freed call)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FLOOD_THEN_DRAIN,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert out.decode().splitlines()[-1] == "survived"


async def test_a_server_that_never_stops_does_not_hang_the_drain(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain gives the gRPC server its grace plus a bounded slack, then goes on: stop hooks
    still run and the drain returns, with a warning naming what was abandoned."""
    import structlog

    from arm_sdk import _server

    async def handler(inp: SubtaskInput) -> dict[str, Any]:
        return {}

    arm = make_arm(handler)
    hooked = asyncio.Event()

    @arm.on_stop
    async def mark() -> None:
        hooked.set()

    server = await serve(arm)
    grpc_server = server._server
    real_stop = grpc_server.stop
    never = asyncio.Event()

    async def stuck_stop(grace: float | None) -> None:
        await never.wait()

    monkeypatch.setattr(_server, "SERVER_STOP_SLACK_S", 0.2)
    monkeypatch.setattr(grpc_server, "stop", stuck_stop)
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(server.drain(grace=0), HANG_GUARD_S)
    assert hooked.is_set()
    assert "arm_server_stop_abandoned" in [e["event"] for e in logs]
    await real_stop(0)  # the real server, stopped for the fixture's teardown
