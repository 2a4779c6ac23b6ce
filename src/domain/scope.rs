//! Supervisor scopes (rule 12): a supervisor sees the whole account, or only
//! the groups it is given — sites, user groups, ring groups and call queues.
//! The phone system owns the groups; a scope holds references to them (a
//! kind and an id), never their members.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

/// The most references one scope holds.
pub const MAX_SCOPE_REFS: usize = 1000;

/// The kinds of group a supervisor's scope can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScopeKind {
    Site,
    UserGroup,
    RingGroup,
    CallQueue,
}

impl ScopeKind {
    pub const ALL: [ScopeKind; 4] = [
        ScopeKind::Site,
        ScopeKind::UserGroup,
        ScopeKind::RingGroup,
        ScopeKind::CallQueue,
    ];

    /// The kind as text (files, the command line, messages).
    pub fn name(self) -> &'static str {
        match self {
            ScopeKind::Site => "site",
            ScopeKind::UserGroup => "user-group",
            ScopeKind::RingGroup => "ring-group",
            ScopeKind::CallQueue => "call-queue",
        }
    }
}

impl fmt::Display for ScopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScopeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ScopeKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                "is not a scope kind; use site, user-group, ring-group or call-queue".to_owned()
            })
    }
}

/// One group of the phone system: its kind and its id there (checked as
/// every id is, `validate_id`). Made by `field::supervisor_scope`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ScopeRef {
    pub kind: ScopeKind,
    pub id: String,
}

impl fmt::Display for ScopeRef {
    /// `kind:id`, as files and the command line write it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// What a supervisor sees. A user has one exactly when its stored tier is
/// Supervisor (`User::supervisor_scope`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredScope", into = "StoredScope")]
pub enum SupervisorScope {
    /// Every group of the account: what a supervisor gets unless told
    /// otherwise.
    WholeAccount,
    /// Only these groups: 1 to `MAX_SCOPE_REFS`, each once, in the order
    /// given. Shared, so that a check hands it on without a copy.
    Only(Arc<[ScopeRef]>),
}

impl SupervisorScope {
    /// The scope as text: `whole-account`, or `kind:id` references joined
    /// by commas (what `--scope` and the bulk file's column take).
    pub fn text(&self) -> String {
        match self {
            SupervisorScope::WholeAccount => WHOLE_ACCOUNT.to_owned(),
            SupervisorScope::Only(refs) => refs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// The references, if the scope is a list.
    pub fn refs(&self) -> Option<&Arc<[ScopeRef]>> {
        match self {
            SupervisorScope::WholeAccount => None,
            SupervisorScope::Only(refs) => Some(refs),
        }
    }
}

impl fmt::Display for SupervisorScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The text that means the whole account.
pub const WHOLE_ACCOUNT: &str = "whole-account";

/// How a scope is stored: `Arc<[T]>` has no serde impl without serde's
/// `rc` feature, and a scope is encoded rarely (only scoped users have a
/// list), so it goes through a `Vec`.
#[derive(Serialize, Deserialize)]
enum StoredScope {
    WholeAccount,
    Only(Vec<ScopeRef>),
}

impl From<StoredScope> for SupervisorScope {
    fn from(s: StoredScope) -> Self {
        match s {
            StoredScope::WholeAccount => SupervisorScope::WholeAccount,
            StoredScope::Only(refs) => SupervisorScope::Only(refs.into()),
        }
    }
}

impl From<SupervisorScope> for StoredScope {
    fn from(s: SupervisorScope) -> Self {
        match s {
            SupervisorScope::WholeAccount => StoredScope::WholeAccount,
            SupervisorScope::Only(refs) => StoredScope::Only(refs.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_as_text() {
        assert_eq!(SupervisorScope::WholeAccount.text(), "whole-account");
        let refs: Arc<[ScopeRef]> = vec![
            ScopeRef {
                kind: ScopeKind::Site,
                id: "S1".into(),
            },
            ScopeRef {
                kind: ScopeKind::CallQueue,
                id: "q:7".into(),
            },
        ]
        .into();
        assert_eq!(SupervisorScope::Only(refs).text(), "site:S1,call-queue:q:7");
        for kind in ScopeKind::ALL {
            assert_eq!(kind.name().parse::<ScopeKind>(), Ok(kind));
        }
        assert!("team".parse::<ScopeKind>().is_err());
    }
}
