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

use ::sled::{Transactional, transaction::ConflictableTransactionError};

use super::super::{StoreError, codec, prune::Pruned};
use super::{
    SledBackend, Trees,
    keys::{AUDIT, META, PRUNED_KEY, audit_account_prefix, backend},
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
