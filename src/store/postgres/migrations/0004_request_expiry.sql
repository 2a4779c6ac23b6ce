-- Expired request records are deleted in the background (store/prune.rs):
-- the time each answer was kept, the record's own `at`, as a column with
-- an index, so that a sweep finds the oldest without decoding every
-- record. Every write that keeps an answer sets it (store/postgres/rows.rs);
-- no default, so that a writer that does not know the column (an older
-- entitled still running while a newer one migrates) fails its write
-- rather than keep an answer the sweep would misjudge.
--
-- Rows kept before this migration cannot be decoded here (postcard): they
-- get the migration's time, later than their own, so they are deleted a
-- window after it, never before their window is over.
ALTER TABLE entitled_requests ADD COLUMN kept_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE entitled_requests ALTER COLUMN kept_at DROP DEFAULT;
CREATE INDEX entitled_requests_by_kept_at ON entitled_requests (kept_at);
