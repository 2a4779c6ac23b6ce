//! `entitled restore`: a backup file's records into a new sled store in a
//! new directory. The file is read and checked whole (`backup::verify`)
//! before anything is written; the store is built in a directory beside
//! the target, checked as a server would open it, and only then moved
//! into place, so a failed restore leaves the target as it was.

use std::{
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::super::{
    StoreError,
    backend::Record,
    backup::{self, BackupError, BackupSummary},
    codec,
};
use super::{
    SledBackend,
    commit::{Op, Tree, audit_ops},
    keys::{self, AUDIT_SEQ_KEY, BOOTSTRAPPED_KEY, REVISION_KEY, backend, read_counter},
};

/// Restores the backup file `backup` into `dir`, which must be empty or not
/// exist. The whole file is checked (format, checksum, records) before
/// anything is written; the data then goes into a new directory beside
/// `dir`, is decoded as a server would, and only then is moved into place:
/// a failed restore leaves `dir` as it was.
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
    backup::verify(open()?)?;
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

fn restore_into<R: io::Read>(source: R, dir: &Path) -> Result<BackupSummary, BackupError> {
    // One handle for writing and checking: sled releases its lock on the
    // directory some time after a handle is dropped, so opening it again
    // here could fail.
    let store = SledBackend::open(dir)?;
    let summary = backup::read(source, |records| Ok(store.put(records)?))?;
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
    super::load::load_view(trees, revision)?;
    // The restored directory is a store of its own: it keeps the id its
    // opening gave it (a backup holds none), and its watermark says that
    // the backup's revision is durable.
    store.inner.db.flush().map_err(backend)?;
    store.record_durable(revision, true);
    Ok(summary)
}

/// Puts `records` into a new store in `dir`, which must be empty or not
/// exist: `entitled store copy` into a directory. Built beside `dir` and
/// moved into place once flushed, as a restore is.
pub(in super::super) fn create(dir: &Path, records: Vec<Record>) -> Result<(), StoreError> {
    let not_empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(_) => false,
    };
    if not_empty {
        return Err(StoreError::Occupied {
            store: dir.display().to_string(),
            holds: "files".to_owned(),
        });
    }
    let as_store = |e: BackupError| match e {
        BackupError::Store(e) => e,
        other => StoreError::Failed(other.to_string()),
    };
    let staging = staging_dir(dir).map_err(as_store)?;
    let built = (|| {
        let revision = records.iter().find_map(|r| match r {
            Record::Counters(c) => Some(c.revision),
            _ => None,
        });
        let store = SledBackend::open(&staging)?;
        store.put(records)?;
        store.inner.db.flush().map_err(backend)?;
        store.record_durable(revision.unwrap_or(0), true);
        drop(store);
        if dir.exists() {
            std::fs::remove_dir(dir).map_err(|e| StoreError::Failed(e.to_string()))?;
        }
        std::fs::rename(&staging, dir).map_err(|e| StoreError::Failed(e.to_string()))
    })();
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    built
}

impl SledBackend {
    /// Writes records as they are, outside any transaction: for a restore
    /// into a new store, which nothing else uses yet.
    fn put(&self, records: Vec<Record>) -> Result<(), StoreError> {
        let mut ops = Vec::with_capacity(records.len());
        for record in records {
            match record {
                Record::Counters(c) => {
                    let counter = |key: &[u8], n: u64| {
                        Op::put(Tree::Meta, key.to_vec(), n.to_be_bytes().to_vec())
                    };
                    ops.push(counter(REVISION_KEY, c.revision));
                    ops.push(counter(AUDIT_SEQ_KEY, c.audit_seq));
                    if c.bootstrapped {
                        ops.push(Op::put(Tree::Meta, BOOTSTRAPPED_KEY.to_vec(), vec![1]));
                    }
                }
                Record::Account(a) => ops.push(Op::put(
                    Tree::Accounts,
                    keys::account_key(&a.id),
                    codec::encode(&a)?,
                )),
                Record::User(u) => ops.push(Op::put(
                    Tree::Users,
                    keys::user_key(&u.account_id, &u.id),
                    codec::encode_user(&u)?,
                )),
                Record::Token(t) => ops.push(Op::put(
                    Tree::Tokens,
                    t.id.as_bytes().to_vec(),
                    codec::encode(&t)?,
                )),
                Record::Audit(r) => ops.extend(audit_ops(&r)?),
                Record::Request(k) => ops.push(Op::put(
                    Tree::Requests,
                    keys::request_key(&k.token_id, &k.request_id),
                    codec::encode_request(&k.record)?,
                )),
            }
        }
        let t = &self.inner.trees;
        let mut batches: [::sled::Batch; 7] = Default::default();
        for op in ops {
            if let Some(value) = op.value {
                batches[op.tree as usize].insert(op.key, value);
            }
        }
        let trees = [
            &t.accounts,
            &t.users,
            &t.meta,
            &t.tokens,
            &t.audit,
            &t.audit_by_account,
            &t.requests,
        ];
        for (tree, batch) in trees.into_iter().zip(batches) {
            tree.apply_batch(batch).map_err(backend)?;
        }
        Ok(())
    }
}
