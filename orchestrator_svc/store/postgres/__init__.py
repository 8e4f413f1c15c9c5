"""The PostgreSQL adapter of the task store: PostgresTaskStore and the parts it is made of.

- store.py: PostgresTaskStore, the TaskStore, TaskLeases and ArmHistory ports composed of:
- sql.py: the statements, and how the sessions that write appends have PostgreSQL plan them;
- sessions.py: connecting with retries, pooled sessions, driver failures as StoreErrors;
- committer.py: appends committed (group commit), one statement or a locking transaction;
- held.py: the projections of the tasks this store runs;
- follower.py: watchers woken by LISTEN/NOTIFY and a poll;
- leases.py: task leases and arm history;
- rows.py: task ids, timestamps, and stored bodies decoded (CorruptRecord).

Errors beyond the port's: StoreUnavailable (PostgreSQL unreachable or too slow) and
CorruptRecord (a stored row that does not decode), both StoreError subclasses.
"""

from __future__ import annotations

from orchestrator_svc.store.postgres.follower import CHANNEL_PREFIX, channel_for
from orchestrator_svc.store.postgres.leases import default_owner
from orchestrator_svc.store.postgres.rows import CorruptRecord
from orchestrator_svc.store.postgres.sessions import (
    TRANSIENT_ERRORS,
    close_quietly,
    describe_dsn,
    retry_until_reachable,
)
from orchestrator_svc.store.postgres.sql import WRITER_SESSION_SETTINGS
from orchestrator_svc.store.postgres.store import PostgresTaskStore

__all__ = [
    "CHANNEL_PREFIX",
    "TRANSIENT_ERRORS",
    "WRITER_SESSION_SETTINGS",
    "CorruptRecord",
    "PostgresTaskStore",
    "channel_for",
    "close_quietly",
    "default_owner",
    "describe_dsn",
    "retry_until_reachable",
]
