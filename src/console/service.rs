//! The console's one door to the domain service. Every page reaches
//! `service::Entitlements` through this file, with a `Caller` marked
//! `Via::Console`, so the console meets the same rules, permission matrix and
//! audit trail as gRPC; when the service's signatures change, only this file
//! does. A refused write is recorded in the audit trail here, as
//! `grpc::Api::audited` does for gRPC.

use std::sync::Arc;

use crate::{
    catalogue::Catalogue,
    metrics::Metrics,
    service::{Caller, Entitlements, ServicesChange},
};

pub use crate::{
    catalogue::{ProductLine, ReportKind},
    domain::{
        Account, AccountId, AuditRecord, Decision, DisplayName, Notice, NoticeKind, Outcome,
        Principal, Role, Rpc, ScopeKind, Tier, User, UserId, UserState, Via,
    },
    service::DomainError,
};

/// Users read per step while searching (each step is one read of the view).
const SEARCH_STEP: usize = 1000;

/// The domain service, as the console uses it.
#[derive(Clone)]
pub struct Service {
    entitlements: Entitlements,
    metrics: Metrics,
}

/// A user's services after a save, and what the service changed by itself.
pub struct Saved {
    pub user: User,
    pub notices: Vec<Notice>,
}

impl Service {
    pub fn new(entitlements: Entitlements, metrics: Metrics) -> Self {
        Service {
            entitlements,
            metrics,
        }
    }

    /// Who holds `secret`, checked as every gRPC call is (from memory; a
    /// revoked token is refused at once).
    pub fn authenticate(&self, secret: &str) -> Result<Arc<Principal>, DomainError> {
        let header = format!("Bearer {secret}");
        self.entitlements.authenticate(Some(header.as_bytes()))
    }

    /// The caller of one console request.
    pub fn caller(principal: Arc<Principal>) -> Caller {
        Caller {
            principal,
            request: None,
            via: Via::Console,
        }
    }

    /// Whether the domain's matrix lets `caller` change `user`'s services
    /// (asked before showing the form; the save asks again).
    pub fn may_change_services(caller: &Caller, account: &AccountId, user: &UserId) -> bool {
        caller
            .principal
            .authorize(
                Rpc::UpdateUserServices,
                Some(account.as_str()),
                Some(user.as_str()),
            )
            .is_ok()
    }

    pub fn catalogue(&self, caller: &Caller) -> Result<&Catalogue, DomainError> {
        self.entitlements.catalogue(caller)
    }

    pub fn account(&self, caller: &Caller, id: &AccountId) -> Result<Account, DomainError> {
        self.entitlements.get_account(caller, id)
    }

    /// Accounts in id order after `after` whose id or name contains `query`.
    pub fn accounts(
        &self,
        caller: &Caller,
        query: &str,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<(Vec<Account>, bool), DomainError> {
        self.entitlements.list_accounts(caller, query, after, limit)
    }

    pub fn user(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
    ) -> Result<User, DomainError> {
        self.entitlements.get_user(caller, account, user)
    }

    /// One page of users in id order after `after`; with a `query`, only
    /// those whose id or display name contains it (case-insensitive). A page
    /// without a query is one range read of the view, whatever the size of
    /// the account; a search reads the account in steps until the page is
    /// full.
    pub fn users(
        &self,
        caller: &Caller,
        account: &AccountId,
        query: &str,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<(Vec<User>, bool), DomainError> {
        let query = query.trim().to_lowercase();
        if query.is_empty() {
            return self.entitlements.list_users(caller, account, after, limit);
        }
        let mut found = Vec::with_capacity(limit);
        let mut cursor = after.cloned();
        loop {
            let (step, more) =
                self.entitlements
                    .list_users(caller, account, cursor.as_ref(), SEARCH_STEP)?;
            cursor = step.last().map(|u| u.id.clone());
            for user in step {
                if user.id.as_str().to_lowercase().contains(&query)
                    || user.display_name.to_lowercase().contains(&query)
                {
                    if found.len() == limit {
                        return Ok((found, true));
                    }
                    found.push(user);
                }
            }
            if !more {
                return Ok((found, false));
            }
        }
    }

    /// The check a dashboard gateway makes, answered the same way.
    pub async fn check(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
    ) -> Result<Decision, DomainError> {
        self.entitlements
            .check(caller, account.borrowed(), user.borrowed(), 0)
            .await
    }

    /// How long after activation historical data becomes available.
    pub fn data_delay(&self, caller: &Caller) -> Result<std::time::Duration, DomainError> {
        Ok(self.entitlements.catalogue(caller)?.data_delay())
    }

    /// Up to `limit` audit records of `account` after sequence `after`.
    pub async fn changes(
        &self,
        caller: &Caller,
        account: &AccountId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<AuditRecord>, bool), DomainError> {
        self.entitlements
            .list_changes(caller, Some(account), after, 0, limit)
            .await
    }

    /// Services and permissions → Save: one write, at `expected_revision`.
    /// `edition`: `None` for no licence; `tier`: `None` keeps the stored
    /// tier (so rule 6 lowers it when the edition no longer allows it).
    pub async fn save_services(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
        edition: Option<String>,
        tier: Option<Tier>,
        expected_revision: u64,
    ) -> Result<Saved, DomainError> {
        let change = ServicesChange {
            edition: Some(edition),
            tier,
            // The console does not edit scopes: a save that keeps
            // Supervisor keeps the scope (rule 12).
            supervisor_scope: None,
            expected_revision: Some(expected_revision),
        };
        let result = self
            .entitlements
            .update_user_services(caller, account.clone(), user.clone(), change)
            .await;
        let written = self.audited(
            caller,
            Rpc::UpdateUserServices,
            account,
            user.as_str(),
            result,
        )?;
        Ok(Saved {
            user: written.output.user,
            notices: written.output.notices,
        })
    }

    /// Renames a user.
    pub async fn put_user(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
        display_name: DisplayName,
    ) -> Result<User, DomainError> {
        let result = self
            .entitlements
            .put_user(caller, account.clone(), user.clone(), display_name)
            .await
            .map(|written| written.output);
        self.audited(caller, Rpc::PutUser, account, user.as_str(), result)
    }

    /// Adds a user: refused with `UserExists` if the id is taken, even by
    /// one added a moment ago by someone else (never a rename).
    pub async fn add_user(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
        display_name: DisplayName,
    ) -> Result<User, DomainError> {
        let result = self
            .entitlements
            .add_user(caller, account.clone(), user.clone(), display_name)
            .await
            .map(|written| written.output);
        self.audited(caller, Rpc::PutUser, account, user.as_str(), result)
    }

    pub async fn delete_user(
        &self,
        caller: &Caller,
        account: &AccountId,
        user: &UserId,
    ) -> Result<(), DomainError> {
        let result = self
            .entitlements
            .delete_user(caller, account.clone(), user.clone())
            .await;
        self.audited(caller, Rpc::DeleteUser, account, user.as_str(), result)?;
        Ok(())
    }

    pub async fn create_account(
        &self,
        caller: &Caller,
        account: &AccountId,
        display_name: DisplayName,
        product_line: String,
    ) -> Result<Account, DomainError> {
        let result = self
            .entitlements
            .create_account(caller, account.clone(), display_name, product_line)
            .await;
        Ok(self
            .audited(caller, Rpc::CreateAccount, account, "", result)?
            .output)
    }

    /// Records a refused write made in the console, as gRPC does for its
    /// own: the same trail, the same bounds per token.
    pub fn refused(
        &self,
        caller: &Caller,
        rpc: Rpc,
        account: &str,
        user: &str,
        error: &DomainError,
    ) {
        let recorded = self.entitlements.record_refusal(
            caller,
            rpc,
            account,
            user,
            code_name(error),
            &error.to_string(),
        );
        if !recorded {
            self.metrics.refusal_left_out();
        }
    }

    fn audited<T>(
        &self,
        caller: &Caller,
        rpc: Rpc,
        account: &AccountId,
        user: &str,
        result: Result<T, DomainError>,
    ) -> Result<T, DomainError> {
        if let Err(error) = &result {
            self.refused(caller, rpc, account.as_str(), user, error);
        }
        result
    }
}

/// The gRPC code a refusal is recorded with, as `grpc/status.rs` maps the
/// same error, so the trail reads alike whichever door a write came
/// through. No catch-all arm: a new error must be given its code here.
pub fn code_name(error: &DomainError) -> &'static str {
    match error {
        DomainError::AccountNotFound(_)
        | DomainError::UserNotFound { .. }
        | DomainError::TokenNotFound(_) => "NOT_FOUND",
        DomainError::AccountExists(_) | DomainError::UserExists { .. } => "ALREADY_EXISTS",
        DomainError::UnknownProductLine { .. }
        | DomainError::UnknownEdition { .. }
        | DomainError::NothingToChange
        | DomainError::InvalidToken(_)
        | DomainError::BadImport(_) => "INVALID_ARGUMENT",
        DomainError::ProductLineRetired(_)
        | DomainError::TierNotAllowed { .. }
        | DomainError::TierNeedsEdition { .. }
        | DomainError::AccountTooLarge { .. }
        | DomainError::ScopeNeedsSupervisor { .. }
        | DomainError::TokenReplay { .. } => "FAILED_PRECONDITION",
        DomainError::RevisionMismatch { .. } => "ABORTED",
        DomainError::PermissionDenied(_) => "PERMISSION_DENIED",
        DomainError::Unauthenticated(_) => "UNAUTHENTICATED",
        DomainError::Bootstrap(_) => "INTERNAL",
        DomainError::RevisionNotReached { .. }
        | DomainError::ShuttingDown { .. }
        | DomainError::NoRandomness(_) => "UNAVAILABLE",
        DomainError::HistoryGone { .. } => "OUT_OF_RANGE",
        DomainError::SlowConsumer { .. } => "RESOURCE_EXHAUSTED",
        DomainError::Move(refused) => kind_name(refused.kind()),
        DomainError::Refused(refusal) => kind_name(refusal.kind),
        DomainError::Store(_) => "UNAVAILABLE",
    }
}

/// The code name of a kept refusal's kind.
fn kind_name(kind: crate::domain::RefusalKind) -> &'static str {
    use crate::domain::RefusalKind as K;
    match kind {
        K::InvalidArgument => "INVALID_ARGUMENT",
        K::NotFound => "NOT_FOUND",
        K::AlreadyExists => "ALREADY_EXISTS",
        K::FailedPrecondition => "FAILED_PRECONDITION",
        K::Aborted => "ABORTED",
        K::PermissionDenied => "PERMISSION_DENIED",
    }
}

/// An id typed into a form or a URL, checked as gRPC checks it.
pub fn account_id(value: &str) -> Result<AccountId, String> {
    AccountId::try_from(value.to_owned()).map_err(|e| e.to_string())
}

/// See [`account_id`].
pub fn user_id(value: &str) -> Result<UserId, String> {
    UserId::try_from(value.to_owned()).map_err(|e| e.to_string())
}

/// A display name typed into a form, checked as gRPC checks it; the error
/// reads after "display name".
pub fn display_name(value: &str) -> Result<DisplayName, String> {
    DisplayName::parse(value.to_owned()).map_err(|(e, _)| e.to_string())
}
