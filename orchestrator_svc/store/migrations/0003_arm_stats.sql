-- What the replicas have seen of each arm, so a replica that starts routes on that history
-- instead of priors. Counts add up across replicas; the moving averages are the last writer's.
CREATE TABLE arm_stats (
    arm_id         text             PRIMARY KEY,
    arm_type       text             NOT NULL,
    succeeded      bigint           NOT NULL DEFAULT 0 CHECK (succeeded >= 0),
    failed         bigint           NOT NULL DEFAULT 0 CHECK (failed >= 0),
    success_rate   double precision NOT NULL CHECK (success_rate BETWEEN 0 AND 1),
    mean_latency_s double precision NOT NULL CHECK (mean_latency_s >= 0),
    updated_at     timestamptz      NOT NULL DEFAULT now()
);
