-- Tasks, their append-only event logs, and idempotency keys.

-- NOTE: create_ns keeps the exact nanosecond create_time, so ListTasks orders and pages exactly
-- like the in-memory store (timestamptz keeps microseconds only). fillfactor leaves room for
-- HOT updates: the row is rewritten on every append.
CREATE TABLE tasks (
    task_id     uuid        PRIMARY KEY,
    request_id  text,
    create_time timestamptz NOT NULL,
    create_ns   bigint      NOT NULL,
    update_time timestamptz NOT NULL,
    state       integer     NOT NULL,
    last_seq    bigint      NOT NULL DEFAULT 0,
    finished    boolean     NOT NULL DEFAULT false,
    body        bytea       NOT NULL
) WITH (fillfactor = 80);

CREATE INDEX tasks_newest_first ON tasks (create_ns DESC, task_id DESC);
CREATE INDEX tasks_by_state_newest_first ON tasks (state, create_ns DESC, task_id DESC);

CREATE TABLE task_events (
    task_id     uuid        NOT NULL REFERENCES tasks (task_id) ON DELETE CASCADE,
    seq         bigint      NOT NULL CHECK (seq > 0),
    kind        text        NOT NULL,
    body        bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, seq)
);

-- NOTE: the key is inserted before its task in one transaction, so the reference is checked at
-- commit.
CREATE TABLE idempotency_keys (
    request_id  text        PRIMARY KEY,
    fingerprint text        NOT NULL,
    task_id     uuid        NOT NULL
        REFERENCES tasks (task_id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    create_time timestamptz NOT NULL DEFAULT now()
);
