//! sled's layout: the trees, their keys, and the counters in `meta`. Keys
//! are the ids' bytes (`account` and `account/user`; `/` cannot occur in
//! an id), numbers big-endian `u64` so that they sort; values are records
//! as `codec.rs` encodes them.

use ::sled::Tree;

use super::super::{StoreError, codec};
use crate::domain::{AccountId, UserId};

pub(super) use super::super::codec::{ACCOUNTS, AUDIT, META, REQUESTS, TOKENS, USERS};

/// `account/seq` → nothing: the audit trail of one account.
pub(super) const AUDIT_BY_ACCOUNT: &str = "audit_by_account";
pub(super) const REVISION_KEY: &[u8] = b"revision";
pub(super) const AUDIT_SEQ_KEY: &[u8] = b"audit_seq";
pub(super) const BOOTSTRAPPED_KEY: &[u8] = b"bootstrapped";
/// How far the audit trail is pruned (`store::Pruned`): revision then
/// sequence number, each a big-endian `u64`. Absent until the first prune.
pub(super) const PRUNED_KEY: &[u8] = b"pruned";
/// The store's identity, also kept in the watermark (see `watermark`).
pub(super) const STORE_ID_KEY: &[u8] = b"store_id";

pub(super) fn account_key(id: &AccountId) -> Vec<u8> {
    id.as_str().as_bytes().to_vec()
}

/// The start of every key of `account`'s users.
pub(super) fn user_prefix(account: &AccountId) -> Vec<u8> {
    let mut key = Vec::with_capacity(account.as_str().len() + 1);
    key.extend_from_slice(account.as_str().as_bytes());
    key.push(b'/');
    key
}

pub(super) fn user_key(account: &AccountId, user: &UserId) -> Vec<u8> {
    let mut key = Vec::with_capacity(account.as_str().len() + 1 + user.as_str().len());
    key.extend_from_slice(account.as_str().as_bytes());
    key.push(b'/');
    key.extend_from_slice(user.as_str().as_bytes());
    key
}

/// `token_id NUL request_id`: token ids never hold a NUL.
pub(super) fn request_key(token_id: &str, request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(token_id.len() + 1 + request_id.len());
    key.extend_from_slice(token_id.as_bytes());
    key.push(0);
    key.extend_from_slice(request_id.as_bytes());
    key
}

/// The token and request ids of a `request_key`.
pub(super) fn split_request_key(key: &[u8]) -> Result<(String, String), StoreError> {
    let corrupt = |reason: &str| StoreError::Corrupt {
        kind: REQUESTS,
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_owned(),
    };
    let nul = key
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| corrupt("no NUL between token and request id"))?;
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("not UTF-8"));
    Ok((text(&key[..nul])?, text(&key[nul + 1..])?))
}

/// `account/`: followed by a big-endian sequence number in the index.
pub(super) fn audit_account_prefix(account: &str) -> Vec<u8> {
    let mut key = account.as_bytes().to_vec();
    key.push(b'/');
    key
}

/// A counter of `meta`; 0 if it was never written.
pub(super) fn read_counter(meta: &Tree, key: &[u8]) -> Result<u64, StoreError> {
    match meta.get(key).map_err(backend)? {
        Some(bytes) => codec::decode_counter(META, key, &bytes),
        None => Ok(0),
    }
}

/// sled's error, as the store reports it.
pub(super) fn backend(e: ::sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
