//! The change feed, read: audit listings (`ListChanges`) and the cursors a
//! Watch reads by. Built on `Backend::audit_from` and `audit_record`; what
//! is shown stops at the view's revision, so it never shows a write reads
//! do not. A reader that asks for records that were pruned (audit
//! retention, `prune.rs`) gets `StoreError::Pruned`, never a listing or
//! watch with a hole: the backend records how far it pruned no later than
//! it deletes, so a check made after reading sees any pruning that took
//! records from under the read.

use std::{ops::ControlFlow, time::SystemTime};

use super::{PrunedAsk, Store, StoreError};
use crate::domain::{AuditRecord, Outcome};

impl Store {
    /// Up to `limit` audit records after sequence `after_seq` whose revision
    /// is above `after_revision`, of one account or all, in order; and
    /// whether more may follow. Applied records not yet durable are not
    /// shown (the listing stops before them). `after_revision` and
    /// `after_seq` 0 list from the oldest record held; either one naming a
    /// point before what is held is `StoreError::Pruned`.
    pub async fn audit(
        &self,
        account: Option<&str>,
        after_seq: u64,
        after_revision: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), StoreError> {
        // A listing from the start that pruning overtook is listed again.
        let mut tries = 0;
        loop {
            let (out, more) = self
                .audit_once(account, after_seq, after_revision, limit)
                .await?;
            let pruned = self.backend.pruned().await?;
            let asked = if after_revision > 0 && pruned.cuts(after_revision) {
                Some(PrunedAsk::AfterRevision(after_revision))
            } else if after_seq > 0 && after_seq < pruned.seq {
                Some(PrunedAsk::PageAfter(after_seq))
            } else {
                None
            };
            if let Some(asked) = asked {
                return Err(StoreError::Pruned { asked, pruned });
            }
            let overtaken = out.first().is_some_and(|r| r.seq <= pruned.seq);
            if !overtaken {
                return Ok((out, more));
            }
            tries += 1;
            if tries == 3 {
                return Err(StoreError::Pruned {
                    asked: PrunedAsk::PageAfter(after_seq),
                    pruned,
                });
            }
        }
    }

    async fn audit_once(
        &self,
        account: Option<&str>,
        after_seq: u64,
        after_revision: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), StoreError> {
        let durable = self.publisher().read(|v| v.revision());
        let mut out = Vec::new();
        let mut more = false;
        self.backend
            .audit_from(account, after_seq + 1, &mut |record| {
                if record.outcome == Outcome::Applied && record.revision > durable {
                    return ControlFlow::Break(());
                }
                // A refusal at revision r came after the write that made r.
                let after = match record.outcome {
                    Outcome::Applied => record.revision > after_revision,
                    Outcome::Refused { .. } => record.revision >= after_revision,
                };
                if !after {
                    return ControlFlow::Continue(());
                }
                if out.len() == limit {
                    more = true;
                    return ControlFlow::Break(());
                }
                out.push(record);
                ControlFlow::Continue(())
            })
            .await?;
        Ok((out, more))
    }

    /// Where a watch after `revision` starts reading the audit trail: the
    /// first sequence number whose record has a revision above `revision`,
    /// with that record's time; or, if there is none yet, the sequence
    /// number the next record will get. Revisions never decrease along the
    /// trail, so this is a binary search, over the records held: a
    /// `revision` whose later changes were pruned is `StoreError::Pruned`.
    pub async fn audit_position_after(
        &self,
        revision: u64,
    ) -> Result<(u64, Option<SystemTime>), StoreError> {
        let pruned = self.backend.pruned().await?;
        if pruned.cuts(revision) {
            return Err(StoreError::Pruned {
                asked: PrunedAsk::AfterRevision(revision),
                pruned,
            });
        }
        let last = self.backend.last_audit_seq().await?;
        let (mut lo, mut hi) = (pruned.seq + 1, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.backend.audit_record(mid).await? {
                Some(r) if r.revision > revision => hi = mid,
                _ => lo = mid + 1,
            }
        }
        let at = if lo <= last {
            self.backend.audit_record(lo).await?.map(|r| r.at)
        } else {
            None
        };
        Ok((lo, at))
    }

    /// Up to `limit` applied audit records from sequence `from` on whose
    /// revision is at most `through`, and the sequence to continue from.
    /// Stops at the first applied record above `through` (not yet durable).
    /// Sequence numbers have no gaps, so a first record after `from`, or
    /// none where pruning has passed `from`, means records were pruned
    /// before they were read: `StoreError::Pruned`.
    pub async fn audit_records_from(
        &self,
        from: u64,
        through: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        let mut out = Vec::new();
        let mut next = from;
        let mut hole = None;
        self.backend
            .audit_from(None, from, &mut |record| {
                let seq = record.seq;
                // Anywhere in the read, not only at its start: a read
                // spans several of the backend's reads, and a pruning
                // batch may commit between two of them.
                if seq != next {
                    hole = Some(seq);
                    return ControlFlow::Break(());
                }
                if record.outcome == Outcome::Applied {
                    if record.revision > through || out.len() == limit {
                        return ControlFlow::Break(());
                    }
                    out.push(record);
                }
                next = seq + 1;
                ControlFlow::Continue(())
            })
            .await?;
        if hole.is_some() || next == from {
            let pruned = self.backend.pruned().await?;
            if pruned.seq >= next {
                return Err(StoreError::Pruned {
                    asked: PrunedAsk::Next(next),
                    pruned,
                });
            }
            if let Some(seq) = hole {
                return Err(StoreError::Corrupt {
                    kind: super::codec::AUDIT,
                    key: next.to_string(),
                    reason: format!(
                        "the audit trail goes from record {} to {seq}",
                        next.saturating_sub(1)
                    ),
                });
            }
        }
        Ok((out, next))
    }
}
