//! The audit trail: one record for every write, applied or refused.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Account, Role, Rpc, SupervisorScope, Tier, User};

/// Who made a call, as the audit trail keeps it (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// The door the call came through.
    pub via: Via,
}

/// The door a call came through: the API (gRPC) or the web console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Via {
    /// A gRPC call; also what records made before `Via` existed say.
    #[default]
    Api,
    /// The web console, signed in with a token.
    Console,
}

/// A user's fields that writes change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub display_name: String,
    pub edition: Option<String>,
    pub tier: Tier,
    /// Set exactly when `tier` is Supervisor (rule 12).
    pub supervisor_scope: Option<SupervisorScope>,
}

impl From<&User> for UserState {
    fn from(u: &User) -> Self {
        UserState {
            display_name: u.display_name.clone(),
            edition: u.edition.clone(),
            tier: u.tier,
            supervisor_scope: u.supervisor_scope.clone(),
        }
    }
}

/// An account's fields that writes change, as the audit trail keeps them
/// before and after a write (and Watch turns into account events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountState {
    pub display_name: String,
    pub product_line: String,
    /// Rule 8: when the account's analytics clock started.
    pub analytics_activated_at: Option<SystemTime>,
}

impl AccountState {
    /// Rule 8, as `Account::data_available_at`.
    pub fn data_available_at(&self, data_delay: Duration) -> Option<SystemTime> {
        super::data_available_at(self.analytics_activated_at, data_delay)
    }
}

impl From<&Account> for AccountState {
    fn from(a: &Account) -> Self {
        AccountState {
            display_name: a.display_name.clone(),
            product_line: a.product_line.clone(),
            analytics_activated_at: a.analytics_activated_at,
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
    /// The account as it was and as it is after, on the record of a write
    /// that changed the account (created, activated, moved, deleted); both
    /// unset on a user's record. A record has a user's states or an
    /// account's, never both.
    pub account_before: Option<AccountState>,
    pub account_after: Option<AccountState>,
    /// Notices, and for non-user writes what was written.
    pub details: Vec<String>,
    pub outcome: Outcome,
}

/// The most bytes of a caller's value (an id as sent, a refusal's reason)
/// that the audit trail keeps. A refused call can carry megabytes; what is
/// stored for it must stay small and fixed.
pub const MAX_KEPT_ID: usize = 128;
/// See [`MAX_KEPT_ID`].
pub const MAX_KEPT_REASON: usize = 1024;

/// `value` as the audit trail keeps it: shown as a message shows it
/// (`field::shown_at_most`: a control or format character escaped, so a
/// record cannot carry a terminal's escape sequence or turn text around),
/// whole if that fits in `max` bytes, else its start (cut on a character
/// boundary) followed by `… (N bytes)`, N the length of `value` as sent,
/// so the record still says how long the value was.
pub fn kept(value: &str, max: usize) -> String {
    let (shown, whole) = super::field::shown_within_bytes(value, max);
    if whole {
        return shown;
    }
    // Room for the suffix: "… (" + up to 20 digits + " bytes)"; a
    // character or its whole escape is in or out, never half an escape.
    let room = max.saturating_sub(32);
    let (cut, _) = super::field::shown_within_bytes(value, room);
    format!("{cut}… ({} bytes)", value.len())
}

/// How a refusal is kept for a retry with the same request id: the kind
/// of refusal (which the gRPC edge maps to a code) and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// The refusals a retry must see again. Only refusals that the same
/// request would meet again are kept: not a failure of the store, a
/// shutdown or a wait that ran out, for which a retry is the remedy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Aborted,
    PermissionDenied,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_values_are_bounded_and_say_their_length() {
        assert_eq!(kept("acme", MAX_KEPT_ID), "acme");
        let exact = "a".repeat(MAX_KEPT_ID);
        assert_eq!(kept(&exact, MAX_KEPT_ID), exact);
        let huge = "A".repeat(4_000_000);
        let k = kept(&huge, MAX_KEPT_ID);
        assert!(k.len() <= MAX_KEPT_ID, "{} bytes", k.len());
        assert!(k.ends_with("… (4000000 bytes)"), "{k}");
        // Multi-byte characters are never split.
        let wide = "é".repeat(1000);
        let k = kept(&wide, MAX_KEPT_ID);
        assert!(k.len() <= MAX_KEPT_ID);
        assert!(k.ends_with("… (2000 bytes)"), "{k}");
    }

    #[test]
    fn kept_values_show_control_and_format_characters_escaped() {
        assert_eq!(
            kept("a\u{1b}[2Jb\u{202e}c", MAX_KEPT_ID),
            "a\\u{1b}[2Jb\\u{202e}c"
        );
        // Escaped before the cut: the length said is the value's as sent.
        let hostile = "\u{202e}".repeat(1000);
        let k = kept(&hostile, MAX_KEPT_ID);
        assert!(k.len() <= MAX_KEPT_ID, "{} bytes", k.len());
        assert!(!k.contains('\u{202e}'), "{k}");
        assert!(k.starts_with("\\u{202e}\\u{202e}"), "{k}");
        assert!(k.ends_with("… (3000 bytes)"), "{k}");
        // Never half an escape, whatever the offset the cut falls at.
        for prefix in ["a", "ab", "abc", "abcd"] {
            let k = kept(&format!("{prefix}{hostile}"), MAX_KEPT_ID);
            assert!(k.len() <= MAX_KEPT_ID, "{} bytes", k.len());
            let (shown, _) = k.split_once('…').unwrap();
            assert!(shown.ends_with("\\u{202e}"), "{k}");
        }
    }
}
