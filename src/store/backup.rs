//! The backup file: every tree of the store, byte for byte, as of one
//! revision; versioned and checksummed. Format version 1, all integers
//! big-endian:
//!
//! ```text
//! magic      16 bytes   "entitled-backup\n"
//! version    u32        1
//! revision   u64        the store revision the backup reflects
//! taken_at   u64        milliseconds since the Unix epoch
//! trees      u32        how many trees follow
//! each tree:
//!   name_len u16, name  UTF-8: accounts, users, meta, tokens, audit,
//!                       audit_by_account, requests
//!   entries  u64
//!   each entry: key_len u32, key, value_len u32, value
//!                       as sled holds them (values keep their own
//!                       record-format byte, see codec.rs)
//! checksum   32 bytes   SHA-256 of every byte before it
//! ```
//!
//! Restoring copies the entries back into a new store in a new directory and
//! then decodes its counters and every account, user and token as a server
//! does when it opens: a file that does not hold a loadable store is
//! refused.

use std::{
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sha2::{Digest, Sha256};

use super::{
    ACCOUNTS, AUDIT, AUDIT_BY_ACCOUNT, AUDIT_SEQ_KEY, META, REQUESTS, REVISION_KEY, STORE_ID_KEY,
    Store, StoreError, TOKENS, USERS, View, read_counter,
};

const MAGIC: &[u8; 16] = b"entitled-backup\n";
pub const FORMAT_VERSION: u32 = 1;
/// Every tree, in the order a backup writes them.
pub(super) const TREES: [&str; 7] = [
    ACCOUNTS,
    USERS,
    META,
    TOKENS,
    AUDIT,
    AUDIT_BY_ACCOUNT,
    REQUESTS,
];
/// No key or value of ours comes near this; a larger length means damage.
const MAX_FIELD: u32 = 64 * 1024 * 1024;

/// Why a backup could not be read, checked or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot open backup `{path}`: {source}")]
    Open { path: String, source: io::Error },
    #[error("cannot read the backup: {0}")]
    Read(io::Error),
    #[error("the backup ends too early ({0}); it was cut short: take it again")]
    Truncated(&'static str),
    #[error("this is not an entitled backup file (it does not start with `entitled-backup`)")]
    NotABackup,
    #[error(
        "backup format version {0} is not supported; this entitled reads version {FORMAT_VERSION}"
    )]
    Version(u32),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error(
        "the backup's checksum does not match its contents; the file is damaged: take the backup again"
    )]
    Checksum,
    #[error(
        "the backup holds tree `{0}`, which this entitled does not know; restore it with the version that made it"
    )]
    UnknownTree(String),
    #[error(
        "data directory `{0}` is not empty; restore only into an empty or new directory (a restore never overwrites data)"
    )]
    NotEmpty(String),
    #[error("cannot restore into `{path}`: {source}")]
    Io { path: String, source: io::Error },
    #[error("the restored store does not open: {0}")]
    Store(#[from] StoreError),
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    pub revision: u64,
    pub taken_at: SystemTime,
    /// Entries in all trees.
    pub entries: u64,
    /// The file's size.
    pub bytes: u64,
}

/// A backup taken from a running store.
#[derive(Debug)]
pub struct Backup {
    pub revision: u64,
    /// The whole backup file.
    pub bytes: Vec<u8>,
}

/// Writes a backup file into memory.
pub(super) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(super) fn new(revision: u64, taken_at: SystemTime, trees: u32) -> Self {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&revision.to_be_bytes());
        out.extend_from_slice(&millis(taken_at).to_be_bytes());
        out.extend_from_slice(&trees.to_be_bytes());
        Writer { out }
    }

    pub(super) fn tree(&mut self, name: &str, tree: &sled::Tree) -> Result<(), StoreError> {
        let name_len = u16::try_from(name.len())
            .map_err(|_| StoreError::Encode(format!("tree name `{name}` is too long")))?;
        self.out.extend_from_slice(&name_len.to_be_bytes());
        self.out.extend_from_slice(name.as_bytes());
        let count_at = self.out.len();
        self.out.extend_from_slice(&0u64.to_be_bytes());
        let mut count: u64 = 0;
        for item in tree.iter() {
            let (key, value) = item?;
            self.field(&key)?;
            self.field(&value)?;
            count += 1;
        }
        self.out[count_at..count_at + 8].copy_from_slice(&count.to_be_bytes());
        Ok(())
    }

    fn field(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= MAX_FIELD)
            .ok_or_else(|| StoreError::Encode(format!("a record of {} bytes", bytes.len())))?;
        self.out.extend_from_slice(&len.to_be_bytes());
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    pub(super) fn finish(mut self) -> Vec<u8> {
        let checksum = Sha256::digest(&self.out);
        self.out.extend_from_slice(&checksum);
        self.out
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads a backup, hashing every byte up to the checksum.
struct Reader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> Reader<R> {
    fn exact<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], BackupError> {
        let mut buf = [0u8; N];
        self.fill(&mut buf, what)?;
        self.hasher.update(buf);
        Ok(buf)
    }

    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => BackupError::Truncated(what),
            _ => BackupError::Read(e),
        })?;
        self.read += buf.len() as u64;
        Ok(())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, BackupError> {
        Ok(u16::from_be_bytes(self.exact(what)?))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, BackupError> {
        Ok(u32::from_be_bytes(self.exact(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, BackupError> {
        Ok(u64::from_be_bytes(self.exact(what)?))
    }

    fn field(&mut self, what: &'static str) -> Result<Vec<u8>, BackupError> {
        let len = self.u32(what)?;
        if len > MAX_FIELD {
            return Err(BackupError::Damaged(format!("a {what} of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf, what)?;
        self.hasher.update(&buf);
        Ok(buf)
    }
}

/// Reads a whole backup, handing each tree's entries to `sink`, and checks
/// its checksum and that nothing follows. `sink` sees entries before the
/// checksum is known to be right: whoever writes them must be ready to throw
/// them away.
fn parse<R: Read>(
    source: R,
    mut sink: impl FnMut(&'static str, Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), BackupError>,
) -> Result<BackupSummary, BackupError> {
    let mut r = Reader {
        inner: BufReader::new(source),
        hasher: Sha256::new(),
        read: 0,
    };
    let magic: [u8; 16] = r.exact("header").map_err(|e| match e {
        BackupError::Truncated(_) => BackupError::NotABackup,
        other => other,
    })?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let version = r.u32("header")?;
    if version != FORMAT_VERSION {
        return Err(BackupError::Version(version));
    }
    let revision = r.u64("header")?;
    let taken_at = UNIX_EPOCH + Duration::from_millis(r.u64("header")?);
    let trees = r.u32("header")?;
    let mut seen: Vec<&'static str> = Vec::new();
    let mut entries = 0u64;
    for _ in 0..trees {
        let len = r.u16("tree name")?;
        let mut name = vec![0u8; usize::from(len)];
        r.fill(&mut name, "tree name")?;
        r.hasher.update(&name);
        let name = String::from_utf8_lossy(&name).into_owned();
        let Some(tree) = TREES.into_iter().find(|t| *t == name) else {
            return Err(BackupError::UnknownTree(name));
        };
        if seen.contains(&tree) {
            return Err(BackupError::Damaged(format!("tree `{tree}` appears twice")));
        }
        seen.push(tree);
        let count = r.u64("tree")?;
        // In batches, so a large tree is never held whole.
        let mut batch = Vec::new();
        for _ in 0..count {
            let key = r.field("key")?;
            let value = r.field("value")?;
            batch.push((key, value));
            if batch.len() == 4096 {
                sink(tree, std::mem::take(&mut batch))?;
            }
        }
        sink(tree, batch)?;
        entries += count;
    }
    let computed: [u8; 32] = r.hasher.clone().finalize().into();
    let mut stored = [0u8; 32];
    r.fill(&mut stored, "checksum")?;
    if computed != stored {
        return Err(BackupError::Checksum);
    }
    if !r.inner.fill_buf().map_err(BackupError::Read)?.is_empty() {
        return Err(BackupError::Damaged("bytes follow the checksum".to_owned()));
    }
    Ok(BackupSummary {
        revision,
        taken_at,
        entries,
        bytes: r.read,
    })
}

/// Reads a whole backup and checks it, without restoring it.
pub fn verify<R: Read>(source: R) -> Result<BackupSummary, BackupError> {
    parse(source, |_, _| Ok(()))
}

/// Restores the backup file `backup` into `dir`, which must be empty or not
/// exist. The whole file is checked (format, checksum) before anything is
/// written; the data then goes into a new directory beside `dir`, is decoded
/// as a server would, and only then is moved into place: a failed restore
/// leaves `dir` as it was.
pub fn restore(backup: &Path, dir: &Path) -> Result<BackupSummary, BackupError> {
    let shown = dir.display().to_string();
    let io_error = |path: &Path| {
        let path = path.display().to_string();
        move |source| BackupError::Io { path, source }
    };
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(shown));
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(dir)(e)),
    }
    let open = || {
        std::fs::File::open(backup).map_err(|source| BackupError::Open {
            path: backup.display().to_string(),
            source,
        })
    };
    verify(open()?)?;
    let staging = staging_dir(dir)?;
    let result = restore_into(open()?, &staging).and_then(|summary| {
        // An empty directory is replaced; rename does not replace one on
        // every platform.
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(io_error(dir))?;
        }
        std::fs::rename(&staging, dir).map_err(io_error(dir))?;
        Ok(summary)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// `.NAME.restoring-PID-N` beside `dir`, created (with `dir`'s parent).
fn staging_dir(dir: &Path) -> Result<PathBuf, BackupError> {
    static RESTORES: AtomicU64 = AtomicU64::new(0);
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_owned());
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = RESTORES.fetch_add(1, Ordering::Relaxed);
    let staging = parent.join(format!(".{name}.restoring-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|source| BackupError::Io {
        path: staging.display().to_string(),
        source,
    })?;
    Ok(staging)
}

fn restore_into<R: Read>(source: R, dir: &Path) -> Result<BackupSummary, BackupError> {
    // One handle for writing and checking: sled releases its lock on the
    // directory some time after a handle is dropped, so opening it again
    // here could fail.
    let store = Store::open(dir)?;
    let summary = parse(source, |name, entries| {
        let Some(tree) = store.tree(name) else {
            return Err(BackupError::UnknownTree(name.to_owned()));
        };
        let mut batch = sled::Batch::default();
        for (key, value) in entries {
            batch.insert(key, value);
        }
        tree.apply_batch(batch).map_err(StoreError::from)?;
        Ok(())
    })?;
    // Decode what a server decodes when it opens: the counters, and every
    // account, user and token into a view.
    let trees = &store.inner.trees;
    let revision = read_counter(&trees.meta, REVISION_KEY)?;
    read_counter(&trees.meta, AUDIT_SEQ_KEY)?;
    if revision != summary.revision {
        return Err(BackupError::Damaged(format!(
            "its header says revision {} but its records are at revision {revision}",
            summary.revision
        )));
    }
    View::load(&trees.accounts, &trees.users, &trees.tokens, revision)?;
    // The restored directory is a store of its own: it keeps the id its
    // opening gave it, not the backed-up store's, and its watermark says
    // that the backup's revision is durable.
    trees
        .meta
        .insert(STORE_ID_KEY, &store.inner.id[..])
        .map_err(StoreError::from)?;
    store.inner.db.flush().map_err(StoreError::from)?;
    store.record_durable(revision, true);
    Ok(summary)
}
