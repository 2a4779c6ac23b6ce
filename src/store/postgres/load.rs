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
use super::{
    Inner, pool,
    rows::{End, Rows, RowsFailed, write_rows},
    schema, unavailable,
};
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

/// Each record of `sql` (a key, for errors, and the record; no
/// parameters), decoded as a record of `kind`, streamed to `each`.
async fn each_decoded<T: serde::de::DeserializeOwned>(
    client: &Client,
    database: &str,
    kind: &'static str,
    sql: &str,
    each: impl FnMut(T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    each_decoded_with(client, database, kind, sql, codec::decode, each).await
}

/// A record kind's decoder: kind, key, value.
type Decode<T> = fn(&'static str, &[u8], &[u8]) -> Result<T, StoreError>;

/// `each_decoded` with a record kind's own decoder (users have formats of
/// their own).
async fn each_decoded_with<T>(
    client: &Client,
    database: &str,
    kind: &'static str,
    sql: &str,
    decode: Decode<T>,
    mut each: impl FnMut(T) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    each_row(client, database, sql, |row| {
        each(decode(kind, row.get::<_, &str>(0).as_bytes(), row.get(1))?)
    })
    .await
}

// Each kind's rows, in no order (the view's start-up reads them all and
// needs none)...
const TOKEN_ROWS: &str = "SELECT id, record FROM entitled_tokens";
const ACCOUNT_ROWS: &str = "SELECT id, record FROM entitled_accounts";
const USER_ROWS: &str = "SELECT user_id, record FROM entitled_users";
// ...and in key order, for a snapshot that lists them the same way each time.
const TOKEN_ROWS_ORDERED: &str = "SELECT id, record FROM entitled_tokens ORDER BY id";
const ACCOUNT_ROWS_ORDERED: &str = "SELECT id, record FROM entitled_accounts ORDER BY id";
const USER_ROWS_ORDERED: &str =
    "SELECT user_id, record FROM entitled_users ORDER BY account_id, user_id";

/// The view as of the latest revision, and whether the store is
/// bootstrapped.
pub(super) async fn view(client: &Client, database: &str) -> Result<(View, bool), StoreError> {
    let fail = |e: tokio_postgres::Error| unavailable(database, &e);
    client.batch_execute(SNAPSHOT).await.map_err(fail)?;
    let counters = counters_of(&client.query_one(COUNTERS, &[]).await.map_err(fail)?);
    let (mut tokens, mut accounts, mut users) = (Vec::<Token>::new(), Vec::new(), Vec::new());
    each_decoded(client, database, TOKENS, TOKEN_ROWS, |t| {
        tokens.push(t);
        Ok(())
    })
    .await?;
    each_decoded(client, database, ACCOUNTS, ACCOUNT_ROWS, |a: Account| {
        accounts.push(a);
        Ok(())
    })
    .await?;
    each_decoded_with(
        client,
        database,
        USERS,
        USER_ROWS,
        codec::decode_user_owned,
        |u: User| {
            users.push(u);
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
    each_decoded(&client, database, ACCOUNTS, ACCOUNT_ROWS_ORDERED, |a| {
        visit(Record::Account(a))
    })
    .await?;
    each_decoded_with(
        &client,
        database,
        USERS,
        USER_ROWS_ORDERED,
        codec::decode_user_owned,
        |u| visit(Record::User(u)),
    )
    .await?;
    each_decoded(&client, database, TOKENS, TOKEN_ROWS_ORDERED, |t| {
        visit(Record::Token(t))
    })
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
    // A plain BEGIN on the pooled connection, as a batch does, so that the
    // batch's `write_rows` writes the rows. The pool (and so an unfinished
    // transaction) goes with this call.
    client.batch_execute("BEGIN").await.map_err(fail)?;
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&super::commit::WRITE_LOCK],
        )
        .await
        .map_err(fail)?;
    let state = counters_of(&client.query_one(COUNTERS, &[]).await.map_err(fail)?);
    let accounts: i64 = client
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
    let counters = records
        .iter()
        .find_map(|r| match r {
            Record::Counters(c) => Some(*c),
            _ => None,
        })
        .unwrap_or_default();
    for chunk in records.chunks(10_000) {
        let mut rows = Rows::default();
        for record in chunk {
            rows.record(record)?;
        }
        write_rows(&client, &rows, counters, End::Open)
            .await
            .map_err(|(RowsFailed::Unsent(e) | RowsFailed::Sent(e))| fail(e))?;
    }
    client.batch_execute("COMMIT").await.map_err(fail)?;
    Ok(())
}
