"""The SQL of the PostgreSQL store, and how its sessions have PostgreSQL plan it.

Each statement is prepared once per session by asyncpg's statement cache. Statements take
task ids as uuid ($n::uuid, or uuid[] for a batch) and return them as text.
"""

from __future__ import annotations

# NOTE: the append statements (WRITE_HELD_APPENDS, WRITE_APPENDS, LOCK_TASKS) run on writer
# sessions of their own with these settings; every other session plans as PostgreSQL sees fit.
# The appends take a few small arrays and run many times a second: PostgreSQL would plan them
# again on every execution (a fifth of an append's time), so their sessions keep one generic
# plan per statement. A generic plan is made once, from what the planner believes of the tables
# then: on a young schema (a new deployment) it assumes `tasks` is ten pages, picks a hash join
# over a sequential scan of `tasks`, and keeps it while the table grows until autovacuum
# invalidates it: every append then reads the whole table (1.9 ms an append instead of 1.1 ms
# after a thousand tasks). Index paths are what these statements need at any size. Fresher
# statistics are no cure: ANALYZE of the new, empty tables has the planner expect them empty,
# and then every statement's generic plan scans them. The other statements look a row up by key
# or scan what they must (ListTasks, the lease rounds over unfinished tasks); planned afresh or
# from statistics that autovacuum keeps current, they need no settings.
WRITER_SESSION_SETTINGS = {
    "plan_cache_mode": "force_generic_plan",
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}


SCHEMA_STATE = """
SELECT current_schema() AS schema,
       to_regclass('task_events') IS NOT NULL AND to_regclass('idempotency_keys') IS NOT NULL
           AND EXISTS (
               SELECT 1 FROM information_schema.columns
               WHERE table_schema = current_schema() AND table_name = 'tasks'
                 AND column_name = 'lease_owner'
           ) AS migrated
"""
CLAIM_KEY = """
INSERT INTO idempotency_keys (request_id, fingerprint, task_id) VALUES ($1, $2, $3)
ON CONFLICT (request_id) DO NOTHING
RETURNING true
"""
KNOWN_KEY = """
SELECT k.fingerprint, k.task_id::text AS task_id, t.body
FROM idempotency_keys AS k JOIN tasks AS t USING (task_id)
WHERE k.request_id = $1
"""
INSERT_TASK = """
INSERT INTO tasks (task_id, request_id, create_time, create_ns, update_time, state, body,
                   lease_owner, lease_expires)
VALUES ($1, NULLIF($2, ''), $3, $4, $3, $5, $6, $7, now() + make_interval(secs => $8))
ON CONFLICT (task_id) DO NOTHING
RETURNING true
"""
GET_TASK = "SELECT finished, body FROM tasks WHERE task_id = $1"
# Where a watched log ends now, and whether it is closed.
LOG_END = "SELECT last_seq, finished FROM tasks WHERE task_id = $1"
LOCK_TASKS = """
SELECT task_id::text AS task_id, finished, body, lease_owner FROM tasks
WHERE task_id = ANY($1::uuid[])
ORDER BY task_id
FOR UPDATE
"""
# How both append statements write a task's new projection: a `finished` releases the lease, an
# owner's append ($14 the owner, $15 the TTL) renews it once less than half of it is left (so
# most appends change no indexed column, and the row update can skip the indexes).
_PROJECT = """SET state = p.state, last_seq = p.last_seq, finished = p.finished, body = p.body,
        update_time = p.update_time,
        lease_owner = CASE WHEN p.finished THEN NULL ELSE t.lease_owner END,
        lease_expires = CASE
            WHEN p.finished THEN NULL
            WHEN p.fenced AND t.lease_owner = $14
                 AND t.lease_expires < now() + make_interval(secs => $15 / 2)
                THEN now() + make_interval(secs => $15)
            ELSE t.lease_expires
        END
"""
# NOTE: one statement, one round trip: the events, the projections, and one notification per
# task (delivered by PostgreSQL only when the transaction commits).
WRITE_APPENDS = f"""
WITH appended AS (
    INSERT INTO task_events (task_id, seq, kind, body)
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[])
), projected AS (
    UPDATE tasks AS t
    {_PROJECT.strip()}
    FROM unnest($5::uuid[], $6::integer[], $7::bigint[], $8::boolean[], $9::bytea[],
                $10::timestamptz[], $13::boolean[])
         AS p (task_id, state, last_seq, finished, body, update_time, fenced)
    WHERE t.task_id = p.task_id
)
SELECT pg_notify($11, payload) FROM unnest($12::text[]) AS payload
"""
# NOTE: the append of a task whose projection this store holds (it runs the task): one
# statement, so one round trip and its own transaction. The row is updated only if the log
# is where the held projection says (no other writer got in) and, for an owner append, the
# lease is still this replica's; the events go in only for rows that were updated.
WRITE_HELD_APPENDS = f"""
WITH projected AS (
    UPDATE tasks AS t
    {_PROJECT.strip()}
    FROM unnest($5::uuid[], $6::integer[], $7::bigint[], $8::boolean[], $9::bytea[],
                $10::timestamptz[], $12::bigint[], $13::boolean[])
         AS p (task_id, state, last_seq, finished, body, update_time, prior_seq, fenced)
    WHERE t.task_id = p.task_id AND t.last_seq = p.prior_seq AND NOT t.finished
      AND (NOT p.fenced OR t.lease_owner IS NULL OR t.lease_owner = $14)
    RETURNING t.task_id, t.last_seq
), appended AS (
    INSERT INTO task_events (task_id, seq, kind, body)
    SELECT e.task_id, e.seq, e.kind, e.body
    FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bytea[]) AS e (task_id, seq, kind, body)
    JOIN projected USING (task_id)
)
SELECT task_id::text AS task_id, pg_notify($11, task_id::text || ':' || last_seq) FROM projected
"""
# NOTE: rows an append holds are skipped, never waited for (so a renewal and a commit cannot
# deadlock): an owner append renews a lease with less than half its TTL left itself, and one
# with more outlasts the next renewal round (a third of the TTL away). Every lease still this
# owner's is returned, renewed now or not (the main query does not see the CTE's update, nor
# need to).
RENEW_LEASES = """
WITH renewed AS (
    UPDATE tasks AS t SET lease_expires = now() + make_interval(secs => $2)
    FROM (
        SELECT task_id FROM tasks WHERE lease_owner = $1 AND NOT finished
        FOR UPDATE SKIP LOCKED
    ) AS free
    WHERE t.task_id = free.task_id
)
SELECT task_id::text AS task_id FROM tasks WHERE lease_owner = $1 AND NOT finished
"""
CLAIM_EXPIRED = """
WITH expired AS (
    SELECT task_id, lease_owner AS previous FROM tasks
    WHERE NOT finished AND (lease_expires IS NULL OR lease_expires < now())
    ORDER BY lease_expires NULLS FIRST
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks AS t SET lease_owner = $1, lease_expires = now() + make_interval(secs => $2)
FROM expired
WHERE t.task_id = expired.task_id
RETURNING t.task_id::text AS task_id, t.body, expired.previous
"""
QUARANTINE = """
UPDATE tasks SET lease_owner = 'quarantined', lease_expires = 'infinity' WHERE task_id = $1
"""
RELEASE_LEASES = """
UPDATE tasks SET lease_expires = now()
WHERE lease_owner = $1 AND task_id = ANY($2::uuid[]) AND NOT finished
"""
ADD_ARM_RECORDS = """
INSERT INTO arm_stats AS a (arm_id, arm_type, succeeded, failed, success_rate, mean_latency_s)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                     $5::double precision[], $6::double precision[])
ON CONFLICT (arm_id) DO UPDATE
SET arm_type = EXCLUDED.arm_type,
    succeeded = a.succeeded + EXCLUDED.succeeded,
    failed = a.failed + EXCLUDED.failed,
    success_rate = EXCLUDED.success_rate,
    mean_latency_s = EXCLUDED.mean_latency_s,
    updated_at = now()
"""
ARM_RECORDS = """
SELECT arm_id, arm_type, succeeded, failed, success_rate, mean_latency_s
FROM arm_stats WHERE arm_id = ANY($1::text[])
"""
READ_EVENTS = """
SELECT seq, body FROM task_events
WHERE task_id = $1 AND seq > $2
ORDER BY seq
LIMIT $3
"""
LAST_SEQS = "SELECT task_id::text AS task_id, last_seq FROM tasks WHERE task_id = ANY($1::uuid[])"
_LIST_COLUMNS = "SELECT task_id::text AS task_id, body FROM tasks"
_LIST_ORDER = "ORDER BY create_ns DESC, task_id DESC LIMIT $1"
# Keyed by (has a page token, filters by state).
LIST_TASKS = {
    (False, False): f"{_LIST_COLUMNS} {_LIST_ORDER}",
    (True, False): f"{_LIST_COLUMNS} WHERE (create_ns, task_id) < ($2, $3::uuid) {_LIST_ORDER}",
    (False, True): f"{_LIST_COLUMNS} WHERE state = ANY($2::integer[]) {_LIST_ORDER}",
    (True, True): (
        f"{_LIST_COLUMNS} WHERE state = ANY($2::integer[]) "
        f"AND (create_ns, task_id) < ($3, $4::uuid) {_LIST_ORDER}"
    ),
}
