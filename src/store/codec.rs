//! On-disk encoding: keys are the ids' bytes (`account` and
//! `account/user`; `/` cannot occur in an id), values a format version byte
//! followed by the record in postcard, counters big-endian `u64`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;
use crate::domain::{
    AccountId, Actor, AuditRecord, Outcome, Refusal, Role, Rpc, UserId, UserState, Via,
};

const FORMAT_V1: u8 = 1;
/// Request records that can hold a refusal (`RequestRecord`); format 1
/// request records (`RequestRecordV1`) held only outputs.
const FORMAT_V2: u8 = 2;

/// Audit records with `Actor::via`; format 1 audit records
/// (`AuditRecordV1`) were all made through the API.
const FORMAT_AUDIT_V2: u8 = 2;

/// An audit record as written before `Actor::via` existed: postcard is not
/// self-describing, so an old record is read with the old shape.
#[derive(Deserialize)]
struct AuditRecordV1 {
    seq: u64,
    revision: u64,
    at: SystemTime,
    actor: ActorV1,
    rpc: Rpc,
    account_id: String,
    user_id: String,
    before: Option<UserState>,
    after: Option<UserState>,
    details: Vec<String>,
    outcome: Outcome,
}

#[derive(Deserialize)]
struct ActorV1 {
    token_id: String,
    name: String,
    role: Role,
}

pub fn encode_audit(record: &AuditRecord) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_AUDIT_V2];
    out.extend_from_slice(
        &postcard::to_stdvec(record).map_err(|e| StoreError::Encode(e.to_string()))?,
    );
    Ok(out)
}

/// An audit record of either format.
pub fn decode_audit(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<AuditRecord, StoreError> {
    match value.split_first() {
        Some((&FORMAT_AUDIT_V2, body)) => {
            postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
                tree,
                key: String::from_utf8_lossy(key).into_owned(),
                reason: e.to_string(),
            })
        }
        _ => {
            let old: AuditRecordV1 = decode(tree, key, value)?;
            Ok(AuditRecord {
                seq: old.seq,
                revision: old.revision,
                at: old.at,
                actor: Actor {
                    token_id: old.actor.token_id,
                    name: old.actor.name,
                    role: old.actor.role,
                    via: Via::Api,
                },
                rpc: old.rpc,
                account_id: old.account_id,
                user_id: old.user_id,
                before: old.before,
                after: old.after,
                details: old.details,
                outcome: old.outcome,
            })
        }
    }
}

/// The first answer to a request id: the encoded output, or the refusal.
#[derive(Serialize, Deserialize)]
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
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<RequestRecord, StoreError> {
    match value.split_first() {
        Some((&FORMAT_V2, body)) => postcard::from_bytes(body).map_err(|e| StoreError::Corrupt {
            tree,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
        _ => {
            let old: RequestRecordV1 = decode(tree, key, value)?;
            Ok(RequestRecord {
                fingerprint: old.fingerprint,
                at: old.at,
                revision: old.revision,
                answer: Ok(old.output),
            })
        }
    }
}

pub fn account_key(id: &AccountId) -> Vec<u8> {
    id.as_str().as_bytes().to_vec()
}

pub fn user_key(account: &AccountId, user: &UserId) -> Vec<u8> {
    let mut key = Vec::with_capacity(account.as_str().len() + 1 + user.as_str().len());
    key.extend_from_slice(account.as_str().as_bytes());
    key.push(b'/');
    key.extend_from_slice(user.as_str().as_bytes());
    key
}

pub fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![FORMAT_V1];
    out.extend_from_slice(
        &postcard::to_stdvec(record).map_err(|e| StoreError::Encode(e.to_string()))?,
    );
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        tree,
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
pub fn decode_counter(tree: &'static str, key: &[u8], bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        tree,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// `token_id NUL request_id`: token ids never hold a NUL.
pub fn request_key(token_id: &str, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(token_id.len() + 1 + request_id.len());
    key.extend_from_slice(token_id.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// `account/`: followed by a big-endian sequence number in the index.
pub fn audit_account_prefix(account: &str) -> Vec<u8> {
    let mut key = account.as_bytes().to_vec();
    key.push(b'/');
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before `via` existed reads as made through the API;
    /// a new one keeps its door.
    #[test]
    fn audit_records_of_both_formats_decode() {
        let at = SystemTime::UNIX_EPOCH;
        // postcard writes a struct as its fields in order: this tuple is a
        // format 1 record, byte for byte.
        let old = encode(&(
            7u64,
            3u64,
            at,
            ("tok_1", "billing", Role::Provisioner),
            Rpc::PutUser,
            "acme",
            "ada",
            None::<UserState>,
            None::<UserState>,
            Vec::<String>::new(),
            Outcome::Applied,
        ))
        .unwrap();
        assert_eq!(old[0], FORMAT_V1);
        let read = decode_audit("audit", b"k", &old).unwrap();
        assert_eq!((read.seq, read.revision), (7, 3));
        assert_eq!(read.actor.via, Via::Api);
        assert_eq!(read.actor.name, "billing");
        assert_eq!(read.user_id, "ada");

        let new = AuditRecord {
            actor: Actor {
                via: Via::Console,
                ..read.actor.clone()
            },
            ..read
        };
        let bytes = encode_audit(&new).unwrap();
        assert_eq!(bytes[0], FORMAT_AUDIT_V2);
        assert_eq!(decode_audit("audit", b"k", &bytes).unwrap(), new);
    }
}
