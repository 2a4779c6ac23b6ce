//! Audit retention: audit records older than `--audit-retention` are pruned
//! in the background, in small batches (`Store::prune_batch`), with a pause
//! between batches, so writes and checks go on meanwhile. Default: keep
//! everything. ListChanges and Watch from before what is kept are refused
//! (`StoreError::Pruned`, OUT_OF_RANGE, naming the oldest revision held).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{Clock, DomainError};
use crate::store::{PruneBatch, Pruned, Store};

/// How the audit trail is pruned; the defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOptions {
    /// Audit records older than this are pruned; `None` keeps them all.
    pub keep: Option<Duration>,
    /// How often a pass runs (each prunes all that has grown too old).
    pub every: Duration,
    /// Records deleted per batch: one short transaction each.
    pub batch: usize,
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
    /// now), batch by batch; returns what it did. Nothing without a
    /// retention.
    pub async fn pass(&self) -> Result<PruneReport, DomainError> {
        let Some(keep) = self.options.keep else {
            return Ok(PruneReport {
                pruned: self.store.pruned().await?,
                ..PruneReport::default()
            });
        };
        let _one = self.running.lock().await;
        let before = (self.clock)()
            .checked_sub(keep)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut report = PruneReport::default();
        loop {
            let started = std::time::Instant::now();
            let batch = self
                .store
                .prune_batch(before, self.options.batch.max(1))
                .await?;
            let took = started.elapsed();
            report.records += batch.records;
            report.batches += u64::from(batch.records > 0);
            report.pruned = batch.pruned;
            if !batch.more {
                return Ok(report);
            }
            tokio::time::sleep(
                self.options
                    .pause
                    .max(idle_after(took, self.options.busy_percent)),
            )
            .await;
        }
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

    /// A pass every `every` until `stop` resolves; a pass under way ends
    /// at its next batch.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        if self.options.keep.is_none() {
            return;
        }
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.options.every) => {}
                _ = &mut stop => return,
            }
            let started = std::time::Instant::now();
            tokio::select! {
                passed = self.pass() => match passed {
                    Ok(report) if report.records > 0 => tracing::info!(
                        records = report.records,
                        batches = report.batches,
                        pruned_through_revision = report.pruned.revision,
                        took_ms = started.elapsed().as_millis(),
                        "audit trail pruned"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "audit trail not pruned; trying again later"),
                },
                _ = &mut stop => return,
            }
        }
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
