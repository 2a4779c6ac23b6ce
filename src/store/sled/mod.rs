//! The sled backend: one sled `Db` with one tree per record kind
//! (`keys.rs`), the directory lock and the watermark (`open.rs`,
//! `watermark.rs`), transactions and group commit (`commit.rs`), and
//! restores into a new directory (`restore.rs`), and the view checkpoint a
//! graceful stop leaves for the next start (`checkpoint.rs`). Only what is
//! sled's is here; the write path's rules and the view are the neutral
//! store's.
//!
//! Writers are serialised by one writer lock, held by this process for as
//! long as it has the directory (`entitled.lock`), so they are serialised
//! across processes too. Each write is staged (its sled operations kept in
//! memory, in commit order) and then waited for until a flush covers it.
//! Flushes are shared (group commit): whoever holds the flush lock writes
//! every staged write into sled in one sled transaction, flushes, then
//! publishes those writes to the view in revision order. Most of a write's
//! cost was sled's, per transaction; a group of 60 writes now pays it once
//! (BENCHMARKS.md, durable writes). If the
//! disk refuses a transaction or a flush fails, the store takes no more
//! writes until it is opened again (fail-stop, as databases do after an
//! fsync error).

mod checkpoint;
mod commit;
mod keys;
mod load;
mod open;
mod prune;
mod restore;
#[cfg(test)]
mod tests;
mod watermark;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use ::sled::{IVec, Tree};
use parking_lot::Mutex;

use self::{
    commit::{Op, Tree as CTree},
    keys::{ACCOUNTS, AUDIT, AUDIT_BY_ACCOUNT, BOOTSTRAPPED_KEY, REQUESTS, TOKENS, USERS, backend},
    watermark::{Mark, StoreId, Watermark},
};
use super::{
    Mutation, StoreError, Target, TargetState,
    backend::{Backend, BoxFuture, Counters, KeptRequest, Record, RequestId, Visit, WriteFn},
    codec::{self, RequestRecord},
    prune::{Pruned, RequestsBatch, RequestsResume},
    publish::Publisher,
};
#[cfg(feature = "bench")]
use crate::domain::Account;
use crate::domain::{AccountId, AuditRecord, Token, User};

pub(super) use restore::create;
pub use restore::restore;
pub use watermark::WatermarkError;

/// The sled-backed store. Cheap to clone.
#[derive(Clone)]
pub(super) struct SledBackend {
    inner: Arc<Inner>,
}

struct Trees {
    accounts: Tree,
    users: Tree,
    meta: Tree,
    tokens: Tree,
    audit: Tree,
    audit_by_account: Tree,
    requests: Tree,
}

/// Fields drop in the order they are declared: `db` and `trees`, sled's
/// handles, before `writer`, whose pending view checkpoint is finished as
/// it drops, once sled has closed; `_lock` last.
struct Inner {
    db: ::sled::Db,
    trees: Trees,
    /// Serialises writers; holds the last committed revision and the writes
    /// committed but not yet published to the view.
    writer: Mutex<WriterState>,
    /// The data directory.
    dir: PathBuf,
    /// One flusher at a time; waiting writers queue here and usually find
    /// their transaction already flushed by the one before them.
    flush_lock: tokio::sync::Mutex<Flushes>,
    /// Told when `FULL_BATCH` transactions wait to be written: a flusher
    /// waiting out `FLUSH_SPACING` goes at once.
    batch_full: tokio::sync::Notify,
    publisher: Publisher,
    /// How far the audit trail is pruned, as `meta` holds it; raised just
    /// before a pruning transaction applies (`prune.rs`).
    pruned: Mutex<Pruned>,
    /// Held by the one pruning batch at a time.
    pruning: Mutex<()>,
    id: StoreId,
    /// The highest durable revision, kept outside sled (see `watermark`).
    watermark: Mutex<Watermark>,
    /// Released when the store is dropped. Last, because fields drop in
    /// order: only once sled has closed (and let go of its own lock) may
    /// another store open the directory.
    _lock: std::fs::File,
}

/// What the flushers keep, under `Inner::flush_lock`.
struct Flushes {
    /// The count of transactions known durable (`WriterState::txns` at the
    /// last flush).
    durable: u64,
    /// When the last flush began.
    last: Option<std::time::Instant>,
    /// `commit::FLUSH_SPACING`, but for tests.
    spacing: std::time::Duration,
}

impl Flushes {
    fn new() -> Self {
        Flushes {
            durable: 0,
            last: None,
            spacing: commit::FLUSH_SPACING,
        }
    }
}

struct WriterState {
    committed: u64,
    audit_seq: u64,
    /// Transactions committed (staged) by this process: writes, refusals
    /// and request records alike. Durability is waited for by this count,
    /// so a write that raises no revision (a no-op or a refusal kept for a
    /// retry) can still wait for its record to be flushed.
    txns: u64,
    /// Transactions staged since the last `write_staged`.
    unwritten: usize,
    /// Committed writes not yet published, in revision order.
    pending: Vec<(u64, Vec<Mutation>)>,
    /// The sled operations of committed transactions not yet written to
    /// sled, in commit order: the next flush writes them all in one sled
    /// transaction (`write_staged`), with the counters once. Whatever reads
    /// sled's trees whole (a snapshot, a stop, the bulk load) writes them
    /// first; point reads look here first (`overlay`).
    staged: Vec<Op>,
    /// The latest staged operation of each key: its index in `staged`.
    overlay: HashMap<(CTree, Vec<u8>), usize>,
    failed: Option<String>,
    /// The view checkpoint a graceful stop wrote, finished when the store
    /// is dropped; given up if anything is written into sled after it.
    checkpoint: Option<checkpoint::Pending>,
}

impl WriterState {
    pub(super) fn new(committed: u64, audit_seq: u64) -> Self {
        WriterState {
            committed,
            audit_seq,
            txns: 0,
            unwritten: 0,
            pending: Vec::new(),
            staged: Vec::new(),
            overlay: HashMap::new(),
            failed: None,
            checkpoint: None,
        }
    }

    /// Gives up the pending view checkpoint, if any: sled is about to be
    /// written, so it would no longer be sled's copy.
    fn abandon_checkpoint(&mut self) {
        if let Some(pending) = self.checkpoint.take() {
            pending.abandon();
        }
    }

    /// Stages one transaction's operations (see `staged`).
    fn stage(&mut self, ops: Vec<Op>) {
        for op in ops {
            self.overlay
                .insert((op.tree, op.key.clone()), self.staged.len());
            self.staged.push(op);
        }
        self.txns += 1;
        self.unwritten += 1;
    }

    /// The value staged for `key` of `tree`: `None` if nothing is staged
    /// for it, `Some(None)` if its removal is.
    fn staged(&self, tree: CTree, key: &[u8]) -> Option<Option<&[u8]>> {
        if self.overlay.is_empty() {
            return None;
        }
        let i = *self.overlay.get(&(tree, key.to_vec()))?;
        self.staged.get(i).map(|op| op.value.as_deref())
    }

    /// Every user of `account`, in id order: sled's, with what is staged
    /// laid over them.
    fn users_of(&self, sled: &Tree, account: &AccountId) -> Result<Vec<User>, StoreError> {
        let prefix = keys::user_prefix(account);
        let mut users = BTreeMap::new();
        for item in sled.scan_prefix(&prefix) {
            let (key, value) = item.map_err(backend)?;
            users.insert(key.to_vec(), value.to_vec());
        }
        for ((tree, key), &i) in &self.overlay {
            if *tree != CTree::Users || !key.starts_with(&prefix) {
                continue;
            }
            match self.staged.get(i).map(|op| &op.value) {
                Some(Some(value)) => users.insert(key.clone(), value.clone()),
                Some(None) => users.remove(key),
                None => None,
            };
        }
        users
            .iter()
            .map(|(key, value)| codec::decode_user_owned(USERS, key, value))
            .collect()
    }

    /// Every token bound to `account`, in id order: sled's, with what is
    /// staged laid over them. Tokens are few (each is made by an operator
    /// or an account's admin), so they are scanned whole.
    fn tokens_of(&self, sled: &Tree, account: &AccountId) -> Result<Vec<Token>, StoreError> {
        let mut tokens = BTreeMap::new();
        for item in sled.iter() {
            let (key, value) = item.map_err(backend)?;
            tokens.insert(key.to_vec(), value.to_vec());
        }
        for ((tree, key), &i) in &self.overlay {
            if *tree != CTree::Tokens {
                continue;
            }
            match self.staged.get(i).map(|op| &op.value) {
                Some(Some(value)) => tokens.insert(key.clone(), value.clone()),
                Some(None) => tokens.remove(key),
                None => None,
            };
        }
        let mut bound = Vec::new();
        for (key, value) in &tokens {
            let token: Token = codec::decode(TOKENS, key, value)?;
            if token.account.as_ref() == Some(account) {
                bound.push(token);
            }
        }
        Ok(bound)
    }

    /// `key` of `tree`, staged or in sled.
    fn get(&self, tree: CTree, sled: &Tree, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        match self.staged(tree, key) {
            Some(staged) => Ok(staged.map(IVec::from)),
            None => sled.get(key).map_err(backend),
        }
    }
}

impl SledBackend {
    /// Records `revision` as durable in the watermark. A failure is logged,
    /// not returned: the write is durable in sled, and a watermark that lags
    /// only makes the start-up check weaker.
    fn record_durable(&self, revision: u64, sync: bool) {
        let mark = Mark {
            id: self.inner.id,
            revision,
        };
        if let Err(error) = self.inner.watermark.lock().write(mark, sync) {
            tracing::warn!(%error, revision, "cannot record the durable revision");
        }
    }

    /// The latest committed state of `target`: staged, or from sled.
    fn current(
        &self,
        writer: &WriterState,
        target: &Target,
        next_revision: u64,
    ) -> Result<TargetState, StoreError> {
        let t = &self.inner.trees;
        TargetState::read(
            target,
            next_revision,
            |a| {
                get(
                    writer,
                    CTree::Accounts,
                    &t.accounts,
                    ACCOUNTS,
                    &keys::account_key(a),
                )
            },
            |a, u| {
                writer
                    .get(CTree::Users, &t.users, &keys::user_key(a, u))?
                    .map(|v| codec::decode_user_owned(USERS, &keys::user_key(a, u), &v))
                    .transpose()
            },
            |id| get(writer, CTree::Tokens, &t.tokens, TOKENS, id.as_bytes()),
            |a| writer.users_of(&t.users, a),
            |a| writer.tokens_of(&t.tokens, a),
        )
    }

    /// The answer kept for `request`, if any: staged, or from sled.
    fn kept(
        &self,
        writer: &WriterState,
        request: RequestId<'_>,
    ) -> Result<Option<RequestRecord>, StoreError> {
        let key = keys::request_key(request.token_id, request.id);
        writer
            .get(CTree::Requests, &self.inner.trees.requests, &key)?
            .map(|bytes| codec::decode_request(REQUESTS, &key, &bytes))
            .transpose()
    }
}

impl SledBackend {
    /// Writes the users of sled, flushed at `committed` for a stop, into a
    /// view checkpoint, finished when the store is dropped (`checkpoint`).
    /// A checkpoint is only ever a faster start: failing to write one is
    /// logged, and the stop goes on.
    fn begin_checkpoint(&self, committed: u64) {
        let mut writer = self.inner.writer.lock();
        writer.abandon_checkpoint();
        // Nothing may have been committed since the final flush.
        if writer.failed.is_some() || writer.committed != committed || !writer.staged.is_empty() {
            return;
        }
        match checkpoint::begin(
            &self.inner.dir,
            self.inner.id,
            committed,
            writer.audit_seq,
            &self.inner.trees.users,
        ) {
            Ok(pending) => writer.checkpoint = Some(pending),
            Err(reason) => {
                tracing::warn!(%reason, "no view checkpoint written; the next start reads sled");
            }
        }
    }

    fn audit_from_sync(
        &self,
        account: Option<&str>,
        from: u64,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        let trees = &self.inner.trees;
        let start = from.to_be_bytes();
        match account {
            Some(account) => {
                let prefix = keys::audit_account_prefix(account);
                let mut first = prefix.clone();
                first.extend_from_slice(&start);
                for item in trees.audit_by_account.range(first..) {
                    let (k, _) = item.map_err(backend)?;
                    if !k.starts_with(&prefix) {
                        break;
                    }
                    let seq = codec::decode_counter(
                        AUDIT_BY_ACCOUNT,
                        &k,
                        &k[k.len().saturating_sub(8)..],
                    )?;
                    // The index is in sled, so its records are too.
                    let key = seq.to_be_bytes();
                    let Some(value) = trees.audit.get(key).map_err(backend)? else {
                        continue;
                    };
                    let record = codec::decode_audit(AUDIT, &key, &value)?;
                    if visit(record).is_break() {
                        break;
                    }
                }
            }
            None => {
                for item in trees.audit.range(start.to_vec()..) {
                    let (k, v) = item.map_err(backend)?;
                    codec::decode_counter(AUDIT, &k, &k)?;
                    if visit(codec::decode_audit(AUDIT, &k, &v)?).is_break() {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn audit_record_sync(&self, seq: u64) -> Result<Option<AuditRecord>, StoreError> {
        // Staged records count: a watch's start (`audit_position_after`)
        // searches up to the last sequence number given.
        let key = seq.to_be_bytes();
        self.inner
            .writer
            .lock()
            .get(CTree::Audit, &self.inner.trees.audit, &key)?
            .map(|v| codec::decode_audit(AUDIT, &key, &v))
            .transpose()
    }
}

/// The record at `key` of `tree`, staged or in sled, decoded.
fn get<T: serde::de::DeserializeOwned>(
    writer: &WriterState,
    tree: CTree,
    sled: &Tree,
    name: &'static str,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    writer
        .get(tree, sled, key)?
        .map(|v| codec::decode(name, key, &v))
        .transpose()
}

/// Every record of `tree`, decoded, in key order.
fn decoded<T: serde::de::DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
) -> impl Iterator<Item = Result<T, StoreError>> {
    tree.iter().map(move |item| {
        let (key, value) = item.map_err(backend)?;
        codec::decode(name, &key, &value)
    })
}

impl Backend for SledBackend {
    fn publisher(&self) -> &Publisher {
        &self.inner.publisher
    }

    fn commit<'a>(
        &'a self,
        target: &'a Target,
        request: Option<RequestId<'a>>,
        write: &'a mut WriteFn<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if let Some(txn) = self.commit_locked(target, request, write)? {
                self.wait_durable(txn).await?;
            }
            Ok(())
        })
    }

    fn append_refusal(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.append(record)
    }

    fn durable(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let txns = self.inner.writer.lock().txns;
            self.wait_durable(txns).await
        })
    }

    fn audit_from<'a>(
        &'a self,
        account: Option<&'a str>,
        from: u64,
        visit: &'a mut Visit<'_>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.audit_from_sync(account, from, visit) })
    }

    fn audit_record(&self, seq: u64) -> BoxFuture<'_, Result<Option<AuditRecord>, StoreError>> {
        Box::pin(async move { self.audit_record_sync(seq) })
    }

    fn last_audit_seq(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move { Ok(self.inner.writer.lock().audit_seq) })
    }

    fn pruned(&self) -> BoxFuture<'_, Result<Pruned, StoreError>> {
        Box::pin(async move { Ok(*self.inner.pruned.lock()) })
    }

    fn prune(&self, from: Pruned, to: Pruned) -> BoxFuture<'_, Result<bool, StoreError>> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.prune_sync(from, to))
                .await
                .map_err(|e| StoreError::Failed(e.to_string()))?
        })
    }

    fn prune_requests(
        &self,
        before: std::time::SystemTime,
        resume: Option<RequestsResume>,
        limit: usize,
    ) -> BoxFuture<'_, Result<RequestsBatch, StoreError>> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.prune_requests_sync(before, resume, limit))
                .await
                .map_err(|e| StoreError::Failed(e.to_string()))?
        })
    }

    fn bootstrapped(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let writer = self.inner.writer.lock();
            let meta = &self.inner.trees.meta;
            Ok(writer.get(CTree::Meta, meta, BOOTSTRAPPED_KEY)?.is_some())
        })
    }

    fn size_bytes(&self) -> Result<u64, StoreError> {
        self.inner.db.size_on_disk().map_err(backend)
    }

    fn snapshot(
        &self,
        visit: &mut dyn FnMut(Record) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        // Copied under the writer lock (sled's trees have no snapshots), so
        // every tree is at one revision; decoded after it is let go. No
        // pruning meanwhile, so the audit trail copied has no hole.
        let (counters, copy) = {
            let _pruning = self.inner.pruning.lock();
            let mut writer = self.inner.writer.lock();
            if let Some(reason) = &writer.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            self.write_staged(&mut writer)?;
            let t = &self.inner.trees;
            let counters = Counters {
                revision: writer.committed,
                audit_seq: writer.audit_seq,
                bootstrapped: t.meta.get(BOOTSTRAPPED_KEY).map_err(backend)?.is_some(),
            };
            let copy = [&t.accounts, &t.users, &t.tokens, &t.audit, &t.requests]
                .map(|tree| tree.iter().collect::<Result<Vec<(IVec, IVec)>, _>>());
            (counters, copy)
        };
        visit(Record::Counters(counters))?;
        let [accounts, users, tokens, audit, requests] = copy;
        for (key, value) in accounts.map_err(backend)? {
            visit(Record::Account(codec::decode(ACCOUNTS, &key, &value)?))?;
        }
        for (key, value) in users.map_err(backend)? {
            visit(Record::User(codec::decode_user_owned(USERS, &key, &value)?))?;
        }
        for (key, value) in tokens.map_err(backend)? {
            visit(Record::Token(codec::decode(TOKENS, &key, &value)?))?;
        }
        for (key, value) in audit.map_err(backend)? {
            visit(Record::Audit(codec::decode_audit(AUDIT, &key, &value)?))?;
        }
        for (key, value) in requests.map_err(backend)? {
            let (token_id, request_id) = keys::split_request_key(&key)?;
            visit(Record::Request(KeptRequest {
                token_id,
                request_id,
                record: codec::decode_request(REQUESTS, &key, &value)?,
            }))?;
        }
        Ok(counters.revision)
    }

    fn sync_on_stop(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
                // Everything committed before the flush is durable after it.
                let committed = {
                    let mut writer = store.inner.writer.lock();
                    store.write_staged(&mut writer)?;
                    writer.committed
                };
                store.inner.db.flush().map_err(backend)?;
                store.record_durable(committed, true);
                store.begin_checkpoint(committed);
                Ok(())
            })
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))?
        })
    }

    #[cfg(feature = "bench")]
    fn import(&self, accounts: Vec<Account>, users: Vec<User>) -> Result<u64, StoreError> {
        self.bulk_load(accounts, users)
    }
}
