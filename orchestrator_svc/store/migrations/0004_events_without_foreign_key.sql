-- task_events loses its foreign key to tasks. Every append inserts events only beside the
-- update of their task's row in the same statement (the held path joins the events to the rows
-- it updated; the locking path has the rows FOR UPDATE), so the key checked nothing the store
-- could get wrong, and it cost one trigger call per event: an index probe and a FOR KEY SHARE
-- lock (with its own WAL record) on the row the statement had just updated. Tasks are never
-- deleted, so its ON DELETE CASCADE was never used either.
ALTER TABLE task_events DROP CONSTRAINT IF EXISTS task_events_task_id_fkey;
