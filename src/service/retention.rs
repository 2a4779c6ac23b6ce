//! Audit retention: audit records older than `--audit-retention` are pruned
//! in the background, in small batches (`Store::prune_batch`), with a pause
//! between batches, so writes and checks go on meanwhile. Default: keep
//! everything. ListChanges and Watch from before what is kept are refused
//! (`StoreError::Pruned`, OUT_OF_RANGE, naming the oldest revision held).
//!
//! The same passes sweep expired request records (`Store::prune_requests_batch`),
//! always, whatever the audit retention: a request record is useless once
//! its retry window is over, and without the sweep a caller sending fresh
//! request ids would grow the store for ever. In the background a pass
//! sweeps them at most every `REQUESTS_EVERY` (a record outlives its window
//! by at most the grace and that), with the same batches and pacing.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{Clock, DomainError};
use crate::store::{PruneBatch, Pruned, RequestsResume, Store};

/// How often the background passes sweep expired request records. On
/// sled a sweep reads every record kept (the tree is in key order, not time
/// order), so not at every pass: a record kept for 24 hours may wait an
/// hour more.
pub const REQUESTS_EVERY: Duration = Duration::from_secs(3600);

/// How the audit trail is pruned; the defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOptions {
    /// Audit records older than this are pruned; `None` keeps them all.
    /// Expired request records are swept either way.
    pub keep: Option<Duration>,
    /// How often a pass runs (each prunes all that has grown too old).
    pub every: Duration,
    /// Audit records deleted per batch: one short transaction each.
    pub batch: usize,
    /// Expired request records deleted per batch. Larger than `batch`: a
    /// request record has no index entries to delete beside it, and the
    /// sweep must outpace writes that each keep one (at the default pace,
    /// 5,000 a batch sweeps several times the durable write rate).
    pub request_batch: usize,
    /// The least pause between batches, so that a long pass leaves the
    /// storage to writes and watches in between.
    pub pause: Duration,
    /// The most of its time a pass spends in batches: after each, it
    /// pauses long enough to keep to this share (or `pause`, if longer).
    /// A sled batch holds up every other sled operation while it applies,
    /// so this bounds what pruning takes from writes, whatever the disk.
    pub busy_percent: u32,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        RetentionOptions {
            keep: None,
            every: Duration::from_secs(60),
            batch: 100,
            request_batch: 5000,
            pause: Duration::from_millis(10),
            busy_percent: 10,
        }
    }
}

/// What a pass pruned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Records deleted.
    pub records: u64,
    /// Batches that deleted some.
    pub batches: u64,
    /// How far the trail is pruned after the pass.
    pub pruned: Pruned,
    /// Expired request records deleted.
    pub requests: u64,
    /// Batches that deleted some.
    pub request_batches: u64,
}

/// Runs pruning passes: in the background every `RetentionOptions::every`
/// (`run`), or when asked (`pass`; tests, with a clock they move). One pass
/// at a time per process; replicas of one database take turns (the
/// backend's lock). Cheap to clone.
#[derive(Clone)]
pub struct Pruner {
    store: Store,
    clock: Clock,
    options: RetentionOptions,
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Pruner {
    pub(super) fn new(store: Store, clock: Clock, options: RetentionOptions) -> Self {
        Pruner {
            store,
            clock,
            options,
            running: Arc::default(),
        }
    }

    pub fn options(&self) -> RetentionOptions {
        self.options
    }

    /// Prunes every audit record older than the retention (by the clock,
    /// now), batch by batch, and deletes every expired request record;
    /// returns what it did. No audit record is pruned without a retention.
    pub async fn pass(&self) -> Result<PruneReport, DomainError> {
        self.pass_of(true).await
    }

    /// A pass, sweeping request records if `requests`.
    async fn pass_of(&self, requests: bool) -> Result<PruneReport, DomainError> {
        let _one = self.running.lock().await;
        let mut report = PruneReport {
            pruned: self.store.pruned().await?,
            ..PruneReport::default()
        };
        if let Some(keep) = self.options.keep {
            let before = (self.clock)()
                .checked_sub(keep)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            loop {
                let started = std::time::Instant::now();
                let batch = self
                    .store
                    .prune_batch(before, self.options.batch.max(1))
                    .await?;
                report.records += batch.records;
                report.batches += u64::from(batch.records > 0);
                report.pruned = batch.pruned;
                if !batch.more {
                    break;
                }
                self.pause(started.elapsed()).await;
            }
        }
        if requests {
            let now = (self.clock)();
            let mut resume: Option<RequestsResume> = None;
            loop {
                let started = std::time::Instant::now();
                let batch = self
                    .store
                    .prune_requests_batch(now, resume, self.options.request_batch.max(1))
                    .await?;
                report.requests += batch.records;
                report.request_batches += u64::from(batch.records > 0);
                resume = batch.resume;
                if resume.is_none() {
                    break;
                }
                self.pause(started.elapsed()).await;
            }
        }
        Ok(report)
    }

    /// The pause after a batch that took `took`.
    async fn pause(&self, took: Duration) {
        tokio::time::sleep(
            self.options
                .pause
                .max(idle_after(took, self.options.busy_percent)),
        )
        .await;
    }

    /// One batch of a pass (what `pass` does first), for tests that look
    /// at the trail between batches. Nothing without a retention.
    pub async fn batch(&self) -> Result<PruneBatch, DomainError> {
        let Some(keep) = self.options.keep else {
            return Ok(PruneBatch {
                pruned: self.store.pruned().await?,
                ..PruneBatch::default()
            });
        };
        let _one = self.running.lock().await;
        let before = (self.clock)()
            .checked_sub(keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Ok(self
            .store
            .prune_batch(before, self.options.batch.max(1))
            .await?)
    }

    /// A pass every `every` until `stop` resolves (sweeping request
    /// records at most every `REQUESTS_EVERY`); a pass under way ends at
    /// its next batch.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut swept: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.every) => {}
                _ = &mut stop => return,
            }
            let requests = swept.is_none_or(|at| at.elapsed() >= REQUESTS_EVERY);
            if self.options.keep.is_none() && !requests {
                continue;
            }
            let started = std::time::Instant::now();
            tokio::select! {
                passed = self.pass_of(requests) => match passed {
                    Ok(report) => {
                        if requests {
                            swept = Some(started);
                        }
                        log_pass(&report, started);
                    }
                    Err(error) => tracing::warn!(%error, "audit trail or request records not pruned; trying again later"),
                },
                _ = &mut stop => return,
            }
        }
    }
}

/// What a background pass did, when it did something.
fn log_pass(report: &PruneReport, started: std::time::Instant) {
    if report.records > 0 {
        tracing::info!(
            records = report.records,
            batches = report.batches,
            pruned_through_revision = report.pruned.revision,
            took_ms = started.elapsed().as_millis(),
            "audit trail pruned"
        );
    }
    if report.requests > 0 {
        tracing::info!(
            records = report.requests,
            batches = report.request_batches,
            took_ms = started.elapsed().as_millis(),
            "expired request records pruned"
        );
    }
}

/// The pause after a batch that took `took`, for batches to fill at most
/// `busy_percent` of a pass's time.
fn idle_after(took: Duration, busy_percent: u32) -> Duration {
    let busy = busy_percent.clamp(1, 100);
    took.saturating_mul(100 - busy) / busy
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::idle_after;

    #[test]
    fn a_pass_keeps_to_its_share_of_the_time() {
        let ms = Duration::from_millis;
        assert_eq!(idle_after(ms(8), 10), ms(72));
        assert_eq!(idle_after(ms(8), 50), ms(8));
        assert_eq!(idle_after(ms(8), 100), ms(0));
        // Out of range: at least 1 %, at most all of it.
        assert_eq!(idle_after(ms(1), 0), ms(99));
        assert_eq!(idle_after(ms(8), 200), ms(0));
    }
}
