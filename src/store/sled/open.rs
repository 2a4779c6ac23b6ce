//! Opening a sled store: the directory lock, sled itself, the watermark
//! check, and the view loaded from the trees.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;

use super::super::{StoreError, publish::Publisher};
use super::{
    Flushes, Inner, SledBackend, Trees, WriterState, checkpoint,
    keys::{
        ACCOUNTS, AUDIT, AUDIT_BY_ACCOUNT, AUDIT_SEQ_KEY, META, REQUESTS, REVISION_KEY,
        STORE_ID_KEY, TOKENS, USERS, backend, read_counter,
    },
    watermark::{self, Mark, StoreId, Watermark},
};

/// Held (flock) for as long as a store is open on the directory.
const LOCK_FILE: &str = "entitled.lock";
/// sled's files, inside the data directory.
pub(super) const DB_DIR: &str = "db";
/// sled's page cache. Reads are served from the view, so sled reads only
/// the start-up scan and writers' point lookups; its default of 1 GiB keeps
/// the pages of that scan, a second copy of the data. Measured with 1M
/// users: sled's share of RSS 242 MiB with the default, 93 MiB with this.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl SledBackend {
    /// Opens (or creates) the store in `dir` and loads the view.
    pub(in super::super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.display().to_string();
        let open_error = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        // Our own lock, taken before sled's: sled reports a held lock only as
        // text, and this one gives the operator a clear message.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| open_error(io_message(e)))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_error(io_message(e))),
        }
        let began = Instant::now();
        // Taken (and deleted) before sled is opened: opening it writes to
        // its files, and a checkpoint is used at most once.
        let checkpoint = checkpoint::take(dir);
        let db = open_sled(&dir.join(DB_DIR)).map_err(|e| open_error(e.to_string()))?;
        let sled_opened = began.elapsed();
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let trees = Trees {
            accounts: tree(ACCOUNTS)?,
            users: tree(USERS)?,
            meta: tree(META)?,
            tokens: tree(TOKENS)?,
            audit: tree(AUDIT)?,
            audit_by_account: tree(AUDIT_BY_ACCOUNT)?,
            requests: tree(REQUESTS)?,
        };
        let revision = read_counter(&trees.meta, REVISION_KEY)?;
        let audit_seq = read_counter(&trees.meta, AUDIT_SEQ_KEY)?;
        let (id, watermark) = check_watermark(dir, &db, &trees.meta, revision)?;
        let checked = began.elapsed();
        let (view, from_checkpoint) = match checkpoint {
            Some(found) => super::load::load_view_from(&trees, revision, found, (&id, audit_seq))?,
            None => (super::load::load_view(&trees, revision)?, false),
        };
        let pruned = super::prune::read_pruned(&trees, revision, audit_seq)?;
        tracing::info!(
            revision,
            users = view.user_count(),
            from_checkpoint,
            sled_ms = sled_opened.as_millis(),
            watermark_ms = (checked - sled_opened).as_millis(),
            view_ms = (began.elapsed() - checked).as_millis(),
            "store opened"
        );
        Ok(SledBackend {
            inner: Arc::new(Inner {
                _lock: lock,
                id,
                dir: dir.to_path_buf(),
                watermark: Mutex::new(watermark),
                db,
                trees,
                writer: Mutex::new(WriterState::new(revision, audit_seq)),
                flush_lock: tokio::sync::Mutex::new(Flushes::new()),
                batch_full: tokio::sync::Notify::new(),
                publisher: Publisher::new(view),
                pruned: Mutex::new(pruned),
                pruning: Mutex::new(()),
            }),
        })
    }
}

/// An I/O error's message, as sled words the ones it reports (the text
/// start-up errors have always shown).
fn io_message(e: std::io::Error) -> String {
    ::sled::Error::from(e).to_string()
}

/// Opens sled, waiting out a lock left by a store this process just closed.
///
/// We hold `entitled.lock`, so no other process has the directory; but sled
/// 0.34 finishes a closed database's last writes on its own background
/// threads and holds its file lock until they are done, so a store reopened
/// at once in the same process (a restart in tests, or an embedding) can
/// find it still taken. Only that error is retried, for at most 5 seconds.
fn open_sled(path: &Path) -> Result<::sled::Db, ::sled::Error> {
    const WAIT: Duration = Duration::from_millis(20);
    let mut tries = 0;
    loop {
        match ::sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
        {
            Err(::sled::Error::Io(e))
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
    db: &::sled::Db,
    meta: &::sled::Tree,
    revision: u64,
) -> Result<(StoreId, Watermark), StoreError> {
    let path = dir.display().to_string();
    let watermark_error = |source| StoreError::Watermark {
        path: path.clone(),
        source,
    };
    let stored: Option<StoreId> = match meta.get(STORE_ID_KEY).map_err(backend)? {
        None => None,
        Some(bytes) => Some(bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            kind: META,
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
            meta.insert(STORE_ID_KEY, &id[..]).map_err(backend)?;
            db.flush().map_err(backend)?;
            id
        }
    };
    // What sled recovered may still be only in the page cache (a process
    // killed before its flush): sync it before the watermark names it.
    sync_all_files(&dir.join(DB_DIR)).map_err(|e| StoreError::Open {
        path: path.clone(),
        reason: io_message(e),
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
