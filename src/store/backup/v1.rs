//! Format version 1, read only: every sled tree of the store byte for
//! byte, as entitled wrote backups before the format became logical
//! records. Its header and framing are version 2's (`backup/mod.rs`); in
//! place of sections it holds trees, and each entry is a key and a value:
//!
//! ```text
//! each tree:
//!   name_len u16, name  accounts, users, meta, tokens, audit,
//!                       audit_by_account, requests
//!   entries  u64
//!   each entry: key_len u32, key, value_len u32, value
//! ```
//!
//! Values are records as `codec.rs` encodes them. Keys: `account`,
//! `account/user`, a token's id, a big-endian `u64` sequence number
//! (`audit`), `token_id NUL request_id` (`requests`); `meta` holds
//! `revision` and `audit_seq` (big-endian `u64`), `bootstrapped` (present
//! once the operator token was made) and `store_id` (the backed-up store's,
//! not kept: a restored store is a store of its own). `audit_by_account`
//! is an index that a restore builds again from the audit records.

use super::super::{
    StoreError,
    backend::{Counters, KeptRequest, Record},
    codec::{self, ACCOUNTS, AUDIT, META, REQUESTS, TOKENS, USERS},
};

pub(super) const AUDIT_BY_ACCOUNT: &str = "audit_by_account";

/// Every tree, in the order version 1 wrote them.
pub(super) const TREES: [&str; 7] = [
    ACCOUNTS,
    USERS,
    META,
    TOKENS,
    AUDIT,
    AUDIT_BY_ACCOUNT,
    REQUESTS,
];

/// The record one entry of `tree` holds, if any: `meta`'s entries go into
/// `counters` instead, which the caller hands on once the tree is read.
pub(super) fn record(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
    counters: &mut Counters,
) -> Result<Option<Record>, StoreError> {
    Ok(Some(match tree {
        ACCOUNTS => Record::Account(codec::decode(tree, key, value)?),
        USERS => Record::User(codec::decode_user_owned(tree, key, value)?),
        TOKENS => Record::Token(codec::decode(tree, key, value)?),
        AUDIT => Record::Audit(codec::decode_audit(tree, key, value)?),
        REQUESTS => {
            let corrupt = |reason: &str| StoreError::Corrupt {
                kind: REQUESTS,
                key: String::from_utf8_lossy(key).into_owned(),
                reason: reason.to_owned(),
            };
            let split = key
                .iter()
                .position(|b| *b == 0)
                .ok_or_else(|| corrupt("no NUL between token and request id"))?;
            let text =
                |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("not UTF-8"));
            Record::Request(KeptRequest {
                token_id: text(&key[..split])?,
                request_id: text(&key[split + 1..])?,
                record: codec::decode_request(tree, key, value)?,
            })
        }
        META => {
            match key {
                b"revision" => counters.revision = codec::decode_counter(META, key, value)?,
                b"audit_seq" => counters.audit_seq = codec::decode_counter(META, key, value)?,
                b"bootstrapped" => counters.bootstrapped = true,
                _ => {}
            }
            return Ok(None);
        }
        _ => return Ok(None),
    }))
}
