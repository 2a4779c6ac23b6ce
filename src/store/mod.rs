//! Storage: one sled `Db`, one tree per record kind, and an in-memory view of
//! what is durable.
//!
//! Writes are serialised by one writer lock: the caller's `decide` closure sees
//! the latest committed state and returns the mutations, which are committed in
//! one sled transaction together with the store revision (raised by exactly
//! one). The writer then waits until a flush covers its revision. Flushes are
//! shared (group commit): whoever holds the flush lock flushes for every write
//! committed so far, then publishes those writes to the view. Reads (checks,
//! gets, lists) are served from the view, so they never see a write that is
//! not yet durable and never touch the disk.
//!
//! If a flush fails the store stops taking writes (fail-stop, as databases do
//! after an fsync error): a restart reloads the view from disk.

mod codec;
mod view;

use std::{path::Path, sync::Arc, time::Duration};

use parking_lot::{Mutex, RwLock};
use sled::{Transactional, transaction::ConflictableTransactionError};

use crate::domain::{Account, AccountId, User, UserId};

pub use view::{UserServices, View};

const ACCOUNTS: &str = "accounts";
const USERS: &str = "users";
const META: &str = "meta";
/// Held (flock) for as long as a store is open on the directory.
const LOCK_FILE: &str = "entitled.lock";
const REVISION_KEY: &[u8] = b"revision";
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
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    #[error(
        "a write could not be made durable ({0}); the store takes no more writes until restarted"
    )]
    Failed(String),
}

/// One change to stored records.
#[derive(Debug, Clone)]
pub enum Mutation {
    PutAccount(Account),
    PutUser(User),
    DeleteUser(AccountId, UserId),
}

/// What `decide` sees: the latest committed state of one account and user.
#[derive(Debug)]
pub struct Current {
    pub account: Option<Account>,
    pub user: Option<User>,
    /// The revision a write decided now would get.
    pub next_revision: u64,
}

/// What `decide` returns: the mutations to commit (none for a no-op) and
/// the caller's output.
pub struct Decided<T> {
    pub mutations: Vec<Mutation>,
    pub output: T,
}

/// The sled-backed store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Released when the store is dropped.
    _lock: std::fs::File,
    db: sled::Db,
    accounts: sled::Tree,
    users: sled::Tree,
    meta: sled::Tree,
    /// Serialises writers; holds the last committed revision and the writes
    /// committed but not yet published to the view.
    writer: Mutex<WriterState>,
    /// One flusher at a time; waiting writers queue here and usually find
    /// their revision already flushed by the one before them.
    flush_lock: tokio::sync::Mutex<FlushState>,
    view: RwLock<View>,
    /// The view's revision, announced after each publication, for readers
    /// that wait for a revision (`min_revision`).
    published: tokio::sync::watch::Sender<u64>,
}

struct WriterState {
    committed: u64,
    pending: Vec<(u64, Vec<Mutation>)>,
    failed: Option<String>,
}

struct FlushState {
    failed: Option<String>,
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
        let db = sled::Config::new()
            .path(dir.join("db"))
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let accounts = db.open_tree(ACCOUNTS)?;
        let users = db.open_tree(USERS)?;
        let meta = db.open_tree(META)?;
        let revision = match meta.get(REVISION_KEY)? {
            Some(bytes) => codec::decode_revision(&bytes)?,
            None => 0,
        };
        let view = View::load(&accounts, &users, revision)?;
        Ok(Store {
            inner: Arc::new(Inner {
                _lock: lock,
                db,
                accounts,
                users,
                meta,
                writer: Mutex::new(WriterState {
                    committed: revision,
                    pending: Vec::new(),
                    failed: None,
                }),
                flush_lock: tokio::sync::Mutex::new(FlushState { failed: None }),
                view: RwLock::new(view),
                published: tokio::sync::watch::Sender::new(revision),
            }),
        })
    }

    /// Runs `read` against the durable view. Keep `read` short: it holds a
    /// read lock that writers' publication waits for.
    pub fn read<R>(&self, read: impl FnOnce(&View) -> R) -> R {
        read(&self.inner.view.read())
    }

    /// Decides and commits one write atomically, and returns once it is
    /// durable and visible to reads. Returns `decide`'s output and the store
    /// revision after the write (unchanged when `decide` returned no
    /// mutations).
    pub async fn write<T, E>(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        decide: impl FnOnce(Current) -> Result<Decided<T>, E>,
    ) -> Result<(T, u64), E>
    where
        E: From<StoreError>,
    {
        let (output, revision) = self.commit(account, user, decide)?;
        self.wait_durable(revision).await?;
        Ok((output, revision))
    }

    fn commit<T, E>(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        decide: impl FnOnce(Current) -> Result<Decided<T>, E>,
    ) -> Result<(T, u64), E>
    where
        E: From<StoreError>,
    {
        let inner = &self.inner;
        let mut writer = inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()).into());
        }
        let current = Current {
            account: self.get_account(account)?,
            user: match user {
                Some(user) => self.get_user(account, user)?,
                None => None,
            },
            next_revision: writer.committed + 1,
        };
        let Decided { mutations, output } = decide(current)?;
        if mutations.is_empty() {
            return Ok((output, writer.committed));
        }
        let revision = writer.committed + 1;

        // Encode outside the transaction so its closure only moves bytes.
        let mut ops = Vec::with_capacity(mutations.len());
        for m in &mutations {
            ops.push(match m {
                Mutation::PutAccount(a) => {
                    Op::Account(codec::account_key(&a.id), Some(codec::encode(a)?))
                }
                Mutation::PutUser(u) => Op::User(
                    codec::user_key(&u.account_id, &u.id),
                    Some(codec::encode(u)?),
                ),
                Mutation::DeleteUser(a, u) => Op::User(codec::user_key(a, u), None),
            });
        }
        let revision_bytes = revision.to_be_bytes();
        (&inner.accounts, &inner.users, &inner.meta)
            .transaction(|(accounts, users, meta)| {
                for op in &ops {
                    match op {
                        Op::Account(k, Some(v)) => {
                            accounts.insert(k.as_slice(), v.as_slice())?;
                        }
                        Op::Account(k, None) => {
                            accounts.remove(k.as_slice())?;
                        }
                        Op::User(k, Some(v)) => {
                            users.insert(k.as_slice(), v.as_slice())?;
                        }
                        Op::User(k, None) => {
                            users.remove(k.as_slice())?;
                        }
                    }
                }
                meta.insert(REVISION_KEY, &revision_bytes[..])?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => {
                    StoreError::Failed("transaction aborted".to_owned())
                }
            })?;
        writer.committed = revision;
        writer.pending.push((revision, mutations));
        Ok((output, revision))
    }

    /// Waits until `revision` is flushed and published, flushing it (and
    /// every other write committed by then) if nobody else has.
    async fn wait_durable(&self, revision: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut flush = inner.flush_lock.lock().await;
        if let Some(reason) = &flush.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        if inner.view.read().revision() >= revision {
            return Ok(());
        }
        let batch = std::mem::take(&mut inner.writer.lock().pending);
        let db = inner.db.clone();
        // A flush on a blocking thread: sled 0.34's flush_async deadlocks
        // under concurrent callers (sled issue #1308).
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(reason) = flushed {
            tracing::error!(%reason, "flush failed; refusing further writes");
            flush.failed = Some(reason.clone());
            inner.writer.lock().failed = Some(reason.clone());
            return Err(StoreError::Failed(reason));
        }
        let published = {
            let mut view = inner.view.write();
            for (rev, mutations) in batch {
                view.apply(rev, mutations);
            }
            view.revision()
        };
        inner.published.send_replace(published);
        Ok(())
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
        let flush = inner.flush_lock.blocking_lock();
        if let Some(reason) = &flush.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let mut writer = inner.writer.lock();
        if let Some(reason) = &writer.failed {
            return Err(StoreError::Failed(reason.clone()));
        }
        let revision = writer.committed + 1;
        let mut batch = sled::Batch::default();
        for a in &accounts {
            batch.insert(codec::account_key(&a.id), codec::encode(a)?);
        }
        inner.accounts.apply_batch(batch)?;
        let mut users = users;
        for chunk in users.chunks_mut(CHUNK) {
            let mut batch = sled::Batch::default();
            for u in chunk.iter_mut() {
                u.revision = revision;
                batch.insert(codec::user_key(&u.account_id, &u.id), codec::encode(u)?);
            }
            inner.users.apply_batch(batch)?;
        }
        inner
            .meta
            .insert(REVISION_KEY, &revision.to_be_bytes()[..])?;
        inner.db.flush()?;
        writer.committed = revision;
        // Writes committed before this one and not yet published: the flush
        // above covered them, so publish them first, keeping revision order
        // (their writers then find their revision already in the view).
        let earlier = std::mem::take(&mut writer.pending);
        let mutations = accounts
            .into_iter()
            .map(Mutation::PutAccount)
            .chain(users.into_iter().map(Mutation::PutUser))
            .collect();
        {
            let mut view = inner.view.write();
            for (rev, earlier) in earlier {
                view.apply(rev, earlier);
            }
            view.apply(revision, mutations);
        }
        inner.published.send_replace(revision);
        drop(flush);
        Ok(revision)
    }

    /// The latest committed account (not necessarily durable yet).
    fn get_account(&self, id: &AccountId) -> Result<Option<Account>, StoreError> {
        let key = codec::account_key(id);
        self.inner
            .accounts
            .get(&key)?
            .map(|v| codec::decode(ACCOUNTS, &key, &v))
            .transpose()
    }

    fn get_user(&self, account: &AccountId, user: &UserId) -> Result<Option<User>, StoreError> {
        let key = codec::user_key(account, user);
        self.inner
            .users
            .get(&key)?
            .map(|v| codec::decode(USERS, &key, &v))
            .transpose()
    }

    /// Flushes everything to disk; for shutdown.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Failed(e.to_string()))??;
        Ok(())
    }
}

enum Op {
    Account(Vec<u8>, Option<Vec<u8>>),
    User(Vec<u8>, Option<Vec<u8>>),
}
