//! The rows a write sends to PostgreSQL, column by column, and the one
//! pipelined round trip that sends them (a batch's, or a new database's).

use std::{collections::HashMap, time::SystemTime};

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;

use super::super::{
    Mutation, StoreError,
    backend::{Counters, Record},
    codec::{self, RequestRecord},
};
use super::commit::int;
use crate::domain::{Account, AccountId, AuditRecord, Token, User, UserId, validate_id};

/// How `write_rows` failed: before anything of the batch was sent (each
/// statement is prepared first), so surely not committed; or once its
/// statements (and, if asked for, its COMMIT) were on their way.
#[derive(Debug)]
pub(super) enum RowsFailed {
    Unsent(tokio_postgres::Error),
    Sent(tokio_postgres::Error),
}

/// How `write_rows` ends the transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Left open (a new database's rows, committed with the rest).
    Open,
    /// COMMIT without waiting for the WAL flush (the transaction's
    /// `synchronous_commit` is off): the lock goes at once.
    Commit,
    /// COMMIT at the session's `synchronous_commit` (`on` by default):
    /// answered once the WAL is flushed past it, so durable.
    CommitDurably,
}

/// Sends the batch's rows: one statement per table, then the counters, and
/// then, unless `End::Open`, the COMMIT, all at once (tokio-postgres pipelines
/// statements issued together, in the order they are first polled, so this
/// is one round trip, not one per table; every statement is prepared
/// before any is sent).
pub(super) async fn write_rows(
    client: &Object,
    rows: &Rows,
    counters: Counters,
    end: End,
) -> Result<(), RowsFailed> {
    type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;
    type Sent<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>,
    >;
    let counters = (
        int(counters.revision),
        int(counters.audit_seq),
        counters.bootstrapped,
    );
    // The statement of each table the rows touch, with its columns, then
    // the counters'.
    let mut statements: Vec<(&str, Params<'_>)> = Vec::new();
    let mut table = |touched: bool, sql, params| {
        if touched {
            statements.push((sql, params));
        }
    };
    table(
        !rows.account_ids.is_empty(),
        "INSERT INTO entitled_accounts (id, record) \
         SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        vec![&rows.account_ids, &rows.account_records],
    );
    table(
        !rows.deleted_account_ids.is_empty(),
        "DELETE FROM entitled_accounts WHERE id = ANY($1::text[])",
        vec![&rows.deleted_account_ids],
    );
    table(
        !rows.user_accounts.is_empty(),
        "INSERT INTO entitled_users (account_id, user_id, record) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[]) \
         ON CONFLICT (account_id, user_id) DO UPDATE SET record = EXCLUDED.record",
        vec![&rows.user_accounts, &rows.user_ids, &rows.user_records],
    );
    table(
        !rows.deleted_accounts.is_empty(),
        "DELETE FROM entitled_users WHERE (account_id, user_id) IN \
         (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        vec![&rows.deleted_accounts, &rows.deleted_users],
    );
    table(
        !rows.token_ids.is_empty(),
        "INSERT INTO entitled_tokens (id, record) \
         SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        vec![&rows.token_ids, &rows.token_records],
    );
    table(
        !rows.change_revisions.is_empty(),
        "INSERT INTO entitled_changes (revision, mutations) \
         SELECT * FROM UNNEST($1::bigint[], $2::bytea[])",
        vec![&rows.change_revisions, &rows.change_records],
    );
    table(
        !rows.audit_seqs.is_empty(),
        "INSERT INTO entitled_audit (seq, revision, account_id, record) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bytea[])",
        vec![
            &rows.audit_seqs,
            &rows.audit_revisions,
            &rows.audit_accounts,
            &rows.audit_records,
        ],
    );
    table(
        !rows.request_tokens.is_empty(),
        "INSERT INTO entitled_requests (token_id, request_id, record, kept_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::timestamptz[]) \
         ON CONFLICT (token_id, request_id) \
         DO UPDATE SET record = EXCLUDED.record, kept_at = EXCLUDED.kept_at",
        vec![
            &rows.request_tokens,
            &rows.request_ids,
            &rows.request_records,
            &rows.request_kept_at,
        ],
    );
    table(
        true,
        "UPDATE entitled_state SET revision = $1, audit_seq = $2, bootstrapped = $3",
        vec![&counters.0, &counters.1, &counters.2],
    );
    // Every statement prepared (from the connection's cache, after the
    // first batch) before any is sent.
    let mut prepared = Vec::with_capacity(statements.len());
    for (sql, params) in &statements {
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(RowsFailed::Unsent)?;
        prepared.push((statement, params.as_slice()));
    }
    let mut sent: Vec<Sent<'_>> = prepared
        .iter()
        .map(|(statement, params)| -> Sent<'_> { Box::pin(client.execute(statement, params)) })
        .collect();
    let ending: &[&str] = match end {
        End::Open => &[],
        End::Commit => &["COMMIT"],
        // The session's own level, as `commit::flush`'s transaction has:
        // `on`, or a standby's if the operator asks for one.
        End::CommitDurably => &["SET LOCAL synchronous_commit TO DEFAULT", "COMMIT"],
    };
    for &query in ending {
        sent.push(Box::pin(async move {
            client.batch_execute(query).await.map(|()| 0)
        }));
    }
    // A connection lost before now (statements prepared earlier come from
    // the cache, so this may be the first sign of it) has sent nothing of
    // these: surely not committed. An empty query on a closed client fails
    // at once, without the network, and gives the error to report.
    if client.is_closed()
        && let Err(e) = client.batch_execute("").await
    {
        return Err(RowsFailed::Unsent(e));
    }
    futures_util::future::try_join_all(sent)
        .await
        .map_err(RowsFailed::Sent)?;
    Ok(())
}

/// Rows to write, column by column (for `UNNEST`): a batch's, or a new
/// database's (`load::create`).
#[derive(Default)]
pub(super) struct Rows {
    account_ids: Vec<String>,
    account_records: Vec<Vec<u8>>,
    deleted_account_ids: Vec<String>,
    user_accounts: Vec<String>,
    user_ids: Vec<String>,
    user_records: Vec<Vec<u8>>,
    deleted_accounts: Vec<String>,
    deleted_users: Vec<String>,
    token_ids: Vec<String>,
    token_records: Vec<Vec<u8>>,
    change_revisions: Vec<i64>,
    change_records: Vec<Vec<u8>>,
    audit_seqs: Vec<i64>,
    audit_revisions: Vec<i64>,
    audit_accounts: Vec<Option<String>>,
    audit_records: Vec<Vec<u8>>,
    request_tokens: Vec<String>,
    request_ids: Vec<String>,
    request_records: Vec<Vec<u8>>,
    /// Each record's `at`: the sweep of expired records goes by it.
    request_kept_at: Vec<SystemTime>,
}

impl Rows {
    /// A batch's rows: the records its writes leave, its changes, its audit
    /// records and its request ids.
    pub(super) fn of(
        changes: &[(u64, Vec<Mutation>)],
        audit: &[AuditRecord],
        requests: &HashMap<(String, String), RequestRecord>,
    ) -> Result<Rows, StoreError> {
        // The records this batch's own writes leave, each key once (the
        // overlay also holds what it caught up on, which is stored).
        let mut accounts: HashMap<&AccountId, Option<&Account>> = HashMap::new();
        let mut users: HashMap<(&AccountId, &UserId), Option<&User>> = HashMap::new();
        let mut tokens: HashMap<&str, &Token> = HashMap::new();
        for (_, mutations) in changes {
            for m in mutations {
                match m {
                    Mutation::PutAccount(a) => {
                        accounts.insert(&a.id, Some(a));
                    }
                    Mutation::DeleteAccount(a) => {
                        accounts.insert(a, None);
                    }
                    Mutation::PutUser(u) => {
                        users.insert((&u.account_id, &u.id), Some(u));
                    }
                    Mutation::DeleteUser(a, u) => {
                        users.insert((a, u), None);
                    }
                    Mutation::PutToken(t) => {
                        tokens.insert(&t.id, t);
                    }
                    Mutation::MarkBootstrapped => {}
                }
            }
        }
        let mut rows = Rows::default();
        for (id, account) in accounts {
            match account {
                Some(account) => rows.account(account)?,
                None => rows.deleted_account_ids.push(id.as_str().to_owned()),
            }
        }
        for ((a, u), user) in users {
            match user {
                Some(user) => rows.user(user)?,
                None => {
                    rows.deleted_accounts.push(a.as_str().to_owned());
                    rows.deleted_users.push(u.as_str().to_owned());
                }
            }
        }
        for token in tokens.into_values() {
            rows.token(token)?;
        }
        for (revision, mutations) in changes {
            rows.change_revisions.push(int(*revision));
            rows.change_records
                .push(codec::encode_mutations(mutations)?);
        }
        for record in audit {
            rows.audit(record)?;
        }
        for ((token, id), record) in requests {
            rows.request(token, id, record)?;
        }
        Ok(rows)
    }

    /// A stored record's row; the counters are not one (`write_rows` takes
    /// them).
    pub(super) fn record(&mut self, record: &Record) -> Result<(), StoreError> {
        match record {
            Record::Counters(_) => Ok(()),
            Record::Account(a) => self.account(a),
            Record::User(u) => self.user(u),
            Record::Token(t) => self.token(t),
            Record::Audit(r) => self.audit(r),
            Record::Request(k) => self.request(&k.token_id, &k.request_id, &k.record),
        }
    }

    fn account(&mut self, account: &Account) -> Result<(), StoreError> {
        self.account_ids.push(account.id.as_str().to_owned());
        self.account_records.push(codec::encode(account)?);
        Ok(())
    }

    fn user(&mut self, user: &User) -> Result<(), StoreError> {
        self.user_accounts.push(user.account_id.as_str().to_owned());
        self.user_ids.push(user.id.as_str().to_owned());
        self.user_records.push(codec::encode_user(user)?);
        Ok(())
    }

    fn token(&mut self, token: &Token) -> Result<(), StoreError> {
        self.token_ids.push(token.id.clone());
        self.token_records.push(codec::encode(token)?);
        Ok(())
    }

    fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        self.audit_seqs.push(int(record.seq));
        self.audit_revisions.push(int(record.revision));
        self.audit_accounts.push(audit_account(record));
        self.audit_records.push(codec::encode_audit(record)?);
        Ok(())
    }

    fn request(&mut self, token: &str, id: &str, record: &RequestRecord) -> Result<(), StoreError> {
        self.request_tokens.push(token.to_owned());
        self.request_ids.push(id.to_owned());
        self.request_records.push(codec::encode_request(record)?);
        self.request_kept_at.push(record.at);
        Ok(())
    }
}

/// The account an audit record is listed under: only a well-formed id, so
/// that one account's listing never matches a refused call's malformed id.
fn audit_account(record: &AuditRecord) -> Option<String> {
    validate_id(&record.account_id)
        .is_ok()
        .then(|| record.account_id.clone())
}
