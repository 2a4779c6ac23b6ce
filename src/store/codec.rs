//! The encoding of one record, whatever holds it: a format version byte
//! followed by the record in postcard. sled stores records so
//! (`store/sled/keys.rs` has its keys), and so does a backup file. Also the
//! names of the record kinds, as errors and backups name them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::StoreError;
use crate::domain::{Actor, AuditRecord, Outcome, Refusal, Role, Rpc, Tier, UserState, Via};

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

/// Audit records with `Actor::via`; format 1 audit records
/// (`AuditRecordV1`) were all made through the API.
const FORMAT_AUDIT_V2: u8 = 2;
/// Audit records with the account's before and after
/// (`AuditRecord::account_before`, `account_after`); a format 2 record
/// (`AuditRecordV2`) changed no account that the trail shows.
const FORMAT_AUDIT_V3: u8 = 3;

/// An audit record as written before it held an account's states.
#[derive(Deserialize)]
struct AuditRecordV2 {
    seq: u64,
    revision: u64,
    at: SystemTime,
    actor: Actor,
    rpc: Rpc,
    account_id: String,
    user_id: String,
    before: Option<UserState>,
    after: Option<UserState>,
    details: Vec<String>,
    outcome: Outcome,
}

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
    let mut out = vec![FORMAT_AUDIT_V3];
    out.extend_from_slice(
        &postcard::to_stdvec(record).map_err(|e| StoreError::Encode(e.to_string()))?,
    );
    Ok(out)
}

/// An audit record of any format.
pub fn decode_audit(
    kind: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<AuditRecord, StoreError> {
    let corrupt = |e: postcard::Error| StoreError::Corrupt {
        kind,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    };
    match value.split_first() {
        Some((&FORMAT_AUDIT_V3, body)) => postcard::from_bytes(body).map_err(corrupt),
        Some((&FORMAT_AUDIT_V2, body)) => {
            let old: AuditRecordV2 = postcard::from_bytes(body).map_err(corrupt)?;
            Ok(AuditRecord {
                seq: old.seq,
                revision: old.revision,
                at: old.at,
                actor: old.actor,
                rpc: old.rpc,
                account_id: old.account_id,
                user_id: old.user_id,
                before: old.before,
                after: old.after,
                account_before: None,
                account_after: None,
                details: old.details,
                outcome: old.outcome,
            })
        }
        _ => {
            let old: AuditRecordV1 = decode(kind, key, value)?;
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
                account_before: None,
                account_after: None,
                details: old.details,
                outcome: old.outcome,
            })
        }
    }
}

/// The first answer to a request id: the encoded output, or the refusal.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A user record as `encode` writes a `User` (format 1), decoded in place:
/// its strings borrowed from the bytes, so a million users load without
/// four allocations each. Field for field a `User`, which postcard writes
/// as its fields in order (a test checks the two agree).
#[derive(Debug, Deserialize)]
pub struct UserRecord<'a> {
    pub account_id: &'a str,
    pub id: &'a str,
    pub display_name: &'a str,
    #[serde(borrow)]
    pub edition: Option<&'a str>,
    pub tier: Tier,
    pub revision: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// A user record, decoded in place (see `UserRecord`).
pub fn decode_user<'a>(
    kind: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<UserRecord<'a>, StoreError> {
    decode_borrowed(kind, key, value)
}

fn decode_borrowed<'a, T: Deserialize<'a>>(
    kind: &'static str,
    key: &[u8],
    value: &'a [u8],
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
    decode_borrowed(kind, key, value)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A `User` as stored decodes in place to the same fields.
    #[test]
    fn a_user_record_decodes_in_place() {
        use crate::domain::{AccountId, User, UserId};
        let user = User {
            account_id: AccountId::try_from("acme".to_owned()).unwrap(),
            id: UserId::try_from("ada".to_owned()).unwrap(),
            display_name: "Ada Lovelace".to_owned(),
            edition: Some("X8".to_owned()),
            tier: Tier::Supervisor,
            revision: 300,
            created_at: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 5),
            updated_at: SystemTime::UNIX_EPOCH + std::time::Duration::new(1_800_000_000, 7),
        };
        for user in [
            user.clone(),
            User {
                edition: None,
                ..user
            },
        ] {
            let bytes = encode(&user).unwrap();
            let read = decode_user("users", b"k", &bytes).unwrap();
            assert_eq!(read.account_id, user.account_id.as_str());
            assert_eq!(read.id, user.id.as_str());
            assert_eq!(read.display_name, user.display_name);
            assert_eq!(read.edition, user.edition.as_deref());
            assert_eq!(read.tier, user.tier);
            assert_eq!(read.revision, user.revision);
            assert_eq!(read.created_at, user.created_at);
            assert_eq!(read.updated_at, user.updated_at);
        }
        assert!(decode_user("users", b"k", b"\x01garbage that is no user").is_err());
    }

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

        let v2 = AuditRecord {
            actor: Actor {
                via: Via::Console,
                ..read.actor.clone()
            },
            ..read
        };
        // A format 2 record is a format 3 one without the account's states.
        let mut bytes = vec![FORMAT_AUDIT_V2];
        bytes.extend(
            postcard::to_stdvec(&(
                v2.seq,
                v2.revision,
                v2.at,
                &v2.actor,
                v2.rpc,
                &v2.account_id,
                &v2.user_id,
                &v2.before,
                &v2.after,
                &v2.details,
                &v2.outcome,
            ))
            .unwrap(),
        );
        assert_eq!(decode_audit("audit", b"k", &bytes).unwrap(), v2);

        let new = AuditRecord {
            account_before: None,
            account_after: Some(crate::domain::AccountState {
                display_name: "Acme".to_owned(),
                product_line: "work".to_owned(),
                analytics_activated_at: Some(at),
            }),
            ..v2
        };
        let bytes = encode_audit(&new).unwrap();
        assert_eq!(bytes[0], FORMAT_AUDIT_V3);
        assert_eq!(decode_audit("audit", b"k", &bytes).unwrap(), new);
    }
}
