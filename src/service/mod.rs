//! The domain service: the catalogue's rules applied to every write, and the
//! check. Knows nothing of gRPC; storage is reached only through `Store`.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

mod bulk;
mod refusals;
mod tokens;
mod watch;

use crate::{
    catalogue::{Catalogue, ProductLine, ReportKind},
    domain::{
        Account, AccountId, Actor, AuditRecord, Decision, Denial, MAX_KEPT_REASON, Notice,
        NoticeKind, Principal, Refusal, RefusalKind, ReportAccess, Rpc, Tier, User, UserId, kept,
    },
    store::{
        Backup, Current, Decided, Mutation, Refusable, RequestKey, Store, StoreError, StoreStats,
        Target, View, WriteContext, Written,
    },
};

pub use bulk::{ImportCounts, ImportRow, Imported, MAX_IMPORT_ROWS};
pub use refusals::{REFUSAL_BURST, REFUSALS_PER_SECOND};
pub use tokens::{NewToken, OPERATOR_TOKEN_FILE, TokenSpec};
pub use watch::{Change, WatchEvent, WatchOptions};

/// Who is calling, and the request id they sent with a write, if any.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub request: Option<RequestKey>,
}

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
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("token `{0}` does not exist")]
    TokenNotFound(String),
    #[error("{0}")]
    InvalidToken(String),
    #[error(
        "request_id `{request_id}` already created token `{token_id}`; its secret is shown only once: revoke it and create another"
    )]
    TokenReplay {
        request_id: String,
        token_id: String,
    },
    #[error("first start: {0}")]
    Bootstrap(String),
    #[error("{0}")]
    BadImport(String),
    #[error(
        "revision {after_revision} is older than the {} of history kept; list the users again, then watch from the revision listed",
        humantime::format_duration(*.history)
    )]
    HistoryGone {
        after_revision: u64,
        history: Duration,
    },
    #[error(
        "the watch left {buffer} events unread for {}s and was ended; resume from the last revision received and read faster", stall.as_secs_f64()
    )]
    SlowConsumer { buffer: usize, stall: Duration },
    #[error("the server is stopping; resume the watch from the last revision received")]
    ShuttingDown,
    /// A refusal kept with a request id, given again to its retry.
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Refusable for DomainError {
    /// Every refusal that the same request would meet again is kept; a
    /// retry is the remedy for the rest (the store failing, a wait that ran
    /// out, a shutdown), so they are not.
    fn refusal(&self) -> Option<Refusal> {
        use RefusalKind as K;
        let kind = match self {
            DomainError::AccountNotFound(_)
            | DomainError::UserNotFound { .. }
            | DomainError::TokenNotFound(_) => K::NotFound,
            DomainError::AccountExists(_) => K::AlreadyExists,
            DomainError::UnknownProductLine { .. }
            | DomainError::UnknownEdition { .. }
            | DomainError::NothingToChange
            | DomainError::InvalidToken(_)
            | DomainError::BadImport(_) => K::InvalidArgument,
            DomainError::ProductLineRetired(_)
            | DomainError::TierNotAllowed { .. }
            | DomainError::TierNeedsEdition { .. } => K::FailedPrecondition,
            DomainError::RevisionMismatch { .. } => K::Aborted,
            DomainError::PermissionDenied(_) => K::PermissionDenied,
            DomainError::Refused(kept) => return Some(kept.clone()),
            DomainError::Unauthenticated(_)
            | DomainError::TokenReplay { .. }
            | DomainError::Bootstrap(_)
            | DomainError::RevisionNotReached { .. }
            | DomainError::HistoryGone { .. }
            | DomainError::SlowConsumer { .. }
            | DomainError::ShuttingDown
            | DomainError::Store(_) => return None,
        };
        Some(Refusal {
            kind,
            message: kept(&self.to_string(), MAX_KEPT_REASON),
        })
    }

    fn refused(refusal: Refusal) -> Self {
        DomainError::Refused(refusal)
    }
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServicesChanged {
    pub user: User,
    pub notices: Vec<Notice>,
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
    watch_options: WatchOptions,
    /// Set once the server stops: open watches end, so a graceful stop does
    /// not wait for them forever.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// How many refusals each token may leave in the audit trail.
    refusals: Arc<refusals::RefusalLimiter>,
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
            watch_options: WatchOptions::default(),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            refusals: Arc::default(),
        }
    }

    /// Ends every open watch (with UNAVAILABLE: resume on another server or
    /// after the restart); for a graceful stop.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// The same service with other watch settings.
    pub fn with_watch_options(mut self, options: WatchOptions) -> Self {
        self.watch_options = options;
        self
    }

    pub fn catalogue(&self, caller: &Caller) -> Result<&Catalogue, DomainError> {
        authorize(caller, Rpc::GetCatalogue, None, None)?;
        Ok(&self.catalogue)
    }

    fn reports(&self, tier: Tier, data_ready: bool) -> Arc<[ReportAccess]> {
        Arc::clone(&self.report_lists[tier as usize][usize::from(data_ready)])
    }

    /// The store's revision, record counts and size, for metrics.
    pub fn store_stats(&self) -> Result<StoreStats, StoreError> {
        self.store.stats()
    }

    /// Makes everything the store committed durable; for a stop, once no
    /// call is in flight.
    pub async fn sync_on_stop(&self) -> Result<(), StoreError> {
        self.store.sync_on_stop().await
    }

    pub async fn create_account(
        &self,
        caller: &Caller,
        id: AccountId,
        display_name: String,
        product_line: String,
    ) -> Result<Written<Account>, DomainError> {
        authorize(caller, Rpc::CreateAccount, Some(&id), None)?;
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
        let ctx = self.context(caller, Rpc::CreateAccount, id.as_str(), "");
        self.store
            .write(&Target::Account(id.clone()), ctx, move |current| {
                if current.account.is_some() {
                    return Err(DomainError::AccountExists(id.clone()));
                }
                let account = Account {
                    id: id.clone(),
                    display_name: display_name.clone(),
                    product_line: product_line.clone(),
                    created_at: now,
                    analytics_activated_at: None,
                };
                let mut decided =
                    Decided::new(vec![Mutation::PutAccount(account.clone())], account);
                decided.details.push(format!(
                    "created account `{}` on product line `{}`",
                    decided.output.id, decided.output.product_line
                ));
                Ok(decided)
            })
            .await
    }

    pub fn get_account(&self, caller: &Caller, id: &AccountId) -> Result<Account, DomainError> {
        authorize(caller, Rpc::GetAccount, Some(id), None)?;
        self.store
            .read(|v| v.account(id.as_str()).cloned())
            .ok_or_else(|| DomainError::AccountNotFound(id.clone()))
    }

    /// Creates the user (no edition, tier none) or renames it.
    pub async fn put_user(
        &self,
        caller: &Caller,
        account: AccountId,
        user: UserId,
        display_name: String,
    ) -> Result<Written<User>, DomainError> {
        authorize(caller, Rpc::PutUser, Some(&account), Some(&user))?;
        let now = (self.clock)();
        let ctx = self.context(caller, Rpc::PutUser, account.as_str(), user.as_str());
        self.store
            .write(
                &Target::User(account.clone(), user.clone()),
                ctx,
                move |current| {
                    require_account(&current, &account)?;
                    let next = match current.user {
                        Some(existing) if existing.display_name == display_name => {
                            return Ok(Decided::new(vec![], existing));
                        }
                        Some(existing) => User {
                            display_name: display_name.clone(),
                            revision: current.next_revision,
                            updated_at: now,
                            ..existing
                        },
                        None => User {
                            account_id: account.clone(),
                            id: user.clone(),
                            display_name: display_name.clone(),
                            edition: None,
                            tier: Tier::None,
                            revision: current.next_revision,
                            created_at: now,
                            updated_at: now,
                        },
                    };
                    Ok(Decided::new(vec![Mutation::PutUser(next.clone())], next))
                },
            )
            .await
    }

    pub fn get_user(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
    ) -> Result<User, DomainError> {
        authorize(caller, Rpc::GetUser, Some(account), Some(user))?;
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
        caller: &Caller,
        account: &AccountId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), DomainError> {
        authorize(caller, Rpc::ListUsers, Some(account), None)?;
        self.store
            .read(|v| v.users_after(account.as_str(), after.map(UserId::as_str), limit))
            .ok_or_else(|| DomainError::AccountNotFound(account.clone()))
    }

    pub async fn delete_user(
        &self,
        caller: &Caller,
        account: AccountId,
        user: UserId,
    ) -> Result<Written<()>, DomainError> {
        authorize(caller, Rpc::DeleteUser, Some(&account), Some(&user))?;
        let ctx = self.context(caller, Rpc::DeleteUser, account.as_str(), user.as_str());
        self.store
            .write::<_, DomainError>(
                &Target::User(account.clone(), user.clone()),
                ctx,
                move |current| {
                    require_user(&current, &account, &user)?;
                    let deleted = Mutation::DeleteUser(account.clone(), user.clone());
                    Ok(Decided::new(vec![deleted], ()))
                },
            )
            .await
    }

    /// The console's "Services and permissions" + "Save": edition and tier
    /// change together and are validated on the combined result.
    pub async fn update_user_services(
        &self,
        caller: &Caller,
        account: AccountId,
        user: UserId,
        change: ServicesChange,
    ) -> Result<Written<ServicesChanged>, DomainError> {
        authorize(caller, Rpc::UpdateUserServices, Some(&account), Some(&user))?;
        if change.edition.is_none() && change.tier.is_none() {
            return Err(DomainError::NothingToChange);
        }
        let now = (self.clock)();
        let catalogue = Arc::clone(&self.catalogue);
        let ctx = self.context(
            caller,
            Rpc::UpdateUserServices,
            account.as_str(),
            user.as_str(),
        );
        self.store
            .write(
                &Target::User(account.clone(), user.clone()),
                ctx,
                move |current| {
                    let account = require_account(&current, &account)?;
                    let existing = require_user(&current, &account.id, &user)?;
                    if let Some(expected) = change.expected_revision
                        && expected != existing.revision
                    {
                        return Err(DomainError::RevisionMismatch {
                            user: user.clone(),
                            expected,
                            actual: existing.revision,
                        });
                    }
                    let (edition, tier, notices) =
                        plan_services(&catalogue, account, existing, &change)?;
                    if edition == existing.edition && tier == existing.tier {
                        let output = ServicesChanged {
                            user: existing.clone(),
                            notices,
                        };
                        return Ok(Decided::new(vec![], output));
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
                    let details = notices.iter().map(|n| n.message.clone()).collect();
                    Ok(Decided {
                        mutations,
                        output: ServicesChanged {
                            user: updated,
                            notices,
                        },
                        details,
                    })
                },
            )
            .await
    }

    /// The audit trail, of one account or (operators and provisioners) all.
    pub fn list_changes(
        &self,
        caller: &Caller,
        account: Option<&AccountId>,
        after_seq: u64,
        after_revision: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), DomainError> {
        authorize(caller, Rpc::ListChanges, account, None)?;
        Ok(self.store.audit(
            account.map(AccountId::as_str),
            after_seq,
            after_revision,
            limit,
        )?)
    }

    /// An online, consistent backup of the whole store (operators only).
    pub async fn backup(&self, caller: &Caller) -> Result<Backup, DomainError> {
        authorize(caller, Rpc::Backup, None, None)?;
        Ok(self.store.backup((self.clock)()).await?)
    }

    fn context(&self, caller: &Caller, rpc: Rpc, account: &str, user: &str) -> WriteContext {
        WriteContext {
            actor: Actor {
                token_id: caller.principal.token_id.clone(),
                name: caller.principal.name.clone(),
                role: caller.principal.role,
            },
            rpc,
            at: (self.clock)(),
            account_id: account.to_owned(),
            user_id: user.to_owned(),
            request: caller.request.clone(),
        }
    }

    /// Answers a check from the durable view against the catalogue in force.
    /// Never fails: unknown accounts and users are answers.
    /// Ids must already be well formed (the gRPC layer checks them). Waits
    /// (at most `FRESHNESS_WAIT`) for `min_revision` first; 0 asks for none.
    pub async fn check(
        &self,
        caller: &Caller,
        account: &str,
        user: &str,
        min_revision: u64,
    ) -> Result<Decision, DomainError> {
        caller
            .principal
            .authorize(Rpc::CheckAnalyticsAccess, Some(account), None)
            .map_err(DomainError::PermissionDenied)?;
        self.await_revision(min_revision).await?;
        let now = (self.clock)();
        Ok(self
            .store
            .read(|view| self.decide(view, now, account, user)))
    }

    /// Waits (at most `FRESHNESS_WAIT`) until reads reflect `min_revision`;
    /// 0 asks for nothing.
    async fn await_revision(&self, min_revision: u64) -> Result<(), DomainError> {
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
    /// order, passing through items the caller already refused (`Err`); an
    /// item on an account the caller may not see gets its own
    /// PERMISSION_DENIED. Returns the results and the revision they reflect.
    pub async fn check_many<'a, E: From<DomainError>>(
        &self,
        caller: &Caller,
        items: impl IntoIterator<Item = Result<(&'a str, &'a str), E>>,
        min_revision: u64,
    ) -> Result<(Vec<Result<Decision, E>>, u64), DomainError> {
        let principal = &caller.principal;
        principal
            .may_call(Rpc::BatchCheckAnalyticsAccess)
            .map_err(DomainError::PermissionDenied)?;
        self.await_revision(min_revision).await?;
        let now = (self.clock)();
        Ok(self.store.read(|view| {
            let results = items
                .into_iter()
                .map(|item| {
                    let (account, user) = item?;
                    principal
                        .scope(Rpc::BatchCheckAnalyticsAccess, Some(account), None)
                        .map_err(|m| E::from(DomainError::PermissionDenied(m)))?;
                    Ok(self.decide(view, now, account, user))
                })
                .collect();
            (results, view.revision())
        }))
    }
}

impl Entitlements {
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
}

fn authorize(
    caller: &Caller,
    rpc: Rpc,
    account: Option<&AccountId>,
    user: Option<&UserId>,
) -> Result<(), DomainError> {
    caller
        .principal
        .authorize(
            rpc,
            account.map(AccountId::as_str),
            user.map(UserId::as_str),
        )
        .map_err(DomainError::PermissionDenied)
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
