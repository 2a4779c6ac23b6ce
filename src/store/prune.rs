//! Audit retention, the store's part: how far the audit trail has been
//! pruned (`Pruned`, kept by each backend where it answers it cheaply), and
//! one batch of pruning (`Store::prune_batch`). The service's
//! `service/retention.rs` runs batches in the background.
//!
//! Also the sweep of expired request records (`Store::prune_requests_batch`),
//! whatever the audit retention: a request record is honoured for
//! `REQUEST_ID_WINDOW` only, after which a retry with its id is a new
//! request whether the record is held or not, so deleting it changes no
//! answer. It is deleted `REQUEST_PRUNE_GRACE` later still, so that a
//! replica whose clock runs behind the sweeping one's still finds every
//! record it would honour.
//!
//! The trail is pruned from its start only (a prefix, by sequence number),
//! and whole revisions at a time as readers see it: before a batch deletes
//! any record of a revision, the backend records that revision as pruned,
//! in the same transaction. A revision's records may take several batches
//! (an import has one per user), but from the first of them on no listing
//! or watch is served from before that revision.

use std::{
    ops::ControlFlow,
    time::{Duration, SystemTime},
};

use super::{REQUEST_ID_WINDOW, Store, StoreError};
use crate::domain::Outcome;

/// How far the audit trail has been pruned: every record with a sequence
/// number up to `seq` is gone, and the records gone are of revisions up to
/// `revision`. Revision `revision` itself may still have records held (the
/// rest of a revision being pruned in batches, or a refusal made at it
/// after the retained window began), so a listing or watch after revision
/// `revision` or later is whole, and one after an earlier revision is not:
/// the oldest revision held is `revision + 1`. `Pruned::default()`:
/// nothing pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub revision: u64,
    pub seq: u64,
}

impl Pruned {
    /// The oldest revision whose changes are all held.
    pub fn oldest_revision_held(&self) -> u64 {
        self.revision + 1
    }

    /// Whether a reader after revision `after_revision` would miss pruned
    /// records.
    pub fn cuts(&self, after_revision: u64) -> bool {
        after_revision < self.revision
    }
}

/// What a reader asked for that was pruned, for the error it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrunedAsk {
    /// Changes after this revision (ListChanges' or Watch's `after_revision`).
    AfterRevision(u64),
    /// A ListChanges page after this sequence number (its `page_token`).
    PageAfter(u64),
    /// A running watch's next record, by sequence number: pruned before the
    /// watch read it.
    Next(u64),
}

impl std::fmt::Display for PrunedAsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrunedAsk::AfterRevision(r) => write!(f, "after_revision `{r}`"),
            PrunedAsk::PageAfter(seq) => write!(f, "page_token (after record `{seq}`)"),
            PrunedAsk::Next(seq) => write!(f, "the watch's next record (`{seq}`)"),
        }
    }
}

/// What one batch of pruning did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneBatch {
    /// Records deleted by this batch.
    pub records: u64,
    /// How far the trail is pruned after it.
    pub pruned: Pruned,
    /// Whether older records may remain (the batch stopped at its limit).
    pub more: bool,
}

/// How long a request record is kept past `REQUEST_ID_WINDOW` before the
/// sweep deletes it: the window is judged by the clock of the replica a
/// retry reaches, the sweep by the clock of the one sweeping, and an hour
/// covers any skew between replicas that NTP keeps (and a clock stepped
/// back on one process).
pub const REQUEST_PRUNE_GRACE: Duration = Duration::from_secs(3600);

/// Where a sweep of request records goes on from: the backend's own (sled:
/// the last key a batch looked at; PostgreSQL deletes the oldest first and
/// needs none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestsResume(pub(crate) Vec<u8>);

/// What one batch of the sweep of expired request records did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestsBatch {
    /// Request records deleted by this batch.
    pub records: u64,
    /// Where the next batch goes on from; `None`: the sweep is over.
    pub resume: Option<RequestsResume>,
}

impl Store {
    /// Deletes up to `limit` request records that expired (kept more than
    /// `REQUEST_ID_WINDOW` and `REQUEST_PRUNE_GRACE` before `now`), going
    /// on from where the last batch of the sweep stopped (`resume`; `None`
    /// to start one). Short: see `Backend::prune_requests`.
    pub async fn prune_requests_batch(
        &self,
        now: SystemTime,
        resume: Option<RequestsResume>,
        limit: usize,
    ) -> Result<RequestsBatch, StoreError> {
        let before = now
            .checked_sub(REQUEST_ID_WINDOW + REQUEST_PRUNE_GRACE)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.backend
            .prune_requests(before, resume, limit.max(1))
            .await
    }

    /// How far the audit trail has been pruned.
    pub async fn pruned(&self) -> Result<Pruned, StoreError> {
        self.backend.pruned().await
    }

    /// Deletes up to `limit` of the oldest audit records written before
    /// `before`: a prefix of the trail, stopping at the first record that
    /// is newer (but never in the middle of a revision's changes: the
    /// records of one write share its time) or not yet published. Short:
    /// one backend transaction, holding no lock writers or checks take
    /// (PostgreSQL: one replica at a time; a replica that finds another
    /// pruning does nothing, and answers `records` 0).
    pub async fn prune_batch(
        &self,
        before: SystemTime,
        limit: usize,
    ) -> Result<PruneBatch, StoreError> {
        let from = self.backend.pruned().await?;
        // Never past what reads show: a watch may still be reading those.
        let published = self.publisher().read(|v| v.revision());
        let mut to = from;
        let mut records = 0u64;
        let mut more = false;
        let mut applied_at: Option<u64> = None;
        self.backend
            .audit_from(None, from.seq + 1, &mut |record| {
                if records as usize == limit {
                    more = true;
                    return ControlFlow::Break(());
                }
                let applied = record.outcome == Outcome::Applied;
                // The rest of a revision whose first change was old goes too.
                let rest_of_revision = applied && applied_at == Some(record.revision);
                if (record.at >= before && !rest_of_revision) || record.revision > published {
                    return ControlFlow::Break(());
                }
                if applied {
                    applied_at = Some(record.revision);
                }
                to = Pruned {
                    revision: to.revision.max(record.revision),
                    seq: record.seq,
                };
                records += 1;
                ControlFlow::Continue(())
            })
            .await?;
        if records == 0 {
            return Ok(PruneBatch {
                records: 0,
                pruned: from,
                more: false,
            });
        }
        if !self.backend.prune(from, to).await? {
            // Another replica is pruning (or just did): this pass ends, and
            // the other goes on.
            return Ok(PruneBatch {
                records: 0,
                pruned: self.backend.pruned().await?,
                more: false,
            });
        }
        Ok(PruneBatch {
            records,
            pruned: to,
            more,
        })
    }
}
