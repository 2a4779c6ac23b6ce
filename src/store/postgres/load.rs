//! Reading a whole database at one revision (the view at open, a snapshot
//! for a backup or a copy) and putting records into a new one (restore,
//! `store copy`).

use futures_util::{TryStreamExt, pin_mut};
use tokio_postgres::{Client, types::ToSql};

use super::super::{
    StoreError, View,
    backend::{Counters, KeptRequest, Record},
    codec::{self, ACCOUNTS, AUDIT, REQUESTS, TOKENS, USERS},
};
use super::{Inner, commit::audit_account, pool, schema, unavailable};
use crate::domain::{Account, Token, User};

const SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY";

fn counters_of(row: &tokio_postgres::Row) -> Counters {
    Counters {
        revision: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
        audit_seq: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        bootstrapped: row.get(2),
    }
}

const COUNTERS: &str = "SELECT revision, audit_seq, bootstrapped FROM entitled_state";

/// Every row of `sql` (no parameters), streamed to `each`.
async fn each_row(
    client: &Client,
    database: &str,
    sql: &str,
    mut each: impl FnMut(tokio_postgres::Row) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let fail = |e: tokio_postgres::Error| unavailable(database, &e);
    let none: [&(dyn ToSql + Sync); 0] = [];
    let rows = client.query_raw(sql, none).await.map_err(fail)?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await.map_err(fail)? {
        each(row)?;
    }
    Ok(())
}

/// The view as of the latest revision, and whether the store is
/// bootstrapped.
pub(super) async fn view(client: &Client, database: &str) -> Result<(View, bool), StoreError> {
    let fail = |e: tokio_postgres::Error| unavailable(database, &e);
    client.batch_execute(SNAPSHOT).await.map_err(fail)?;
    let counters = counters_of(&client.query_one(COUNTERS, &[]).await.map_err(fail)?);
    let mut tokens: Vec<Token> = Vec::new();
    each_row(
        client,
        database,
        "SELECT id, record FROM entitled_tokens",
        |row| {
            tokens.push(codec::decode(
                TOKENS,
                row.get::<_, &str>(0).as_bytes(),
                row.get(1),
            )?);
            Ok(())
        },
    )
    .await?;
    let mut accounts: Vec<Account> = Vec::new();
    each_row(
        client,
        database,
        "SELECT id, record FROM entitled_accounts",
        |row| {
            accounts.push(codec::decode(
                ACCOUNTS,
                row.get::<_, &str>(0).as_bytes(),
                row.get(1),
            )?);
            Ok(())
        },
    )
    .await?;
    let mut users: Vec<User> = Vec::new();
    each_row(
        client,
        database,
        "SELECT account_id, user_id, record FROM entitled_users",
        |row| {
            users.push(codec::decode(
                USERS,
                row.get::<_, &str>(1).as_bytes(),
                row.get(2),
            )?);
            Ok(())
        },
    )
    .await?;
    client.batch_execute("COMMIT").await.map_err(fail)?;
    let view = View::load(
        counters.revision,
        tokens.into_iter().map(Ok),
        accounts.into_iter().map(Ok),
        users.into_iter().map(Ok),
    )?;
    Ok((view, counters.bootstrapped))
}

/// Hands `visit` every record as of one revision, which it returns.
pub(super) async fn snapshot(
    inner: &Inner,
    visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let client = inner.connection().await?;
    let database = inner.database.as_str();
    let fail = |e: tokio_postgres::Error| unavailable(database, &e);
    client.batch_execute(SNAPSHOT).await.map_err(fail)?;
    let counters = counters_of(&client.query_one(COUNTERS, &[]).await.map_err(fail)?);
    visit(Record::Counters(counters))?;
    each_row(
        &client,
        database,
        "SELECT id, record FROM entitled_accounts ORDER BY id",
        |row| {
            visit(Record::Account(codec::decode(
                ACCOUNTS,
                row.get::<_, &str>(0).as_bytes(),
                row.get(1),
            )?))
        },
    )
    .await?;
    each_row(
        &client,
        database,
        "SELECT user_id, record FROM entitled_users ORDER BY account_id, user_id",
        |row| {
            visit(Record::User(codec::decode(
                USERS,
                row.get::<_, &str>(0).as_bytes(),
                row.get(1),
            )?))
        },
    )
    .await?;
    each_row(
        &client,
        database,
        "SELECT id, record FROM entitled_tokens ORDER BY id",
        |row| {
            visit(Record::Token(codec::decode(
                TOKENS,
                row.get::<_, &str>(0).as_bytes(),
                row.get(1),
            )?))
        },
    )
    .await?;
    each_row(
        &client,
        database,
        "SELECT seq, record FROM entitled_audit ORDER BY seq",
        |row| {
            let seq: i64 = row.get(0);
            visit(Record::Audit(codec::decode_audit(
                AUDIT,
                &seq.to_be_bytes(),
                row.get(1),
            )?))
        },
    )
    .await?;
    each_row(
        &client,
        database,
        "SELECT token_id, request_id, record FROM entitled_requests ORDER BY token_id, request_id",
        |row| {
            let request_id: &str = row.get(1);
            visit(Record::Request(KeptRequest {
                token_id: row.get::<_, &str>(0).to_owned(),
                request_id: request_id.to_owned(),
                record: codec::decode_request(REQUESTS, request_id.as_bytes(), row.get(2))?,
            }))
        },
    )
    .await?;
    client.batch_execute("COMMIT").await.map_err(fail)?;
    Ok(counters.revision)
}

/// Puts `records` into the database at `url`, which must hold no store yet
/// (its schema is made here): for a restore or a copy. One transaction:
/// either all of it is there or none.
pub(in super::super) async fn create(url: &str, records: Vec<Record>) -> Result<(), StoreError> {
    let (pool, database) = pool(url)?;
    let mut client = pool.get().await.map_err(|e| unavailable(&database, &e))?;
    schema::migrate(&mut client, &database).await?;
    let fail = |e: tokio_postgres::Error| unavailable(&database, &e);
    let tx = client.transaction().await.map_err(fail)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&super::commit::WRITE_LOCK],
    )
    .await
    .map_err(fail)?;
    let state = counters_of(&tx.query_one(COUNTERS, &[]).await.map_err(fail)?);
    let accounts: i64 = tx
        .query_one("SELECT count(*) FROM entitled_accounts", &[])
        .await
        .map_err(fail)?
        .get(0);
    if state.revision != 0 || accounts != 0 || state.bootstrapped {
        return Err(StoreError::Occupied {
            store: database.clone(),
            holds: format!("a store at revision {}", state.revision),
        });
    }
    let mut counters = Counters::default();
    for chunk in records.chunks(10_000) {
        let mut rows = Columns::default();
        for record in chunk {
            match record {
                Record::Counters(c) => counters = *c,
                Record::Account(a) => {
                    rows.a_ids.push(a.id.as_str().to_owned());
                    rows.a_records.push(codec::encode(a)?);
                }
                Record::User(u) => {
                    rows.u_accounts.push(u.account_id.as_str().to_owned());
                    rows.u_ids.push(u.id.as_str().to_owned());
                    rows.u_records.push(codec::encode(u)?);
                }
                Record::Token(t) => {
                    rows.t_ids.push(t.id.clone());
                    rows.t_records.push(codec::encode(t)?);
                }
                Record::Audit(r) => {
                    rows.au_seqs.push(i64::try_from(r.seq).unwrap_or(i64::MAX));
                    rows.au_revisions
                        .push(i64::try_from(r.revision).unwrap_or(i64::MAX));
                    rows.au_accounts.push(audit_account(r));
                    rows.au_records.push(codec::encode_audit(r)?);
                }
                Record::Request(k) => {
                    rows.r_tokens.push(k.token_id.clone());
                    rows.r_ids.push(k.request_id.clone());
                    rows.r_records.push(codec::encode_request(&k.record)?);
                }
            }
        }
        tx.execute(
            "INSERT INTO entitled_accounts (id, record) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
            &[&rows.a_ids, &rows.a_records],
        )
        .await
        .map_err(fail)?;
        tx.execute(
            "INSERT INTO entitled_users (account_id, user_id, record) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[])",
            &[&rows.u_accounts, &rows.u_ids, &rows.u_records],
        )
        .await
        .map_err(fail)?;
        tx.execute(
            "INSERT INTO entitled_tokens (id, record) SELECT * FROM UNNEST($1::text[], $2::bytea[])",
            &[&rows.t_ids, &rows.t_records],
        )
        .await
        .map_err(fail)?;
        tx.execute(
            "INSERT INTO entitled_audit (seq, revision, account_id, record) SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bytea[])",
            &[&rows.au_seqs, &rows.au_revisions, &rows.au_accounts, &rows.au_records],
        )
        .await
        .map_err(fail)?;
        tx.execute(
            "INSERT INTO entitled_requests (token_id, request_id, record) SELECT * FROM UNNEST($1::text[], $2::text[], $3::bytea[])",
            &[&rows.r_tokens, &rows.r_ids, &rows.r_records],
        )
        .await
        .map_err(fail)?;
    }
    tx.execute(
        "UPDATE entitled_state SET revision = $1, audit_seq = $2, bootstrapped = $3",
        &[
            &i64::try_from(counters.revision).unwrap_or(i64::MAX),
            &i64::try_from(counters.audit_seq).unwrap_or(i64::MAX),
            &counters.bootstrapped,
        ],
    )
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(())
}

#[derive(Default)]
struct Columns {
    a_ids: Vec<String>,
    a_records: Vec<Vec<u8>>,
    u_accounts: Vec<String>,
    u_ids: Vec<String>,
    u_records: Vec<Vec<u8>>,
    t_ids: Vec<String>,
    t_records: Vec<Vec<u8>>,
    au_seqs: Vec<i64>,
    au_revisions: Vec<i64>,
    au_accounts: Vec<Option<String>>,
    au_records: Vec<Vec<u8>>,
    r_tokens: Vec<String>,
    r_ids: Vec<String>,
    r_records: Vec<Vec<u8>>,
}
