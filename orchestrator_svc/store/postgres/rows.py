"""How tasks and events sit in rows: canonical task ids, timestamps, and stored bodies decoded.

Errors: CorruptRecord (a stored row that does not decode), a StoreError.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.ports import StoreError

# What str(uuid.UUID(...)) gives: task ids are exactly this (see is_task_id).
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


class CorruptRecord(StoreError):
    """A stored task or event does not decode: a poisoned body, or an event of unknown kind."""

    def __init__(self, task_id: str, detail: str, seq: int | None = None) -> None:
        where = f"task {task_id!r}" if seq is None else f"event {seq} of task {task_id!r}"
        super().__init__(f"stored {where} cannot be read: {detail}")
        self.task_id = task_id
        self.seq = seq


def is_task_id(task_id: str) -> bool:
    """Task ids are canonical UUID strings (lowercase, hyphenated, what str(uuid.UUID) gives),
    so the uuid column and the string agree."""
    return _CANONICAL_UUID.fullmatch(task_id) is not None


def as_datetime(timestamp: Timestamp) -> datetime.datetime:
    """`timestamp` as an aware UTC datetime, to the microsecond (what timestamptz keeps); the
    arithmetic Timestamp.ToDatetime does in Python, without its per-call overhead."""
    return _EPOCH + datetime.timedelta(
        seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000
    )


def decode_task(task_id: str, body: bytes) -> pb.Task:
    task = pb.Task()
    try:
        task.ParseFromString(body)
    except DecodeError as exc:
        raise CorruptRecord(task_id, f"undecodable body ({exc})") from None
    if task.task_id != task_id:
        raise CorruptRecord(task_id, f"body names task {task.task_id!r}")
    return task


def decode_event(task_id: str, seq: int, body: bytes) -> pb.TaskEvent:
    event = pb.TaskEvent()
    try:
        event.ParseFromString(body)
    except DecodeError as exc:
        raise CorruptRecord(task_id, f"undecodable body ({exc})", seq) from None
    if event.seq != seq or event.task_id != task_id:
        raise CorruptRecord(task_id, f"body is event {event.seq} of {event.task_id!r}", seq)
    if event.WhichOneof("kind") is None:
        raise CorruptRecord(task_id, "unknown event kind (written by a newer version?)", seq)
    return event


def decode_events(task_id: str, rows: list[Any]) -> Iterator[pb.TaskEvent]:
    """The events of `rows` (seq, body) of one task's log, decoded as they are consumed."""
    for row in rows:
        yield decode_event(task_id, row["seq"], row["body"])
