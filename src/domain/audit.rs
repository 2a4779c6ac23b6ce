//! The audit trail: one record for every write, applied or refused.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{Role, Rpc, Tier, User};

/// Who made a call, as the audit trail keeps it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

/// A user's fields that writes change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub display_name: String,
    pub edition: Option<String>,
    pub tier: Tier,
}

impl From<&User> for UserState {
    fn from(u: &User) -> Self {
        UserState {
            display_name: u.display_name.clone(),
            edition: u.edition.clone(),
            tier: u.tier,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The write was applied at the record's revision.
    Applied,
    /// The write was refused; nothing changed.
    Refused { code: String, reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the trail (refused writes have one too).
    pub seq: u64,
    /// The store revision the write created, or, if refused, the revision
    /// in force when it was refused.
    pub revision: u64,
    pub at: SystemTime,
    pub actor: Actor,
    pub rpc: Rpc,
    /// As the caller sent them (so refusals of malformed ids are kept too).
    pub account_id: String,
    pub user_id: String,
    pub before: Option<UserState>,
    pub after: Option<UserState>,
    /// Notices, and for non-user writes what was written.
    pub details: Vec<String>,
    pub outcome: Outcome,
}
