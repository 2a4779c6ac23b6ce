//! The domain service: the domain's rules applied to every write, the
//! check, and the reads, each authorised first. Knows nothing of gRPC;
//! storage is reached only through `Store`. It takes ids and names already
//! validated (`AccountId`, `UserIdRef`, `DisplayName`, …): requests are
//! validated once, at the edge.
//!
//! By job: `users.rs` accounts and users, `rules.rs` the rules of a
//! services change, `migrate.rs` moving an account to another product
//! line, `check.rs` the check, `bulk.rs` import and export,
//! `tokens.rs` tokens, `watch.rs` the change feed, `refusals.rs` refused
//! writes in the audit trail, `retention.rs` pruning the audit trail.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

mod bulk;
mod check;
mod migrate;
mod refusals;
mod retention;
mod rules;
mod tokens;
mod users;
mod verified;
mod watch;

use crate::{
    catalogue::Catalogue,
    domain::{
        AccountId, Actor, AuditRecord, Forbidden, MAX_KEPT_REASON, Principal, Refusal, RefusalKind,
        Rpc, Tier, UserId, Via, field::shown, kept, migration::MoveRefused,
    },
    store::{Backup, Refusable, RequestKey, Store, StoreError, StoreStats, WriteContext},
};

pub use bulk::{
    ImportCounts, ImportError, ImportRow, Imported, KEPT_ROW_MESSAGES, MAX_IMPORT_ROWS,
};
pub use migrate::AccountMoved;
pub use refusals::{REFUSAL_BURST, REFUSALS_PER_SECOND};
pub use retention::{PruneReport, Pruner, REQUESTS_EVERY, RetentionOptions};
pub use tokens::{NewToken, OPERATOR_TOKEN_FILE, TokenSpec, TokenSpecError};
pub use users::{AccountDeleted, MAX_DELETED_USERS, ServicesChange, ServicesChanged};
pub use watch::{AccountChange, AccountChangeKind, Change, WatchEvent, WatchOptions};

/// Who is calling, the request id they sent with a write, if any, and the
/// door they came through (kept in the audit trail).
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Arc<Principal>,
    pub request: Option<RequestKey>,
    pub via: Via,
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
    /// Only from `add_user` (the console's Add a user): PutUser renames.
    #[error("user `{user}` already exists in account `{account}`")]
    UserExists { account: AccountId, user: UserId },
    /// `given` is the caller's, so it is `shown`, as any caller's text.
    #[error("product_line `{}` is unknown; use one of {}", shown(.given), .valid.join(", "))]
    UnknownProductLine { given: String, valid: Vec<String> },
    #[error(
        "edition `{}` is not in product line `{product_line}`; use one of {}, or \"\" to remove the licence",
        shown(.given), .valid.join(", ")
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
    #[error(
        "account `{account}` has {users} users; {rpc} takes an account of at most {max} in one write: delete users with DeleteUser until at most {max} are left"
    )]
    AccountTooLarge {
        account: AccountId,
        users: usize,
        max: usize,
        rpc: Rpc,
    },
    #[error(
        "supervisor_scope is only for supervisor analytics, and user `{user}` would have {tier}; set the supervisor tier with it, or leave supervisor_scope unset"
    )]
    ScopeNeedsSupervisor { user: UserId, tier: Tier },
    #[error("nothing to change: set edition, analytics_tier, supervisor_scope or some of them")]
    NothingToChange,
    #[error(transparent)]
    PermissionDenied(#[from] Forbidden),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("token `{0}` does not exist")]
    TokenNotFound(String),
    #[error(transparent)]
    InvalidToken(#[from] TokenSpecError),
    #[error(
        "request_id `{request_id}` already created token `{token_id}`; its secret is shown only once: revoke it and create another"
    )]
    TokenReplay {
        request_id: String,
        token_id: String,
    },
    #[error("first start: {0}")]
    Bootstrap(String),
    /// The operating system gave no random numbers (for a token's secret):
    /// the server's trouble, not the request's.
    #[error("no secure random numbers: {0}")]
    NoRandomness(getrandom::Error),
    #[error(transparent)]
    BadImport(#[from] ImportError),
    #[error(
        "revision {after_revision} is older than the {} of history kept; list the users again, then watch from the revision listed",
        humantime::format_duration(*.history)
    )]
    HistoryGone {
        after_revision: u64,
        history: Duration,
    },
    #[error(
        "the watch left {buffer} events unread for {}s and was ended; resume with after_revision {resume_after} (every change up to it was sent; a change of a later revision may come again) and read faster", stall.as_secs_f64()
    )]
    SlowConsumer {
        buffer: usize,
        stall: Duration,
        /// The last revision all of whose changes were sent.
        resume_after: u64,
    },
    #[error(
        "the server is stopping; resume the watch with after_revision {resume_after} (every change up to it was sent; a change of a later revision may come again)"
    )]
    ShuttingDown {
        /// The last revision all of whose changes were sent.
        resume_after: u64,
    },
    /// A move to another product line refused (rule 15).
    #[error(transparent)]
    Move(#[from] MoveRefused),
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
            DomainError::AccountExists(_) | DomainError::UserExists { .. } => K::AlreadyExists,
            DomainError::UnknownProductLine { .. }
            | DomainError::UnknownEdition { .. }
            | DomainError::NothingToChange
            | DomainError::InvalidToken(_)
            | DomainError::BadImport(_) => K::InvalidArgument,
            DomainError::ProductLineRetired(_)
            | DomainError::TierNotAllowed { .. }
            | DomainError::TierNeedsEdition { .. }
            | DomainError::AccountTooLarge { .. }
            | DomainError::ScopeNeedsSupervisor { .. } => K::FailedPrecondition,
            DomainError::RevisionMismatch { .. } => K::Aborted,
            DomainError::PermissionDenied(_) => K::PermissionDenied,
            DomainError::Move(refused) => refused.kind(),
            DomainError::Refused(kept) => return Some(kept.clone()),
            DomainError::Unauthenticated(_)
            | DomainError::TokenReplay { .. }
            | DomainError::Bootstrap(_)
            | DomainError::NoRandomness(_)
            | DomainError::RevisionNotReached { .. }
            | DomainError::HistoryGone { .. }
            | DomainError::SlowConsumer { .. }
            | DomainError::ShuttingDown { .. }
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

/// Entitlements: the catalogue in force, the store, and the clock.
#[derive(Clone)]
pub struct Entitlements {
    store: Store,
    catalogue: Arc<Catalogue>,
    clock: Clock,
    watch_options: WatchOptions,
    /// Set once the server stops: open watches end, so a graceful stop does
    /// not wait for them forever.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// How many refusals each token may leave in the audit trail.
    refusals: Arc<refusals::RefusalLimiter>,
    /// Bearers already verified, so a token's next call skips the SHA-256.
    verified: Arc<verified::VerifiedSecrets>,
    /// The check's texts for each edition of the catalogue, made once.
    texts: Arc<check::CheckTexts>,
}

impl Entitlements {
    pub fn new(store: Store, catalogue: Catalogue, clock: Clock) -> Self {
        Entitlements {
            store,
            texts: Arc::new(check::CheckTexts::new(&catalogue)),
            catalogue: Arc::new(catalogue),
            clock,
            watch_options: WatchOptions::default(),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            refusals: Arc::default(),
            verified: Arc::default(),
        }
    }

    /// Ends every open watch (with UNAVAILABLE: resume on another server or
    /// after the restart); for a graceful stop.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// The audit trail's pruner (audit retention), with these settings.
    pub fn pruner(&self, options: RetentionOptions) -> Pruner {
        Pruner::new(self.store.clone(), self.clock.clone(), options)
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

    /// The store's revision, record counts and size, for metrics.
    pub fn store_stats(&self) -> Result<StoreStats, StoreError> {
        self.store.stats()
    }

    /// Makes everything the store committed durable; for a stop, once no
    /// call is in flight.
    pub async fn sync_on_stop(&self) -> Result<(), StoreError> {
        self.store.sync_on_stop().await
    }

    /// The audit trail, of one account or (operators and provisioners) all.
    pub async fn list_changes(
        &self,
        caller: &Caller,
        account: Option<&AccountId>,
        after_seq: u64,
        after_revision: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), DomainError> {
        authorize(caller, Rpc::ListChanges, account, None)?;
        Ok(self
            .store
            .audit(
                account.map(AccountId::as_str),
                after_seq,
                after_revision,
                limit,
            )
            .await?)
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
                via: caller.via,
            },
            rpc,
            at: (self.clock)(),
            account_id: account.to_owned(),
            user_id: user.to_owned(),
            request: caller.request.clone(),
            // Only a write with a request id keeps anything: the others
            // need not take the limiter's lock.
            keep_refusal: caller.request.is_some()
                && self.refusals.may_keep(&caller.principal.token_id),
        }
    }
}

/// The role check of every method (`Principal::authorize`).
fn authorize(
    caller: &Caller,
    rpc: Rpc,
    account: Option<&AccountId>,
    user: Option<&UserId>,
) -> Result<(), DomainError> {
    Ok(caller.principal.authorize(
        rpc,
        account.map(AccountId::as_str),
        user.map(UserId::as_str),
    )?)
}
