//! The encoding of one record, whatever holds it: a format version byte
//! followed by the record in postcard. sled stores records so
//! (`store/sled/keys.rs` has its keys), and so does a backup file. Also the
//! names of the record kinds, as errors and backups name them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;
use crate::domain::Refusal;

pub const ACCOUNTS: &str = "accounts";
pub const USERS: &str = "users";
/// The counters (revision, audit sequence, bootstrapped).
pub const META: &str = "meta";
pub const TOKENS: &str = "tokens";
/// Audit records, by sequence number.
pub const AUDIT: &str = "audit";
/// The first answers to request ids, for safe retries.
pub const REQUESTS: &str = "requests";

const FORMAT_V1: u8 = 1;
/// Request records that can hold a refusal (`RequestRecord`); format 1
/// request records (`RequestRecordV1`) held only outputs.
const FORMAT_V2: u8 = 2;

/// The first answer to a request id: the encoded output, or the refusal.
#[derive(Debug, Serialize, Deserialize)]
pub struct RequestRecord {
    pub fingerprint: [u8; 32],
    pub at: SystemTime,
    /// The revision the answer carried.
    pub revision: u64,
    pub answer: Result<Vec<u8>, Refusal>,
}

/// A request record as written before refusals were kept.
#[derive(Deserialize)]
struct RequestRecordV1 {
    fingerprint: [u8; 32],
    at: SystemTime,
    revision: u64,
    output: Vec<u8>,
}

pub fn encode_request(record: &RequestRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_V2];
    out.extend_from_slice(
        &postcard::to_stdvec(record).map_err(|e| StoreError::Encode(e.to_string()))?,
    );
    Ok(out)
}

/// A request record of either format.
pub fn decode_request(
    kind: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<RequestRecord, StoreError> {
    match value.split_first() {
        Some((&FORMAT_V2, body)) => postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
            kind,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
        _ => {
            let old: RequestRecordV1 = decode(kind, key, value)?;
            Ok(RequestRecord {
                fingerprint: old.fingerprint,
                at: old.at,
                revision: old.revision,
                answer: Ok(old.output),
            })
        }
    }
}

pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_V1];
    out.extend_from_slice(
        &postcard::to_stdvec(record).map_err(|e| StoreError::Encode(e.to_string()))?,
    );
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(
    kind: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        kind,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    match value.split_first() {
        Some((&FORMAT_V1, body)) => postcard::from_bytes(body).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown record format {v}"))),
        None => Err(corrupt("empty record".to_owned())),
    }
}

/// A big-endian `u64` (revisions, sequence numbers).
pub fn decode_counter(kind: &'static str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        kind,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}
