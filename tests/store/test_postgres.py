"""PostgresTaskStore beyond the shared suite: replicas, migrations, poisoned rows, start-up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from octollm.v1 import orchestrator_service_pb2 as pb
from structlog.testing import capture_logs

from orchestrator_svc.config import Settings
from orchestrator_svc.store import (
    CorruptRecord,
    InMemoryTaskStore,
    PostgresTaskStore,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    TaskNotFound,
    TaskStore,
    migrate,
    open_store,
)
from orchestrator_svc.store.migrate import bundled_migrations
from orchestrator_svc.store.postgres import WRITER_SESSION_SETTINGS, channel_for, sql
from tests.store.postgres_schema import POSTGRES_DSN, PgSchema, require_postgres

NewTask = Callable[..., pb.Task]
HANG_GUARD = 10


def _progress(message: str) -> pb.TaskEvent:
    return pb.TaskEvent(subtask_progress=pb.SubtaskProgress(subtask_id="s", message=message))


def _finished() -> pb.TaskEvent:
    return pb.TaskEvent(
        finished=pb.TaskFinished(state=pb.TASK_STATE_SUCCEEDED, result=pb.TaskResult(answer="42"))
    )


async def _collect(events: AsyncIterator[pb.TaskEvent]) -> list[pb.TaskEvent]:
    async def drain() -> list[pb.TaskEvent]:
        return [event async for event in events]

    return await asyncio.wait_for(drain(), HANG_GUARD)


@pytest.fixture
async def replicas(pg_schema: PgSchema) -> tuple[PostgresTaskStore, PostgresTaskStore]:
    """Two stores on one migrated schema, as two orchestrator replicas would hold them."""
    await pg_schema.migrate()
    return await pg_schema.open_store(), await pg_schema.open_store()


async def test_replica_reads_what_another_created(
    replicas: tuple[PostgresTaskStore, PostgresTaskStore], new_task: NewTask
) -> None:
    """A task created and advanced on replica A is read, listed and replayed on replica B."""
    a, b = replicas
    created, _ = await a.create(new_task(), "fp")
    await a.append(created.task_id, [_progress("one"), _progress("two")])

    assert await b.get(created.task_id) == await a.get(created.task_id)
    page, _ = await b.list(10, "", ())
    assert [task.task_id for task in page] == [created.task_id]
    await a.append(created.task_id, [_finished()])
    replayed = await _collect(b.watch(created.task_id, 0))
    assert [event.seq for event in replayed] == [1, 2, 3]
    assert replayed == await _collect(a.watch(created.task_id, 0))


async def test_live_events_reach_a_watcher_on_another_replica(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """Events appended on A reach a watcher on B by NOTIFY, in order, ending at finished."""
    await pg_schema.migrate()
    a = await pg_schema.open_store()
    b = await pg_schema.open_store(poll_interval_s=3600)  # NOTE: so only NOTIFY can wake it
    created, _ = await a.create(new_task(), "fp")
    watcher = asyncio.create_task(_collect(b.watch(created.task_id, 0)))
    for step in range(20):
        await a.append(created.task_id, [_progress(str(step))])
    await a.append(created.task_id, [_finished()])
    events = await watcher
    assert [event.seq for event in events] == list(range(1, 22))
    assert [event.subtask_progress.message for event in events[:-1]] == [
        str(step) for step in range(20)
    ]


async def test_poll_finds_events_when_notifications_are_lost(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """A watcher whose store never hears a NOTIFY still gets every event, by polling."""
    await pg_schema.migrate()
    writer = await pg_schema.open_store()
    deaf = await pg_schema.open_store(channel="octollm_nobody_notifies_here", poll_interval_s=0.05)
    created, _ = await writer.create(new_task(), "fp")
    watcher = asyncio.create_task(_collect(deaf.watch(created.task_id, 0)))
    for step in range(5):
        await writer.append(created.task_id, [_progress(str(step))])
        await asyncio.sleep(0.02)
    await writer.append(created.task_id, [_finished()])
    assert [event.seq for event in await watcher] == [1, 2, 3, 4, 5, 6]


async def test_idempotency_holds_across_replicas(
    replicas: tuple[PostgresTaskStore, PostgresTaskStore], new_task: NewTask
) -> None:
    """The same request_id created concurrently on A and B makes exactly one task."""
    a, b = replicas
    attempts = [
        replica.create(new_task(request_id="same-key"), "fp")
        for _ in range(20)
        for replica in (a, b)
    ]
    results = await asyncio.wait_for(asyncio.gather(*attempts), HANG_GUARD)
    assert sum(is_new for _, is_new in results) == 1
    assert len({task.task_id for task, _ in results}) == 1
    page, _ = await b.list(100, "", ())
    assert len(page) == 1


async def test_concurrent_migrations_apply_once(pg_schema: PgSchema) -> None:
    """Three migrations racing on separate connections apply each version exactly once."""
    runs = await asyncio.wait_for(
        asyncio.gather(*(pg_schema.migrate() for _ in range(3))), HANG_GUARD
    )
    versions = [migration.label for migration in bundled_migrations()]
    assert sorted(runs) == [[], [], versions]
    connection = await pg_schema.connect()
    rows = await connection.fetch("SELECT version FROM octollm_schema_migrations ORDER BY 1")
    assert [f"{row['version']:04d}" for row in rows] == versions
    assert await pg_schema.migrate() == []


async def test_corrupt_event_row_is_reported(pg_schema: PgSchema, new_task: NewTask) -> None:
    """watch() yields the good events, then raises CorruptRecord naming the task and seq."""
    await pg_schema.migrate()
    store = await pg_schema.open_store()
    created, _ = await store.create(new_task(), "fp")
    await store.append(created.task_id, [_progress("a"), _progress("b"), _finished()])
    connection = await pg_schema.connect()
    await connection.execute(
        "UPDATE task_events SET body = '\\xdeadbeef'::bytea WHERE task_id = $1 AND seq = 2",
        created.task_id,
    )

    events = store.watch(created.task_id, 0)
    first = await asyncio.wait_for(anext(events), HANG_GUARD)
    with pytest.raises(CorruptRecord) as caught:
        await asyncio.wait_for(anext(events), HANG_GUARD)
    assert first.seq == 1
    assert caught.value.task_id == created.task_id
    assert caught.value.seq == 2
    assert created.task_id in str(caught.value)


async def test_corrupt_task_row_fails_only_that_task(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """A poisoned task row raises CorruptRecord for it; appends to other tasks still commit."""
    await pg_schema.migrate()
    creator = await pg_schema.open_store()
    poisoned, _ = await creator.create(new_task(), "fp")
    healthy, _ = await creator.create(new_task(), "fp")
    # NOTE: another replica's store: the creator holds the projections it wrote and would
    # write them over the poisoned body instead of reading it.
    store = await pg_schema.open_store()
    connection = await pg_schema.connect()
    await connection.execute(
        "UPDATE tasks SET body = '\\xffffffff'::bytea WHERE task_id = $1", poisoned.task_id
    )

    with pytest.raises(CorruptRecord) as caught:
        await store.get(poisoned.task_id)
    assert caught.value.task_id == poisoned.task_id
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            store.append(poisoned.task_id, [_progress("x")]),
            store.append(healthy.task_id, [_progress("y")]),
            return_exceptions=True,
        ),
        HANG_GUARD,
    )
    assert isinstance(outcomes[0], CorruptRecord)
    assert outcomes[1] == 1
    assert (await store.get(healthy.task_id)).last_seq == 1


async def test_events_never_outlive_their_task_row(pg_schema: PgSchema, new_task: NewTask) -> None:
    """task_events has no foreign key (migration 0004): the append statements themselves insert
    events only beside an update of their task's row. A row gone from under both write paths (a
    store holding the projection, and one that must lock the row) gets TaskNotFound and leaves
    no event behind."""
    await pg_schema.migrate()
    holder = await pg_schema.open_store()
    created, _ = await holder.create(new_task(), "fp")
    assert await holder.append(created.task_id, [_progress("kept")]) == 1
    other = await pg_schema.open_store()
    connection = await pg_schema.connect()
    keys = await connection.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'task_events'::regclass"
        " AND contype = 'f'"
    )
    assert keys == 0
    await connection.execute("DELETE FROM tasks WHERE task_id = $1", created.task_id)

    for store in (holder, other):
        with pytest.raises(TaskNotFound):
            await asyncio.wait_for(store.append(created.task_id, [_progress("lost")]), HANG_GUARD)
    seqs = await connection.fetch(
        "SELECT seq FROM task_events WHERE task_id = $1 ORDER BY seq", created.task_id
    )
    assert [row["seq"] for row in seqs] == [1]


@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "one-by-one"])
async def test_concurrent_appends_keep_order_per_task(
    pg_schema: PgSchema, new_task: NewTask, group_commit: bool
) -> None:
    """Appends issued concurrently to many tasks land in each task's log in call order."""
    await pg_schema.migrate()
    store = await pg_schema.open_store(group_commit=group_commit)
    task_ids = [(await store.create(new_task(), "fp"))[0].task_id for _ in range(8)]
    calls = [
        store.append(task_id, [_progress(f"{step}")] * (1 + step % 3))
        for step in range(30)
        for task_id in task_ids
    ]
    await asyncio.wait_for(asyncio.gather(*calls), HANG_GUARD)

    expected = [f"{step}" for step in range(30) for _ in range(1 + step % 3)]
    for task_id in task_ids:
        await store.append(task_id, [_finished()])
        events = await _collect(store.watch(task_id, 0))
        assert [event.seq for event in events] == list(range(1, len(expected) + 2))
        assert [event.subtask_progress.message for event in events[:-1]] == expected


async def test_close_releases_every_connection(pg_schema: PgSchema, new_task: NewTask) -> None:
    """close() returns the pool's and the listener's connections; later calls raise."""
    await pg_schema.migrate()
    store = await pg_schema.open_store()
    observer = await pg_schema.connect()
    created, _ = await store.create(new_task(), "fp")
    watcher = asyncio.create_task(_collect(store.watch(created.task_id, 0)))
    await store.append(created.task_id, [_progress("a")])

    async def sessions() -> int:
        count: int = await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> "
            "pg_backend_pid()",
            pg_schema.name,
        )
        return count

    async def listening() -> None:
        while await sessions() < 2:  # the pool, and the watcher's LISTEN connection
            await asyncio.sleep(0.05)

    await asyncio.wait_for(listening(), HANG_GUARD)
    await store.close()
    with pytest.raises(StoreClosed):
        await watcher

    async def drained() -> None:
        while await sessions():
            await asyncio.sleep(0.05)

    await asyncio.wait_for(drained(), HANG_GUARD)


async def test_unknown_or_malformed_task_ids(pg_schema: PgSchema, new_task: NewTask) -> None:
    """Ids that are not canonical UUIDs are never found, and create() refuses them."""
    await pg_schema.migrate()
    store = await pg_schema.open_store()
    for task_id in ("not-a-uuid", str(uuid.uuid4()).upper(), str(uuid.uuid4())):
        with pytest.raises(TaskNotFound):
            await store.get(task_id)
        with pytest.raises(TaskNotFound):
            await store.append(task_id, [_progress("x")])
    with pytest.raises(ValueError, match="UUID"):
        await store.create(new_task(task_id="task-1"), "fp")


async def test_store_refuses_an_unmigrated_schema(pg_schema: PgSchema) -> None:
    """Connecting to a schema without the task tables says to run the migrations."""
    with pytest.raises(StoreError, match="octollm migrate"):
        await pg_schema.open_store()


async def test_open_store_chooses_the_adapter(pg_schema: PgSchema, new_task: NewTask) -> None:
    """Without a DSN open_store gives the in-memory store; with one, a migrated Postgres store."""
    in_memory = await open_store(Settings())
    assert isinstance(in_memory, InMemoryTaskStore)
    await in_memory.close()

    durable: TaskStore = await open_store(
        Settings(postgres_dsn=pg_schema.dsn), server_settings=pg_schema.server_settings
    )
    try:
        assert isinstance(durable, PostgresTaskStore)
        created, _ = await durable.create(new_task(), "fp")
        assert (await durable.get(created.task_id)).task_id == created.task_id
    finally:
        await durable.close()
    assert await pg_schema.migrate() == []


async def test_open_store_fails_clearly_when_postgres_is_unreachable() -> None:
    """open_store with a DSN to a closed port raises StoreUnavailable after its bounded wait."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(postgres_dsn=f"postgresql://postgres:secret@127.0.0.1:{port}/test")

    with pytest.raises(StoreUnavailable) as caught:
        await asyncio.wait_for(
            open_store(settings, startup_wait_s=0.3, retry_initial_s=0.05), HANG_GUARD
        )
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message
    assert "unreachable" in message
    assert "secret" not in message


async def test_migrate_reports_unreachable_postgres() -> None:
    """migrate() against a closed port raises StoreUnavailable instead of hanging."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://postgres@127.0.0.1:{port}/test"
    with pytest.raises(StoreUnavailable, match="unreachable"):
        await asyncio.wait_for(migrate(dsn, startup_wait_s=0.2), HANG_GUARD)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def _proxy_to_postgres(port: int) -> AsyncIterator[None]:
    """Forward 127.0.0.1:`port` to the test PostgreSQL while the context lasts."""
    target = urlsplit(POSTGRES_DSN)
    pipes: set[asyncio.Task[None]] = set()

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname, target.port or 5432)
        for pipe in (_pipe(client_r, server_w), _pipe(server_r, client_w)):
            pipes.add(asyncio.create_task(pipe))

    server = await asyncio.start_server(forward, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


async def test_open_store_waits_for_postgres_to_come_up(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """A store opened before PostgreSQL listens retries with backoff, one warning per failed
    attempt, and opens once the server answers."""
    await pg_schema.migrate()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://postgres@127.0.0.1:{port}{urlsplit(POSTGRES_DSN).path}"
    with capture_logs() as logs:
        opening = asyncio.create_task(
            PostgresTaskStore.connect(
                dsn,
                server_settings=pg_schema.server_settings,
                startup_wait_s=HANG_GUARD,
                retry_initial_s=0.01,
                retry_max_s=0.05,
            )
        )

        def retries() -> list[dict[str, Any]]:
            return [log for log in logs if log["event"] == "postgres_unreachable_retrying"]

        while len(retries()) < 2:
            await asyncio.sleep(0.01)
        async with _proxy_to_postgres(port):
            store = await asyncio.wait_for(opening, HANG_GUARD)
            try:
                created, _ = await store.create(new_task(), "fp")
                assert (await store.get(created.task_id)).task_id == created.task_id
            finally:
                await store.close()
    attempts = [log["attempt"] for log in retries()]
    assert attempts == list(range(1, len(attempts) + 1))
    assert all(f"127.0.0.1:{port}" in log["target"] for log in retries())


async def test_migrate_gives_up_at_once_when_postgres_refuses() -> None:
    """A refusal no retry can fix (here an unknown database) fails at once, without retries."""
    dsn = POSTGRES_DSN.rsplit("/", 1)[0] + f"/octollm_missing_{uuid.uuid4().hex[:8]}"
    await require_postgres()
    with capture_logs() as logs, pytest.raises(StoreUnavailable, match="refused the connection"):
        await asyncio.wait_for(migrate(dsn, startup_wait_s=HANG_GUARD), HANG_GUARD)
    assert [log for log in logs if log["event"] == "postgres_unreachable_retrying"] == []


async def test_a_watcher_of_a_task_this_store_runs_starts_from_memory(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """The store that runs a task follows its log from create() on: a watcher that starts
    after events were committed gets them without reading a table (both are renamed away
    meanwhile), then follows the log to its end."""
    await pg_schema.migrate()
    store = await pg_schema.open_store()
    created, _ = await store.create(new_task(), "fp")
    await store.append(created.task_id, [_progress("one"), _progress("two")], as_owner=True)
    observer = await pg_schema.connect()
    await observer.execute(
        "ALTER TABLE tasks RENAME TO tasks_away; ALTER TABLE task_events RENAME TO task_events_away"
    )
    watch = store.watch(created.task_id, 0)
    try:
        early = [await asyncio.wait_for(anext(watch), HANG_GUARD) for _ in range(2)]
    finally:
        await observer.execute(
            "ALTER TABLE tasks_away RENAME TO tasks; "
            "ALTER TABLE task_events_away RENAME TO task_events"
        )
    await store.append(created.task_id, [_finished()], as_owner=True)
    rest = await _collect(watch)
    assert [event.subtask_progress.message for event in early] == ["one", "two"]
    assert [event.seq for event in [*early, *rest]] == [1, 2, 3]
    assert rest[0].finished.result.answer == "42"


# The sessions a store of the schema opened (PgSchema names them after it), but the caller's.
_STORE_SESSIONS = "FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()"


async def _end_store_sessions(observer: Any, schema: str) -> list[int]:
    """Have the server end every session a store of `schema` holds; the pids it ended."""
    rows = await observer.fetch(
        f"SELECT pid FROM (SELECT pid, pg_terminate_backend(pid) AS ended {_STORE_SESSIONS}) s "
        "WHERE ended",
        schema,
    )
    return [int(row["pid"]) for row in rows]


async def test_store_recovers_when_postgres_drops_its_sessions(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """After the server kills a store's sessions, appends resume and a watcher misses nothing."""
    await pg_schema.migrate()
    store = await pg_schema.open_store(poll_interval_s=0.1, retry_initial_s=0.05)
    observer = await pg_schema.connect()
    created, _ = await store.create(new_task(), "fp")
    watcher = asyncio.create_task(_collect(store.watch(created.task_id, 0)))
    await store.append(created.task_id, [_progress("before")])

    killed = await _end_store_sessions(observer, pg_schema.name)
    assert len(killed) >= 2  # a pool session and the LISTEN session

    async def append_until_accepted(event: pb.TaskEvent) -> None:
        while True:
            try:
                await store.append(created.task_id, [event])
                return
            except StoreUnavailable:
                await asyncio.sleep(0.05)

    await asyncio.wait_for(append_until_accepted(_progress("after")), HANG_GUARD)
    await asyncio.wait_for(append_until_accepted(_finished()), HANG_GUARD)
    events = await watcher
    assert [event.seq for event in events] == [1, 2, 3]
    assert [event.subtask_progress.message for event in events[:2]] == ["before", "after"]


async def test_an_append_after_the_server_ended_the_idle_commit_session_succeeds(
    pg_schema: PgSchema, new_task: NewTask
) -> None:
    """The group committer keeps one session; when the server ends it while it is idle, the
    next append notices before sending anything and commits on a fresh session, first time."""
    await pg_schema.migrate()
    store = await pg_schema.open_store()
    created, _ = await store.create(new_task(), "fp")
    await store.append(created.task_id, [_progress("before")])
    observer = await pg_schema.connect()
    ended = await _end_store_sessions(observer, pg_schema.name)
    # NOTE: the ended sessions, not all of the store's: its LISTEN session reconnects at once.
    while await observer.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", ended
    ):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the store's event loop reads the closed sockets

    assert (
        await asyncio.wait_for(store.append(created.task_id, [_progress("after")]), HANG_GUARD) == 2
    )
    task = await store.get(created.task_id)
    assert task.last_seq == 2


def test_notify_channel_is_per_schema_and_valid() -> None:
    """Each schema gets its own NOTIFY channel, never longer than PostgreSQL's 63-byte limit."""
    long_a, long_b = "a" * 60 + "_one", "a" * 60 + "_two"
    channels = {channel_for(schema) for schema in ("public", "tenant", long_a, long_b)}
    assert channel_for("public") == "octollm_task_events"
    assert len(channels) == 4
    assert all(len(channel.encode()) <= 63 for channel in channels)


async def test_a_writer_that_holds_the_projection_notices_another_writer(
    replicas: tuple[PostgresTaskStore, PostgresTaskStore], new_task: NewTask
) -> None:
    """A appends from its held projection; when B wrote in between, A re-reads: no gap, no
    duplicate seq, and the projection has both writers' events."""
    a, b = replicas
    task, _ = await a.create(new_task(), "fp")
    assert await a.append(task.task_id, [_progress("a1")], as_owner=True) == 1
    assert await b.append(task.task_id, [_progress("b1"), _progress("b2")]) == 3
    assert await a.append(task.task_id, [_progress("a2")], as_owner=True) == 4
    assert await a.append(task.task_id, [_finished()], as_owner=True) == 5
    events = await _collect(b.watch(task.task_id, 0))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.subtask_progress.message for e in events[:4]] == ["a1", "b1", "b2", "a2"]
    assert (await b.get(task.task_id)).last_seq == 5


# The statements the writer sessions prepare, by name, for the plan check below.
_APPENDS = {
    "held appends": sql.WRITE_HELD_APPENDS,
    "appends": sql.WRITE_APPENDS,
    "lock tasks": sql.LOCK_TASKS,
}
# The statements that look rows up by key on the other sessions. The lease rounds (renew,
# claim) are not among them: they scan the unfinished tasks, as they must.
_LOOKUPS = {
    "get task": sql.GET_TASK,
    "log end": sql.LOG_END,
    "known key": sql.KNOWN_KEY,
    "read events": sql.READ_EVENTS,
    "last seqs": sql.LAST_SEQS,
    "release leases": sql.RELEASE_LEASES,
    **{f"list tasks {key}": statement for key, statement in sql.LIST_TASKS.items()},
}


def _plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", ()) for node in _plan_nodes(child))]


async def _table_scans(conn: Any, statements: dict[str, str]) -> dict[str, list[str]]:
    """The nodes of each statement's generic plan on `conn` that read tasks or task_events
    whole (a sequential scan, or a hash or merge join): {name: nodes}, statements without
    any left out."""
    found: dict[str, list[str]] = {}
    for name, statement in statements.items():
        params = max(int(n) for n in re.findall(r"\$(\d+)", statement))
        await conn.execute(f"PREPARE checked AS {statement}")
        nulls = ", ".join(["NULL"] * params)
        explained = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE checked({nulls})")
        await conn.execute("DEALLOCATE checked")
        nodes = [
            f"{node['Node Type']} {node.get('Relation Name', '')}".strip()
            for node in _plan_nodes(json.loads(explained)[0]["Plan"])
            if node["Node Type"] in ("Hash Join", "Merge Join")
            or (
                node["Node Type"] == "Seq Scan"
                and node.get("Relation Name") in ("tasks", "task_events")
            )
        ]
        if nodes:
            found[name] = nodes
    return found


async def test_the_store_statements_plan_index_lookups_on_a_young_schema(
    pg_schema: PgSchema,
) -> None:
    """The generic plans made while the tables are new (what a new deployment keeps until
    autovacuum replans) look tasks and events up by index: the writer sessions' append
    statements with no sequential scan of them and no hash or merge join, whose cost would grow
    with every task ever stored, and the key lookups of the other sessions with no settings."""
    await pg_schema.migrate()
    writer = await pg_schema.connect(WRITER_SESSION_SETTINGS)
    assert await _table_scans(writer, _APPENDS) == {}
    reader = await pg_schema.connect({"plan_cache_mode": "force_generic_plan"})
    assert await _table_scans(reader, _LOOKUPS) == {}


async def test_only_the_sessions_that_write_appends_carry_the_planner_settings(
    pg_schema: PgSchema, new_task: NewTask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The append statements run on writer sessions that keep generic, index-only plans; the
    sessions that read, list, create and run the lease rounds, and the LISTEN session, leave
    planning to PostgreSQL."""
    opened: list[tuple[dict[str, str], Any]] = []
    create_pool, connect = asyncpg.create_pool, asyncpg.connect

    def recording_create_pool(*args: Any, **kwargs: Any) -> Any:
        pool = create_pool(*args, **kwargs)
        opened.append((kwargs.get("server_settings") or {}, pool))
        return pool

    async def recording_connect(*args: Any, **kwargs: Any) -> Any:
        connection = await connect(*args, **kwargs)
        opened.append((kwargs.get("server_settings") or {}, connection))
        return connection

    monkeypatch.setattr(asyncpg, "create_pool", recording_create_pool)
    monkeypatch.setattr(asyncpg, "connect", recording_connect)
    await pg_schema.migrate()
    opened.clear()
    store = await pg_schema.open_store()
    task, _ = await store.create(new_task(), "fp")
    await store.append(task.task_id, [_progress("one")], as_owner=True)
    await store.list(10, "", ())
    await store.claim_expired(10)
    watch = store.watch(task.task_id, 0)
    assert (await asyncio.wait_for(anext(watch), HANG_GUARD)).seq == 1
    await watch.aclose()

    planned = [
        opening
        for settings, opening in opened
        if WRITER_SESSION_SETTINGS.items() <= settings.items()
    ]
    unplanned = [
        opening
        for settings, opening in opened
        if not WRITER_SESSION_SETTINGS.keys() & settings.keys()
    ]
    (writers,) = planned
    # NOTE: the group committer holds its writer session between commits.
    assert writers.get_size() - writers.get_idle_size() == 1
    assert len(unplanned) == len(opened) - 1 >= 2  # the read pool and the LISTEN session
