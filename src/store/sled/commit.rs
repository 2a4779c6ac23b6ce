//! Writes into sled: a write's records as one transaction under the writer
//! lock, and group commit (one flush for every transaction committed before
//! it, then publication of those writes in revision order).

use std::time::Instant;

use ::sled::{Transactional, transaction::ConflictableTransactionError};

use super::super::{
    Mutation, StoreError, Target,
    backend::{Changes, RequestId, Seen, Step, WriteFn},
    codec,
};
use super::{
    SledBackend, WriterState,
    keys::{self, AUDIT_SEQ_KEY, BOOTSTRAPPED_KEY, REVISION_KEY},
};
use crate::domain::{AuditRecord, validate_id};

impl SledBackend {
    /// `Backend::commit` under the writer lock: runs `write` once (sled has
    /// one writer, so no transaction ever conflicts) and commits what it
    /// returns. Returns the transaction count to wait for, if any.
    pub(super) fn commit_locked(
        &self,
        target: &Target,
        request: Option<RequestId<'_>>,
        write: &mut WriteFn<'_>,
    ) -> Result<Option<u64>, StoreError> {
        let mut writer = self.inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let seen = Seen {
            current: self.current(&writer, target, writer.committed + 1)?,
            revision: writer.committed,
            request: request
                .map(|r| self.kept(&writer, r))
                .transpose()?
                .flatten(),
            bootstrapped: writer
                .get(Tree::Meta, &self.inner.trees.meta, BOOTSTRAPPED_KEY)?
                .is_some(),
        };
        let changes = match write(seen)? {
            Step::Done => return Ok(None),
            Step::Commit(changes) => changes,
        };
        if changes.is_empty() {
            return Ok(Some(writer.txns));
        }
        let Changes {
            mutations,
            mut audit,
            keep,
        } = changes;
        let applied = !mutations.is_empty();
        // Encoded here, under the writer lock but outside sled; staged, not
        // yet written to sled: the flush that makes it durable writes it,
        // with every other write staged before that flush, in one sled
        // transaction (group commit of the records as well as the flush).
        let mut ops = Vec::with_capacity(mutations.len() + audit.len() * 2 + 1);
        for m in &mutations {
            ops.push(mutation_op(m)?);
        }
        let revision = writer.committed + u64::from(applied);
        let mut seq = writer.audit_seq;
        if applied {
            for record in &mut audit {
                seq += 1;
                record.seq = seq;
                ops.extend(audit_ops(record)?);
            }
        }
        if let (Some(request), Some(record)) = (request, keep) {
            let key = keys::request_key(request.token_id, request.id);
            ops.push(Op::put(
                Tree::Requests,
                key,
                codec::encode_request(&record)?,
            ));
        }
        writer.stage(ops);
        if writer.unwritten == FULL_BATCH {
            self.inner.batch_full.notify_one();
        }
        if applied {
            writer.committed = revision;
            writer.audit_seq = seq;
            writer.pending.push((revision, mutations));
            self.inner.publisher.committed();
        }
        Ok(Some(writer.txns))
    }

    /// Appends a refusal's audit record at the committed revision, with the
    /// next sequence number. Not waited for: it is written to sled at once
    /// (with the writes staged before it, which its sequence number
    /// follows), and sled's background flush makes it durable within a
    /// second, if no write's flush does first.
    pub(super) fn append(&self, mut record: AuditRecord) -> Result<(), StoreError> {
        let mut writer = self.inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let seq = writer.audit_seq + 1;
        record.seq = seq;
        record.revision = writer.committed;
        let ops = audit_ops(&record)?;
        writer.stage(ops);
        writer.audit_seq = seq;
        self.write_staged(&mut writer)
    }

    /// Writes every staged operation into sled in one transaction, with the
    /// counters as they stand. If the disk refuses it (a full disk, an I/O
    /// error), what sled holds is no longer known to match what was
    /// committed, so the store stops taking writes, as after a failed
    /// flush; reads go on from the view.
    pub(super) fn write_staged(&self, writer: &mut WriterState) -> Result<(), StoreError> {
        if writer.staged.is_empty() {
            return Ok(());
        }
        let mut ops = std::mem::take(&mut writer.staged);
        writer.overlay.clear();
        writer.unwritten = 0;
        ops.push(Op::put(
            Tree::Meta,
            REVISION_KEY.to_vec(),
            writer.committed.to_be_bytes().to_vec(),
        ));
        ops.push(Op::put(
            Tree::Meta,
            AUDIT_SEQ_KEY.to_vec(),
            writer.audit_seq.to_be_bytes().to_vec(),
        ));
        self.transact(writer, &ops)
    }

    /// Applies `ops` in one transaction; fail-stop (see `write_staged`).
    fn transact(&self, writer: &mut WriterState, ops: &[Op]) -> Result<(), StoreError> {
        writer.abandon_checkpoint();
        let t = &self.inner.trees;
        (
            &t.accounts,
            &t.users,
            &t.meta,
            &t.tokens,
            &t.audit,
            &t.audit_by_account,
            &t.requests,
        )
            .transaction(
                |(accounts, users, meta, tokens, audit, by_account, requests)| {
                    for op in ops {
                        let tree = match op.tree {
                            Tree::Accounts => accounts,
                            Tree::Users => users,
                            Tree::Meta => meta,
                            Tree::Tokens => tokens,
                            Tree::Audit => audit,
                            Tree::AuditByAccount => by_account,
                            Tree::Requests => requests,
                        };
                        match &op.value {
                            Some(v) => tree.insert(op.key.as_slice(), v.as_slice())?,
                            None => tree.remove(op.key.as_slice())?,
                        };
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                },
            )
            .map_err(|e| {
                let reason = match e {
                    ::sled::transaction::TransactionError::Storage(e) => {
                        format!("the disk refused a write: {e}")
                    }
                    ::sled::transaction::TransactionError::Abort(()) => {
                        "transaction aborted".to_owned()
                    }
                };
                tracing::error!(%reason, "write failed; refusing further writes");
                writer.failed = Some(reason.clone());
                StoreError::Failed(reason)
            })
    }

    /// Waits until transaction `txn` (a `WriterState::txns` count) is
    /// flushed and the writes up to it are published, flushing it (and
    /// every other transaction committed by then) if nobody else has. A
    /// waiter that goes away mid-flush leaves the writes it would have
    /// published pending, for the next flusher.
    pub(super) async fn wait_durable(&self, txn: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut flushes = inner.flush_lock.lock().await;
        if flushes.durable >= txn {
            return Ok(());
        }
        // Group commit across time: a flush begins no sooner than
        // `FLUSH_SPACING` after the one before it began, unless a full batch
        // waits, so that writes a millisecond apart share flushes too. A
        // waiter dropped here has changed nothing.
        let full = inner.writer.lock().unwritten >= FULL_BATCH;
        if let Some(due) = flushes.last.map(|last| last + flushes.spacing)
            && Instant::now() < due
            && !full
        {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                () = inner.batch_full.notified() => {}
            }
        }
        flushes.last = Some(Instant::now());
        let (upto, revision) = {
            let mut writer = inner.writer.lock();
            if let Some(reason) = &writer.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            self.write_staged(&mut writer)?;
            (writer.txns, writer.committed)
        };
        let db = inner.db.clone();
        let started = Instant::now();
        // A flush on a blocking thread: sled 0.34's flush_async deadlocks
        // under concurrent callers (sled issue #1308).
        let flushed = tokio::task::spawn_blocking(move || {
            yield_to_checks();
            db.flush()
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        inner.publisher.synced(started.elapsed());
        if let Err(reason) = flushed {
            tracing::error!(%reason, "flush failed; refusing further writes");
            inner.writer.lock().failed = Some(reason.clone());
            return Err(StoreError::Failed(reason));
        }
        flushes.durable = upto;
        // The writes the flush covered: those committed before it began.
        let batch: Vec<_> = {
            let mut writer = inner.writer.lock();
            let covered = writer.pending.partition_point(|(r, _)| *r <= revision);
            writer.pending.drain(..covered).collect()
        };
        let published = inner.publisher.publish(batch);
        self.record_durable(published, false);
        Ok(())
    }

    /// `Store::import`: the bench's bulk load.
    #[cfg(feature = "bench")]
    pub(super) fn bulk_load(
        &self,
        accounts: Vec<crate::domain::Account>,
        users: Vec<crate::domain::User>,
    ) -> Result<u64, StoreError> {
        /// Bounds the memory a sled batch holds.
        const CHUNK: usize = 50_000;
        let inner = &self.inner;
        // The flush lock first, as flushers take it: no flush is in flight,
        // so every unpublished write is in `pending`.
        let mut flushes = inner.flush_lock.blocking_lock();
        let mut writer = inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        self.write_staged(&mut writer)?;
        writer.abandon_checkpoint();
        let revision = writer.committed + 1;
        let mut batch = ::sled::Batch::default();
        for a in &accounts {
            batch.insert(keys::account_key(&a.id), codec::encode(a)?);
        }
        inner
            .trees
            .accounts
            .apply_batch(batch)
            .map_err(keys::backend)?;
        let mut users = users;
        for chunk in users.chunks_mut(CHUNK) {
            let mut batch = ::sled::Batch::default();
            for u in chunk.iter_mut() {
                u.revision = revision;
                batch.insert(keys::user_key(&u.account_id, &u.id), codec::encode_user(u)?);
            }
            inner
                .trees
                .users
                .apply_batch(batch)
                .map_err(keys::backend)?;
        }
        inner
            .trees
            .meta
            .insert(REVISION_KEY, &revision.to_be_bytes()[..])
            .map_err(keys::backend)?;
        inner.db.flush().map_err(keys::backend)?;
        flushes.durable = writer.txns;
        writer.committed = revision;
        // Writes committed before this one and not yet published: the flush
        // above covered them, so publish them first, keeping revision order
        // (their writers then find their revision already in the view).
        let mut batch = std::mem::take(&mut writer.pending);
        let mutations = accounts
            .into_iter()
            .map(Mutation::PutAccount)
            .chain(users.into_iter().map(Mutation::PutUser))
            .collect();
        batch.push((revision, mutations));
        let published = inner.publisher.publish(batch);
        self.record_durable(published, false);
        drop(flushes);
        Ok(revision)
    }
}

/// The least time from one flush's start to the next's, unless
/// `FULL_BATCH` transactions wait: at 1,000 writes a second, each write
/// had a flush of its own, and a flush's fixed cost (sled wakes its eight
/// I/O threads for each) was more than half of a write's CPU; measured with
/// `entitled-bench h2load`, 348-393 µs of server CPU per write without the
/// spacing, 135-198 µs with it (BENCHMARKS.md). A write that finds no
/// flush in the last 5 ms is flushed at once; one that does waits at most
/// that long.
pub(super) const FLUSH_SPACING: std::time::Duration = std::time::Duration::from_millis(5);

/// Transactions waiting to be written that start a flush at once, so that
/// many clients writing together are not slowed by the spacing.
pub(super) const FULL_BATCH: usize = 32;

/// The sled operation of one mutation.
fn mutation_op(m: &Mutation) -> Result<Op, StoreError> {
    Ok(match m {
        Mutation::PutAccount(a) => {
            Op::put(Tree::Accounts, keys::account_key(&a.id), codec::encode(a)?)
        }
        Mutation::PutUser(u) => Op::put(
            Tree::Users,
            keys::user_key(&u.account_id, &u.id),
            codec::encode_user(u)?,
        ),
        Mutation::DeleteUser(a, u) => Op::remove(Tree::Users, keys::user_key(a, u)),
        Mutation::PutToken(t) => Op::put(Tree::Tokens, t.id.as_bytes().to_vec(), codec::encode(t)?),
        Mutation::MarkBootstrapped => Op::put(Tree::Meta, BOOTSTRAPPED_KEY.to_vec(), vec![1]),
        Mutation::DeleteAccount(a) => Op::remove(Tree::Accounts, keys::account_key(a)),
    })
}

/// An audit record, and its entry in its account's index.
pub(super) fn audit_ops(record: &AuditRecord) -> Result<Vec<Op>, StoreError> {
    let seq = record.seq.to_be_bytes();
    let mut ops = vec![Op::put(
        Tree::Audit,
        seq.to_vec(),
        codec::encode_audit(record)?,
    )];
    // Only well-formed ids are indexed, so one account's prefix can never
    // match a refused request's malformed `acme/…`.
    if validate_id(&record.account_id).is_ok() {
        let mut key = keys::audit_account_prefix(&record.account_id);
        key.extend_from_slice(&seq);
        ops.push(Op::put(Tree::AuditByAccount, key, Vec::new()));
    }
    Ok(ops)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Tree {
    Accounts,
    Users,
    Meta,
    Tokens,
    Audit,
    AuditByAccount,
    Requests,
}

pub(super) struct Op {
    pub(super) tree: Tree,
    pub(super) key: Vec<u8>,
    pub(super) value: Option<Vec<u8>>,
}

impl Op {
    pub(super) fn put(tree: Tree, key: Vec<u8>, value: Vec<u8>) -> Op {
        Op {
            tree,
            key,
            value: Some(value),
        }
    }
    fn remove(tree: Tree, key: Vec<u8>) -> Op {
        Op {
            tree,
            key,
            value: None,
        }
    }
}

/// Marks the calling thread (a blocking thread that flushes sled) as
/// batch work for the scheduler (`SCHED_BATCH`, its nice value unchanged):
/// it gets its fair share of the CPU, but no longer preempts the thread
/// answering checks each time it wakes. Measured with 1,000 durable writes a
/// second beside checks on one core: that preemption was most of what the
/// writes added to the checks' p99. Once per thread; where the system
/// refuses, nothing changes.
fn yield_to_checks() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if DONE.get() {
        return;
    }
    DONE.set(true);
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue,
            ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        // The operating system's value 0 is nice 0: the thread's share is
        // unchanged, and no privilege is needed.
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        ) {
            tracing::debug!(error = %e, "the flushing thread stays a normal one");
        }
    }
}
