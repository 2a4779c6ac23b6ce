//! Following the change feed: every replica polls `entitled_changes` for
//! revisions after its view's and publishes them in order. Polling alone is
//! correct (CockroachDB, which speaks PostgreSQL's protocol, has no
//! LISTEN/NOTIFY): a revision's row commits with the revision, and
//! revisions commit in order under the write lock, so a poll never sees a
//! revision without every one before it.
//!
//! The follower also commits refusals that no write has taken along, and
//! measures the database's size; when the database cannot be reached it
//! says so once (a log line and `StoreObserver::reachable`), and again when
//! it is back.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::{Duration, Instant},
};

use deadpool_postgres::Object;

use super::super::{Mutation, StoreError, codec};
use super::{Inner, commit};

/// How often a replica looks for other replicas' writes: the bound on its
/// replication lag when idle, and 100 small queries a second.
const POLL: Duration = Duration::from_millis(10);
/// Revisions read per query.
const PAGE: i64 = 1000;
/// How often refusals waiting for a write are committed without one.
const REFUSALS_EVERY: Duration = Duration::from_millis(200);
/// How often the database's size is measured.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// Follows until the store is dropped.
pub(super) async fn run(inner: Weak<Inner>) {
    let mut stop = match inner.upgrade() {
        Some(inner) => inner.stop.subscribe(),
        None => return,
    };
    let mut refusals_at = Instant::now();
    let mut size_at: Option<Instant> = None;
    let mut client: Option<Object> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let polled = poll(&inner, &mut client).await;
        reachable(&inner, polled.is_ok());
        if let Err(e) = polled {
            client = None;
            tracing::debug!(error = %e, "change feed poll failed");
            continue;
        }
        if refusals_at.elapsed() >= REFUSALS_EVERY {
            refusals_at = Instant::now();
            if !inner.refusals.lock().is_empty()
                && let Err(e) = commit::flush_refusals(&inner).await
            {
                tracing::warn!(error = %e, "refusals not yet recorded");
            }
        }
        if size_at.is_none_or(|at| at.elapsed() >= SIZE_EVERY) {
            size_at = Some(Instant::now());
            if let Some(c) = &client
                && let Ok(row) = c
                    .query_one("SELECT pg_database_size(current_database())", &[])
                    .await
            {
                let size: i64 = row.get(0);
                inner
                    .size
                    .store(u64::try_from(size).unwrap_or(0), Ordering::Relaxed);
            }
        }
    }
}

/// One poll, on the follower's own connection (kept between polls).
async fn poll(inner: &Arc<Inner>, client: &mut Option<Object>) -> Result<(), StoreError> {
    if client.is_none() {
        *client = Some(inner.connection().await?);
    }
    let Some(c) = client.as_ref() else {
        return Ok(());
    };
    catch_up(inner, c).await
}

/// Records whether the database answered, and says so when that changes.
fn reachable(inner: &Inner, up: bool) {
    let was_up = !inner.unreachable.swap(!up, Ordering::AcqRel);
    if was_up == up {
        return;
    }
    if up {
        tracing::info!(database = %inner.database, revision = inner.publisher.read(|v| v.revision()), "database reachable again; reads are current");
    } else {
        tracing::warn!(database = %inner.database, revision = inner.publisher.read(|v| v.revision()), "database unreachable; reads are served as of this revision, writes are refused");
    }
    inner.publisher.reachable(up);
}

/// Publishes every revision after the view's that `client` sees committed,
/// once the WAL holding them is flushed: a writer acknowledges only then,
/// and no read may show what a crash of the database could still take back
/// (writers commit without waiting for the flush, then wait for it; see
/// `commit.rs`).
pub(super) async fn catch_up(inner: &Inner, client: &Object) -> Result<(), StoreError> {
    loop {
        let from = inner.publisher.read(|v| v.revision());
        let (changes, more) = read_page(inner, client, from).await?;
        if changes.is_empty() {
            return Ok(());
        }
        if !flushed(inner, client).await? {
            // Not yet: the next poll looks again.
            return Ok(());
        }
        publish(inner, changes);
        if !more {
            return Ok(());
        }
    }
}

/// Waits (at most `FLUSH_WAIT`) until the WAL is flushed as far as it had
/// been written when called: past every commit read before it. False if
/// it was not by then (PostgreSQL's WAL writer flushes within its delay,
/// 200 ms by default, even if nobody asks).
async fn flushed(inner: &Inner, client: &Object) -> Result<bool, StoreError> {
    const FLUSH_WAIT: Duration = Duration::from_millis(500);
    let written: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(inner.fail())?
        .get(0);
    let check = client
        .prepare_cached("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn")
        .await
        .map_err(inner.fail())?;
    let started = Instant::now();
    loop {
        let done: bool = client
            .query_one(&check, &[&written])
            .await
            .map_err(inner.fail())?
            .get(0);
        if done {
            return Ok(true);
        }
        if started.elapsed() >= FLUSH_WAIT {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Every revision after `from` up to `upto`, which a writer holding the
/// write lock knows to be the latest: they must all be there.
pub(super) async fn read_changes(
    inner: &Inner,
    client: &Object,
    from: u64,
    upto: Option<u64>,
) -> Result<Vec<(u64, Vec<Mutation>)>, StoreError> {
    let mut all = Vec::new();
    let mut at = from;
    loop {
        if upto.is_some_and(|upto| at >= upto) {
            return Ok(all);
        }
        let (changes, more) = read_page(inner, client, at).await?;
        if changes.is_empty() {
            return match upto {
                Some(upto) => Err(StoreError::Corrupt {
                    kind: "changes",
                    key: (at + 1).to_string(),
                    reason: format!(
                        "the counters say revision {upto}, but the change feed ends at {at}"
                    ),
                }),
                None => Ok(all),
            };
        }
        at = changes.last().map_or(at, |(r, _)| *r);
        all.extend(changes);
        if !more && upto.is_none() {
            return Ok(all);
        }
    }
}

/// Up to `PAGE` revisions after `from`, in order and with no gap, and
/// whether more may follow.
pub(super) async fn read_page(
    inner: &Inner,
    client: &Object,
    from: u64,
) -> Result<(Vec<(u64, Vec<Mutation>)>, bool), StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT revision, mutations FROM entitled_changes \
             WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .await
        .map_err(inner.fail())?;
    let rows = client
        .query(
            &statement,
            &[&i64::try_from(from).unwrap_or(i64::MAX), &PAGE],
        )
        .await
        .map_err(inner.fail())?;
    let more = rows.len() == PAGE as usize;
    let mut changes = Vec::with_capacity(rows.len());
    for (expected, row) in (from + 1..).zip(rows) {
        let revision = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        if revision != expected {
            return Err(StoreError::Corrupt {
                kind: "changes",
                key: expected.to_string(),
                reason: format!("the change feed goes from revision {from} to {revision}"),
            });
        }
        let key = revision.to_be_bytes();
        let mutations: Vec<Mutation> = codec::decode_mutations("changes", &key, row.get(1))?;
        changes.push((revision, mutations));
    }
    Ok((changes, more))
}

/// Publishes committed revisions to the view, skipping any already there
/// (the follower and a writer may both bring the same ones).
pub(super) fn publish(inner: &Inner, batch: Vec<(u64, Vec<Mutation>)>) {
    if batch.is_empty() {
        return;
    }
    let _order = inner.publishing.lock();
    let at = inner.publisher.read(|v| v.revision());
    let fresh: Vec<_> = batch.into_iter().filter(|(r, _)| *r > at).collect();
    if fresh
        .iter()
        .any(|(_, ms)| ms.iter().any(|m| matches!(m, Mutation::MarkBootstrapped)))
    {
        inner.bootstrapped.store(true, Ordering::Release);
    }
    if !fresh.is_empty() {
        inner.publisher.publish(fresh);
    }
}
