-- entitled's tables. Records are stored as store/codec.rs encodes them (a
-- format byte, then postcard), the same bytes sled holds; the other
-- columns are keys, for lookups and order.

-- The counters: the latest revision, the last audit sequence number given,
-- and whether the first start's operator token was made. One row.
CREATE TABLE entitled_state (
    id smallint PRIMARY KEY CHECK (id = 1),
    revision bigint NOT NULL,
    audit_seq bigint NOT NULL,
    bootstrapped boolean NOT NULL
);
INSERT INTO entitled_state VALUES (1, 0, 0, false);

CREATE TABLE entitled_accounts (
    id text PRIMARY KEY,
    record bytea NOT NULL
);

CREATE TABLE entitled_users (
    account_id text NOT NULL,
    user_id text NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (account_id, user_id)
);

CREATE TABLE entitled_tokens (
    id text PRIMARY KEY,
    record bytea NOT NULL
);

-- The change feed replicas follow: each revision's mutations, in order.
CREATE TABLE entitled_changes (
    revision bigint PRIMARY KEY,
    mutations bytea NOT NULL
);

-- The audit trail. `account_id` is set only for a well-formed account id,
-- so that one account's listing never matches a refused call's malformed
-- id.
CREATE TABLE entitled_audit (
    seq bigint PRIMARY KEY,
    revision bigint NOT NULL,
    account_id text,
    record bytea NOT NULL
);
CREATE INDEX entitled_audit_by_account ON entitled_audit (account_id, seq);

-- The first answer to each request id, for safe retries.
CREATE TABLE entitled_requests (
    token_id text NOT NULL,
    request_id text NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (token_id, request_id)
);

-- One row per replica process, updated in a transaction of its own (with
-- synchronous commit) to make PostgreSQL flush the WAL, and with it every
-- commit before: a batch commits without waiting for the flush, then waits
-- on this (store/postgres/commit.rs). A transaction that writes no WAL is
-- not flushed, so the update is what makes the wait real.
CREATE TABLE entitled_flush (
    replica bigint PRIMARY KEY,
    n bigint NOT NULL
);
