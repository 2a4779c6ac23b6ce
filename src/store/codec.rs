//! The encoding of one record, whatever holds it: a format version byte
//! followed by the record in postcard. sled stores records so
//! (`store/sled/keys.rs` has its keys), and so does a backup file. Also the
//! names of the record kinds, as errors and backups name them.

use std::time::SystemTime;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::{Mutation, StoreError};
use crate::domain::{
    Account, AccountId, Actor, AuditRecord, Outcome, Refusal, Role, Rpc, SupervisorScope, Tier,
    Token, User, UserId, UserState, Via,
};

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
/// Audit records whose `UserState`s carry the supervisor scope; format 2
/// (and 1) records' states (`UserStateV1`) had none.
const FORMAT_AUDIT_V3: u8 = 3;
/// Audit records with the account's before and after
/// (`AuditRecord::account_before`, `account_after`); a format 3 record
/// (`AuditRecordV3`) changed no account that the trail shows.
const FORMAT_AUDIT_V4: u8 = 4;

/// An audit record of format 3: `AuditRecord` without the account's states.
#[derive(Deserialize)]
struct AuditRecordV3 {
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

/// User records with `User::supervisor_scope`, and change-feed records
/// (lists of mutations) whose users carry it; format 1 ones (`UserRecordV1`,
/// `MutationV1`) had none: a supervisor of then sees the whole account.
const FORMAT_USER_V2: u8 = 2;

/// A user's state as audit records before format 3 kept it.
#[derive(Deserialize)]
struct UserStateV1 {
    display_name: String,
    edition: Option<String>,
    tier: Tier,
}

impl From<UserStateV1> for UserState {
    fn from(old: UserStateV1) -> Self {
        UserState {
            supervisor_scope: old_scope(old.tier),
            display_name: old.display_name,
            edition: old.edition,
            tier: old.tier,
        }
    }
}

/// The scope a record made before scopes existed means: a supervisor of
/// then saw the whole account (rule 12's default).
fn old_scope(tier: Tier) -> Option<SupervisorScope> {
    (tier == Tier::Supervisor).then_some(SupervisorScope::WholeAccount)
}

/// An audit record of format 2: `AuditRecord` with the old `UserState`.
#[derive(Deserialize)]
struct AuditRecordV2 {
    seq: u64,
    revision: u64,
    at: SystemTime,
    actor: Actor,
    rpc: Rpc,
    account_id: String,
    user_id: String,
    before: Option<UserStateV1>,
    after: Option<UserStateV1>,
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
    before: Option<UserStateV1>,
    after: Option<UserStateV1>,
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
    let mut out = vec![FORMAT_AUDIT_V4];
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
        Some((&FORMAT_AUDIT_V4, body)) => postcard::from_bytes(body).map_err(corrupt),
        Some((&FORMAT_AUDIT_V3, body)) => {
            let old: AuditRecordV3 = postcard::from_bytes(body).map_err(corrupt)?;
            Ok(old.into())
        }
        Some((&FORMAT_AUDIT_V2, body)) => {
            let old: AuditRecordV2 = postcard::from_bytes(body).map_err(corrupt)?;
            Ok(AuditRecordV3::from(old).into())
        }
        _ => {
            let old: AuditRecordV1 = decode(kind, key, value)?;
            Ok(AuditRecordV3::from(AuditRecordV2::from(old)).into())
        }
    }
}

// Each older audit format read as the next one, so that a new format adds
// one step here rather than another copy of every field in each arm.

impl From<AuditRecordV3> for AuditRecord {
    /// Before an account's states were kept: none.
    fn from(old: AuditRecordV3) -> Self {
        AuditRecord {
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
        }
    }
}

impl From<AuditRecordV2> for AuditRecordV3 {
    /// Before the supervisor scope: the states read as they meant then.
    fn from(old: AuditRecordV2) -> Self {
        AuditRecordV3 {
            seq: old.seq,
            revision: old.revision,
            at: old.at,
            actor: old.actor,
            rpc: old.rpc,
            account_id: old.account_id,
            user_id: old.user_id,
            before: old.before.map(Into::into),
            after: old.after.map(Into::into),
            details: old.details,
            outcome: old.outcome,
        }
    }
}

impl From<AuditRecordV1> for AuditRecordV2 {
    /// Before `Actor::via`: every record came through the API.
    fn from(old: AuditRecordV1) -> Self {
        AuditRecordV2 {
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

/// A user record as `encode_user` writes a `User` (format 2), decoded in
/// place: its strings borrowed from the bytes, so a million users load
/// without four allocations each. Field for field a `User`, which postcard
/// writes as its fields in order (a test checks the two agree).
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
    /// Owned: only a supervisor scoped to a list of groups holds more than
    /// a byte here.
    pub supervisor_scope: Option<SupervisorScope>,
}

/// A user record of format 1, before scopes.
#[derive(Debug, Deserialize)]
struct UserRecordV1<'a> {
    account_id: &'a str,
    id: &'a str,
    display_name: &'a str,
    #[serde(borrow)]
    edition: Option<&'a str>,
    tier: Tier,
    revision: u64,
    created_at: SystemTime,
    updated_at: SystemTime,
}

impl<'a> From<UserRecordV1<'a>> for UserRecord<'a> {
    fn from(old: UserRecordV1<'a>) -> Self {
        UserRecord {
            account_id: old.account_id,
            id: old.id,
            display_name: old.display_name,
            edition: old.edition,
            tier: old.tier,
            revision: old.revision,
            created_at: old.created_at,
            updated_at: old.updated_at,
            supervisor_scope: old_scope(old.tier),
        }
    }
}

/// A user as stored (format 2).
pub fn encode_user(user: &User) -> Result<Vec<u8>, StoreError> {
    encode_as(FORMAT_USER_V2, user)
}

/// A user record of either format, decoded in place (see `UserRecord`).
pub fn decode_user<'a>(
    kind: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<UserRecord<'a>, StoreError> {
    match value.first() {
        Some(&FORMAT_USER_V2) => decode_format(FORMAT_USER_V2, kind, key, value),
        _ => decode_borrowed::<UserRecordV1<'a>>(kind, key, value).map(Into::into),
    }
}

/// A user record of either format, as a `User`.
pub fn decode_user_owned(kind: &'static str, key: &[u8], value: &[u8]) -> Result<User, StoreError> {
    let record = decode_user(kind, key, value)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        kind,
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    Ok(User {
        account_id: AccountId::try_from(record.account_id.to_owned())
            .map_err(|e| corrupt(format!("account id {e}")))?,
        id: UserId::try_from(record.id.to_owned()).map_err(|e| corrupt(format!("user id {e}")))?,
        display_name: record.display_name.to_owned(),
        edition: record.edition.map(str::to_owned),
        tier: record.tier,
        revision: record.revision,
        created_at: record.created_at,
        updated_at: record.updated_at,
        supervisor_scope: record.supervisor_scope,
    })
}

/// A change-feed record: one revision's mutations (format 2, users with
/// their scope).
pub fn encode_mutations(mutations: &[Mutation]) -> Result<Vec<u8>, StoreError> {
    encode_as(FORMAT_USER_V2, &mutations)
}

/// A user as format 1 records held it (change-feed records, and answers
/// kept for retries): a write's output that holds a user decodes its old
/// answers with this (`Store::write_upgrading`).
#[derive(Deserialize)]
pub struct UserV1 {
    account_id: AccountId,
    id: UserId,
    display_name: String,
    edition: Option<String>,
    tier: Tier,
    revision: u64,
    created_at: SystemTime,
    updated_at: SystemTime,
}

/// `Mutation` as format 1 change-feed records held it: variant for variant.
#[derive(Deserialize)]
enum MutationV1 {
    PutAccount(Account),
    PutUser(UserV1),
    DeleteUser(AccountId, UserId),
    PutToken(Token),
    MarkBootstrapped,
}

impl From<UserV1> for User {
    fn from(u: UserV1) -> Self {
        User {
            supervisor_scope: old_scope(u.tier),
            account_id: u.account_id,
            id: u.id,
            display_name: u.display_name,
            edition: u.edition,
            tier: u.tier,
            revision: u.revision,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

impl From<MutationV1> for Mutation {
    fn from(old: MutationV1) -> Self {
        match old {
            MutationV1::PutAccount(a) => Mutation::PutAccount(a),
            MutationV1::PutUser(u) => Mutation::PutUser(u.into()),
            MutationV1::DeleteUser(a, u) => Mutation::DeleteUser(a, u),
            MutationV1::PutToken(t) => Mutation::PutToken(t),
            MutationV1::MarkBootstrapped => Mutation::MarkBootstrapped,
        }
    }
}

/// A change-feed record of either format.
pub fn decode_mutations(
    kind: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<Mutation>, StoreError> {
    match value.first() {
        Some(&FORMAT_USER_V2) => decode_format(FORMAT_USER_V2, kind, key, value),
        _ => {
            let old: Vec<MutationV1> = decode(kind, key, value)?;
            Ok(old.into_iter().map(Into::into).collect())
        }
    }
}

/// Answers kept for retries since users carry their scope (format 2);
/// format 1 answers are read by the write's own `v1` (`decode_output`).
const FORMAT_OUTPUT_V2: u8 = 2;

/// A write's output, as kept for a retry.
pub fn encode_output<T: Serialize>(output: &T) -> Result<Vec<u8>, StoreError> {
    encode_as(FORMAT_OUTPUT_V2, output)
}

/// A kept output of either format: format 1 (written before scopes) is
/// read by `v1`, which knows the output's old shape (the same as today's
/// unless it holds a user).
pub fn decode_output<T: DeserializeOwned>(
    kind: &'static str,
    key: &[u8],
    value: &[u8],
    v1: fn(&[u8]) -> Result<T, postcard::Error>,
) -> Result<T, StoreError> {
    match value.split_first() {
        Some((&FORMAT_OUTPUT_V2, _)) => decode_format(FORMAT_OUTPUT_V2, kind, key, value),
        Some((&FORMAT_V1, body)) => v1(body).map_err(|e| StoreError::Corrupt {
            kind,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        }),
        _ => decode(kind, key, value),
    }
}

fn encode_as<T: Serialize + ?Sized>(format: u8, record: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![format];
    out.extend_from_slice(
        &postcard::to_stdvec(record).map_err(|e| StoreError::Encode(e.to_string()))?,
    );
    Ok(out)
}

fn decode_borrowed<'a, T: Deserialize<'a>>(
    kind: &'static str,
    key: &[u8],
    value: &'a [u8],
) -> Result<T, StoreError> {
    decode_format(FORMAT_V1, kind, key, value)
}

/// A record that must be of `format`.
fn decode_format<'a, T: Deserialize<'a>>(
    format: u8,
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
        Some((&f, body)) if f == format => {
            postcard::from_bytes(body).map_err(|e| corrupt(e.to_string()))
        }
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
mod tests;
