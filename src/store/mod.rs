//! Storage: one sled `Db`, one tree per record kind, and an in-memory view of
//! what is durable.
//!
//! Writes are serialised by one writer lock: the caller's `decide` closure sees
//! the latest committed state and returns the mutations, which are committed in
//! one sled transaction together with the store revision (raised by exactly
//! one), the write's audit record, and (for a write with a request id) the
//! response kept for retries. The writer then waits until a flush covers its
//! revision. Flushes are shared (group commit): whoever holds the flush lock
//! flushes for every write committed so far, then publishes those writes to
//! the view. Reads (checks, gets, lists, token look-ups) are served from the
//! view, so they never see a write that is not yet durable and never touch
//! the disk.
//!
//! If a flush fails the store stops taking writes (fail-stop, as databases do
//! after an fsync error): a restart reloads the view from disk.

mod backup;
mod codec;
mod view;
mod watermark;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, OnceLock},
    time::{Duration, Instant, SystemTime},
};

use parking_lot::{Mutex, RwLock};
use serde::{Serialize, de::DeserializeOwned};
use sled::{Transactional, transaction::ConflictableTransactionError};

use self::watermark::{Mark, StoreId, Watermark, WatermarkError};
use crate::domain::{
    Account, AccountId, Actor, AuditRecord, Outcome, Refusal, Rpc, Token, User, UserId, UserState,
    validate_id,
};

pub use backup::{Backup, BackupError, BackupSummary, FORMAT_VERSION, restore, verify};
pub use view::{UserServices, View};

const ACCOUNTS: &str = "accounts";
const USERS: &str = "users";
const META: &str = "meta";
const TOKENS: &str = "tokens";
/// Audit records by sequence number.
const AUDIT: &str = "audit";
/// `account/seq` → nothing: the audit trail of one account.
const AUDIT_BY_ACCOUNT: &str = "audit_by_account";
/// `token_id NUL request_id` → the first response, for safe retries.
const REQUESTS: &str = "requests";
const REVISION_KEY: &[u8] = b"revision";
const AUDIT_SEQ_KEY: &[u8] = b"audit_seq";
const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";
/// The store's identity, also kept in the watermark (see `watermark`).
const STORE_ID_KEY: &[u8] = b"store_id";
/// Held (flock) for as long as a store is open on the directory.
const LOCK_FILE: &str = "entitled.lock";
/// sled's files, inside the data directory.
const DB_DIR: &str = "db";
/// How long a request id is remembered.
pub const REQUEST_ID_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// sled's page cache. Reads are served from the view, so sled reads only
/// the start-up scan and writers' point lookups; its default of 1 GiB keeps
/// the pages of that scan, a second copy of the data. Measured with 1M
/// users: sled's share of RSS 242 MiB with the default, 93 MiB with this.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory `{path}` is in use by another process; stop it or choose another --data-dir"
    )]
    Locked { path: String },
    #[error("cannot open data directory `{path}`: {source}")]
    Open { path: String, source: sled::Error },
    #[error("data directory holds a damaged record in `{tree}` at key `{key}`: {reason}")]
    Corrupt {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error(
        "data directory `{path}` has lost data: sled's files (`db`) hold revision {found}, but revision {durable} was durable before (`entitled.watermark` says so); `db` was replaced, cut short or damaged. Restore the latest backup into a new directory (`entitled restore`) and serve that"
    )]
    DataLost {
        path: String,
        durable: u64,
        found: u64,
    },
    #[error(
        "data directory `{path}`: sled's files (`db`) are not those of the store `entitled.watermark` records (they are another store's, or new and empty); put back this directory's own `db`, or restore a backup into a new directory"
    )]
    ForeignData { path: String },
    #[error("data directory `{path}`: {source}")]
    Watermark {
        path: String,
        source: WatermarkError,
    },
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "a write could not be made durable ({0}); the store takes no more writes until restarted"
    )]
    Failed(String),
    #[error(
        "request_id `{0}` was already used by this token for a different request; use a new request_id for a new request"
    )]
    RequestReused(String),
}

/// One change to stored records.
#[derive(Debug, Clone)]
pub enum Mutation {
    PutAccount(Account),
    PutUser(User),
    DeleteUser(AccountId, UserId),
    PutToken(Token),
    MarkBootstrapped,
}

/// What a write is about: what `decide` is shown.
#[derive(Debug, Clone)]
pub enum Target {
    Account(AccountId),
    User(AccountId, UserId),
    /// Many users at once (bulk import): `Current::many`, in this order.
    Users(Vec<(AccountId, UserId)>),
    Token(String),
    None,
}

/// Who writes, for the audit trail and for replaying retries.
#[derive(Debug, Clone)]
pub struct WriteContext {
    pub actor: Actor,
    pub rpc: Rpc,
    pub at: SystemTime,
    /// As the caller sent them.
    pub account_id: String,
    pub user_id: String,
    pub request: Option<RequestKey>,
}

/// A caller's request id and a fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub id: String,
    pub fingerprint: [u8; 32],
}

/// What `decide` sees: the latest committed state of its target.
#[derive(Debug)]
pub struct Current {
    pub account: Option<Account>,
    pub user: Option<User>,
    pub token: Option<Token>,
    /// For `Target::Users`: each target's account and user, in order.
    pub many: Vec<(Option<Account>, Option<User>)>,
    /// The revision a write decided now would get.
    pub next_revision: u64,
}

/// What `decide` returns: the mutations to commit (none for a no-op), the
/// caller's output, and details for the audit record.
pub struct Decided<T> {
    pub mutations: Vec<Mutation>,
    pub output: T,
    pub details: Vec<String>,
}

impl<T> Decided<T> {
    pub fn new(mutations: Vec<Mutation>, output: T) -> Self {
        Decided {
            mutations,
            output,
            details: Vec::new(),
        }
    }
}

/// The result of a write.
#[derive(Debug)]
pub struct Written<T> {
    pub output: T,
    /// The store revision after the write.
    pub revision: u64,
    /// True when this was a retry answered from the first call's record.
    pub replayed: bool,
}

/// What `commit` did: its result, the transaction it wrote (to wait for
/// before answering), and whether a write was applied.
struct Committed<T, E> {
    result: Result<Written<T>, E>,
    txn: Option<u64>,
    applied: bool,
}

/// Told about writes and syncs as they happen, so metrics can count them
/// without the store knowing how they are exported. Calls are made on the
/// write path: keep them cheap and never block.
pub trait StoreObserver: Send + Sync {
    /// A write was committed (not yet durable); no-ops and replays are not.
    fn committed(&self);
    /// A committed write became durable and visible, `waited` after its
    /// commit began.
    fn durable(&self, waited: Duration);
    /// One sync to durable storage (shared by every write committed before
    /// it) took `took`, successful or not.
    fn synced(&self, took: Duration);
}

/// Size and contents, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// The durable store revision.
    pub revision: u64,
    pub accounts: u64,
    pub users: u64,
    /// What sled's files take on disk, in bytes.
    pub size_on_disk: u64,
}

/// The sled-backed store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Trees {
    accounts: sled::Tree,
    users: sled::Tree,
    meta: sled::Tree,
    tokens: sled::Tree,
    audit: sled::Tree,
    audit_by_account: sled::Tree,
    requests: sled::Tree,
}

struct Inner {
    db: sled::Db,
    trees: Trees,
    /// Serialises writers; holds the last committed revision and the writes
    /// committed but not yet published to the view.
    writer: Mutex<WriterState>,
    /// One flusher at a time; waiting writers queue here and usually find
    /// their transaction already flushed by the one before them. Holds the
    /// count of transactions known durable (`WriterState::txns` at the
    /// last flush).
    flush_lock: tokio::sync::Mutex<u64>,
    view: RwLock<View>,
    /// The view's revision, announced after each publication, for readers
    /// that wait for a revision (`min_revision`).
    published: tokio::sync::watch::Sender<u64>,
    id: StoreId,
    /// The highest durable revision, kept outside sled (see `watermark`).
    watermark: Mutex<Watermark>,
    /// Set once, by the server, before it serves.
    observer: OnceLock<Arc<dyn StoreObserver>>,
    /// Released when the store is dropped. Last, because fields drop in
    /// order: only once sled has closed (and let go of its own lock) may
    /// another store open the directory.
    _lock: std::fs::File,
}

struct WriterState {
    committed: u64,
    audit_seq: u64,
    /// sled transactions committed by this process: writes, refusals and
    /// request records alike. Durability is waited for by this count, so a
    /// write that raises no revision (a no-op or a refusal kept for a
    /// retry) can still wait for its record to be flushed.
    txns: u64,
    pending: Vec<(u64, Vec<Mutation>)>,
    failed: Option<String>,
}

/// The error a `decide` closure fails with, as a retry with the same
/// request id sees it: a refusal the same request would meet again is kept
/// with the request id, and a retry gets it back instead of running again.
pub trait Refusable: Sized {
    /// What to keep for a retry, or `None` when a retry should run again
    /// (a failure of the store, say).
    fn refusal(&self) -> Option<Refusal>;
    /// A kept refusal, as the error a retry fails with.
    fn refused(refusal: Refusal) -> Self;
}

impl Store {
    /// Opens (or creates) the store in `dir` and loads the view.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        // Our own lock, taken before sled's: sled reports a held lock only as
        // text, and this one gives the operator a clear message.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                source: e.into(),
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Open {
                    path,
                    source: e.into(),
                });
            }
        }
        let db = open_sled(&dir.join(DB_DIR)).map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        let trees = Trees {
            accounts: db.open_tree(ACCOUNTS)?,
            users: db.open_tree(USERS)?,
            meta: db.open_tree(META)?,
            tokens: db.open_tree(TOKENS)?,
            audit: db.open_tree(AUDIT)?,
            audit_by_account: db.open_tree(AUDIT_BY_ACCOUNT)?,
            requests: db.open_tree(REQUESTS)?,
        };
        let revision = read_counter(&trees.meta, REVISION_KEY)?;
        let audit_seq = read_counter(&trees.meta, AUDIT_SEQ_KEY)?;
        let (id, watermark) = check_watermark(dir, &db, &trees.meta, revision)?;
        let view = View::load(&trees.accounts, &trees.users, &trees.tokens, revision)?;
        Ok(Store {
            inner: Arc::new(Inner {
                _lock: lock,
                id,
                watermark: Mutex::new(watermark),
                db,
                trees,
                writer: Mutex::new(WriterState {
                    committed: revision,
                    audit_seq,
                    txns: 0,
                    pending: Vec::new(),
                    failed: None,
                }),
                flush_lock: tokio::sync::Mutex::new(0),
                view: RwLock::new(view),
                observer: OnceLock::new(),
                published: tokio::sync::watch::Sender::new(revision),
            }),
        })
    }

    /// Reports writes and syncs to `observer` from now on. Only the first
    /// observer set is kept; it returns false for any later one.
    pub fn observe(&self, observer: Arc<dyn StoreObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    fn observer(&self) -> Option<&dyn StoreObserver> {
        self.inner.observer.get().map(|o| o.as_ref())
    }

    /// Revision, record counts (from the view) and size on disk.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (revision, accounts, users) =
            self.read(|v| (v.revision(), v.account_count(), v.user_count()));
        Ok(StoreStats {
            revision,
            accounts,
            users,
            size_on_disk: self.inner.db.size_on_disk()?,
        })
    }

    /// Runs `read` against the durable view. Keep `read` short: it holds a
    /// read lock that writers' publication waits for.
    pub fn read<R>(&self, read: impl FnOnce(&View) -> R) -> R {
        read(&self.inner.view.read())
    }

    /// Whether the first start's operator token was made.
    pub fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        Ok(self.inner.trees.meta.get(BOOTSTRAPPED_KEY)?.is_some())
    }

    /// Decides and commits one write atomically, with its audit record, and
    /// returns once it is durable and visible to reads. A retry with a
    /// request id already answered within 24 hours gets the first answer.
    /// `decide` may be run more than once (a backend that retries a
    /// transaction after a conflict runs it again); only its last run counts.
    pub async fn write<T, E>(
        &self,
        target: &Target,
        ctx: WriteContext,
        decide: impl FnMut(Current) -> Result<Decided<T>, E>,
    ) -> Result<Written<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError> + Refusable,
    {
        let started = Instant::now();
        let committed = self.commit(target, ctx, decide);
        // Whatever the outcome, what it wrote (a write, a no-op's or a
        // refusal's request record) is durable before the caller hears of it.
        if let Some(txn) = committed.txn {
            self.wait_durable(txn).await?;
        }
        let written = committed.result?;
        if committed.applied
            && let Some(observer) = self.observer()
        {
            observer.durable(started.elapsed());
        }
        Ok(written)
    }

    fn commit<T, E>(
        &self,
        target: &Target,
        ctx: WriteContext,
        decide: impl FnMut(Current) -> Result<Decided<T>, E>,
    ) -> Committed<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError> + Refusable,
    {
        let mut writer = self.inner.writer.lock();
        let mut txn = None;
        let result = self.commit_locked(&mut writer, &mut txn, target, ctx, decide);
        let applied = matches!(result, Ok((_, true)));
        Committed {
            result: result.map(|(written, _)| written),
            txn,
            applied,
        }
    }

    /// `commit` under the writer lock; sets `txn` to the transaction to
    /// wait for, and says whether the write was applied.
    fn commit_locked<T, E>(
        &self,
        writer: &mut WriterState,
        txn: &mut Option<u64>,
        target: &Target,
        ctx: WriteContext,
        mut decide: impl FnMut(Current) -> Result<Decided<T>, E>,
    ) -> Result<(Written<T>, bool), E>
    where
        T: Serialize + DeserializeOwned,
        E: From<StoreError> + Refusable,
    {
        let trees = &self.inner.trees;
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()).into());
        }

        let request_key = ctx
            .request
            .as_ref()
            .map(|r| codec::request_key(&ctx.actor.token_id, &r.id));
        if let (Some(request), Some(key)) = (&ctx.request, &request_key)
            && let Some(bytes) = trees.requests.get(key).map_err(StoreError::from)?
        {
            let record = codec::decode_request(REQUESTS, key, &bytes)?;
            let fresh = record.at + REQUEST_ID_WINDOW > ctx.at;
            if fresh && record.fingerprint == request.fingerprint {
                // The answer may not be durable yet if its first call is
                // still waiting for the flush: so does the retry.
                *txn = Some(writer.txns);
                return match record.answer {
                    Ok(output) => Ok((
                        Written {
                            output: codec::decode(REQUESTS, key, &output)?,
                            revision: record.revision,
                            replayed: true,
                        },
                        false,
                    )),
                    Err(refusal) => Err(E::refused(refusal)),
                };
            }
            if fresh {
                return Err(StoreError::RequestReused(request.id.clone()).into());
            }
        }

        let current = self.current(target, writer.committed + 1)?;
        // The users as they were, for the audit trail's "before".
        let mut befores: HashMap<Vec<u8>, UserState> = HashMap::new();
        for user in current
            .user
            .iter()
            .chain(current.many.iter().filter_map(|(_, u)| u.as_ref()))
        {
            befores.insert(
                codec::user_key(&user.account_id, &user.id),
                UserState::from(user),
            );
        }
        let Decided {
            mutations,
            output,
            details,
        } = match decide(current) {
            Ok(decided) => decided,
            Err(e) => {
                if let Some(refusal) = e.refusal() {
                    self.keep_unchanged(writer, txn, &ctx, &request_key, Err(refusal))?;
                }
                return Err(e);
            }
        };
        if mutations.is_empty() {
            let answer = Ok(codec::encode(&output)?);
            self.keep_unchanged(writer, txn, &ctx, &request_key, answer)?;
            // The answer names the committed revision: it is durable before
            // the answer is given, even when another writer's flush of it
            // is still running.
            *txn = Some(writer.txns);
            let unchanged = Written {
                output,
                revision: writer.committed,
                replayed: false,
            };
            return Ok((unchanged, false));
        }
        let revision = writer.committed + 1;

        // Encode outside the transaction so its closure only moves bytes.
        // One audit record per user changed (one for the write if none).
        let mut ops = Vec::with_capacity(mutations.len() * 3 + 3);
        let mut changed: Vec<Changed> = Vec::new();
        for m in &mutations {
            ops.push(match m {
                Mutation::PutAccount(a) => {
                    Op::put(Tree::Accounts, codec::account_key(&a.id), codec::encode(a)?)
                }
                Mutation::PutUser(u) => {
                    let key = codec::user_key(&u.account_id, &u.id);
                    changed.push((
                        u.account_id.to_string(),
                        u.id.to_string(),
                        Some(key.clone()),
                        Some(UserState::from(u)),
                    ));
                    Op::put(Tree::Users, key, codec::encode(u)?)
                }
                Mutation::DeleteUser(a, u) => {
                    let key = codec::user_key(a, u);
                    changed.push((a.to_string(), u.to_string(), Some(key.clone()), None));
                    Op::remove(Tree::Users, key)
                }
                Mutation::PutToken(t) => {
                    Op::put(Tree::Tokens, t.id.as_bytes().to_vec(), codec::encode(t)?)
                }
                Mutation::MarkBootstrapped => {
                    Op::put(Tree::Meta, BOOTSTRAPPED_KEY.to_vec(), vec![1])
                }
            });
        }
        if changed.is_empty() {
            changed.push((ctx.account_id.clone(), ctx.user_id.clone(), None, None));
        }
        let records: Vec<AuditRecord> = changed
            .into_iter()
            .zip(writer.audit_seq + 1..)
            .map(|((account_id, user_id, key, after), seq)| AuditRecord {
                seq,
                revision,
                at: ctx.at,
                actor: ctx.actor.clone(),
                rpc: ctx.rpc,
                account_id,
                user_id,
                before: key.and_then(|k| befores.get(&k).cloned()),
                after,
                details: details.clone(),
                outcome: Outcome::Applied,
            })
            .collect();
        ops.push(Op::put(
            Tree::Meta,
            REVISION_KEY.to_vec(),
            revision.to_be_bytes().to_vec(),
        ));
        let seq = writer.audit_seq + records.len() as u64;
        for record in &records {
            ops.extend(audit_ops(record)?);
        }
        ops.push(Op::put(
            Tree::Meta,
            AUDIT_SEQ_KEY.to_vec(),
            seq.to_be_bytes().to_vec(),
        ));
        if let (Some(request), Some(key)) = (&ctx.request, request_key) {
            let kept = codec::RequestRecord {
                fingerprint: request.fingerprint,
                at: ctx.at,
                revision,
                answer: Ok(codec::encode(&output)?),
            };
            ops.push(Op::put(Tree::Requests, key, codec::encode_request(&kept)?));
        }
        self.transact(writer, &ops)?;
        *txn = Some(writer.txns);
        writer.committed = revision;
        writer.audit_seq = seq;
        writer.pending.push((revision, mutations));
        if let Some(observer) = self.observer() {
            observer.committed();
        }
        let written = Written {
            output,
            revision,
            replayed: false,
        };
        Ok((written, true))
    }

    /// Keeps the answer to a request id that raised no revision (a no-op or
    /// a refusal), so that a retry gets it back rather than running again
    /// against a state that has moved on.
    fn keep_unchanged(
        &self,
        writer: &mut WriterState,
        txn: &mut Option<u64>,
        ctx: &WriteContext,
        key: &Option<Vec<u8>>,
        answer: Result<Vec<u8>, Refusal>,
    ) -> Result<(), StoreError> {
        let (Some(request), Some(key)) = (&ctx.request, key) else {
            return Ok(());
        };
        let record = codec::RequestRecord {
            fingerprint: request.fingerprint,
            at: ctx.at,
            revision: writer.committed,
            answer,
        };
        let op = Op::put(Tree::Requests, key.clone(), codec::encode_request(&record)?);
        self.transact(writer, &[op])?;
        *txn = Some(writer.txns);
        Ok(())
    }

    /// Appends a refused write to the audit trail. It raises no revision and
    /// is not waited for: sled's background flush writes it within a second.
    pub fn record_refusal(
        &self,
        ctx: WriteContext,
        code: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut writer = self.inner.writer.lock();
        let seq = writer.audit_seq + 1;
        let record = AuditRecord {
            seq,
            revision: writer.committed,
            at: ctx.at,
            actor: ctx.actor,
            rpc: ctx.rpc,
            account_id: ctx.account_id,
            user_id: ctx.user_id,
            before: None,
            after: None,
            details: Vec::new(),
            outcome: Outcome::Refused {
                code: code.to_owned(),
                reason: reason.to_owned(),
            },
        };
        let mut ops = audit_ops(&record)?;
        ops.push(Op::put(
            Tree::Meta,
            AUDIT_SEQ_KEY.to_vec(),
            seq.to_be_bytes().to_vec(),
        ));
        self.transact(&mut writer, &ops)?;
        writer.audit_seq = seq;
        Ok(())
    }

    /// Up to `limit` audit records after sequence `after_seq` whose revision
    /// is above `after_revision`, of one account or all, in order; and
    /// whether more may follow. Applied records not yet durable are not
    /// shown (the listing stops before them).
    pub fn audit(
        &self,
        account: Option<&str>,
        after_seq: u64,
        after_revision: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), StoreError> {
        let trees = &self.inner.trees;
        let durable = self.read(View::revision);
        let start = (after_seq + 1).to_be_bytes();
        let seqs: Box<dyn Iterator<Item = Result<u64, StoreError>>> = match account {
            Some(account) => {
                let prefix = codec::audit_account_prefix(account);
                let mut from = prefix.clone();
                from.extend_from_slice(&start);
                Box::new(
                    trees
                        .audit_by_account
                        .range(from..)
                        .take_while(move |item| {
                            item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                        })
                        .map(|item| {
                            let (k, _) = item?;
                            codec::decode_counter(
                                AUDIT_BY_ACCOUNT,
                                &k,
                                &k[k.len().saturating_sub(8)..],
                            )
                        }),
                )
            }
            None => Box::new(trees.audit.range(start.to_vec()..).map(|item| {
                let (k, _) = item?;
                codec::decode_counter(AUDIT, &k, &k)
            })),
        };
        let mut out = Vec::new();
        for seq in seqs {
            let seq = seq?;
            let key = seq.to_be_bytes();
            let Some(bytes) = trees.audit.get(key)? else {
                continue;
            };
            let record: AuditRecord = codec::decode(AUDIT, &key, &bytes)?;
            if record.outcome == Outcome::Applied && record.revision > durable {
                return Ok((out, false));
            }
            // A refusal at revision r came after the write that made r.
            let after = match record.outcome {
                Outcome::Applied => record.revision > after_revision,
                Outcome::Refused { .. } => record.revision >= after_revision,
            };
            if !after {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(record);
        }
        Ok((out, false))
    }

    fn current(&self, target: &Target, next_revision: u64) -> Result<Current, StoreError> {
        let trees = &self.inner.trees;
        let account = |id: &AccountId| -> Result<Option<Account>, StoreError> {
            let key = codec::account_key(id);
            trees
                .accounts
                .get(&key)?
                .map(|v| codec::decode(ACCOUNTS, &key, &v))
                .transpose()
        };
        let user = |a: &AccountId, u: &UserId| -> Result<Option<User>, StoreError> {
            let key = codec::user_key(a, u);
            trees
                .users
                .get(&key)?
                .map(|v| codec::decode(USERS, &key, &v))
                .transpose()
        };
        let mut current = Current {
            account: None,
            user: None,
            token: None,
            many: Vec::new(),
            next_revision,
        };
        match target {
            Target::Account(a) => current.account = account(a)?,
            Target::User(a, u) => {
                current.account = account(a)?;
                current.user = user(a, u)?;
            }
            Target::Users(targets) => {
                let mut accounts: HashMap<&AccountId, Option<Account>> = HashMap::new();
                for (a, u) in targets {
                    let acc = match accounts.get(a) {
                        Some(acc) => acc.clone(),
                        None => {
                            let acc = account(a)?;
                            accounts.insert(a, acc.clone());
                            acc
                        }
                    };
                    current.many.push((acc, user(a, u)?));
                }
            }
            Target::Token(id) => {
                current.token = trees
                    .tokens
                    .get(id.as_bytes())?
                    .map(|v| codec::decode(TOKENS, id.as_bytes(), &v))
                    .transpose()?;
            }
            Target::None => {}
        }
        Ok(current)
    }

    /// Applies `ops` in one transaction. If the disk refuses it (a full disk,
    /// an I/O error), what sled holds is no longer known to match what was
    /// acknowledged, so the store stops taking writes, as after a failed
    /// flush; reads go on from the view.
    fn transact(&self, writer: &mut WriterState, ops: &[Op]) -> Result<(), StoreError> {
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
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => {
                    let reason = format!("the disk refused a write: {e}");
                    tracing::error!(%reason, "write failed; refusing further writes");
                    writer.failed = Some(reason.clone());
                    StoreError::Failed(reason)
                }
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Failed("transaction aborted".to_owned())
                }
            })?;
        writer.txns += 1;
        Ok(())
    }

    /// Waits until transaction `txn` (a `WriterState::txns` count) is
    /// flushed and the writes up to it are published, flushing it (and
    /// every other transaction committed by then) if nobody else has.
    async fn wait_durable(&self, txn: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut durable = inner.flush_lock.lock().await;
        if *durable >= txn {
            return Ok(());
        }
        let (batch, upto) = {
            let mut writer = inner.writer.lock();
            if let Some(reason) = &writer.failed {
                return Err(StoreError::Failed(reason.clone()));
            }
            (std::mem::take(&mut writer.pending), writer.txns)
        };
        let db = inner.db.clone();
        let started = Instant::now();
        // A flush on a blocking thread: sled 0.34's flush_async deadlocks
        // under concurrent callers (sled issue #1308).
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Some(observer) = self.observer() {
            observer.synced(started.elapsed());
        }
        if let Err(reason) = flushed {
            tracing::error!(%reason, "flush failed; refusing further writes");
            inner.writer.lock().failed = Some(reason.clone());
            return Err(StoreError::Failed(reason));
        }
        *durable = upto;
        self.publish(batch);
        Ok(())
    }

    /// Applies flushed writes to the view in revision order, announces the
    /// view's new revision and records it in the watermark.
    fn publish(&self, batch: Vec<(u64, Vec<Mutation>)>) {
        let published = {
            let mut view = self.inner.view.write();
            for (rev, mutations) in batch {
                view.apply(rev, mutations);
            }
            view.revision()
        };
        self.inner.published.send_replace(published);
        self.record_durable(published, false);
    }

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

    /// A consistent copy of every tree as one backup file (in memory), as of
    /// the latest committed revision, returned once that revision is
    /// durable. The copy is made under the writer lock, so writes wait while
    /// it is made; reads do not.
    pub async fn backup(&self, taken_at: SystemTime) -> Result<Backup, StoreError> {
        let store = self.clone();
        let (backup, txn) = tokio::task::spawn_blocking(move || store.snapshot(taken_at))
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))??;
        self.wait_durable(txn).await?;
        Ok(backup)
    }

    /// Where a watch after `revision` starts reading the audit trail: the
    /// first sequence number whose record has a revision above `revision`,
    /// with that record's time; or, if there is none yet, the sequence
    /// number the next record will get. Revisions never decrease along the
    /// trail, so this is a binary search.
    pub fn audit_position_after(
        &self,
        revision: u64,
    ) -> Result<(u64, Option<SystemTime>), StoreError> {
        let last = self.inner.writer.lock().audit_seq;
        let record_at = |seq: u64| -> Result<Option<AuditRecord>, StoreError> {
            let key = seq.to_be_bytes();
            self.inner
                .trees
                .audit
                .get(key)?
                .map(|v| codec::decode(AUDIT, &key, &v))
                .transpose()
        };
        let (mut lo, mut hi) = (1, last + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match record_at(mid)? {
                Some(r) if r.revision > revision => hi = mid,
                _ => lo = mid + 1,
            }
        }
        let at = if lo <= last {
            record_at(lo)?.map(|r| r.at)
        } else {
            None
        };
        Ok((lo, at))
    }

    /// Up to `limit` applied audit records from sequence `from` on whose
    /// revision is at most `through`, and the sequence to continue from.
    /// Stops at the first applied record above `through` (not yet durable).
    pub fn audit_records_from(
        &self,
        from: u64,
        through: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, u64), StoreError> {
        let mut out = Vec::new();
        let mut next = from;
        for item in self.inner.trees.audit.range(from.to_be_bytes()..) {
            let (key, value) = item?;
            let record: AuditRecord = codec::decode(AUDIT, &key, &value)?;
            if record.outcome == Outcome::Applied {
                if record.revision > through || out.len() == limit {
                    break;
                }
                out.push(record);
            }
            next = codec::decode_counter(AUDIT, &key, &key)? + 1;
        }
        Ok((out, next))
    }

    /// The durable revision, announced each time reads move on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.published.subscribe()
    }

    /// Waits until the view reflects at least `revision`, for at most
    /// `within`. On time-out returns the revision the view has reached.
    pub async fn wait_for_revision(&self, revision: u64, within: Duration) -> Result<(), u64> {
        if self.inner.view.read().revision() >= revision {
            return Ok(());
        }
        let mut published = self.inner.published.subscribe();
        let reached = tokio::time::timeout(within, published.wait_for(|r| *r >= revision)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            // The sender lives as long as the store, so a closed channel
            // cannot happen while `self` exists; answer as for a time-out.
            Ok(Err(_)) | Err(_) => Err(self.inner.view.read().revision()),
        }
    }

    /// Bulk import, for the load generator (`entitled-bench`) and seeding
    /// only: writes `accounts` and then `users` as given, as one write (one
    /// revision, which each user's `revision` is set to), flushes, and
    /// publishes them to the view. It bypasses `decide`, so the catalogue's
    /// rules are NOT applied: the caller vouches that every record is valid
    /// and that each user's account is among `accounts` or already stored.
    /// Writes committed before it are flushed and published with it, in
    /// order. Blocking: it panics if called from async code (it takes the
    /// flush lock with `blocking_lock`). Returns the store revision after the
    /// import.
    pub fn import(&self, accounts: Vec<Account>, users: Vec<User>) -> Result<u64, StoreError> {
        /// Bounds the memory a sled batch holds.
        const CHUNK: usize = 50_000;
        let inner = &self.inner;
        // The flush lock first, as flushers take it: no flush is in flight,
        // so every unpublished write is in `pending`.
        let mut flush = inner.flush_lock.blocking_lock();
        let mut writer = inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let revision = writer.committed + 1;
        let mut batch = sled::Batch::default();
        for a in &accounts {
            batch.insert(codec::account_key(&a.id), codec::encode(a)?);
        }
        inner.trees.accounts.apply_batch(batch)?;
        let mut users = users;
        for chunk in users.chunks_mut(CHUNK) {
            let mut batch = sled::Batch::default();
            for u in chunk.iter_mut() {
                u.revision = revision;
                batch.insert(codec::user_key(&u.account_id, &u.id), codec::encode(u)?);
            }
            inner.trees.users.apply_batch(batch)?;
        }
        inner
            .trees
            .meta
            .insert(REVISION_KEY, &revision.to_be_bytes()[..])?;
        inner.db.flush()?;
        *flush = writer.txns;
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
        self.publish(batch);
        drop(flush);
        Ok(revision)
    }

    /// The backup, and the transaction to wait for before handing it out.
    fn snapshot(&self, taken_at: SystemTime) -> Result<(Backup, u64), StoreError> {
        let writer = self.inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let mut file = backup::Writer::new(writer.committed, taken_at, backup::TREES.len() as u32);
        for name in backup::TREES {
            let tree = self
                .tree(name)
                .ok_or_else(|| StoreError::Encode(format!("no tree `{name}`")))?;
            file.tree(name, tree)?;
        }
        let backup = Backup {
            revision: writer.committed,
            bytes: file.finish(),
        };
        Ok((backup, writer.txns))
    }

    /// A tree by its name (as a backup names it).
    fn tree(&self, name: &str) -> Option<&sled::Tree> {
        let t = &self.inner.trees;
        Some(match name {
            ACCOUNTS => &t.accounts,
            USERS => &t.users,
            META => &t.meta,
            TOKENS => &t.tokens,
            AUDIT => &t.audit,
            AUDIT_BY_ACCOUNT => &t.audit_by_account,
            REQUESTS => &t.requests,
            _ => return None,
        })
    }

    /// Flushes everything to disk, and the watermark with it; for shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            // Everything committed before the flush is durable after it.
            let committed = store.inner.writer.lock().committed;
            store.inner.db.flush()?;
            store.record_durable(committed, true);
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))??;
        Ok(())
    }
}

/// A user a write changed, for its audit record: (account, user, key,
/// after).
type Changed = (String, String, Option<Vec<u8>>, Option<UserState>);

/// Opens sled, waiting out a lock left by a store this process just closed.
///
/// We hold `entitled.lock`, so no other process has the directory; but sled
/// 0.34 finishes a closed database's last writes on its own background
/// threads and holds its file lock until they are done, so a store reopened
/// at once in the same process (a restart in tests, or an embedding) can
/// find it still taken. Only that error is retried, for at most 5 seconds.
fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    const WAIT: Duration = Duration::from_millis(20);
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
        {
            Err(sled::Error::Io(e))
                if tries < 250 && e.to_string().starts_with("could not acquire lock") =>
            {
                tries += 1;
                std::thread::sleep(WAIT);
            }
            opened => return opened,
        }
    }
}

/// Checks sled's data against the watermark (see `watermark`) and returns
/// the store's id and the watermark, open for writing. A new store, or one
/// made before watermarks, gets an id; a watermark that is missing is made
/// again from what sled holds.
fn check_watermark(
    dir: &Path,
    db: &sled::Db,
    meta: &sled::Tree,
    revision: u64,
) -> Result<(StoreId, Watermark), StoreError> {
    let path = dir.display().to_string();
    let watermark_error = |source| StoreError::Watermark {
        path: path.clone(),
        source,
    };
    let stored: Option<StoreId> = match meta.get(STORE_ID_KEY)? {
        None => None,
        Some(bytes) => Some(bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            tree: META,
            key: String::from_utf8_lossy(STORE_ID_KEY).into_owned(),
            reason: format!("expected 16 bytes, found {}", bytes.len()),
        })?),
    };
    let mark = watermark::read(dir).map_err(watermark_error)?;
    let id = match (mark, stored) {
        (Some(mark), Some(id)) if id != mark.id => return Err(StoreError::ForeignData { path }),
        (Some(mark), _) if revision < mark.revision => {
            return Err(StoreError::DataLost {
                path,
                durable: mark.revision,
                found: revision,
            });
        }
        // sled holds no id: it is new (its files were emptied or removed)
        // or older than the watermark's store.
        (Some(_), None) => return Err(StoreError::ForeignData { path }),
        (_, Some(id)) => {
            if mark.is_none() {
                tracing::warn!(revision, "no `{}`; made again", watermark::FILE);
            }
            id
        }
        (None, None) => {
            let mut id = StoreId::default();
            getrandom::fill(&mut id).map_err(|e| StoreError::Failed(e.to_string()))?;
            meta.insert(STORE_ID_KEY, &id[..])?;
            db.flush()?;
            id
        }
    };
    // What sled recovered may still be only in the page cache (a process
    // killed before its flush): sync it before the watermark names it.
    sync_all_files(&dir.join(DB_DIR)).map_err(|source| StoreError::Open {
        path: path.clone(),
        source: source.into(),
    })?;
    let now = Mark { id, revision };
    let watermark = if mark.is_some() {
        // In place, into one slot: the other keeps the mark just checked.
        let mut watermark = Watermark::open(dir).map_err(watermark_error)?;
        watermark.write(now, true).map_err(watermark_error)?;
        watermark
    } else {
        Watermark::create(dir, now).map_err(watermark_error)?
    };
    Ok((id, watermark))
}

/// fsyncs every file below `dir`, and the directories.
fn sync_all_files(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sync_all_files(&path)?;
        } else {
            std::fs::File::open(&path)?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

fn read_counter(meta: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    match meta.get(key)? {
        Some(bytes) => codec::decode_counter(META, key, &bytes),
        None => Ok(0),
    }
}

fn audit_ops(record: &AuditRecord) -> Result<Vec<Op>, StoreError> {
    let seq = record.seq.to_be_bytes();
    let mut ops = vec![Op::put(Tree::Audit, seq.to_vec(), codec::encode(record)?)];
    // Only well-formed ids are indexed, so one account's prefix can never
    // match a refused request's malformed `acme/…`.
    if validate_id(&record.account_id).is_ok() {
        let mut key = codec::audit_account_prefix(&record.account_id);
        key.extend_from_slice(&seq);
        ops.push(Op::put(Tree::AuditByAccount, key, Vec::new()));
    }
    Ok(ops)
}

#[derive(Clone, Copy)]
enum Tree {
    Accounts,
    Users,
    Meta,
    Tokens,
    Audit,
    AuditByAccount,
    Requests,
}

struct Op {
    tree: Tree,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl Op {
    fn put(tree: Tree, key: Vec<u8>, value: Vec<u8>) -> Op {
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
