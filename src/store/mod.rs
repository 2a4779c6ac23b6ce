//! Storage: the records of accounts, users, tokens, the audit trail and the
//! answers kept for retries; and the in-memory view of what is durable that
//! serves every read.
//!
//! Split in two. The backend-neutral part is this module and its files
//! other than `sled/`: the `Store` the service holds, the view (`view.rs`)
//! and its publication (`publish.rs`), the write path's rules — replay,
//! kept answers, audit records (`write.rs`) — the audit listings and Watch
//! cursors (`feed.rs`), the record encoding (`codec.rs`) and the backup
//! file (`backup/`). A backend meets the contract in `backend.rs`
//! (ARCHITECTURE.md, "The storage contract"): it stores the records,
//! serialises writers, makes writes durable and publishes them in revision
//! order. sled is the one backend (`sled/`).
//!
//! A write: `plan` sees the latest committed state and returns the
//! mutations, which are committed together with the store revision (raised
//! by exactly one), the write's audit records, and (for a write with a
//! request id) the answer kept for retries; the write returns once durable
//! and published. Reads never see a write that is not yet durable and never
//! touch storage.

mod backend;
mod backup;
mod codec;
mod feed;
mod location;
mod postgres;
mod prune;
mod publish;
mod sled;
mod view;
mod write;

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use self::{backend::Backend, publish::Publisher, sled::WatermarkError};
#[cfg(feature = "bench")]
use crate::domain::{Account, User};

pub use self::sled::restore;
pub use backup::{Backup, BackupError, BackupSummary, FORMAT_VERSION, verify};
pub use codec::UserV1;
pub use location::{CopySummary, Location, copy, restore_into_database};
pub use prune::{
    PruneBatch, Pruned, PrunedAsk, REQUEST_PRUNE_GRACE, RequestsBatch, RequestsResume,
};
pub use view::{UserServices, View};
pub use write::{
    Mutation, REQUEST_ID_WINDOW, Refusable, RequestKey, Target, TargetState, WriteContext,
    WritePlan, Written,
};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "data directory `{path}` is in use by another process; stop it or choose another --data-dir"
    )]
    Locked { path: String },
    #[error("cannot open data directory `{path}`: {reason}")]
    Open { path: String, reason: String },
    #[error("data directory holds a damaged record in `{kind}` at key `{key}`: {reason}")]
    Corrupt {
        /// The kind of record (`users`, `meta`, …).
        kind: &'static str,
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
    #[error(
        "`{store}` is not empty (it holds {holds}); copy or restore only into a new or empty one"
    )]
    Occupied { store: String, holds: String },
    #[error(
        "`{given}` is not a PostgreSQL URL ({reason}); write it like postgres://USER@HOST:PORT/DB"
    )]
    NotAUrl { given: String, reason: String },
    #[error(
        "the database `{database}` cannot be reached or refused the statement ({reason}); reads go on from memory, writes are refused until it is back"
    )]
    Unavailable { database: String, reason: String },
    #[error(
        "the database `{database}` has schema version {found}, newer than this entitled knows ({known}); run a newer entitled"
    )]
    SchemaTooNew {
        database: String,
        found: i32,
        known: i32,
    },
    #[error("cannot encode a record: {0}")]
    Encode(String),
    /// The storage failed a read or write; its own message.
    #[error("storage error: {0}")]
    Backend(String),
    #[error(
        "a write could not be made durable ({0}); the store takes no more writes until restarted"
    )]
    Failed(String),
    #[error(
        "request_id `{0}` was already used by this token for a different request; use a new request_id for a new request"
    )]
    RequestReused(String),
    /// A listing or watch asked for audit records that were pruned (audit
    /// retention).
    #[error(
        "{asked} is before the audit trail kept: the records of revisions up to {} were pruned (audit retention), and the oldest revision held is {}; rebuild from ListUsers and watch from the revision it lists, or ask for changes after revision {} or later",
        .pruned.revision, .pruned.oldest_revision_held(), .pruned.revision
    )]
    Pruned { asked: PrunedAsk, pruned: Pruned },
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
    /// Whether a shared database can be reached: while it cannot, reads
    /// are served as of the last revision seen. Only a backend with a
    /// database elsewhere (PostgreSQL) says.
    fn reachable(&self, _reachable: bool) {}
    /// A batch of writes on a shared database waited `waited` for the
    /// write lock that every replica's batches take in turn (one round
    /// trip included), then held it `held`, until its COMMIT was
    /// acknowledged. Only a backend shared by replicas (PostgreSQL) says.
    fn write_lock(&self, _waited: Duration, _held: Duration) {}
}

/// Size and contents, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// The durable store revision.
    pub revision: u64,
    pub accounts: u64,
    pub users: u64,
    /// What the store's storage takes, in bytes.
    pub size_on_disk: u64,
}

/// The store: a backend, and the view it publishes to. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    /// Opens (or creates) the sled store in `dir` and loads the view.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let backend = self::sled::SledBackend::open(dir)?;
        Ok(Store {
            backend: Arc::new(backend),
        })
    }

    fn publisher(&self) -> &Publisher {
        self.backend.publisher()
    }

    /// Reports writes and syncs to `observer` from now on. Only the first
    /// observer set is kept; it returns false for any later one.
    pub fn observe(&self, observer: Arc<dyn StoreObserver>) -> bool {
        self.publisher().observe(observer)
    }

    /// Revision, record counts (from the view) and size in storage.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let (revision, accounts, users) =
            self.read(|v| (v.revision(), v.account_count(), v.user_count()));
        Ok(StoreStats {
            revision,
            accounts,
            users,
            size_on_disk: self.backend.size_bytes()?,
        })
    }

    /// Runs `read` against the durable view. Keep `read` short: it holds a
    /// read lock that writers' publication waits for.
    pub fn read<R>(&self, read: impl FnOnce(&View) -> R) -> R {
        self.publisher().read(read)
    }

    /// Whether the first start's operator token was made.
    pub async fn is_bootstrapped(&self) -> Result<bool, StoreError> {
        self.backend.bootstrapped().await
    }

    /// A consistent copy of every record as one backup file (in memory), as
    /// of the latest committed revision, returned once that revision is
    /// durable. Writes may wait while the copy is taken; reads do not.
    pub async fn backup(&self, taken_at: SystemTime) -> Result<Backup, StoreError> {
        let backend = Arc::clone(&self.backend);
        let backup = tokio::task::spawn_blocking(move || {
            let mut file = backup::Writer::new(taken_at);
            let revision = backend.snapshot(&mut |record| file.record(&record))?;
            Ok::<_, StoreError>(Backup {
                revision,
                bytes: file.finish(revision),
            })
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))??;
        self.backend.durable().await?;
        Ok(backup)
    }

    /// The durable revision, announced each time reads move on.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.publisher().subscribe()
    }

    /// Waits until the view reflects at least `revision`, for at most
    /// `within`. On time-out returns the revision the view has reached.
    pub async fn wait_for_revision(&self, revision: u64, within: Duration) -> Result<(), u64> {
        self.publisher().wait_for_revision(revision, within).await
    }

    /// Bulk import, for the load generator (`entitled-bench`) and seeding
    /// only: writes `accounts` and then `users` as given, as one write (one
    /// revision, which each user's `revision` is set to), makes it durable,
    /// and publishes it to the view. It bypasses `plan` and writes no
    /// audit record, so the catalogue's rules are NOT applied: the caller
    /// vouches that every record is valid and that each user's account is
    /// among `accounts` or already stored. Writes committed before it are
    /// made durable and published with it, in order. Blocking: it panics if
    /// called from async code. Returns the store revision after the import.
    #[cfg(feature = "bench")]
    pub fn import(&self, accounts: Vec<Account>, users: Vec<User>) -> Result<u64, StoreError> {
        self.backend.import(accounts, users)
    }

    /// Makes everything committed durable, and records so; for a stop.
    pub async fn sync_on_stop(&self) -> Result<(), StoreError> {
        self.backend.sync_on_stop().await
    }
}
