-- Audit retention (store/prune.rs): how far the audit trail has been
-- pruned. Every audit record with a sequence number up to `seq` is gone,
-- and they were of revisions up to `revision`, so the oldest revision held
-- is `revision + 1`. One row, in a table of its own so that pruning never
-- waits for, or holds up, the writers' row in `entitled_state`. A pruning
-- batch updates it and deletes the records in one transaction.
CREATE TABLE entitled_pruned (
    id smallint PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL,
    seq bigint NOT NULL
);
INSERT INTO entitled_pruned VALUES (1, 0, 0);
