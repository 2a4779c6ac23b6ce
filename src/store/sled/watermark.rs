//! The watermark: our own record, outside sled, of the store's identity and
//! of the highest revision known to be durable.
//!
//! sled recovers what it finds in its files. If those files are replaced,
//! emptied or cut short, it may open cleanly with older data, or none, and a
//! server would then answer from it as if nothing had happened. The
//! watermark lets start-up tell: sled's revision must be at least the
//! watermark's, and sled's store id must be the watermark's.
//!
//! The file (`entitled.watermark`) holds two 32-byte slots, written in turn:
//! `b"ENTW"`, the 16-byte store id, the revision (big-endian `u64`), and the
//! first 4 bytes of the SHA-256 of those 28 bytes. A slot torn by a power cut
//! fails its checksum and the other slot is read. The watermark is written
//! after each flush, without an fsync of its own: it may lag behind sled
//! after a power cut (never ahead, since sled is flushed first), and a lower
//! watermark only makes the check weaker, never wrong. It is synced at each
//! open (after sled's files are synced) and when the store is flushed for a
//! stop; a missing one is written beside, synced and renamed into place.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

pub const FILE: &str = "entitled.watermark";

const MAGIC: &[u8; 4] = b"ENTW";
const SLOT: usize = 32;

/// A store's identity, made when it is created.
pub type StoreId = [u8; 16];

/// What one slot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub id: StoreId,
    pub revision: u64,
}

/// The watermark file, open for writing.
pub struct Watermark {
    file: File,
    path: PathBuf,
    /// The slot the next write goes to.
    next: u64,
}

/// Why the watermark cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error("cannot read or write `{path}`: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "`{path}` is damaged: {reason}; if the data in `db` is known to be right, remove that file and start again"
    )]
    Damaged { path: String, reason: String },
}

fn encode(mark: Mark) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[..4].copy_from_slice(MAGIC);
    slot[4..20].copy_from_slice(&mark.id);
    slot[20..28].copy_from_slice(&mark.revision.to_be_bytes());
    let sum = Sha256::digest(&slot[..28]);
    slot[28..].copy_from_slice(&sum[..4]);
    slot
}

fn decode(slot: &[u8]) -> Option<Mark> {
    let sum = Sha256::digest(&slot[..28]);
    if &slot[..4] != MAGIC || slot[28..32] != sum[..4] {
        return None;
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&slot[4..20]);
    let mut revision = [0u8; 8];
    revision.copy_from_slice(&slot[20..28]);
    Some(Mark {
        id,
        revision: u64::from_be_bytes(revision),
    })
}

/// Reads the watermark in `dir`: `None` if there is no file.
pub fn read(dir: &Path) -> Result<Option<Mark>, WatermarkError> {
    let path = dir.join(FILE);
    let shown = path.display().to_string();
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|f| f.take(4096).read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(WatermarkError::Io {
                path: shown,
                source,
            });
        }
    }
    let damaged = |reason: String| WatermarkError::Damaged {
        path: shown.clone(),
        reason,
    };
    if bytes.len() != 2 * SLOT {
        return Err(damaged(format!(
            "expected {} bytes, found {}",
            2 * SLOT,
            bytes.len()
        )));
    }
    match (decode(&bytes[..SLOT]), decode(&bytes[SLOT..])) {
        (None, None) => Err(damaged("neither slot passes its checksum".to_owned())),
        (Some(m), None) | (None, Some(m)) => Ok(Some(m)),
        (Some(a), Some(b)) if a.id != b.id => {
            Err(damaged("its two slots name different stores".to_owned()))
        }
        (Some(a), Some(b)) => Ok(Some(if a.revision >= b.revision { a } else { b })),
    }
}

impl Watermark {
    /// Writes `mark` to both slots of a new file, syncs it, and puts it in
    /// place of any old one in `dir` (then syncs the directory): a crash
    /// leaves the old watermark or the new one, never a partial file.
    pub fn create(dir: &Path, mark: Mark) -> Result<Self, WatermarkError> {
        let path = dir.join(FILE);
        let staged = dir.join(format!("{FILE}.new"));
        let io = |at: &Path| {
            let at = at.display().to_string();
            move |source| WatermarkError::Io { path: at, source }
        };
        let slot = encode(mark);
        let mut both = [0u8; 2 * SLOT];
        both[..SLOT].copy_from_slice(&slot);
        both[SLOT..].copy_from_slice(&slot);
        {
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(&staged)
                .map_err(io(&staged))?;
            file.write_all_at(&both, 0).map_err(io(&staged))?;
            file.sync_all().map_err(io(&staged))?;
        }
        std::fs::rename(&staged, &path).map_err(io(&path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        Self::open(dir)
    }

    /// Opens the existing file in `dir` for writing in place (no new space
    /// is needed).
    pub fn open(dir: &Path) -> Result<Self, WatermarkError> {
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| WatermarkError::Io {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Watermark {
            file,
            path,
            next: 0,
        })
    }

    /// Records `mark` in the next slot; with `sync`, waits until it is on
    /// disk.
    pub fn write(&mut self, mark: Mark, sync: bool) -> Result<(), WatermarkError> {
        let io = |source| WatermarkError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let offset = (self.next % 2) * SLOT as u64;
        self.file.write_all_at(&encode(mark), offset).map_err(io)?;
        self.next += 1;
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    const ID: StoreId = [7; 16];

    #[test]
    fn the_higher_valid_slot_wins_and_a_torn_slot_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut w = Watermark::create(
            dir.path(),
            Mark {
                id: ID,
                revision: 3,
            },
        )
        .unwrap();
        w.write(
            Mark {
                id: ID,
                revision: 4,
            },
            false,
        )
        .unwrap();
        w.write(
            Mark {
                id: ID,
                revision: 5,
            },
            true,
        )
        .unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().revision, 5);
        // Tear the newer slot (slot 1, revision 5): slot 0 is read.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT + 25] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(dir.path()).unwrap().unwrap().revision, 4);
        bytes[3] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(WatermarkError::Damaged { .. })
        ));
        std::fs::write(&path, b"short").unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected 64 bytes, found 5"), "{err}");
    }
}
