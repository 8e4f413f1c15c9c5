"""One orchestrator-to-arm connection: a channel, a health watch and one Execute stream.

The connection owns the credit window: it never has more subtasks in flight than the arm has
granted. Everything it learns (hello, credit, results, loss of the stream) is reported to its
`ConnectionOwner` (the Mesh), which decides what to route where.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import arm_service_pb2_grpc as arm_grpc
from octollm.v1 import common_pb2
from octollm.v1 import orchestrator_service_pb2 as pb

log = structlog.get_logger(__name__)

MAX_CREDIT = 100_000  # NOTE: an arm granting more than this is misbehaving; cap, do not trust.
HELLO_TIMEOUT_S = 5.0
# How long close() waits for the connection's tasks, then for its channel, before giving up.
CLOSE_TIMEOUT_S = 5.0


class ProtocolViolation(Exception):
    """The arm broke the Execute protocol badly enough that the stream is closed."""


@dataclass(slots=True, eq=False)
class Pending:
    """A subtask the mesh is responsible for until it has an outcome."""

    arm_type: str
    dispatch: arm_pb.Dispatch
    future: asyncio.Future[Outcome]
    deadline: float  # loop time
    on_event: Callable[[MeshEvent], None] | None = None
    connection: ArmConnection | None = None
    failovers: int = 0
    avoid_arm: str = ""
    withdrawn: bool = False  # cancelled or expired while queued: the queue skips it
    priority: int = 0  # higher is sent first when subtasks wait for credit


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a dispatched subtask ended: exactly one of `result` and `failure` is set."""

    arm_id: str
    attempt: int
    result: arm_pb.Result | None = None
    failure: common_pb2.Failure | None = None


@dataclass(frozen=True, slots=True)
class MeshEvent:
    """Something an arm said about a subtask before its outcome."""

    kind: str  # "queued" (waiting for credit) | "dispatched" | "accepted" | "progress"
    arm_id: str
    attempt: int
    fraction: float = 0.0
    message: str = ""


class ConnectionOwner(Protocol):
    """What a connection reports to (the Mesh)."""

    def on_ready(self, conn: ArmConnection) -> None: ...
    def on_unroutable(self, conn: ArmConnection, lost: list[Pending]) -> None: ...
    def on_credit(self, conn: ArmConnection) -> None: ...
    def on_outcome(self, conn: ArmConnection, pending: Pending, outcome: Outcome) -> None: ...
    def on_requeue(self, conn: ArmConnection, pending: Pending) -> None: ...
    def claim_arm_id(self, conn: ArmConnection, arm_id: str) -> bool: ...


class MessageCount(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class CallMeter(Protocol):
    """One method's gRPC client metrics: `start`/`end` around a call, ``inc`` per message."""

    @property
    def msg_sent(self) -> MessageCount: ...
    @property
    def msg_received(self) -> MessageCount: ...
    def start(self) -> float: ...
    def end(self, code: grpc.StatusCode, started: float) -> None: ...


class RPCMetrics(Protocol):
    """The gRPC client metrics of arm connections (telemetry.grpc_client.ClientMetrics)."""

    def interceptors(self) -> list[grpc.aio.ClientInterceptor]: ...
    def meter(self, grpc_type: str, method: str) -> CallMeter: ...


@dataclass(slots=True)
class ArmStats:
    """Moving-window health of an arm, for routing and ListArms."""

    succeeded: int = 0
    failed: int = 0
    success_rate: float = 1.0
    mean_latency_s: float = 0.0
    # Outcomes seen before this connection (by other replicas, or before a restart).
    earlier: int = 0
    ALPHA: float = field(default=0.1, repr=False)

    @property
    def samples(self) -> int:
        """How many outcomes the moving averages stand for."""
        return self.earlier + self.succeeded + self.failed

    def start_from(self, success_rate: float, mean_latency_s: float, samples: int) -> None:
        """Carry on from what was seen of the arm before (when nothing was seen here yet)."""
        if self.succeeded or self.failed:
            return
        self.success_rate = min(1.0, max(0.0, success_rate))
        self.mean_latency_s = max(0.0, mean_latency_s)
        self.earlier = max(0, samples)

    def record(self, ok: bool, latency_s: float) -> None:
        if ok:
            self.succeeded += 1
        else:
            self.failed += 1
        self.success_rate += self.ALPHA * ((1.0 if ok else 0.0) - self.success_rate)
        if self.mean_latency_s == 0.0:
            self.mean_latency_s = latency_s
        else:
            self.mean_latency_s += self.ALPHA * (latency_s - self.mean_latency_s)


class Backoff:
    """Exponential backoff with full jitter (AWS style), reset after a healthy connection."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self._base, self._cap, self._n = base, cap, 0

    def reset(self) -> None:
        self._n = 0

    def next(self) -> float:
        delay = min(self._cap, self._base * (2**self._n))
        self._n = min(self._n + 1, 16)
        return random.uniform(delay / 2, delay)


# Outcomes that mean "this arm could not take it", not "the subtask failed": re-route them.
_REQUEUE_REASONS = frozenset({"ARM_DRAINING", "CREDIT_EXCEEDED"})
_EXECUTE = f"/{arm_pb.DESCRIPTOR.services_by_name['ArmService'].full_name}/Execute"


class ArmConnection:
    """Keeps one Execute stream open to `address`, reconnecting with backoff until closed."""

    def __init__(
        self,
        address: str,
        owner: ConnectionOwner,
        *,
        channel_options: list[tuple[str, int | str]],
        credentials: grpc.ChannelCredentials | None = None,
        health_service: str = "",
        rpc_metrics: RPCMetrics | None = None,
    ) -> None:
        self.address = address
        self.descriptor: arm_pb.ArmDescriptor | None = None
        self.stats = ArmStats()
        self.credits = 0
        self.in_flight: dict[str, Pending] = {}
        self._owner = owner
        self._health_service = health_service
        # NOTE: the interceptors count unary and server-stream calls only; Execute is counted
        # here (a stream-stream interceptor would slow every message down).
        interceptors = rpc_metrics.interceptors() if rpc_metrics is not None else None
        self._execute_meter = (
            rpc_metrics.meter("bidi_stream", _EXECUTE) if rpc_metrics is not None else None
        )
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(
                address, options=channel_options, interceptors=interceptors
            )
        else:
            self._channel = grpc.aio.secure_channel(
                address, credentials, options=channel_options, interceptors=interceptors
            )
        self._stub = arm_grpc.ArmServiceStub(self._channel)
        self._health_stub = health_pb2_grpc.HealthStub(self._channel)
        self._outbox: asyncio.Queue[arm_pb.ExecuteRequest] = asyncio.Queue()
        self._serving = False  # grpc.health.v1 says SERVING
        self._stream_open = False  # Hello received on a live Execute stream
        self._draining = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._log = log.bind(arm_address=address)

    # -- public view -------------------------------------------------------------------------

    @property
    def arm_id(self) -> str:
        return self.descriptor.arm_id if self.descriptor else ""

    @property
    def arm_type(self) -> str:
        return self.descriptor.arm_type if self.descriptor else ""

    @property
    def routable(self) -> bool:
        return self._serving and self._stream_open and not self._draining and not self._closed

    @property
    def health(self) -> pb.ArmHealth.ValueType:
        if self._draining:
            return pb.ARM_HEALTH_DRAINING
        if not self._stream_open:
            return pb.ARM_HEALTH_UNREACHABLE if self.descriptor else pb.ARM_HEALTH_UNSPECIFIED
        return pb.ARM_HEALTH_SERVING if self._serving else pb.ARM_HEALTH_NOT_SERVING

    def to_proto(self) -> pb.Arm:
        arm = pb.Arm(
            address=self.address,
            health=self.health,
            in_flight=len(self.in_flight),
            credits=self.credits,
            succeeded=self.stats.succeeded,
            failed=self.stats.failed,
            success_rate=self.stats.success_rate,
        )
        if self.descriptor is not None:
            arm.descriptor.CopyFrom(self.descriptor)
        arm.mean_latency.FromNanoseconds(int(self.stats.mean_latency_s * 1e9))
        return arm

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._keep_stream(), name=f"arm-stream {self.address}"),
            asyncio.create_task(self._keep_health(), name=f"arm-health {self.address}"),
        ]

    async def close(self) -> None:
        """Stop routing here, hand in-flight subtasks back to the owner, close the channel."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        # NOTE: bounded: a gRPC call or channel that never finishes closing must not hold up
        # the shutdown of every other connection.
        stuck = []
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S)
            stuck = [task.get_name() for task in pending]
        self._lose_stream()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._channel.close()
        except TimeoutError:
            stuck.append("channel")
        if stuck:
            self._log.warning("arm_connection_close_stuck", stuck=stuck)

    # -- dispatch ----------------------------------------------------------------------------

    def send(self, pending: Pending, now: float) -> None:
        """Dispatch `pending` on this stream; the caller checked `routable` and `credits`."""
        self.credits -= 1
        dispatch = pending.dispatch
        dispatch.timeout.FromNanoseconds(max(int((pending.deadline - now) * 1e9), 1))
        pending.connection = self
        self.in_flight[dispatch.subtask_id] = pending
        self._outbox.put_nowait(arm_pb.ExecuteRequest(dispatch=dispatch))
        if pending.on_event is not None:
            pending.on_event(MeshEvent("dispatched", self.arm_id, dispatch.attempt))

    def cancel(self, subtask_id: str, reason: str) -> Pending | None:
        """Forget a subtask and tell the arm to stop it; anything the arm sends later is ignored."""
        pending = self.in_flight.pop(subtask_id, None)
        if pending is not None and self._stream_open:
            self._outbox.put_nowait(
                arm_pb.ExecuteRequest(cancel=arm_pb.Cancel(subtask_id=subtask_id, reason=reason))
            )
        return pending

    # -- the Execute stream --------------------------------------------------------------------

    async def _keep_stream(self) -> None:
        backoff = Backoff()
        while not self._closed:
            try:
                await self._run_stream(backoff)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self._log.info("arm_stream_lost", code=exc.code().name, details=exc.details())
            except ProtocolViolation as exc:
                self._log.warning("arm_protocol_violation", error=str(exc))
            except Exception:
                self._log.exception("arm_stream_error")
            finally:
                self._lose_stream()
            await asyncio.sleep(backoff.next())

    async def _run_stream(self, backoff: Backoff) -> None:
        meter = self._execute_meter
        started = meter.start() if meter is not None else 0.0
        received = meter.msg_received if meter is not None else None
        # NOTE: the stream ends OK at EOF, with the error's code on an RPC error; anything else
        # ends it by call.cancel() below.
        code = grpc.StatusCode.CANCELLED
        call = self._stub.Execute()
        writer: asyncio.Task[None] | None = None
        try:
            first = await asyncio.wait_for(call.read(), HELLO_TIMEOUT_S)
            if first is grpc.aio.EOF:
                code = grpc.StatusCode.OK
            elif received is not None:
                received.inc()
            if first is grpc.aio.EOF or not first.HasField("hello"):
                raise ProtocolViolation("first message on Execute must be Hello")
            descriptor = first.hello.descriptor
            if not descriptor.arm_id or not descriptor.arm_type:
                raise ProtocolViolation("Hello must carry arm_id and arm_type")
            if self.descriptor is not None and self.descriptor.arm_id != descriptor.arm_id:
                self._log.info("arm_replaced", old=self.descriptor.arm_id, new=descriptor.arm_id)
            if not self._owner.claim_arm_id(self, descriptor.arm_id):
                raise ProtocolViolation(f"arm id {descriptor.arm_id!r} is taken by another address")
            self.descriptor = descriptor
            self._log = log.bind(arm_address=self.address, arm_id=descriptor.arm_id)
            self._outbox = asyncio.Queue()
            self._stream_open = True
            self._draining = False
            backoff.reset()
            writer = asyncio.create_task(self._write(call), name=f"arm-writer {self.address}")
            self._log.info("arm_stream_open", arm_type=descriptor.arm_type)
            self._owner.on_ready(self)
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    code = grpc.StatusCode.OK
                    self._log.info("arm_stream_ended")
                    return
                if received is not None:
                    received.inc()
                self._on_message(msg)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            raise
        finally:
            if writer is not None:
                writer.cancel()
            call.cancel()
            if meter is not None:
                meter.end(code, started)

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        outbox = self._outbox
        sent = self._execute_meter.msg_sent if self._execute_meter is not None else None
        while True:
            await call.write(await outbox.get())
            if sent is not None:
                sent.inc()

    def _on_message(self, msg: arm_pb.ExecuteResponse) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "result":
            self._finish(msg.result.subtask_id, msg.result.attempt, result=msg.result)
        elif kind == "failure":
            f = msg.failure
            self._finish(f.subtask_id, f.attempt, failure=f.failure)
        elif kind == "credit":
            if msg.credit.n <= 0:
                self._log.warning("arm_bad_credit", n=msg.credit.n)
                return
            self.credits = min(self.credits + msg.credit.n, MAX_CREDIT)
            self._owner.on_credit(self)
        elif kind == "accepted" or kind == "progress":
            body = msg.accepted if kind == "accepted" else msg.progress
            pending = self.in_flight.get(body.subtask_id)
            if pending is None or pending.on_event is None:
                return
            if kind == "accepted":
                event = MeshEvent("accepted", self.arm_id, pending.dispatch.attempt)
            else:
                p = msg.progress
                fraction = min(max(p.fraction, 0.0), 1.0)
                event = MeshEvent(
                    "progress", self.arm_id, pending.dispatch.attempt, fraction, p.message
                )
            pending.on_event(event)
        elif kind == "hello":
            self._log.warning("arm_repeated_hello")
        elif kind is None:
            self._log.warning("arm_empty_message")
        # Pong: liveness is covered by HTTP/2 keepalive; nothing to do.

    def _finish(
        self,
        subtask_id: str,
        attempt: int,
        *,
        result: arm_pb.Result | None = None,
        failure: common_pb2.Failure | None = None,
    ) -> None:
        pending = self.in_flight.get(subtask_id)
        if pending is None:
            # Unknown, already cancelled, or already answered: never let it touch other work.
            self._log.debug("arm_outcome_ignored", subtask_id=subtask_id)
            return
        if attempt and attempt != pending.dispatch.attempt:
            self._log.warning(
                "arm_stale_attempt",
                subtask_id=subtask_id,
                got=attempt,
                want=pending.dispatch.attempt,
            )
            return
        del self.in_flight[subtask_id]
        if failure is not None and failure.reason in _REQUEUE_REASONS:
            if failure.reason == "ARM_DRAINING":
                self._draining = True
            self._owner.on_requeue(self, pending)
            return
        outcome = Outcome(self.arm_id, pending.dispatch.attempt, result=result, failure=failure)
        self._owner.on_outcome(self, pending, outcome)

    def _lose_stream(self) -> None:
        was_routable = self.routable
        self._stream_open = False
        self.credits = 0
        lost = list(self.in_flight.values())
        self.in_flight.clear()
        if lost or was_routable:
            self._owner.on_unroutable(self, lost)

    # -- grpc.health.v1 ----------------------------------------------------------------------

    async def _keep_health(self) -> None:
        backoff = Backoff()
        request = health_pb2.HealthCheckRequest(service=self._health_service)
        while not self._closed:
            try:
                call = self._health_stub.Watch(request, wait_for_ready=True)
                async for response in call:
                    serving = response.status == health_pb2.HealthCheckResponse.SERVING
                    backoff.reset()
                    self._set_serving(serving)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self._log.info("arm_health_watch_lost", code=exc.code().name)
            self._set_serving(False)
            await asyncio.sleep(backoff.next())

    def _set_serving(self, serving: bool) -> None:
        if serving == self._serving:
            return
        was_routable = self.routable
        self._serving = serving
        self._log.info("arm_health", serving=serving)
        if serving:
            self._draining = False
            if self.routable:
                self._owner.on_ready(self)
        elif was_routable:
            # In-flight work keeps running (the arm drains it); only new routing stops.
            self._owner.on_unroutable(self, [])
