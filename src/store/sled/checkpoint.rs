//! The view checkpoint: the `users` tree, copied at a graceful stop into
//! one file beside sled's, so that the start right after that stop builds
//! its view without reading sled's `users` tree (with a million users,
//! sled's own read of that tree is most of a start: BENCHMARKS.md).
//!
//! The file (`view.checkpoint`) is, all numbers big-endian:
//!
//! ```text
//! header (64 bytes)  b"ENTVCKPT", format (u32), 0 (u32), the store id (16),
//!                    revision, audit sequence number, user count, and the
//!                    offset of the fingerprint (u64 each)
//! users              per user, in sled's key order: key length (u32),
//!                    value length (u32), key, value (exactly as sled holds
//!                    them, so they are decoded as sled's are)
//! fingerprint        every entry below `db/`: its path, kind, inode,
//!                    length, mtime and ctime (see `Entry`)
//! checksum           CRC-32 of all the bytes before it (u32)
//! ```
//!
//! Rules, each of which the start-up relies on:
//!
//! - It is written only at a graceful stop, after the final flush, from
//!   sled's trees (not from the view) under the writer lock; a write into
//!   sled after that abandons it. Its body is written then; its header and
//!   fingerprint only once sled is closed (its file lock let go, so none of
//!   its threads can write any more): whatever sled writes while it closes
//!   is in the fingerprint (seen with a million users just bulk-loaded:
//!   sled rewrote part of `db/db` a second after the stop's final flush;
//!   a fingerprint taken at the flush would not have matched). Written
//!   beside, synced, renamed, directory synced: a crash leaves the whole
//!   file or none.
//! - It is used at most once: the start reads its header, then deletes it
//!   and syncs the directory before sled is opened, so before anything can
//!   be written. A checkpoint can only ever describe the sled files of the
//!   stop that wrote it.
//! - It is used only if its checksum is right, its store id, revision and
//!   audit sequence number are sled's, and sled's files are those it was
//!   written beside (the fingerprint, compared before sled is opened).
//!   Anything else is logged as one warning and the view is read from sled,
//!   as without a checkpoint: a bad checkpoint never stops a start, and a
//!   stale one is never served.

use std::{
    fs::{File, OpenOptions},
    io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ::sled::Tree;

use super::{super::StoreError, open::DB_DIR, watermark::StoreId};

pub(super) const FILE: &str = "view.checkpoint";
/// Where a checkpoint is written before it is renamed into place.
const STAGED: &str = "view.checkpoint.new";
const MAGIC: &[u8; 8] = b"ENTVCKPT";
const FORMAT: u32 = 1;
const HEADER: usize = 64;
/// sled's file that it holds its lock on (`fs2`'s `flock`, which `File::
/// try_lock` also takes).
const SLED_LOCK_FILE: &str = "db";
/// How long a stop waits for sled to close before it gives the checkpoint
/// up (sled finishes its last writes on its own threads).
const SLED_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long sled's files stay locked after their fingerprint is taken. A
/// file's times come from a clock that moves in ticks (a jiffy, at most
/// 10 ms); a write made in the very tick of the fingerprint could leave a
/// file's length and times as they were. Holding sled's lock for two ticks
/// more means any later write is stamped with a later time.
const FINGERPRINT_SETTLE: Duration = Duration::from_millis(20);
/// Bounds what a damaged header can make the start read.
const MAX_FINGERPRINT: u64 = 1 << 20;
const IO_BUFFER: usize = 1 << 20;

/// What a checkpoint says about the store it was taken of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    id: StoreId,
    revision: u64,
    audit_seq: u64,
    count: u64,
    /// Where the users end and the fingerprint begins.
    fingerprint_at: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER] {
        let mut bytes = [0u8; HEADER];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..12].copy_from_slice(&FORMAT.to_be_bytes());
        bytes[16..32].copy_from_slice(&self.id);
        bytes[32..40].copy_from_slice(&self.revision.to_be_bytes());
        bytes[40..48].copy_from_slice(&self.audit_seq.to_be_bytes());
        bytes[48..56].copy_from_slice(&self.count.to_be_bytes());
        bytes[56..64].copy_from_slice(&self.fingerprint_at.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8; HEADER]) -> Result<Self, String> {
        if &bytes[..8] != MAGIC {
            return Err("it is not a view checkpoint (wrong magic)".to_owned());
        }
        let format = u32::from_be_bytes(array(&bytes[8..12]));
        if format != FORMAT {
            return Err(format!("format {format}, expected {FORMAT}"));
        }
        Ok(Header {
            id: array(&bytes[16..32]),
            revision: u64::from_be_bytes(array(&bytes[32..40])),
            audit_seq: u64::from_be_bytes(array(&bytes[40..48])),
            count: u64::from_be_bytes(array(&bytes[48..56])),
            fingerprint_at: u64::from_be_bytes(array(&bytes[56..64])),
        })
    }
}

/// `bytes` (of the right length, as every caller slices) as an array.
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

/// One entry below `db/`, as the file system describes it. Any write to a
/// file changes its mtime and ctime (and often its length); replacing it
/// changes its inode; a file added or removed changes the list; setting
/// the mtime back still moves the ctime, which cannot be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Relative to `db/`, `/`-separated; empty for `db/` itself.
    path: Vec<u8>,
    kind: u8,
    inode: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Entry {
    fn shown(&self) -> String {
        format!("{DB_DIR}/{}", String::from_utf8_lossy(&self.path))
    }
}

/// Every entry below `db` (and `db` itself), in path order.
pub(super) fn fingerprint(db: &Path) -> io::Result<Vec<Entry>> {
    fn walk(dir: &Path, prefix: &[u8], out: &mut Vec<Entry>) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let mut path = prefix.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.as_encoded_bytes());
            let meta = entry.path().symlink_metadata()?;
            let is_dir = meta.is_dir();
            out.push(entry_of(path.clone(), &meta));
            if is_dir {
                walk(&entry.path(), &path, out)?;
            }
        }
        Ok(())
    }
    fn entry_of(path: Vec<u8>, meta: &std::fs::Metadata) -> Entry {
        let kind = if meta.is_dir() {
            1
        } else if meta.is_file() {
            0
        } else {
            2
        };
        Entry {
            path,
            kind,
            inode: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
    let mut out = vec![entry_of(Vec::new(), &db.symlink_metadata()?)];
    walk(db, &[], &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn encode_fingerprint(entries: &[Entry]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(4 + entries.len() * 64);
    let n = u32::try_from(entries.len()).map_err(|_| "too many files in `db`".to_owned())?;
    out.extend_from_slice(&n.to_be_bytes());
    for e in entries {
        let len = u16::try_from(e.path.len()).map_err(|_| format!("`{}`: too long", e.shown()))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&e.path);
        out.push(e.kind);
        for n in [e.inode, e.len] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        for n in [e.mtime.0, e.mtime.1, e.ctime.0, e.ctime.1] {
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    Ok(out)
}

fn decode_fingerprint(mut bytes: &[u8]) -> Option<Vec<Entry>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    let u64_of = |b: &mut &[u8]| take(b, 8).map(|b| u64::from_be_bytes(array(b)));
    let i64_of = |b: &mut &[u8]| take(b, 8).map(|b| i64::from_be_bytes(array(b)));
    let n = u32::from_be_bytes(array(take(&mut bytes, 4)?));
    let mut entries = Vec::new();
    for _ in 0..n {
        let len = u16::from_be_bytes(array(take(&mut bytes, 2)?));
        let path = take(&mut bytes, usize::from(len))?.to_vec();
        let kind = take(&mut bytes, 1)?[0];
        entries.push(Entry {
            path,
            kind,
            inode: u64_of(&mut bytes)?,
            len: u64_of(&mut bytes)?,
            mtime: (i64_of(&mut bytes)?, i64_of(&mut bytes)?),
            ctime: (i64_of(&mut bytes)?, i64_of(&mut bytes)?),
        });
    }
    bytes.is_empty().then_some(entries)
}

/// Why `now` is not `then`: the first entry that differs.
pub(super) fn changed(then: &[Entry], now: &[Entry]) -> Option<String> {
    for (a, b) in then.iter().zip(now) {
        if a.path != b.path {
            let first = if a.path < b.path { a } else { b };
            return Some(format!("`{}` was added or removed", first.shown()));
        }
        if a != b {
            return Some(format!("`{}` was written or replaced", b.shown()));
        }
    }
    match then.len().cmp(&now.len()) {
        std::cmp::Ordering::Less => Some(format!("`{}` was added", now[then.len()].shown())),
        std::cmp::Ordering::Greater => Some(format!("`{}` was removed", then[now.len()].shown())),
        std::cmp::Ordering::Equal => None,
    }
}

/// Hashes and counts what passes through it.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<T> Crc<T> {
    fn new(inner: T) -> Self {
        Crc {
            inner,
            crc: crc32fast::Hasher::new(),
            len: 0,
        }
    }

    fn passed(&mut self, bytes: &[u8]) {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
    }
}

impl<R: Read> Read for Crc<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.passed(&buf[..n]);
        Ok(n)
    }
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.passed(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A checkpoint whose users are written, to be finished once sled has
/// closed (`finish`, which dropping it runs) or given up (`abandon`).
pub(super) struct Pending {
    dir: PathBuf,
    file: File,
    header: Header,
    /// The CRC-32 of the users' bytes.
    users_crc: crc32fast::Hasher,
    began: Instant,
    armed: bool,
}

/// Writes `users` (sled's tree, which nothing may write meanwhile: the
/// caller holds the writer lock) into a new checkpoint beside the store in
/// `dir`.
pub(super) fn begin(
    dir: &Path,
    id: StoreId,
    revision: u64,
    audit_seq: u64,
    users: &Tree,
) -> Result<Pending, String> {
    let began = Instant::now();
    let staged = dir.join(STAGED);
    let io = |e: io::Error| format!("`{}`: {e}", staged.display());
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&staged)
        .map_err(io)?;
    // The header's place; it is written once sled has closed.
    file.write_all(&[0u8; HEADER]).map_err(io)?;
    let mut out = BufWriter::with_capacity(IO_BUFFER, Crc::new(file));
    let mut count = 0u64;
    let written = (|| -> Result<(), String> {
        for item in users.iter() {
            let (key, value) = item.map_err(|e| e.to_string())?;
            for part in [&key, &value] {
                let len = u32::try_from(part.len()).map_err(|_| "a record too long".to_owned())?;
                out.write_all(&len.to_be_bytes()).map_err(io)?;
            }
            out.write_all(&key).map_err(io)?;
            out.write_all(&value).map_err(io)?;
            count += 1;
        }
        Ok(())
    })();
    let result = written.and_then(|()| out.into_inner().map_err(|e| io(e.into_error())));
    let Crc {
        inner: file,
        crc,
        len,
    } = match result {
        Ok(crc) => crc,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    };
    Ok(Pending {
        dir: dir.to_path_buf(),
        file,
        header: Header {
            id,
            revision,
            audit_seq,
            count,
            fingerprint_at: HEADER as u64 + len,
        },
        users_crc: crc,
        began,
        armed: true,
    })
}

impl Pending {
    /// Gives the checkpoint up: sled was written after it.
    pub(super) fn abandon(mut self) {
        self.armed = false;
        let _ = std::fs::remove_file(self.dir.join(STAGED));
    }

    /// Waits for sled to close, takes the fingerprint of its files, and
    /// puts the finished checkpoint in place.
    fn finish(&mut self) -> Result<(), String> {
        let db = self.dir.join(DB_DIR);
        let lock_path = db.join(SLED_LOCK_FILE);
        let sled_lock =
            File::open(&lock_path).map_err(|e| format!("`{}`: {e}", lock_path.display()))?;
        let waited = Instant::now();
        loop {
            match sled_lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if waited.elapsed() < SLED_CLOSE_WAIT => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(format!("sled did not close within {SLED_CLOSE_WAIT:?}"));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(format!("`{}`: {e}", lock_path.display()));
                }
            }
        }
        let entries = fingerprint(&db).map_err(|e| format!("`{}`: {e}", db.display()))?;
        let taken = Instant::now();
        let fingerprint = encode_fingerprint(&entries)?;
        let header = self.header.encode();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.combine(&self.users_crc);
        crc.update(&fingerprint);
        let mut tail = fingerprint;
        tail.extend_from_slice(&crc.finalize().to_be_bytes());
        let staged = self.dir.join(STAGED);
        let io = |e: io::Error| format!("`{}`: {e}", staged.display());
        self.file.write_all_at(&header, 0).map_err(io)?;
        self.file
            .write_all_at(&tail, self.header.fingerprint_at)
            .map_err(io)?;
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&staged, self.dir.join(FILE)).map_err(io)?;
        sync_dir(&self.dir).map_err(|e| format!("`{}`: {e}", self.dir.display()))?;
        if let Some(rest) = FINGERPRINT_SETTLE.checked_sub(taken.elapsed()) {
            std::thread::sleep(rest);
        }
        drop(sled_lock);
        Ok(())
    }
}

impl Drop for Pending {
    /// The store holding it is dropped after sled's handles (see
    /// `Inner`), so this runs as the store closes.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        match self.finish() {
            Ok(()) => tracing::info!(
                users = self.header.count,
                revision = self.header.revision,
                ms = self.began.elapsed().as_millis(),
                "view checkpoint written"
            ),
            Err(reason) => {
                let _ = std::fs::remove_file(self.dir.join(STAGED));
                tracing::warn!(%reason, "no view checkpoint written; the next start reads sled");
            }
        }
    }
}

/// A checkpoint found at start, already deleted, whose fingerprint matched
/// sled's files.
pub(super) struct Found {
    file: File,
    header: Header,
    header_bytes: [u8; HEADER],
    fingerprint: Vec<u8>,
    checksum: u32,
}

/// Takes the checkpoint in `dir`, if there is one: reads its header and
/// fingerprint, deletes it (and any half-written one) and syncs the
/// directory, then compares its fingerprint with sled's files. Call it
/// holding the directory lock, before sled is opened. `Err` is why the
/// checkpoint cannot be used.
pub(super) fn take(dir: &Path) -> Option<Result<Found, String>> {
    let path = dir.join(FILE);
    let staged = dir.join(STAGED);
    let read = match File::open(&path) {
        Ok(file) => Some(read_head(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(format!("cannot open it: {e}"))),
    };
    if read.is_none() && !staged.exists() {
        return None;
    }
    // Deleted before anything can write, whatever it holds: a checkpoint is
    // used at most once.
    let removed = [&path, &staged]
        .into_iter()
        .try_for_each(|p| match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .and_then(|()| sync_dir(dir));
    let found = read?.and_then(|found| {
        removed.map_err(|e| format!("cannot delete it: {e}"))?;
        let then = decode_fingerprint(&found.fingerprint)
            .ok_or_else(|| "its fingerprint of sled's files is damaged".to_owned())?;
        let now = fingerprint(&dir.join(DB_DIR)).map_err(|e| format!("sled's files: {e}"))?;
        match changed(&then, &now) {
            Some(what) => Err(format!("sled's files changed after it was written: {what}")),
            None => Ok(found),
        }
    });
    Some(found)
}

/// The header, fingerprint and checksum of the checkpoint in `file`.
fn read_head(file: File) -> Result<Found, String> {
    let len = file
        .metadata()
        .map_err(|e| format!("cannot read it: {e}"))?
        .len();
    let short = || format!("it is cut short ({len} bytes)");
    let mut header_bytes = [0u8; HEADER];
    file.read_exact_at(&mut header_bytes, 0)
        .map_err(|_| short())?;
    let header = Header::decode(&header_bytes)?;
    let end = len.checked_sub(4).ok_or_else(short)?;
    let fingerprint_len = end
        .checked_sub(header.fingerprint_at)
        .filter(|n| *n <= MAX_FINGERPRINT && header.fingerprint_at >= HEADER as u64)
        .ok_or_else(|| format!("its length ({len} bytes) is not the one its header gives"))?;
    let mut fingerprint = vec![0u8; usize::try_from(fingerprint_len).map_err(|_| short())?];
    file.read_exact_at(&mut fingerprint, header.fingerprint_at)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let mut checksum = [0u8; 4];
    file.read_exact_at(&mut checksum, end)
        .map_err(|e| format!("cannot read it: {e}"))?;
    Ok(Found {
        file,
        header,
        header_bytes,
        fingerprint,
        checksum: u32::from_be_bytes(checksum),
    })
}

impl Found {
    /// Whether the checkpoint was taken of this store at this state (sled's,
    /// read from `meta`).
    pub(super) fn matches(
        &self,
        id: &StoreId,
        revision: u64,
        audit_seq: u64,
    ) -> Result<(), String> {
        let h = &self.header;
        if &h.id != id {
            return Err("it was written for another store".to_owned());
        }
        if (h.revision, h.audit_seq) != (revision, audit_seq) {
            return Err(format!(
                "it holds revision {} (audit record {}), sled {revision} ({audit_seq})",
                h.revision, h.audit_seq
            ));
        }
        Ok(())
    }

    /// Hands each user's key and value, in the order sled holds them, to
    /// `user`, then checks the file's checksum: what `user` was given may
    /// be used only if this returns `Ok`. An error of `user`'s is returned
    /// as a reason too (sled's copy then decides whether it is an error).
    pub(super) fn users(
        self,
        mut user: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), String> {
        let Found {
            mut file,
            header,
            header_bytes,
            fingerprint,
            checksum,
        } = self;
        let io = |e: io::Error| format!("cannot read it: {e}");
        file.seek(SeekFrom::Start(HEADER as u64)).map_err(io)?;
        let mut body = header.fingerprint_at - HEADER as u64;
        let mut reader = BufReader::with_capacity(IO_BUFFER, Crc::new((&file).take(body)));
        let (mut key, mut value) = (Vec::new(), Vec::new());
        let cut = || "its users are cut short or damaged".to_owned();
        for _ in 0..header.count {
            let mut lens = [0u8; 8];
            body = body.checked_sub(8).ok_or_else(cut)?;
            reader.read_exact(&mut lens).map_err(io)?;
            for (buf, len) in [(&mut key, &lens[..4]), (&mut value, &lens[4..])] {
                let len = u32::from_be_bytes(array(len));
                body = body.checked_sub(u64::from(len)).ok_or_else(cut)?;
                buf.resize(usize::try_from(len).map_err(|_| cut())?, 0);
                reader.read_exact(buf).map_err(io)?;
            }
            user(&key, &value).map_err(|e| format!("its record: {e}"))?;
        }
        if body != 0 {
            return Err(format!("{body} bytes after its last user"));
        }
        let users_crc = reader.into_inner().crc;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header_bytes);
        crc.combine(&users_crc);
        crc.update(&fingerprint);
        if crc.finalize() != checksum {
            return Err("its checksum does not match".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
