"""Behaviour every TaskStore adapter shares: batch checks, page tokens, message copies."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from google.protobuf.message import Message
from octollm.v1 import orchestrator_service_pb2 as pb

from .ports import WATCH_BATCH_BYTES, TaskClosed
from .projection import TERMINAL_TASK_STATES

OrderKey = tuple[int, str]
M = TypeVar("M", bound=Message)


def check_batch(task_id: str, events: Sequence[pb.TaskEvent]) -> None:
    """Refuse a bad batch before any of it is applied, so a batch is all or nothing."""
    for position, event in enumerate(events):
        kind = event.WhichOneof("kind")
        if kind is None:
            raise ValueError(f"event {position} of the batch has no kind")
        if event.task_id and event.task_id != task_id:
            raise ValueError(
                f"event {position} names task {event.task_id!r}, appended to {task_id!r}"
            )
        if kind == "finished":
            if event.finished.state not in TERMINAL_TASK_STATES:
                state = pb.TaskState.Name(event.finished.state)
                raise ValueError(f"event {position} finishes the task in non-terminal {state}")
            if position != len(events) - 1:
                raise TaskClosed(task_id)


def copy_message(message: M) -> M:
    """A copy the caller may change without touching the store's own message."""
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


def order_key(task: pb.Task) -> OrderKey:
    """ListTasks order: create_time, then task_id (both descending in pages)."""
    return task.create_time.ToNanoseconds(), task.task_id


def encode_page_token(key: OrderKey) -> str:
    """The opaque page token every adapter issues: urlsafe base64 of [create_ns, task_id]."""
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_page_token(token: str) -> OrderKey:
    """The key a page token names; ValueError for anything this store did not issue."""
    try:
        padded = (token + "=" * (-len(token) % 4)).encode("ascii")
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
        decoded = json.loads(raw)
    except (binascii.Error, UnicodeError, ValueError):
        raise ValueError("malformed page token") from None
    match decoded:
        case [int() as create_ns, str() as task_id] if not isinstance(create_ns, bool):
            return create_ns, task_id
    raise ValueError("malformed page token")


def event_batches(events: Iterable[pb.TaskEvent], max_events: int) -> Iterator[list[pb.TaskEvent]]:
    """`events` in order, in batches of at most `max_events` and WATCH_BATCH_BYTES (an event
    larger than that alone); a batch ends with a `finished` event, and nothing follows it."""
    batch: list[pb.TaskEvent] = []
    size = 0
    for event in events:
        event_size = event.ByteSize()
        if batch and size + event_size > WATCH_BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += event_size
        if event.HasField("finished"):
            break
        if len(batch) == max_events or size >= WATCH_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
