//! Domain types and the rules that need no storage: accounts, users, tiers,
//! the catalogue, decisions, callers. The bottom layer: it imports no other
//! module of the crate, and no transport or storage concerns live here.

mod audit;
mod auth;
pub mod catalogue;
pub mod field;
mod ids;
pub mod migration;
mod scope;
mod text;
mod tier;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub use audit::{
    AccountState, Actor, AuditRecord, MAX_KEPT_ID, MAX_KEPT_REASON, Outcome, Refusal, RefusalKind,
    UserState, Via, kept,
};
pub use auth::{Forbidden, Principal, Role, Rpc, Service};
pub use field::FieldError;
pub use ids::{
    AccountId, AccountIdRef, DisplayName, DisplayNameError, Hidden, HiddenKind, IdError,
    MAX_DISPLAY_NAME, MAX_ID_LEN, UserId, UserIdRef, validate_display_name, validate_id,
};
pub use scope::{MAX_SCOPE_REFS, ScopeKind, ScopeRef, SupervisorScope, WHOLE_ACCOUNT};
pub use text::Text;
pub use tier::Tier;

/// One customer company (a tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub display_name: String,
    pub product_line: String,
    pub created_at: SystemTime,
    /// When the first user of the account was first given a tier other than
    /// none; never unset once set.
    pub analytics_activated_at: Option<SystemTime>,
}

impl Account {
    /// Rule 8: an account's analytics clock starts when one of its users is
    /// first given a tier other than none, and is never reset. The account
    /// with its clock started at `now`, if giving a user `tier` starts it.
    pub fn starting_analytics(&self, tier: Tier, now: SystemTime) -> Option<Account> {
        (tier.grants_access() && self.analytics_activated_at.is_none()).then(|| Account {
            analytics_activated_at: Some(now),
            ..self.clone()
        })
    }

    /// Rule 8: when the account's historical data is available: its
    /// activation plus the catalogue's data delay; none before activation.
    pub fn data_available_at(&self, data_delay: Duration) -> Option<SystemTime> {
        data_available_at(self.analytics_activated_at, data_delay)
    }
}

/// Rule 8, the one sum: historical data is available the catalogue's data
/// delay after the account's analytics clock started; none before it did.
pub fn data_available_at(
    activated_at: Option<SystemTime>,
    data_delay: Duration,
) -> Option<SystemTime> {
    activated_at.map(|at| at + data_delay)
}

/// One person's extension inside an account, with its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub account_id: AccountId,
    pub id: UserId,
    pub display_name: String,
    /// The edition licence; `None` when the user holds no licence.
    pub edition: Option<String>,
    /// The tier as stored (validated against the catalogue at write time).
    pub tier: Tier,
    /// The store revision at which this user last changed.
    pub revision: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    /// What the user sees as a supervisor (rule 12): set exactly when the
    /// stored tier is Supervisor, `None` otherwise.
    pub supervisor_scope: Option<SupervisorScope>,
}

impl User {
    /// A user as it is first created: no licence, so no analytics (rule 2),
    /// at the revision of the write that creates it.
    pub fn new(
        account_id: AccountId,
        id: UserId,
        display_name: String,
        revision: u64,
        now: SystemTime,
    ) -> User {
        User {
            account_id,
            id,
            display_name,
            edition: None,
            tier: Tier::None,
            revision,
            created_at: now,
            updated_at: now,
            supervisor_scope: None,
        }
    }
}

/// Something the service changed by itself while applying a write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    pub kind: NoticeKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoticeKind {
    /// The tier was lowered because the new edition does not allow it.
    TierLowered,
    /// The tier was set to none because the licence was removed.
    TierRemoved,
    /// A supervisor's list of groups (rule 12) was dropped with Supervisor.
    ScopeDropped,
}

/// Why a check answered less than full access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    AccountNotFound,
    UserNotFound,
    NoEdition,
    AnalyticsNotEnabled,
    /// The stored tier is not allowed by the catalogue in force.
    EditionNotEligible,
}

/// The answer to a check: a value, never an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The effective tier (never above what the catalogue allows now).
    pub tier: Tier,
    pub stored_tier: Tier,
    /// Shared with every answer that names the same edition of the
    /// catalogue (`Text`).
    pub edition: Option<Text>,
    pub denial: Option<Denial>,
    pub data_available_at: Option<SystemTime>,
    pub data_ready: bool,
    /// Shared: a tier's list is computed once per catalogue, not per check.
    pub reports: Arc<[ReportAccess]>,
    pub revision: u64,
    /// Shared when it names only the edition and tiers (`Text`).
    pub reason: Text,
    /// What the supervisor sees (rule 12): set exactly when the effective
    /// tier is Supervisor. Shared with the view, never copied per check.
    pub supervisor_scope: Option<SupervisorScope>,
}

/// One report of the effective tier, and whether it can be opened now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportAccess {
    pub report: catalogue::Report,
    pub available: bool,
}

/// An API token as stored: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub account: Option<AccountId>,
    pub user: Option<UserId>,
    pub secret_sha256: [u8; 32],
    pub created_at: SystemTime,
    pub revoked_at: Option<SystemTime>,
}

impl Token {
    pub fn principal(&self) -> Principal {
        Principal {
            token_id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            account: self.account.clone(),
            user: self.user.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn account(activated: Option<SystemTime>) -> Account {
        Account {
            id: AccountId::try_from("acme".to_owned()).unwrap(),
            display_name: "Acme".into(),
            product_line: "work".into(),
            created_at: SystemTime::UNIX_EPOCH,
            analytics_activated_at: activated,
        }
    }

    /// Rule 8: the first tier other than none starts the clock; none does
    /// not, and a started clock is never moved.
    #[test]
    fn the_analytics_clock_starts_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let fresh = account(None);
        assert_eq!(fresh.starting_analytics(Tier::None, now), None);
        let started = fresh.starting_analytics(Tier::Essentials, now).unwrap();
        assert_eq!(started.analytics_activated_at, Some(now));
        assert_eq!(started.display_name, "Acme");
        let later = now + Duration::from_secs(60);
        assert_eq!(started.starting_analytics(Tier::Supervisor, later), None);
        let delay = Duration::from_secs(48 * 3600);
        assert_eq!(fresh.data_available_at(delay), None);
        assert_eq!(started.data_available_at(delay), Some(now + delay));
    }

    #[test]
    fn a_new_user_holds_no_licence_and_no_analytics() {
        let now = SystemTime::UNIX_EPOCH;
        let user = User::new(
            AccountId::try_from("acme".to_owned()).unwrap(),
            UserId::try_from("ada".to_owned()).unwrap(),
            "Ada".into(),
            7,
            now,
        );
        assert_eq!(
            (user.edition, user.tier, user.revision),
            (None, Tier::None, 7)
        );
        assert_eq!((user.created_at, user.updated_at), (now, now));
    }
}
