"""One Execute stream on the arm side: credit window, dispatch, cancel, progress, replies.

Outgoing messages go through one queue drained by the stream's writer (the servicer's async
generator); incoming ones are read by a separate task, so a slow handler never blocks reading
and writes never interleave.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import structlog
from octollm.v1 import arm_service_pb2 as arm_pb

from arm_sdk._errors import ArmError
from arm_sdk._metrics import ArmMetrics
from arm_sdk._progress import current_subtask
from arm_sdk._subtask import Handler, SubtaskInput, SubtaskOutput

log = structlog.get_logger(__name__)

_CANCELLED = grpc.StatusCode.CANCELLED.value[0]
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class _Marker(enum.Enum):
    """Non-message items on a stream's outgoing queue."""

    SLOT_FREED = enum.auto()
    FLUSH_CREDIT = enum.auto()
    END = enum.auto()


@dataclass(slots=True, eq=False)
class ArmRuntime:
    """What every Execute stream of one running arm server shares."""

    descriptor: arm_pb.ArmDescriptor
    handler: Handler
    draining: bool = False
    sessions: set[ExecuteSession] = field(default_factory=set)
    metrics: ArmMetrics | None = None

    def in_flight(self) -> list[asyncio.Task[None]]:
        """Handler tasks running on any stream."""
        return [task for session in self.sessions for task in session.running.values()]


class ExecuteSession:
    """State of one Execute stream; ``stream()`` is the servicer's response iterator."""

    __slots__ = (
        "_arm_id",
        "_cancel_requested",
        "_closing",
        "_credit_due",
        "_credit_flush_at",
        "_credit_low_water",
        "_granted",
        "_out",
        "_rt",
        "_unaccepted",
        "running",
    )

    def __init__(self, runtime: ArmRuntime) -> None:
        self._rt = runtime
        self._arm_id = runtime.descriptor.arm_id
        self._out: asyncio.Queue[arm_pb.ExecuteResponse | _Marker] = asyncio.Queue()
        self.running: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        # Running subtasks whose Accepted is not sent yet: subtask id -> attempt.
        self._unaccepted: dict[str, int] = {}
        # Credit granted to the orchestrator and not yet consumed by a Dispatch.
        self._granted = 0
        # Slots freed and reported whose Credit is not sent yet (coalesced into one Credit{n}).
        self._credit_due = 0
        # NOTE: credit is returned in batches, like HTTP/2 WINDOW_UPDATE: once a quarter of the
        # window is owed, or when the writer is idle and the orchestrator holds less than half
        # of it. A Credit per Result would double the messages on the wire for nothing.
        self._credit_flush_at = max(1, runtime.descriptor.max_concurrency // 4)
        self._credit_low_water = max(1, (runtime.descriptor.max_concurrency + 1) // 2)
        self._closing = False

    async def stream(
        self, requests: AsyncIterator[arm_pb.ExecuteRequest]
    ) -> AsyncIterator[arm_pb.ExecuteResponse]:
        """Yield Hello, the initial Credit, then every reply until the stream ends."""
        rt = self._rt
        rt.sessions.add(self)
        reader: asyncio.Task[None] | None = None
        try:
            yield arm_pb.ExecuteResponse(hello=arm_pb.Hello(descriptor=rt.descriptor))
            if not rt.draining:
                self._granted = rt.descriptor.max_concurrency
                yield arm_pb.ExecuteResponse(credit=arm_pb.Credit(n=self._granted))
            reader = asyncio.create_task(self._read(requests))
            out = self._out
            while True:
                item = await out.get()
                if item is _Marker.SLOT_FREED:
                    # NOTE: counted here, behind the terminal message it pays for in the queue,
                    # so a Credit is never written before that Result or SubtaskFailure.
                    self._credit_due += 1
                elif item is _Marker.END:
                    break
                elif item is not _Marker.FLUSH_CREDIT:
                    yield item
                due = self._credit_due
                if due and (
                    due >= self._credit_flush_at
                    or (out.empty() and self._granted < self._credit_low_water)
                ):
                    self._credit_due = 0
                    if not rt.draining:
                        self._granted += due
                        yield arm_pb.ExecuteResponse(credit=arm_pb.Credit(n=due))
        finally:
            rt.sessions.discard(self)
            if reader is not None:
                reader.cancel()
            self.close()

    def close(self) -> None:
        """End the stream: cancel its handlers and let the writer flush what is queued."""
        if self._closing:
            return
        self._closing = True
        for task in list(self.running.values()):
            task.cancel()
        self._out.put_nowait(_Marker.END)

    def progress(self, subtask_id: str, fraction: float, message: str) -> None:
        """Queue a Progress message for a subtask still running on this stream."""
        if self._closing or subtask_id not in self.running:
            return
        if subtask_id in self._unaccepted:
            # A handler reporting progress before its first suspension: Accepted still comes first.
            self._accept(subtask_id)
        self._out.put_nowait(
            arm_pb.ExecuteResponse(
                progress=arm_pb.Progress(subtask_id=subtask_id, fraction=fraction, message=message)
            )
        )

    async def _read(self, requests: AsyncIterator[arm_pb.ExecuteRequest]) -> None:
        try:
            async for request in requests:
                kind = request.WhichOneof("kind")
                if kind == "dispatch":
                    self._dispatch(request.dispatch)
                elif kind == "cancel":
                    self._cancel(request.cancel)
                elif kind == "ping":
                    self._out.put_nowait(
                        arm_pb.ExecuteResponse(pong=arm_pb.Pong(nonce=request.ping.nonce))
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The orchestrator went away mid-stream; its handlers are cancelled below.
            log.info("execute_stream_broken", arm_id=self._arm_id, error=repr(exc))
        finally:
            self.close()

    def _dispatch(self, dispatch: arm_pb.Dispatch) -> None:
        subtask_id = dispatch.subtask_id
        if subtask_id in self.running:
            log.warning(
                "duplicate_dispatch_ignored",
                arm_id=self._arm_id,
                subtask_id=subtask_id,
                attempt=dispatch.attempt,
            )
            return
        if self._rt.draining:
            self._out.put_nowait(
                _failure(
                    subtask_id,
                    dispatch.attempt,
                    _UNAVAILABLE,
                    "arm is draining and takes no new subtasks",
                    "ARM_DRAINING",
                    retryable=True,
                )
            )
            return
        if self._granted <= 0:
            self._out.put_nowait(
                _failure(
                    subtask_id,
                    dispatch.attempt,
                    _RESOURCE_EXHAUSTED,
                    "dispatch exceeds the credit granted on this stream",
                    "CREDIT_EXCEEDED",
                    retryable=True,
                )
            )
            return
        self._granted -= 1
        if self._credit_due and self._granted < self._credit_low_water:
            self._out.put_nowait(_Marker.FLUSH_CREDIT)  # wake the writer to return owed credit
        try:
            inp = SubtaskInput.from_proto(dispatch)
        except ValueError as exc:
            # NOTE: e.g. NaN in the input, which JSON cannot hold: fail this subtask, not the
            # stream (a broken stream would fail over every subtask on it, this one again).
            self._out.put_nowait(
                _failure(
                    subtask_id,
                    dispatch.attempt,
                    _INVALID_ARGUMENT,
                    f"the dispatch cannot be read as JSON: {exc}",
                    "BAD_DISPATCH",
                    retryable=False,
                )
            )
            self._out.put_nowait(_Marker.SLOT_FREED)
            return
        self.running[subtask_id] = asyncio.create_task(self._run(inp))
        self._unaccepted[subtask_id] = dispatch.attempt
        # NOTE: Accepted is optional in the protocol. It is sent only if the handler is still
        # running after its first step, so a handler that answers at once costs one message.
        asyncio.get_running_loop().call_soon(self._accept, subtask_id)

    def _accept(self, subtask_id: str) -> None:
        attempt = self._unaccepted.pop(subtask_id, None)
        if attempt is not None and not self._closing:
            self._out.put_nowait(
                arm_pb.ExecuteResponse(
                    accepted=arm_pb.Accepted(subtask_id=subtask_id, attempt=attempt)
                )
            )

    def _cancel(self, cancel: arm_pb.Cancel) -> None:
        task = self.running.get(cancel.subtask_id)
        if task is None:
            return
        self._cancel_requested.add(cancel.subtask_id)
        task.cancel()

    async def _run(self, inp: SubtaskInput) -> None:
        subtask_id = inp.subtask_id
        current_subtask.set((self, subtask_id))
        # NOTE: this runs in the subtask's own asyncio task (its own context), so whatever the
        # handler logs carries the ids, including the W3C trace id sent by the orchestrator.
        structlog.contextvars.bind_contextvars(
            arm_id=self._arm_id,
            task_id=inp.task_id,
            subtask_id=subtask_id,
            attempt=inp.attempt,
            trace_id=_trace_id(inp.traceparent),
        )
        started = time.monotonic_ns()
        deadline: asyncio.Timeout | None = None
        message: arm_pb.ExecuteResponse
        try:
            if inp.timeout is None:
                produced = await self._rt.handler(inp)
            else:
                deadline = asyncio.timeout(inp.timeout)
                async with deadline:
                    produced = await self._rt.handler(inp)
            message = self._result(inp, produced, started)
        except asyncio.CancelledError as exc:
            if subtask_id in self._cancel_requested:
                message = _cancelled(inp, started)
            elif self._closing or _being_cancelled():
                raise
            else:
                # A CancelledError the handler let escape from something it awaited, while
                # this subtask itself was not cancelled: a handler bug, not a cancel.
                message = self._handler_error(inp, exc, started)
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                message = _failure(
                    subtask_id,
                    inp.attempt,
                    _DEADLINE_EXCEEDED,
                    f"subtask did not finish within its {inp.timeout:g} s timeout",
                    "SUBTASK_TIMEOUT",
                    retryable=True,
                    started=started,
                )
            else:
                message = self._handler_error(inp, exc, started)
        except ArmError as exc:
            message = _failure(
                subtask_id,
                inp.attempt,
                exc.code.value[0],
                exc.message,
                exc.reason,
                retryable=exc.retryable,
                metadata=exc.metadata,
                started=started,
                retry_after=exc.retry_after,
            )
        except Exception as exc:
            message = self._handler_error(inp, exc, started)
        finally:
            del self.running[subtask_id]
            self._unaccepted.pop(subtask_id, None)
        if self._cancel_requested and subtask_id in self._cancel_requested:
            # NOTE: the orchestrator already gave this subtask up; whatever the handler did
            # after being cancelled, the answer is CANCELLED.
            self._cancel_requested.discard(subtask_id)
            if message.WhichOneof("kind") != "failure":
                message = _cancelled(inp, started)
        if self._rt.metrics is not None:
            outcome = "result" if message.HasField("result") else message.failure.failure.reason
            self._rt.metrics.finished(outcome, (time.monotonic_ns() - started) / 1e9)
        if self._closing:
            return
        self._out.put_nowait(message)
        if not self._rt.draining:
            self._out.put_nowait(_Marker.SLOT_FREED)

    def _result(self, inp: SubtaskInput, produced: object, started: int) -> arm_pb.ExecuteResponse:
        if isinstance(produced, SubtaskOutput):
            out = produced
        elif isinstance(produced, dict):
            out = SubtaskOutput(output=produced)
        else:
            return _failure(
                inp.subtask_id,
                inp.attempt,
                _INTERNAL,
                f"handler returned {type(produced).__name__}, expected SubtaskOutput or dict",
                "BAD_HANDLER_OUTPUT",
                retryable=False,
                started=started,
            )
        response = arm_pb.ExecuteResponse()
        result = response.result
        try:
            result.output.update(out.output)
            result.confidence = out.confidence
            provenance = result.provenance
            provenance.model = out.model
            provenance.usage.tokens = out.tokens
            provenance.usage.cost_usd = out.cost_usd
        except (TypeError, ValueError) as exc:
            return _failure(
                inp.subtask_id,
                inp.attempt,
                _INTERNAL,
                f"handler output is not JSON-shaped: {type(exc).__name__}: {exc}",
                "BAD_HANDLER_OUTPUT",
                retryable=False,
                started=started,
            )
        result.subtask_id = inp.subtask_id
        result.attempt = inp.attempt
        provenance.arm_id = self._arm_id
        provenance.attempt = inp.attempt
        provenance.duration.FromNanoseconds(time.monotonic_ns() - started)
        return response

    def _handler_error(
        self, inp: SubtaskInput, exc: BaseException, started: int
    ) -> arm_pb.ExecuteResponse:
        log.exception(
            "handler_failed",
            arm_id=self._arm_id,
            task_id=inp.task_id,
            subtask_id=inp.subtask_id,
            attempt=inp.attempt,
        )
        return _failure(
            inp.subtask_id,
            inp.attempt,
            _INTERNAL,
            f"{type(exc).__name__}: {exc}",
            "HANDLER_ERROR",
            retryable=False,
            started=started,
        )


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _cancelled(inp: SubtaskInput, started: int) -> arm_pb.ExecuteResponse:
    return _failure(
        inp.subtask_id,
        inp.attempt,
        _CANCELLED,
        "subtask cancelled by the orchestrator",
        "CANCELLED",
        retryable=False,
        started=started,
    )


def _failure(
    subtask_id: str,
    attempt: int,
    code: int,
    message: str,
    reason: str,
    *,
    retryable: bool,
    metadata: dict[str, str] | None = None,
    started: int | None = None,
    retry_after: float | None = None,
) -> arm_pb.ExecuteResponse:
    response = arm_pb.ExecuteResponse()
    failure = response.failure
    failure.subtask_id = subtask_id
    failure.attempt = attempt
    failure.failure.code = code
    failure.failure.message = message
    failure.failure.reason = reason
    failure.failure.retryable = retryable
    if metadata:
        failure.failure.metadata.update(metadata)
    if retry_after is not None:
        failure.failure.retry_after.FromNanoseconds(round(retry_after * 1e9))
    if started is not None:
        failure.duration.FromNanoseconds(time.monotonic_ns() - started)
    return response


def _trace_id(traceparent: str) -> str:
    """The trace id of a W3C traceparent ("00-<trace id>-<span id>-<flags>"), or ""."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
