-- Task leases: the replica running a task holds its lease and renews it; a dead replica's leases
-- expire and another replica claims them (SELECT ... FOR UPDATE SKIP LOCKED) and resumes the
-- task from its event log.

-- NOTE: on the task row itself, so the FOR UPDATE that every append takes also fences a
-- replica whose lease was taken over: its appends are refused in the same transaction.
ALTER TABLE tasks
    ADD COLUMN lease_owner   text,
    ADD COLUMN lease_expires timestamptz;

-- Tasks accepted before leases existed are claimable at once.
UPDATE tasks SET lease_expires = now() WHERE NOT finished;

CREATE INDEX tasks_lease_expiry ON tasks (lease_expires) WHERE NOT finished;
