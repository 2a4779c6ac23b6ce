//! The byte framing shared by every backup format version: big-endian
//! integers, length-prefixed fields, and a SHA-256 over every byte before
//! the checksum.

use std::io::{self, BufRead, BufReader, Read};

use sha2::{Digest, Sha256};

use super::BackupError;

/// No record of ours comes near this; a larger length means damage.
pub(super) const MAX_FIELD: u32 = 64 * 1024 * 1024;

/// Reads a backup, hashing every byte up to the checksum.
pub(super) struct Reader<R> {
    inner: BufReader<R>,
    hasher: Sha256,
    /// Bytes read so far.
    pub(super) read: u64,
}

impl<R: Read> Reader<R> {
    pub(super) fn new(source: R) -> Self {
        Reader {
            inner: BufReader::new(source),
            hasher: Sha256::new(),
            read: 0,
        }
    }

    pub(super) fn exact<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], BackupError> {
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

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, BackupError> {
        Ok(u16::from_be_bytes(self.exact(what)?))
    }
    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, BackupError> {
        Ok(u32::from_be_bytes(self.exact(what)?))
    }
    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, BackupError> {
        Ok(u64::from_be_bytes(self.exact(what)?))
    }

    /// A section's (or tree's) name: a `u16` length and UTF-8.
    pub(super) fn name(&mut self, what: &'static str) -> Result<String, BackupError> {
        let len = self.u16(what)?;
        let mut name = vec![0u8; usize::from(len)];
        self.fill(&mut name, what)?;
        self.hasher.update(&name);
        Ok(String::from_utf8_lossy(&name).into_owned())
    }

    /// A `u32` length and that many bytes.
    pub(super) fn field(&mut self, what: &'static str) -> Result<Vec<u8>, BackupError> {
        let len = self.u32(what)?;
        if len > MAX_FIELD {
            return Err(BackupError::Damaged(format!("a {what} of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.fill(&mut buf, what)?;
        self.hasher.update(&buf);
        Ok(buf)
    }

    /// Reads the checksum and checks it, and that nothing follows it.
    pub(super) fn finish(mut self) -> Result<u64, BackupError> {
        let computed: [u8; 32] = self.hasher.clone().finalize().into();
        let mut stored = [0u8; 32];
        self.fill(&mut stored, "checksum")?;
        if computed != stored {
            return Err(BackupError::Checksum);
        }
        if !self.inner.fill_buf().map_err(BackupError::Read)?.is_empty() {
            return Err(BackupError::Damaged("bytes follow the checksum".to_owned()));
        }
        Ok(self.read)
    }
}

/// Writes the framing into memory.
pub(super) struct Out {
    pub(super) bytes: Vec<u8>,
}

impl Out {
    pub(super) fn name(&mut self, name: &str) {
        // Our names are a few bytes long.
        let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes
            .extend_from_slice(&name.as_bytes()[..usize::from(len)]);
    }

    pub(super) fn field(&mut self, bytes: &[u8]) -> Result<(), String> {
        let len = u32::try_from(bytes.len())
            .ok()
            .filter(|l| *l <= MAX_FIELD)
            .ok_or_else(|| format!("a record of {} bytes", bytes.len()))?;
        self.bytes.extend_from_slice(&len.to_be_bytes());
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends the SHA-256 of every byte so far.
    pub(super) fn finish(mut self) -> Vec<u8> {
        let checksum = Sha256::digest(&self.bytes);
        self.bytes.extend_from_slice(&checksum);
        self.bytes
    }
}
