//! The backup file: every record of the store as of one revision, as
//! logical records (not any backend's layout), versioned and checksummed.
//! Format version 2, all integers big-endian:
//!
//! ```text
//! magic      16 bytes   "entitled-backup\n"
//! version    u32        2
//! revision   u64        the store revision the backup reflects
//! taken_at   u64        milliseconds since the Unix epoch
//! sections   u32        how many sections follow
//! each section:
//!   name_len u16, name  UTF-8: counters, accounts, users, tokens, audit,
//!                       requests; each at most once
//!   records  u64
//!   each record: len u32, record
//!                       encoded as `codec.rs` encodes records (a format
//!                       byte, then postcard): `Counters`, `Account`,
//!                       `User`, `Token`, `AuditRecord`, `KeptRequest`
//! checksum   32 bytes   SHA-256 of every byte before it
//! ```
//!
//! Version 1 files (sled's trees byte for byte) are still read: `v1.rs`.
//! Reading checks the framing and the checksum, and decodes every record;
//! a restore (the backend's: `store/sled/restore.rs`) writes the records
//! into a new store.

mod frame;
mod v1;

use std::{
    io::{self, Read},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use self::frame::{Out, Reader};
use super::{
    StoreError,
    backend::{Counters, Record},
    codec::{self, ACCOUNTS, AUDIT, META, REQUESTS, TOKENS, USERS},
};

const MAGIC: &[u8; 16] = b"entitled-backup\n";
/// The version written; version 1 is read too.
pub const FORMAT_VERSION: u32 = 2;
const COUNTERS: &str = "counters";
/// Every section, in the order a backup writes them.
const SECTIONS: [&str; 6] = [COUNTERS, ACCOUNTS, USERS, TOKENS, AUDIT, REQUESTS];
/// Where the header's revision and section count are.
const REVISION_AT: usize = 20;
const SECTIONS_AT: usize = 36;
/// Records handed on at once, so a large store is never held whole.
const BATCH: usize = 4096;

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
        "backup format version {0} is not supported; this entitled reads versions 1 to {FORMAT_VERSION}"
    )]
    Version(u32),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
    #[error(
        "the backup's checksum does not match its contents; the file is damaged: take the backup again"
    )]
    Checksum,
    #[error(
        "the backup holds `{0}`, which this entitled does not know; restore it with the version that made it"
    )]
    UnknownKind(String),
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
    /// Records (in version 1: tree entries) in all sections.
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

/// Writes a backup file into memory, record by record, each kind's records
/// together.
pub(super) struct Writer {
    out: Out,
    /// Sections begun, the last one open; and where its count goes.
    sections: Vec<&'static str>,
    count_at: usize,
    count: u64,
}

impl Writer {
    pub(super) fn new(taken_at: SystemTime) -> Self {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        // The revision and the section count are set by `finish`.
        bytes.extend_from_slice(&0u64.to_be_bytes());
        bytes.extend_from_slice(&millis(taken_at).to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        Writer {
            out: Out { bytes },
            sections: Vec::new(),
            count_at: 0,
            count: 0,
        }
    }

    pub(super) fn record(&mut self, record: &Record) -> Result<(), StoreError> {
        let (section, bytes) = encoded(record)?;
        if self.sections.last() != Some(&section) {
            if self.sections.contains(&section) {
                return Err(StoreError::Encode(format!(
                    "the records of `{section}` do not come together"
                )));
            }
            self.close_section();
            self.sections.push(section);
            self.out.name(section);
            self.count_at = self.out.bytes.len();
            self.out.bytes.extend_from_slice(&0u64.to_be_bytes());
            self.count = 0;
        }
        self.out.field(&bytes).map_err(StoreError::Encode)?;
        self.count += 1;
        Ok(())
    }

    fn close_section(&mut self) {
        if !self.sections.is_empty() {
            let at = self.count_at;
            self.out.bytes[at..at + 8].copy_from_slice(&self.count.to_be_bytes());
        }
    }

    /// The whole file, of the store at `revision`.
    pub(super) fn finish(mut self, revision: u64) -> Vec<u8> {
        self.close_section();
        let sections = self.sections.len() as u32;
        let header = &mut self.out.bytes;
        header[REVISION_AT..REVISION_AT + 8].copy_from_slice(&revision.to_be_bytes());
        header[SECTIONS_AT..SECTIONS_AT + 4].copy_from_slice(&sections.to_be_bytes());
        self.out.finish()
    }
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One record of a version 2 section.
fn decode(section: &'static str, bytes: &[u8]) -> Result<Record, StoreError> {
    let key = b"";
    Ok(match section {
        COUNTERS => Record::Counters(codec::decode(section, key, bytes)?),
        ACCOUNTS => Record::Account(codec::decode(section, key, bytes)?),
        USERS => Record::User(codec::decode_user_owned(section, key, bytes)?),
        TOKENS => Record::Token(codec::decode(section, key, bytes)?),
        AUDIT => Record::Audit(codec::decode_audit(section, key, bytes)?),
        _ => Record::Request(codec::decode(section, key, bytes)?),
    })
}

/// Reads a whole backup of either version, handing its records to `sink`
/// in batches, and checks its checksum and that nothing follows. Every
/// record is decoded; the first that does not decode fails the read, but
/// only once the checksum is known to be right (a damaged file is reported
/// as damaged). `sink` sees records before the checksum is checked:
/// whoever writes them must be ready to throw them away.
pub(crate) fn read<R: Read>(
    source: R,
    mut sink: impl FnMut(Vec<Record>) -> Result<(), BackupError>,
) -> Result<BackupSummary, BackupError> {
    let mut r = Reader::new(source);
    let magic: [u8; 16] = r.exact("header").map_err(|e| match e {
        BackupError::Truncated(_) => BackupError::NotABackup,
        other => other,
    })?;
    if &magic != MAGIC {
        return Err(BackupError::NotABackup);
    }
    let version = r.u32("header")?;
    let v1 = match version {
        1 => true,
        FORMAT_VERSION => false,
        other => return Err(BackupError::Version(other)),
    };
    let revision = r.u64("header")?;
    let taken_at = UNIX_EPOCH + Duration::from_millis(r.u64("header")?);
    let sections = r.u32("header")?;
    let known: &[&'static str] = if v1 { &v1::TREES } else { &SECTIONS };
    let mut seen: Vec<&'static str> = Vec::new();
    let mut entries = 0u64;
    // The first record that does not decode; nothing more is handed on.
    let mut undecoded: Option<StoreError> = None;
    for _ in 0..sections {
        let name = r.name("section name")?;
        let Some(&section) = known.iter().find(|s| **s == name) else {
            return Err(BackupError::UnknownKind(name));
        };
        if seen.contains(&section) {
            return Err(BackupError::Damaged(format!("`{section}` appears twice")));
        }
        seen.push(section);
        let count = r.u64("section")?;
        let mut batch = Vec::new();
        let mut counters = Counters::default();
        for _ in 0..count {
            let record = if v1 {
                let key = r.field("key")?;
                let value = r.field("value")?;
                v1::record(section, &key, &value, &mut counters)
            } else {
                decode(section, &r.field("record")?).map(Some)
            };
            match record {
                Ok(Some(record)) if undecoded.is_none() => batch.push(record),
                Ok(_) => {}
                Err(e) => {
                    undecoded.get_or_insert(e);
                }
            }
            if batch.len() == BATCH {
                sink(std::mem::take(&mut batch))?;
            }
        }
        if v1 && section == META {
            batch.push(Record::Counters(counters));
        }
        if undecoded.is_none() {
            sink(batch)?;
        }
        entries += count;
    }
    let bytes = r.finish()?;
    if let Some(e) = undecoded {
        return Err(BackupError::Damaged(match e {
            StoreError::Corrupt { kind, key, reason } if key.is_empty() => {
                format!("a record of `{kind}` does not decode: {reason}")
            }
            StoreError::Corrupt { kind, key, reason } => {
                format!("a record of `{kind}` at key `{key}` does not decode: {reason}")
            }
            other => other.to_string(),
        }));
    }
    Ok(BackupSummary {
        revision,
        taken_at,
        entries,
        bytes,
    })
}

/// A record as a backup holds it: its section and its bytes.
pub(crate) fn encoded(record: &Record) -> Result<(&'static str, Vec<u8>), StoreError> {
    Ok(match record {
        Record::Counters(c) => (COUNTERS, codec::encode(c)?),
        Record::Account(a) => (ACCOUNTS, codec::encode(a)?),
        Record::User(u) => (USERS, codec::encode_user(u)?),
        Record::Token(t) => (TOKENS, codec::encode(t)?),
        Record::Audit(r) => (AUDIT, codec::encode_audit(r)?),
        Record::Request(r) => (REQUESTS, codec::encode(r)?),
    })
}

/// Reads a whole backup and checks it (framing, checksum, every record),
/// without restoring it.
pub fn verify<R: Read>(source: R) -> Result<BackupSummary, BackupError> {
    read(source, |_| Ok(()))
}
