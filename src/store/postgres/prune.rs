//! Audit retention on PostgreSQL: how far the trail is pruned
//! (`entitled_pruned`), and a batch of pruning as one transaction.
//!
//! Replicas do not fight: a batch takes a transaction-level advisory lock
//! of its own with `pg_try_advisory_xact_lock` (a replica that finds it
//! taken skips its turn), and moves `entitled_pruned` only from the mark it
//! read (`WHERE seq = from`), so a batch planned on an old mark does
//! nothing. Neither the write lock nor `entitled_state` is touched:
//! writers never wait for a pruning batch.
//!
//! A batch also deletes the change-feed rows (`entitled_changes`) of the
//! revisions it prunes: a replica reads the feed only after the revision
//! its view holds, and the pruning replica's view already holds them (see
//! RELIABILITY.md for a replica cut off for longer than the retention).
//!
//! The disk space: DELETE leaves dead rows, which autovacuum marks free
//! for new rows of the same table; the files do not shrink. `VACUUM FULL
//! entitled_audit` (or `pg_repack`) gives the space back to the operating
//! system (README, operations).
//!
//! Expired request records (`prune_requests`): one DELETE of the oldest
//! rows by `kept_at` (migration 0004, indexed), a batch at a time. Rows
//! are picked `FOR UPDATE SKIP LOCKED`, so replicas sweeping at once take
//! different rows and a row a writer is replacing is passed over; the
//! DELETE checks `kept_at` again on the row as it is then (READ COMMITTED
//! re-reads a row updated meanwhile), so an answer a writer kept anew
//! under the same key is never the one deleted. Autocommitted, with no
//! lock of the writers': a writer waits at most for the one statement,
//! and only on a row it is about to replace.

use std::time::SystemTime;

use super::super::{
    StoreError,
    prune::{Pruned, RequestsBatch, RequestsResume},
};
use super::Inner;

/// Held (transaction-level) by the one replica pruning at a time.
const PRUNE_LOCK: i64 = 0x656e_7469_7072_756e; // "entiprun"

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// How far the trail is pruned.
pub(super) async fn pruned(inner: &Inner) -> Result<Pruned, StoreError> {
    let client = inner.connection().await?;
    let statement = client
        .prepare_cached("SELECT revision, seq FROM entitled_pruned")
        .await
        .map_err(inner.fail())?;
    let row = client
        .query_one(&statement, &[])
        .await
        .map_err(inner.fail())?;
    Ok(Pruned {
        revision: unsigned(row.get(0)),
        seq: unsigned(row.get(1)),
    })
}

/// A database that holds a pruned trail without the mark (restored or
/// copied from a pruned store: a backup holds the records, not the mark)
/// gets the mark its first audit record implies: the trail starts after a
/// hole, and the revision of its first record is taken as pruned (it may
/// have lost records before the first one held). Run at open; does nothing
/// to a database already marked or never pruned.
pub(super) async fn mark_restored(
    client: &tokio_postgres::Client,
    database: &str,
) -> Result<(), StoreError> {
    client
        .batch_execute(
            "UPDATE entitled_pruned p SET revision = f.revision, seq = f.seq - 1 \
             FROM (SELECT seq, revision FROM entitled_audit ORDER BY seq LIMIT 1) f \
             WHERE p.seq = 0 AND f.seq > 1; \
             UPDATE entitled_pruned p SET revision = s.revision, seq = s.audit_seq \
             FROM entitled_state s \
             WHERE p.seq = 0 AND s.audit_seq > 0 AND NOT EXISTS (SELECT 1 FROM entitled_audit)",
        )
        .await
        .map_err(|e| super::unavailable(database, &e))
}

/// `Backend::prune`.
pub(super) async fn prune(inner: &Inner, from: Pruned, to: Pruned) -> Result<bool, StoreError> {
    if to.seq <= from.seq {
        return Ok(false);
    }
    let mut client = inner.connection().await?;
    let fail = inner.fail();
    let tx = client.transaction().await.map_err(&fail)?;
    let locked: bool = tx
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&PRUNE_LOCK])
        .await
        .map_err(&fail)?
        .get(0);
    if !locked {
        return Ok(false);
    }
    let moved = tx
        .execute(
            "UPDATE entitled_pruned SET revision = $1, seq = $2 WHERE seq = $3",
            &[&signed(to.revision), &signed(to.seq), &signed(from.seq)],
        )
        .await
        .map_err(&fail)?;
    if moved == 0 {
        return Ok(false);
    }
    tx.execute(
        "DELETE FROM entitled_audit WHERE seq > $1 AND seq <= $2",
        &[&signed(from.seq), &signed(to.seq)],
    )
    .await
    .map_err(&fail)?;
    tx.execute(
        "DELETE FROM entitled_changes WHERE revision <= $1",
        &[&signed(to.revision)],
    )
    .await
    .map_err(&fail)?;
    tx.commit().await.map_err(&fail)?;
    Ok(true)
}

/// `Backend::prune_requests`: the oldest first, so no place to go on from
/// but "more" (an empty `RequestsResume`) when the batch was full.
pub(super) async fn prune_requests(
    inner: &Inner,
    before: SystemTime,
    limit: usize,
) -> Result<RequestsBatch, StoreError> {
    let client = inner.connection().await?;
    let statement = client
        .prepare_cached(
            "DELETE FROM entitled_requests WHERE (token_id, request_id) IN \
             (SELECT token_id, request_id FROM entitled_requests WHERE kept_at < $1 \
              ORDER BY kept_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
             AND kept_at < $1",
        )
        .await
        .map_err(inner.fail())?;
    let limit = signed(u64::try_from(limit).unwrap_or(u64::MAX));
    let records = client
        .execute(&statement, &[&before, &limit])
        .await
        .map_err(inner.fail())?;
    Ok(RequestsBatch {
        records,
        resume: (signed(records) == limit).then(RequestsResume::default),
    })
}
