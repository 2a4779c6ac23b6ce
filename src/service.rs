//! The domain service: the catalogue's rules applied to every write, and the
//! check. Knows nothing of gRPC; storage is reached only through `Store`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    catalogue::{Catalogue, ProductLine, ReportKind},
    domain::{
        Account, AccountId, Decision, Denial, Notice, NoticeKind, ReportAccess, Tier, User, UserId,
    },
    store::{Current, Decided, Mutation, Store, StoreError, View},
};

/// How long a read waits for the `min_revision` it was asked for.
pub const FRESHNESS_WAIT: Duration = Duration::from_secs(1);

/// The source of "now"; replaceable so tests can move time.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// Why a domain operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("account `{0}` does not exist")]
    AccountNotFound(AccountId),
    #[error("account `{0}` already exists")]
    AccountExists(AccountId),
    #[error("user `{user}` does not exist in account `{account}`")]
    UserNotFound { account: AccountId, user: UserId },
    #[error("product_line `{given}` is unknown; use one of {}", .valid.join(", "))]
    UnknownProductLine { given: String, valid: Vec<String> },
    #[error(
        "edition `{given}` is not in product line `{product_line}`; use one of {}, or \"\" to remove the licence",
        .valid.join(", ")
    )]
    UnknownEdition {
        given: String,
        product_line: String,
        valid: Vec<String>,
    },
    #[error(
        "account's product line `{0}` is not in the catalogue in force; no edition can be assigned until it is"
    )]
    ProductLineRetired(String),
    #[error("edition `{edition}` does not include {tier} analytics; {tier} needs one of {}", .allowing.join(", "))]
    TierNotAllowed {
        edition: String,
        tier: Tier,
        allowing: Vec<String>,
    },
    #[error("user `{user}` has no edition licence; {tier} analytics needs one of {}", .allowing.join(", "))]
    TierNeedsEdition {
        user: UserId,
        tier: Tier,
        allowing: Vec<String>,
    },
    #[error(
        "user `{user}` is at revision {actual}, not the expected_revision {expected}; read it again and retry"
    )]
    RevisionMismatch {
        user: UserId,
        expected: u64,
        actual: u64,
    },
    #[error(
        "revision {wanted} is not reached: this server is at revision {current} after waiting {}; retry, and pass only revisions this service returned",
        humantime::format_duration(*.within)
    )]
    RevisionNotReached {
        wanted: u64,
        current: u64,
        within: Duration,
    },
    #[error("nothing to change: set edition, analytics_tier or both")]
    NothingToChange,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request to change a user's services; `None` keeps a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServicesChange {
    /// `Some(None)` removes the licence.
    pub edition: Option<Option<String>>,
    pub tier: Option<Tier>,
    pub expected_revision: Option<u64>,
}

/// The outcome of a services change.
#[derive(Debug, Clone)]
pub struct ServicesChanged {
    pub user: User,
    pub notices: Vec<Notice>,
    pub revision: u64,
}

/// Entitlements: the catalogue in force, the store, and the clock.
#[derive(Clone)]
pub struct Entitlements {
    store: Store,
    catalogue: Arc<Catalogue>,
    clock: Clock,
    /// What a check answers in `reports`, computed once: indexed by the
    /// effective tier, then by whether historical data is ready.
    report_lists: Arc<[[Arc<[ReportAccess]>; 2]; 3]>,
}

impl Entitlements {
    pub fn new(store: Store, catalogue: Catalogue, clock: Clock) -> Self {
        let report_lists = Tier::ALL.map(|tier| {
            [false, true].map(|data_ready| {
                catalogue
                    .reports_for(tier)
                    .iter()
                    .map(|r| ReportAccess {
                        available: r.kind == ReportKind::Live || data_ready,
                        report: r.clone(),
                    })
                    .collect()
            })
        });
        Entitlements {
            store,
            catalogue: Arc::new(catalogue),
            clock,
            report_lists: Arc::new(report_lists),
        }
    }

    fn reports(&self, tier: Tier, data_ready: bool) -> Arc<[ReportAccess]> {
        Arc::clone(&self.report_lists[tier as usize][usize::from(data_ready)])
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn create_account(
        &self,
        id: AccountId,
        display_name: String,
        product_line: String,
    ) -> Result<(Account, u64), DomainError> {
        if self.catalogue.product_line(&product_line).is_none() {
            return Err(DomainError::UnknownProductLine {
                given: product_line,
                valid: self
                    .catalogue
                    .product_lines()
                    .iter()
                    .map(|l| l.id.clone())
                    .collect(),
            });
        }
        let now = (self.clock)();
        self.store
            .write(&id.clone(), None, move |current| {
                if current.account.is_some() {
                    return Err(DomainError::AccountExists(id));
                }
                let account = Account {
                    id,
                    display_name,
                    product_line,
                    created_at: now,
                    analytics_activated_at: None,
                };
                Ok(Decided {
                    mutations: vec![Mutation::PutAccount(account.clone())],
                    output: account,
                })
            })
            .await
    }

    pub fn get_account(&self, id: &AccountId) -> Result<Account, DomainError> {
        self.store
            .read(|v| v.account(id.as_str()).cloned())
            .ok_or_else(|| DomainError::AccountNotFound(id.clone()))
    }

    /// Creates the user (no edition, tier none) or renames it.
    pub async fn put_user(
        &self,
        account: AccountId,
        user: UserId,
        display_name: String,
    ) -> Result<(User, u64), DomainError> {
        let now = (self.clock)();
        self.store
            .write(&account.clone(), Some(&user.clone()), move |current| {
                require_account(&current, &account)?;
                let next = match current.user {
                    Some(existing) if existing.display_name == display_name => {
                        return Ok(Decided {
                            mutations: vec![],
                            output: existing,
                        });
                    }
                    Some(existing) => User {
                        display_name,
                        revision: current.next_revision,
                        updated_at: now,
                        ..existing
                    },
                    None => User {
                        account_id: account,
                        id: user,
                        display_name,
                        edition: None,
                        tier: Tier::None,
                        revision: current.next_revision,
                        created_at: now,
                        updated_at: now,
                    },
                };
                Ok(Decided {
                    mutations: vec![Mutation::PutUser(next.clone())],
                    output: next,
                })
            })
            .await
    }

    pub fn get_user(&self, account: &AccountId, user: &UserId) -> Result<User, DomainError> {
        self.store.read(|v| {
            match (
                v.account(account.as_str()),
                v.user(account.as_str(), user.as_str()),
            ) {
                (None, _) => Err(DomainError::AccountNotFound(account.clone())),
                (Some(_), None) => Err(DomainError::UserNotFound {
                    account: account.clone(),
                    user: user.clone(),
                }),
                (Some(_), Some(u)) => Ok(u),
            }
        })
    }

    /// Up to `limit` users after `after`, in id order, and whether more follow.
    pub fn list_users(
        &self,
        account: &AccountId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), DomainError> {
        self.store
            .read(|v| v.users_after(account.as_str(), after.map(UserId::as_str), limit))
            .ok_or_else(|| DomainError::AccountNotFound(account.clone()))
    }

    pub async fn delete_user(&self, account: AccountId, user: UserId) -> Result<u64, DomainError> {
        let ((), revision) = self
            .store
            .write::<_, DomainError>(&account.clone(), Some(&user.clone()), move |current| {
                require_user(&current, &account, &user)?;
                Ok(Decided {
                    mutations: vec![Mutation::DeleteUser(account, user)],
                    output: (),
                })
            })
            .await?;
        Ok(revision)
    }

    /// The console's "Services and permissions" + "Save": edition and tier
    /// change together and are validated on the combined result.
    pub async fn update_user_services(
        &self,
        account: AccountId,
        user: UserId,
        change: ServicesChange,
    ) -> Result<ServicesChanged, DomainError> {
        if change.edition.is_none() && change.tier.is_none() {
            return Err(DomainError::NothingToChange);
        }
        let now = (self.clock)();
        let catalogue = Arc::clone(&self.catalogue);
        let ((user, notices), revision) = self
            .store
            .write(&account.clone(), Some(&user.clone()), move |current| {
                let account = require_account(&current, &account)?;
                let existing = require_user(&current, &account.id, &user)?;
                if let Some(expected) = change.expected_revision
                    && expected != existing.revision
                {
                    return Err(DomainError::RevisionMismatch {
                        user,
                        expected,
                        actual: existing.revision,
                    });
                }
                let (edition, tier, notices) =
                    plan_services(&catalogue, account, existing, &change)?;
                if edition == existing.edition && tier == existing.tier {
                    return Ok(Decided {
                        mutations: vec![],
                        output: (existing.clone(), notices),
                    });
                }
                let mut mutations = Vec::with_capacity(2);
                if tier.grants_access() && account.analytics_activated_at.is_none() {
                    mutations.push(Mutation::PutAccount(Account {
                        analytics_activated_at: Some(now),
                        ..account.clone()
                    }));
                }
                let updated = User {
                    edition,
                    tier,
                    revision: current.next_revision,
                    updated_at: now,
                    ..existing.clone()
                };
                mutations.push(Mutation::PutUser(updated.clone()));
                Ok(Decided {
                    mutations,
                    output: (updated, notices),
                })
            })
            .await?;
        Ok(ServicesChanged {
            user,
            notices,
            revision,
        })
    }

    /// Answers a check from the durable view against the catalogue in force.
    /// Never fails: unknown accounts and users are answers.
    pub fn check(&self, account: &str, user: &str) -> Decision {
        let now = (self.clock)();
        self.store
            .read(|view| self.decide(view, now, account, user))
    }

    /// Waits (at most `FRESHNESS_WAIT`) until reads reflect `min_revision`;
    /// 0 asks for nothing.
    pub async fn await_revision(&self, min_revision: u64) -> Result<(), DomainError> {
        if min_revision == 0 {
            return Ok(());
        }
        self.store
            .wait_for_revision(min_revision, FRESHNESS_WAIT)
            .await
            .map_err(|current| DomainError::RevisionNotReached {
                wanted: min_revision,
                current,
                within: FRESHNESS_WAIT,
            })
    }

    /// Checks every `(account, user)` pair against one consistent view, in
    /// order, passing through items the caller already refused (`Err`);
    /// returns the results and the revision they all reflect.
    pub fn check_many<'a, E>(
        &self,
        items: impl IntoIterator<Item = Result<(&'a str, &'a str), E>>,
    ) -> (Vec<Result<Decision, E>>, u64) {
        let now = (self.clock)();
        self.store.read(|view| {
            let results = items
                .into_iter()
                .map(|item| item.map(|(account, user)| self.decide(view, now, account, user)))
                .collect();
            (results, view.revision())
        })
    }

    /// The check's rules against one view.
    fn decide(&self, view: &View, now: SystemTime, account: &str, user: &str) -> Decision {
        let revision = view.revision();
        let (account_rec, user_rec) = view.account_and_user(account, user);
        let deny = |denial, stored_tier, edition, reason| Decision {
            allowed: false,
            tier: Tier::None,
            stored_tier,
            edition,
            denial: Some(denial),
            data_available_at: None,
            data_ready: false,
            reports: self.reports(Tier::None, false),
            revision,
            reason,
        };
        let Some(account_rec) = account_rec else {
            return deny(
                Denial::AccountNotFound,
                Tier::None,
                None,
                format!("account `{account}` does not exist"),
            );
        };
        let Some(user_rec) = user_rec else {
            return deny(
                Denial::UserNotFound,
                Tier::None,
                None,
                format!("user `{user}` does not exist in account `{account}`"),
            );
        };
        let stored = user_rec.tier;
        let Some(edition) = user_rec.edition else {
            return deny(
                Denial::NoEdition,
                stored,
                None,
                format!("user `{user}` has no edition licence"),
            );
        };
        if !stored.grants_access() {
            return deny(
                Denial::AnalyticsNotEnabled,
                stored,
                Some(edition.to_owned()),
                format!("analytics is not enabled for user `{user}`"),
            );
        }
        // Rule 13: the catalogue in force caps the stored tier.
        let max = self
            .catalogue
            .product_line(&account_rec.product_line)
            .and_then(|l| l.edition(edition))
            .map_or(Tier::None, |e| e.max_tier);
        let tier = stored.min(max);
        if !tier.grants_access() {
            return deny(
                Denial::EditionNotEligible,
                stored,
                Some(edition.to_owned()),
                format!(
                    "edition `{edition}` no longer includes analytics in the catalogue in force; the stored {stored} tier is not granted"
                ),
            );
        }
        let data_available_at = account_rec
            .analytics_activated_at
            .map(|at| at + self.catalogue.data_delay());
        let data_ready = data_available_at.is_some_and(|at| now >= at);
        let reports = self.reports(tier, data_ready);
        let (denial, reason) = if tier < stored {
            (
                Some(Denial::EditionNotEligible),
                format!(
                    "edition `{edition}` no longer includes {stored} analytics in the catalogue in force; granted {tier}"
                ),
            )
        } else {
            (
                None,
                format!("{tier} analytics enabled with edition `{edition}`"),
            )
        };
        Decision {
            allowed: true,
            tier,
            stored_tier: stored,
            edition: Some(edition.to_owned()),
            denial,
            data_available_at,
            data_ready,
            reports,
            revision,
            reason,
        }
    }

    /// The data delay in force.
    pub fn data_delay(&self) -> Duration {
        self.catalogue.data_delay()
    }
}

fn require_account<'a>(current: &'a Current, id: &AccountId) -> Result<&'a Account, DomainError> {
    current
        .account
        .as_ref()
        .ok_or_else(|| DomainError::AccountNotFound(id.clone()))
}

fn require_user<'a>(
    current: &'a Current,
    account: &AccountId,
    user: &UserId,
) -> Result<&'a User, DomainError> {
    require_account(current, account)?;
    current
        .user
        .as_ref()
        .ok_or_else(|| DomainError::UserNotFound {
            account: account.clone(),
            user: user.clone(),
        })
}

/// The edition and tier a services change leads to, with its notices, or why
/// it is refused. Pure: the rules of `domain.md` 2, 3, 4, 6 and 7.
fn plan_services(
    catalogue: &Catalogue,
    account: &Account,
    user: &User,
    change: &ServicesChange,
) -> Result<(Option<String>, Tier, Vec<Notice>), DomainError> {
    let line = catalogue.product_line(&account.product_line);
    let edition = match &change.edition {
        None => user.edition.clone(),
        Some(None) => None,
        Some(Some(given)) => {
            let line =
                line.ok_or_else(|| DomainError::ProductLineRetired(account.product_line.clone()))?;
            if line.edition(given).is_none() {
                return Err(DomainError::UnknownEdition {
                    given: given.clone(),
                    product_line: line.id.clone(),
                    valid: owned(line.edition_ids()),
                });
            }
            Some(given.clone())
        }
    };
    let max = max_tier(line, edition.as_deref());
    let mut notices = Vec::new();
    let tier = match change.tier {
        Some(tier) => {
            if tier > max {
                let allowing = line
                    .map(|l| owned(l.editions_allowing(tier)))
                    .unwrap_or_default();
                return Err(match &edition {
                    None => DomainError::TierNeedsEdition {
                        user: user.id.clone(),
                        tier,
                        allowing,
                    },
                    Some(edition) => DomainError::TierNotAllowed {
                        edition: edition.clone(),
                        tier,
                        allowing,
                    },
                });
            }
            tier
        }
        // Rule 6 and 7: a lower edition lowers the tier; raising never raises it.
        None if user.tier > max => {
            notices.push(match &edition {
                None => Notice {
                    kind: NoticeKind::TierRemoved,
                    message: format!(
                        "the licence was removed, so analytics was lowered from {} to none",
                        user.tier
                    ),
                },
                Some(edition) => Notice {
                    kind: NoticeKind::TierLowered,
                    message: format!(
                        "edition `{edition}` does not include {} analytics, so analytics was lowered to {max}",
                        user.tier
                    ),
                },
            });
            max
        }
        None => user.tier,
    };
    Ok((edition, tier, notices))
}

/// The highest tier `edition` allows in `line`; none without an edition.
fn max_tier(line: Option<&ProductLine>, edition: Option<&str>) -> Tier {
    match (line, edition) {
        (Some(line), Some(edition)) => line.edition(edition).map_or(Tier::None, |e| e.max_tier),
        _ => Tier::None,
    }
}

fn owned(ids: Vec<&str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}
