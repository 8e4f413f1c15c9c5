"""Following task logs: the watchers of every task, and what wakes them.

A watch replays the log from the table by seq, then follows it. One LISTEN connection per store
wakes watchers, which re-read the table from their own cursor (a coalesced or missed
notification loses nothing), and a poll every `poll_interval_s` covers a lost listener. Events
this store committed itself are kept for a while, so its own watchers read them from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import structlog
from octollm.v1 import orchestrator_service_pb2 as pb

from orchestrator_svc.store.ports import TaskNotFound
from orchestrator_svc.store.postgres import sql
from orchestrator_svc.store.postgres.rows import decode_events
from orchestrator_svc.store.postgres.sessions import TRANSIENT_ERRORS, Sessions, close_quietly
from orchestrator_svc.store.shared import copy_message, event_batches

log = structlog.get_logger(__name__)

CHANNEL_PREFIX = "octollm_task_events"
_MAX_IDENTIFIER_BYTES = 63
_WATCH_PAGE = 256
_RECENT_EVENTS = 256
# What a failed LISTEN connection or poll may raise; the next attempt may do better.
_FOLLOW_ERRORS = (*TRANSIENT_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError)


def channel_for(schema: str) -> str:
    """The NOTIFY channel of a schema: replicas on one schema share it, other schemas do not."""
    if schema == "public":
        return CHANNEL_PREFIX
    channel = f"{CHANNEL_PREFIX}.{schema}"
    if len(channel.encode()) > _MAX_IDENTIFIER_BYTES:
        # NOTE: PostgreSQL refuses longer channel names; a digest keeps them distinct.
        channel = f"{CHANNEL_PREFIX}.{hashlib.sha256(schema.encode()).hexdigest()[:32]}"
    return channel


@dataclass(eq=False)
class Followed:
    """What this store knows of the log of a task it runs (`held`) or one being watched (kept
    while either lasts), and a wake-up for its watchers."""

    latest: int = 0
    watchers: int = 0
    held: bool = False
    _grown: asyncio.Event = field(default_factory=asyncio.Event)
    # The latest events this store committed itself, contiguous: local watchers read them here
    # instead of from the table.
    recent: deque[pb.TaskEvent] = field(default_factory=lambda: deque(maxlen=_RECENT_EVENTS))

    def grown(self) -> asyncio.Event:
        """The event set when `latest` next grows (take it BEFORE reading the table)."""
        return self._grown

    def committed(self, events: Sequence[pb.TaskEvent]) -> None:
        """Keep events this store just committed (their seqs follow what is kept, or restart)."""
        if self.recent and events and events[0].seq != self.recent[-1].seq + 1:
            self.recent.clear()
        self.recent.extend(events)

    def after(self, cursor: int) -> list[pb.TaskEvent] | None:
        """Copies of every event from cursor+1 to `latest`, if all of them are kept, else None."""
        recent = self.recent
        if not recent or recent[0].seq > cursor + 1 or recent[-1].seq < self.latest:
            return None
        start = cursor + 1 - recent[0].seq
        return [copy_message(recent[i]) for i in range(start, len(recent))]

    def advance(self, seq: int) -> None:
        if seq > self.latest:
            self.latest = seq
            self.publish()

    def publish(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()


class Follower:
    """The task logs this store follows: their watchers, the LISTEN connection and the poll
    that wake them, and what the store's own commits tell them."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        connect_listener: Callable[[float], Awaitable[Any]],
        channel: str,
        poll_interval_s: float,
        connect_timeout_s: float,
        retry_initial_s: float,
        retry_max_s: float,
    ) -> None:
        self._sessions = sessions
        self._connect_listener = connect_listener
        self.channel = channel
        self._poll_interval_s = poll_interval_s
        self._connect_timeout_s = connect_timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._followed: dict[str, Followed] = {}
        self._listener: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._listener_settled = asyncio.Event()
        self._poll_now = asyncio.Event()

    # --- what the store's own writes tell -------------------------------------------------------

    def hold(self, task_id: str, latest: int) -> None:
        """Follow a task this store runs from `latest` on, watched or not, until release()."""
        followed = self._followed.get(task_id)
        if followed is None:
            followed = self._followed[task_id] = Followed(latest=latest)
        followed.held = True

    def release(self, task_id: str) -> None:
        """Stop following a task this store no longer runs, once nobody watches it."""
        followed = self._followed.get(task_id)
        if followed is None:
            return
        followed.held = False
        if followed.watchers == 0:
            del self._followed[task_id]

    def committed(self, task_id: str, events: Sequence[pb.TaskEvent]) -> None:
        """Events this store just committed to a task's log, for its watchers to read here."""
        followed = self._followed.get(task_id)
        if followed is not None:
            followed.committed(events)

    def advance(self, task_id: str, seq: int) -> None:
        """A task's log now reaches `seq`: wake its watchers if that is news."""
        followed = self._followed.get(task_id)
        if followed is not None:
            followed.advance(seq)

    # --- watching ------------------------------------------------------------------------------

    async def watch(
        self, task_id: str, after_seq: int, max_events: int
    ) -> AsyncGenerator[list[pb.TaskEvent], None]:
        """The events of a task's log after `after_seq`, in batches of at most `max_events`,
        until its finished event; raises TaskNotFound for an unknown task."""
        # NOTE: follow BEFORE the first read, so an append committed in between wakes us.
        followed = self._follow(task_id)
        try:
            await self._await_listener()
            if not followed.held:
                found = await self._sessions.fetch_patiently(sql.LOG_END, task_id)
                if not found:
                    raise TaskNotFound(task_id)
                row = found[0]
                if row["finished"] and row["last_seq"] <= after_seq:
                    return
                followed.advance(row["last_seq"])
            cursor = after_seq
            while True:
                self._sessions.check_open()
                grown = followed.grown()
                if followed.latest > cursor:
                    kept = followed.after(cursor)
                    rows = []
                    if kept is None:
                        rows = await self._sessions.fetch_patiently(
                            sql.READ_EVENTS, task_id, cursor, _WATCH_PAGE
                        )
                    events = kept if kept is not None else decode_events(task_id, rows)
                    for batch in event_batches(events, max_events):
                        cursor = batch[-1].seq
                        yield batch
                        if batch[-1].HasField("finished"):
                            return
                    if kept is not None or rows:
                        continue
                await grown.wait()
        finally:
            self._unfollow(task_id, followed)

    def wake_all(self) -> None:
        """Wake every watcher and whoever waits for the listener (the store is closing)."""
        for followed in self._followed.values():
            followed.publish()
        self._listener_settled.set()

    async def stop(self) -> None:
        """Stop listening and polling."""
        for background in (self._listener, self._poller):
            if background is not None:
                background.cancel()
                await asyncio.gather(background, return_exceptions=True)

    def _follow(self, task_id: str) -> Followed:
        followed = self._followed.get(task_id)
        if followed is None:
            followed = self._followed[task_id] = Followed()
        followed.watchers += 1
        return followed

    def _unfollow(self, task_id: str, followed: Followed) -> None:
        followed.watchers -= 1
        if followed.watchers == 0 and not followed.held and self._followed.get(task_id) is followed:
            del self._followed[task_id]

    # --- waking watchers -----------------------------------------------------------------------

    async def _await_listener(self) -> None:
        """Start the listener and poller once; give the LISTEN a moment to take effect."""
        if self._listener is None:
            self._listener = asyncio.create_task(
                self._listen_forever(), name="octollm-postgres-listener"
            )
            self._poller = asyncio.create_task(self._poll_forever(), name="octollm-postgres-poll")
        if not self._listener_settled.is_set():
            # NOTE: not fatal if it takes longer: the poll finds new events meanwhile.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener_settled.wait(), self._connect_timeout_s)

    async def _listen_forever(self) -> None:
        """Hold one LISTEN connection, reconnecting with backoff whenever it is lost."""
        delay = self._retry_initial_s
        while True:
            try:
                connection = await self._connect_listener(self._connect_timeout_s)
            except _FOLLOW_ERRORS as exc:
                log.warning("task_event_listener_connect_failed", error=f"{type(exc).__name__}")
                self._listener_settled.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            lost = asyncio.Event()
            connection.add_termination_listener(_setter(lost))
            try:
                await connection.add_listener(self.channel, self._on_notification)
                delay = self._retry_initial_s
                self._listener_settled.set()
                # NOTE: appends committed before LISTEN took effect sent no wake-up we heard.
                self._poll_now.set()
                await lost.wait()
                log.warning("task_event_listener_lost", channel=self.channel)
            except _FOLLOW_ERRORS as exc:
                log.warning("task_event_listener_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
            finally:
                await close_quietly(connection, timeout_s=self._connect_timeout_s)

    def _on_notification(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        task_id, _, seq = payload.rpartition(":")
        followed = self._followed.get(task_id)
        if followed is None:
            return
        try:
            followed.advance(int(seq))
        except ValueError:
            log.warning("task_event_notification_malformed", payload=payload[:200])

    async def _poll_forever(self) -> None:
        """Every poll_interval_s, wake watchers whose task grew without a notification."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poll_now.wait(), self._poll_interval_s)
            self._poll_now.clear()
            if not self._followed:
                continue
            try:
                rows = await self._sessions.fetch(sql.LAST_SEQS, list(self._followed))
            except _FOLLOW_ERRORS as exc:
                log.warning("task_event_poll_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            for row in rows:
                self.advance(row["task_id"], row["last_seq"])


def _setter(event: asyncio.Event) -> Callable[[Any], None]:
    """A termination-listener callback that sets `event`."""
    return lambda _connection: event.set()
