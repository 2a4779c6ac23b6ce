-- Supervisor scopes (domain rule 12). A user's scope travels inside its
-- record, as store/codec.rs encodes it (user records of format 2; the
-- change feed's records and kept answers likewise, and audit records of
-- format 3 with the scope in their before and after), so no column is
-- added: the columns are keys, and a scope is never looked up by.
--
-- The version itself is what this migration is for: an entitled from
-- before scopes cannot read those formats, and with the schema at 2 it
-- refuses the database at start ("newer than this entitled knows")
-- rather than failing on the first scoped record it meets.
COMMENT ON COLUMN entitled_users.record IS
    'store/codec.rs user record: format 1 (before supervisor scopes) or 2 (with User::supervisor_scope)';
COMMENT ON COLUMN entitled_changes.mutations IS
    'store/codec.rs list of mutations: format 1 (users before supervisor scopes) or 2';
