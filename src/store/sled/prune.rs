//! Audit retention on sled: how far the trail is pruned (`meta`'s
//! `pruned`, and a copy in memory), and a batch of pruning as one sled
//! transaction over `meta`, `audit` and `audit_by_account`.
//!
//! Pruning takes no lock of the store's (not the writer lock, not the
//! flush lock): the records it removes are older than any a writer
//! touches. sled's own transactions are exclusive while they apply (sled
//! 0.34's concurrency control), so a batch holds up sled's other reads and
//! writes (a flush, a watch reading the trail) for as long as it takes to
//! apply, which is why batches are small (100 records by default: batches
//! of 1,000 cut the write rate by four fifths while they ran,
//! BENCHMARKS.md "Audit retention"). Checks never touch sled.
//!
//! The disk space: sled 0.34 is log-structured. A removed record's space
//! in its segment is free at once in sled's accounting; a segment whose
//! records are all gone is freed and reused for new writes, and the file
//! is cut short only when free segments sit at its end
//! (`SegmentAccountant::free_segment`). sled 0.34 has no cleaner that
//! moves live records out of mostly-empty segments (its
//! `segment_cleanup_threshold` is a no-op), so the file mostly stops
//! growing rather than shrinking; `entitled store copy` into a new
//! directory writes a compact copy.
//!
//! Expired request records (`prune_requests_sync`): the `requests` tree is
//! keyed by token and request id, not by time, so a sweep reads it in key
//! order, a bounded stretch per batch (`LOOKED_AT_PER_DELETE` records for
//! each it may delete), and deletes those kept before the cut-off. Like
//! the audit pruning it takes no lock of the store's and reads sled
//! directly, not the writer's staged writes: each deletion is a
//! compare-and-swap from the bytes read to nothing, so a record that a
//! writer replaced meanwhile (a retry past the window keeps its new answer
//! under the same key; staged, it reaches sled with the next flush, before
//! or after the deletion) is never the one deleted. The deletions are not
//! flushed here: they become durable with the next flush of a write (or
//! sled's own, within half a second). One lost in a crash brings back an
//! expired record, which the write path treats as absent and the next
//! sweep deletes: harmless.

use std::{ops::Bound, time::SystemTime};

use ::sled::{IVec, Transactional, transaction::ConflictableTransactionError};

use super::super::{
    StoreError, codec,
    prune::{Pruned, RequestsBatch, RequestsResume},
};
use super::{
    SledBackend, Trees,
    keys::{AUDIT, META, PRUNED_KEY, REQUESTS, audit_account_prefix, backend},
};
use crate::domain::validate_id;

/// How far the trail is pruned, as `meta` says; for a store that holds no
/// such record (never pruned, or restored from a backup of a pruned one,
/// which holds the records but not the mark), what its first audit record
/// says: the trail then starts after a hole, and the revision of its first
/// record is taken as pruned (it may have lost records before the first
/// one held).
pub(super) fn read_pruned(
    trees: &Trees,
    revision: u64,
    audit_seq: u64,
) -> Result<Pruned, StoreError> {
    if let Some(bytes) = trees.meta.get(PRUNED_KEY).map_err(backend)? {
        return decode(&bytes);
    }
    match trees.audit.first().map_err(backend)? {
        Some((key, value)) => {
            let record = codec::decode_audit(AUDIT, &key, &value)?;
            Ok(if record.seq > 1 {
                Pruned {
                    revision: record.revision,
                    seq: record.seq - 1,
                }
            } else {
                Pruned::default()
            })
        }
        // Every record given was pruned.
        None if audit_seq > 0 => Ok(Pruned {
            revision,
            seq: audit_seq,
        }),
        None => Ok(Pruned::default()),
    }
}

fn encode(pruned: Pruned) -> Vec<u8> {
    let mut bytes = pruned.revision.to_be_bytes().to_vec();
    bytes.extend_from_slice(&pruned.seq.to_be_bytes());
    bytes
}

fn decode(bytes: &[u8]) -> Result<Pruned, StoreError> {
    let corrupt = || StoreError::Corrupt {
        kind: META,
        key: String::from_utf8_lossy(PRUNED_KEY).into_owned(),
        reason: format!("{} bytes, not 16", bytes.len()),
    };
    let (revision, seq) = bytes.split_at_checked(8).ok_or_else(corrupt)?;
    let number = |b: &[u8]| b.try_into().map(u64::from_be_bytes).map_err(|_| corrupt());
    Ok(Pruned {
        revision: number(revision)?,
        seq: number(seq)?,
    })
}

impl SledBackend {
    /// `Backend::prune`. Blocking.
    pub(super) fn prune_sync(&self, from: Pruned, to: Pruned) -> Result<bool, StoreError> {
        let trees = &self.inner.trees;
        // One pruner at a time, so that `meta` is written in order.
        let _pruning = self.inner.pruning.lock();
        if *self.inner.pruned.lock() != from || to.seq <= from.seq {
            return Ok(false);
        }
        let mut records = Vec::new();
        let mut index = Vec::new();
        let first = (from.seq + 1).to_be_bytes();
        let last = to.seq.to_be_bytes();
        for item in trees.audit.range(first..=last) {
            let (key, value) = item.map_err(backend)?;
            let record = codec::decode_audit(AUDIT, &key, &value)?;
            if validate_id(&record.account_id).is_ok() {
                let mut k = audit_account_prefix(&record.account_id);
                k.extend_from_slice(&key);
                index.push(k);
            }
            records.push(key);
        }
        let mark = encode(to);
        // Readers are told before anything is removed (a reader checks
        // after it reads), and told again if nothing was.
        *self.inner.pruned.lock() = to;
        (&trees.meta, &trees.audit, &trees.audit_by_account)
            .transaction(|(meta, audit, by_account)| {
                meta.insert(PRUNED_KEY, mark.as_slice())?;
                for key in &records {
                    audit.remove(key)?;
                }
                for key in &index {
                    by_account.remove(key.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| {
                *self.inner.pruned.lock() = from;
                StoreError::Backend(format!("pruning the audit trail: {e:?}"))
            })?;
        Ok(true)
    }
}

/// Request records a sweep's batch reads for each it may delete: the tree
/// is in key order, not time order, so a batch reads past records still
/// honoured; reading takes no lock, and a bounded stretch keeps a batch
/// short when most records are fresh.
const LOOKED_AT_PER_DELETE: usize = 10;

impl SledBackend {
    /// `Backend::prune_requests`. Blocking.
    pub(super) fn prune_requests_sync(
        &self,
        before: SystemTime,
        resume: Option<RequestsResume>,
        limit: usize,
    ) -> Result<RequestsBatch, StoreError> {
        let requests = &self.inner.trees.requests;
        let records = match &resume {
            Some(RequestsResume(after)) => {
                requests.range::<&[u8], _>((Bound::Excluded(after.as_slice()), Bound::Unbounded))
            }
            None => requests.iter(),
        };
        let stretch = limit.saturating_mul(LOOKED_AT_PER_DELETE);
        let mut deleted = 0u64;
        let mut last: Option<IVec> = None;
        for (looked_at, item) in records.enumerate() {
            if looked_at == stretch || deleted as usize == limit {
                return Ok(RequestsBatch {
                    records: deleted,
                    resume: last.map(|key| RequestsResume(key.to_vec())),
                });
            }
            let (key, value) = item.map_err(backend)?;
            let record = codec::decode_request(REQUESTS, &key, &value)?;
            if record.at < before {
                // Err: a writer replaced the record since it was read.
                let swapped = requests
                    .compare_and_swap(&key, Some(&value), None::<IVec>)
                    .map_err(backend)?;
                deleted += u64::from(swapped.is_ok());
            }
            last = Some(key);
        }
        Ok(RequestsBatch {
            records: deleted,
            resume: None,
        })
    }
}
