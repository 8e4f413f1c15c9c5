"""The mesh: every arm connection, a dispatch queue per arm type, routing and failover.

`Mesh.execute` is the one entry point: it queues a Dispatch for an arm type and returns its
Outcome. The mesh sends it when a routable arm of that type has credit, re-dispatches it (attempt
+1) when the arm's stream breaks, and withdraws it (Cancel to the arm) when the caller is cancelled
or the subtask's deadline passes. An accepted subtask is never dropped: it ends in an Outcome.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence

import grpc
import structlog
from google.protobuf.message import DecodeError
from octollm.v1 import arm_service_pb2 as arm_pb
from octollm.v1 import common_pb2

from .connection import ArmConnection, MeshEvent, Outcome, Pending, RPCMetrics
from .dispatch_queue import DispatchQueue

log = structlog.get_logger(__name__)

# (ready arms of one type with credit, arm id to avoid, capabilities the subtask needs) -> arm
Picker = Callable[[list[ArmConnection], str, Sequence[str]], ArmConnection]


def mesh_failure(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    retryable: bool,
    metadata: dict[str, str] | None = None,
) -> common_pb2.Failure:
    """A Failure produced by the orchestrator itself (not by an arm)."""
    return common_pb2.Failure(
        code=code.value[0], reason=reason, message=message, retryable=retryable, metadata=metadata
    )


class Mesh:
    """Routes subtasks to arms over their Execute streams; see the module docstring."""

    def __init__(
        self,
        *,
        channel_options: list[tuple[str, int | str]],
        credentials: grpc.ChannelCredentials | None = None,
        default_timeout_s: float = 60.0,
        max_failovers: int = 3,
        picker: Picker | None = None,
        rpc_metrics: RPCMetrics | None = None,
    ) -> None:
        """`picker` chooses among the ready arms of one type (default: least loaded);
        `rpc_metrics` counts the gRPC calls of every arm connection (client side)."""
        self._channel_options = channel_options
        self._credentials = credentials
        self._rpc_metrics = rpc_metrics
        self._default_timeout_s = default_timeout_s
        self._max_failovers = max_failovers
        self._pick = picker or least_loaded
        self._by_address: dict[str, ArmConnection] = {}
        self._by_arm_id: dict[str, ArmConnection] = {}
        self._by_type: dict[str, list[ArmConnection]] = defaultdict(list)
        self._queues: dict[str, DispatchQueue] = defaultdict(DispatchQueue)
        self._withdrawn: dict[str, int] = defaultdict(int)  # withdrawn entries left in a queue
        self._changed = asyncio.Event()

    # -- membership --------------------------------------------------------------------------

    def add(self, address: str) -> ArmConnection:
        """Start keeping a connection to `address` (idempotent)."""
        conn = self._by_address.get(address)
        if conn is None:
            conn = ArmConnection(
                address,
                self,
                channel_options=self._channel_options,
                credentials=self._credentials,
                rpc_metrics=self._rpc_metrics,
            )
            self._by_address[address] = conn
            conn.start()
            log.info("arm_endpoint_added", arm_address=address)
        return conn

    async def remove(self, address: str) -> None:
        """Stop using `address`; its in-flight subtasks fail over to other arms."""
        conn = self._by_address.pop(address, None)
        if conn is None:
            return
        await conn.close()
        if self._by_arm_id.get(conn.arm_id) is conn:
            del self._by_arm_id[conn.arm_id]
        if conn in self._by_type.get(conn.arm_type, ()):
            self._by_type[conn.arm_type].remove(conn)
        log.info("arm_endpoint_removed", arm_address=address)
        self._notify()

    async def close(self) -> None:
        for address in list(self._by_address):
            await self.remove(address)

    def arms(self) -> list[ArmConnection]:
        """Every connection that has introduced itself, ordered by type then id."""
        # NOTE: list() snapshots the dict atomically, so a metrics scrape on another thread
        # never iterates a dict the loop is changing.
        known = [c for c in list(self._by_address.values()) if c.descriptor is not None]
        return sorted(known, key=lambda c: (c.arm_type, c.arm_id))

    def arm(self, arm_id: str) -> ArmConnection | None:
        return self._by_arm_id.get(arm_id)

    def arm_types(self) -> set[str]:
        """Arm types some known arm serves (routable now or reconnecting)."""
        return {t for t, conns in self._by_type.items() if conns}

    def routable_types(self) -> set[str]:
        return {t for t, conns in self._by_type.items() if any(c.routable for c in conns)}

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate()` holds; it is re-checked whenever an arm joins, leaves or
        changes health (for readiness waits and tests)."""
        # NOTE: the check and the capture of the current event happen in one step, and every
        # change swaps in a fresh event, so no change between them can be missed.
        while not predicate():
            await self._changed.wait()

    def queue_depths(self) -> dict[str, int]:
        """Subtasks waiting for credit, by arm type (safe to call from another thread)."""
        withdrawn = dict(self._withdrawn)
        return {
            arm_type: len(queue) - withdrawn.get(arm_type, 0)
            for arm_type, queue in list(self._queues.items())
        }

    # -- dispatch ----------------------------------------------------------------------------

    async def execute(
        self,
        arm_type: str,
        dispatch: arm_pb.Dispatch,
        *,
        timeout_s: float | None = None,
        on_event: Callable[[MeshEvent], None] | None = None,
        avoid_arm: str = "",
        priority: int = 0,
    ) -> Outcome:
        """Run one subtask on an arm of `arm_type` and return how it ended.

        Never raises for arm-side problems: they come back as `Outcome.failure`. Cancelling the
        caller cancels the subtask at the arm. `avoid_arm` (an arm id) is used only when no other
        arm of the type can take the subtask (a reroute after that arm failed). While subtasks
        wait for credit, a higher `priority` (0-4) is sent first, FIFO within one priority.
        """
        if not self._by_type.get(arm_type):
            failure = mesh_failure(
                grpc.StatusCode.UNAVAILABLE,
                "NO_ARM_FOR_TYPE",
                f"no arm of type {arm_type!r} is known to the mesh",
                retryable=True,
            )
            return Outcome("", dispatch.attempt, failure=failure)
        timeout = self._default_timeout_s if timeout_s is None else timeout_s
        if timeout <= 0:
            failure = mesh_failure(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "SUBTASK_TIMEOUT",
                "the subtask's deadline had already passed; it was not dispatched",
                retryable=False,
            )
            return Outcome("", dispatch.attempt, failure=failure)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = Pending(
            arm_type,
            dispatch,
            loop.create_future(),
            deadline,
            on_event,
            avoid_arm=avoid_arm,
            priority=priority,
        )
        self._queues[arm_type].append(pending)
        self._pump(arm_type)
        _report_queued([pending])
        # NOTE: a plain timer, not asyncio.timeout(): it is on every dispatch, and expiry only
        # has to settle the future.
        timer = loop.call_at(deadline, self._expire, pending, timeout)
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._withdraw(pending, "cancelled")
            raise
        finally:
            timer.cancel()

    def _expire(self, pending: Pending, timeout: float) -> None:
        if pending.future.done():
            return
        arm_id = pending.connection.arm_id if pending.connection else ""
        self._withdraw(pending, "deadline exceeded")
        failure = mesh_failure(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "SUBTASK_TIMEOUT",
            f"subtask did not finish within {timeout:.3f}s",
            retryable=True,
        )
        pending.future.set_result(Outcome(arm_id, pending.dispatch.attempt, failure=failure))

    def _withdraw(self, pending: Pending, reason: str) -> None:
        if pending.connection is not None:
            pending.connection.cancel(pending.dispatch.subtask_id, reason)
            return
        queue = self._queues.get(pending.arm_type)
        if not queue or pending.withdrawn:
            return
        pending.withdrawn = True
        if queue.pop_if_last(pending):
            return
        # NOTE: left in place (the pump skips it) and swept out once withdrawn entries are
        # half the queue: withdrawing one of n queued subtasks must not cost a scan of n.
        self._withdrawn[pending.arm_type] += 1
        if self._withdrawn[pending.arm_type] * 2 > len(queue):
            self._queues[pending.arm_type] = DispatchQueue(p for p in queue if not p.withdrawn)
            self._withdrawn[pending.arm_type] = 0

    def _pump(self, arm_type: str) -> None:
        queue = self._queues.get(arm_type)
        if not queue:
            return
        ready = [c for c in self._by_type.get(arm_type, ()) if c.routable and c.credits > 0]
        if not ready:
            return
        now = asyncio.get_running_loop().time()
        while queue and ready:
            pending = queue.popleft()
            if pending.withdrawn:
                self._withdrawn[arm_type] = max(0, self._withdrawn[arm_type] - 1)
                continue
            if pending.future.done():
                continue
            conn = self._pick(ready, pending.avoid_arm, pending.dispatch.required_capabilities)
            conn.send(pending, now)
            if conn.credits <= 0:
                ready.remove(conn)

    # -- ConnectionOwner ---------------------------------------------------------------------

    def claim_arm_id(self, conn: ArmConnection, arm_id: str) -> bool:
        holder = self._by_arm_id.get(arm_id)
        if holder is not None and holder is not conn and holder.address in self._by_address:
            log.warning(
                "arm_id_conflict", arm_id=arm_id, address=conn.address, holder=holder.address
            )
            return False
        if conn.descriptor is not None and self._by_arm_id.get(conn.arm_id) is conn:
            del self._by_arm_id[conn.arm_id]
        self._by_arm_id[arm_id] = conn
        return True

    def on_ready(self, conn: ArmConnection) -> None:
        for arm_type, conns in self._by_type.items():
            if conn in conns and arm_type != conn.arm_type:
                conns.remove(conn)
        if conn not in self._by_type[conn.arm_type]:
            self._by_type[conn.arm_type].append(conn)
        self._notify()
        self._pump(conn.arm_type)

    def on_credit(self, conn: ArmConnection) -> None:
        self._pump(conn.arm_type)

    def on_outcome(self, conn: ArmConnection, pending: Pending, outcome: Outcome) -> None:
        duration = outcome.result.provenance.duration if outcome.result else None
        latency = duration.ToNanoseconds() / 1e9 if duration is not None else 0.0
        conn.stats.record(outcome.result is not None, latency)
        if not pending.future.done():
            pending.future.set_result(outcome)

    def on_requeue(self, conn: ArmConnection, pending: Pending) -> None:
        pending.connection = None
        self._queues[pending.arm_type].appendleft(pending)
        self._pump(pending.arm_type)
        _report_queued([pending])

    def on_unroutable(self, conn: ArmConnection, lost: list[Pending]) -> None:
        self._notify()
        for pending in lost:
            if pending.future.done():
                continue
            pending.connection = None
            pending.failovers += 1
            subtask_id = pending.dispatch.subtask_id
            undeliverable = self._undeliverable(pending.dispatch)
            if undeliverable is not None:
                # NOTE: checked only here, off the hot path: the stream broke while this was in
                # flight, and sending it again would break the next stream too.
                pending.future.set_result(
                    Outcome(conn.arm_id, pending.dispatch.attempt, failure=undeliverable)
                )
                continue
            if pending.failovers > self._max_failovers:
                failure = mesh_failure(
                    grpc.StatusCode.UNAVAILABLE,
                    "ARM_LOST",
                    f"arm connection lost {pending.failovers} times while running the subtask",
                    retryable=True,
                )
                pending.future.set_result(
                    Outcome(conn.arm_id, pending.dispatch.attempt, failure=failure)
                )
                continue
            # Same subtask id, attempt + 1: an arm that saw the first attempt can deduplicate.
            pending.dispatch.attempt += 1
            log.info(
                "subtask_failover",
                subtask_id=subtask_id,
                arm_id=conn.arm_id,
                attempt=pending.dispatch.attempt,
            )
            self._queues[pending.arm_type].appendleft(pending)
        if lost:
            self._pump(lost[0].arm_type)
            _report_queued(lost)

    def _undeliverable(self, dispatch: arm_pb.Dispatch) -> common_pb2.Failure | None:
        """Why no arm can take `dispatch` on an Execute stream, or None if one can: larger than
        the channel may send, or nested past protobuf's 100 levels (the arm cannot parse it)."""
        limit = int(dict(self._channel_options).get("grpc.max_send_message_length", 4 << 20))
        try:
            request = arm_pb.ExecuteRequest(dispatch=dispatch)
            size = request.ByteSize()
            if size > limit:
                return mesh_failure(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "DISPATCH_TOO_LARGE",
                    f"the subtask's dispatch is {size} bytes, more than the {limit} an arm "
                    "stream carries",
                    retryable=False,
                )
            arm_pb.ExecuteRequest.FromString(request.SerializeToString())
        except DecodeError:
            return mesh_failure(
                grpc.StatusCode.INVALID_ARGUMENT,
                "DISPATCH_TOO_DEEP",
                "the subtask's input or context is nested deeper than protobuf's 100 levels, "
                "so no arm can read it",
                retryable=False,
            )
        return None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def least_loaded(
    ready: list[ArmConnection], avoid_arm: str, required_capabilities: Sequence[str] = ()
) -> ArmConnection:
    """The default picker: the ready arm with the fewest subtasks in flight, not `avoid_arm`
    when another is ready (it ignores capabilities; the orchestrator wires in the router)."""
    if avoid_arm:
        ready = [c for c in ready if c.arm_id != avoid_arm] or ready
    return ready[0] if len(ready) == 1 else min(ready, key=lambda c: len(c.in_flight))


def _report_queued(pendings: list[Pending]) -> None:
    """Tell the owners of subtasks that could not be sent at once that they wait for credit."""
    for pending in pendings:
        if pending.connection is None and not pending.future.done() and pending.on_event:
            pending.on_event(MeshEvent("queued", "", pending.dispatch.attempt))
