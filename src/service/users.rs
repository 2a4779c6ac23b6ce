//! Accounts and users: creation, reads, renames, deletion, and the change
//! of a user's services (edition and tier) under the rules of `rules.rs`.

use std::sync::Arc;

use super::{Caller, DomainError, Entitlements, authorize, rules::plan_services};
use crate::{
    domain::{
        Account, AccountId, DisplayName, Notice, Rpc, SupervisorScope, Tier, Token, User, UserId,
    },
    store::{Mutation, Target, TargetState, UserV1, WritePlan, Written},
};

/// The most users `DeleteAccount` deletes in one write. The write holds
/// each user's deletion and audit record in memory at once (about 300 bytes
/// each), so a larger account is refused, and its users are deleted first
/// (`DeleteUser`), rather than one call taking the server's memory.
pub const MAX_DELETED_USERS: usize = 200_000;
/// The most users a whole-account write (MigrateAccount, DeleteAccount)
/// takes: it holds every one of them, and its records, in memory at once.
pub const MAX_WHOLE_ACCOUNT_USERS: usize = MAX_DELETED_USERS;

/// What deleting an account did.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AccountDeleted {
    pub users_deleted: u64,
    pub tokens_revoked: u64,
}

/// A request to change a user's services; `None` keeps a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ServicesChange {
    /// `Some(None)` removes the licence.
    pub edition: Option<Option<String>>,
    pub tier: Option<Tier>,
    /// Rule 12: only with Supervisor. `None` keeps a supervisor's scope, and
    /// gives a new supervisor the whole account.
    pub supervisor_scope: Option<SupervisorScope>,
    pub expected_revision: Option<u64>,
}

/// The outcome of a services change.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ServicesChanged {
    pub user: User,
    pub notices: Vec<Notice>,
}

impl ServicesChanged {
    /// An answer kept for a retry before users had a scope.
    fn v1(bytes: &[u8]) -> Result<Self, postcard::Error> {
        #[derive(serde::Deserialize)]
        struct Old {
            user: UserV1,
            notices: Vec<Notice>,
        }
        let old: Old = postcard::from_bytes(bytes)?;
        Ok(ServicesChanged {
            user: old.user.into(),
            notices: old.notices,
        })
    }
}

/// A user answer kept for a retry before users had a scope.
fn user_v1(bytes: &[u8]) -> Result<User, postcard::Error> {
    postcard::from_bytes::<UserV1>(bytes).map(Into::into)
}

impl Entitlements {
    pub async fn create_account(
        &self,
        caller: &Caller,
        id: AccountId,
        display_name: DisplayName,
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
                    display_name: display_name.clone().into(),
                    product_line: product_line.clone(),
                    created_at: now,
                    analytics_activated_at: None,
                };
                let mut planned =
                    WritePlan::new(vec![Mutation::PutAccount(account.clone())], account);
                planned.details.push(format!(
                    "created account `{}` on product line `{}`",
                    planned.output.id, planned.output.product_line
                ));
                Ok(planned)
            })
            .await
    }

    pub fn get_account(&self, caller: &Caller, id: &AccountId) -> Result<Account, DomainError> {
        authorize(caller, Rpc::GetAccount, Some(id), None)?;
        self.store
            .read(|v| v.account(id.as_str()).cloned())
            .ok_or_else(|| DomainError::AccountNotFound(id.clone()))
    }

    /// Up to `limit` accounts after `after`, in id order, whose id or display
    /// name contains `query` (ignoring case), and whether more follow: the
    /// console's account picker. Asked as `GetAccount` on no one account, so
    /// operators and provisioners may; an account admin has its one.
    pub fn list_accounts(
        &self,
        caller: &Caller,
        query: &str,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<(Vec<Account>, bool), DomainError> {
        authorize(caller, Rpc::GetAccount, None, None)?;
        let query = query.trim().to_lowercase();
        Ok(self.store.read(|v| {
            let mut found: Vec<&Account> = v
                .accounts()
                .filter(|a| after.is_none_or(|after| a.id > *after))
                .filter(|a| {
                    a.id.as_str().to_lowercase().contains(&query)
                        || a.display_name.to_lowercase().contains(&query)
                })
                .collect();
            found.sort_unstable_by(|a, b| a.id.cmp(&b.id));
            let more = found.len() > limit;
            (found.into_iter().take(limit).cloned().collect(), more)
        }))
    }

    /// Creates the user (no edition, tier none) or renames it.
    pub async fn put_user(
        &self,
        caller: &Caller,
        account: AccountId,
        user: UserId,
        display_name: DisplayName,
    ) -> Result<Written<User>, DomainError> {
        self.write_user(caller, account, user, display_name, false)
            .await
    }

    /// PutUser that only creates: a user of that id already there is
    /// refused (`UserExists`), in the same write that would create it, so
    /// two admins adding one id at once never rename each other's.
    pub async fn add_user(
        &self,
        caller: &Caller,
        account: AccountId,
        user: UserId,
        display_name: DisplayName,
    ) -> Result<Written<User>, DomainError> {
        self.write_user(caller, account, user, display_name, true)
            .await
    }

    async fn write_user(
        &self,
        caller: &Caller,
        account: AccountId,
        user: UserId,
        display_name: DisplayName,
        only_new: bool,
    ) -> Result<Written<User>, DomainError> {
        authorize(caller, Rpc::PutUser, Some(&account), Some(&user))?;
        let display_name = String::from(display_name);
        let now = (self.clock)();
        let ctx = self.context(caller, Rpc::PutUser, account.as_str(), user.as_str());
        self.store
            .write_upgrading(
                &Target::User(account.clone(), user.clone()),
                ctx,
                user_v1,
                move |current| {
                    require_account(&current, &account)?;
                    let next = match current.user {
                        Some(_) if only_new => {
                            return Err(DomainError::UserExists {
                                account: account.clone(),
                                user: user.clone(),
                            });
                        }
                        Some(existing) if existing.display_name == display_name => {
                            return Ok(WritePlan::new(vec![], existing));
                        }
                        Some(existing) => User {
                            display_name: display_name.clone(),
                            revision: current.next_revision,
                            updated_at: now,
                            ..existing
                        },
                        None => User::new(
                            account.clone(),
                            user.clone(),
                            display_name.clone(),
                            current.next_revision,
                            now,
                        ),
                    };
                    Ok(WritePlan::new(vec![Mutation::PutUser(next.clone())], next))
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
                    Ok(WritePlan::new(vec![deleted], ()))
                },
            )
            .await
    }

    /// Deletes the account, every one of its users, and revokes every token
    /// bound to it, in one write at one revision: one audit record per user
    /// deleted, then the account's. Re-creating the same id later starts
    /// empty, and the revoked tokens stay revoked.
    pub async fn delete_account(
        &self,
        caller: &Caller,
        account: AccountId,
    ) -> Result<Written<AccountDeleted>, DomainError> {
        authorize(caller, Rpc::DeleteAccount, Some(&account), None)?;
        let now = (self.clock)();
        let ctx = self.context(caller, Rpc::DeleteAccount, account.as_str(), "");
        self.store
            .write(
                &Target::WholeAccount(account.clone()),
                ctx,
                move |current| {
                    require_account(&current, &account)?;
                    if current.users.len() > MAX_DELETED_USERS {
                        return Err(DomainError::AccountTooLarge {
                            account: account.clone(),
                            users: current.users.len(),
                            max: MAX_DELETED_USERS,
                            rpc: Rpc::DeleteAccount,
                        });
                    }
                    let live: Vec<Token> = current
                        .tokens
                        .into_iter()
                        .filter(|t| t.revoked_at.is_none())
                        .collect();
                    let mut mutations = Vec::with_capacity(current.users.len() + live.len() + 1);
                    mutations.extend(
                        current
                            .users
                            .iter()
                            .map(|u| Mutation::DeleteUser(account.clone(), u.id.clone())),
                    );
                    let output = AccountDeleted {
                        users_deleted: current.users.len() as u64,
                        tokens_revoked: live.len() as u64,
                    };
                    // Counts only: the account's trail outlives it, and a
                    // re-created account's admin reads it.
                    let detail = format!(
                        "deleted account `{account}` with its {} users; revoked {} tokens",
                        output.users_deleted, output.tokens_revoked
                    );
                    mutations.extend(live.iter().map(|t| {
                        Mutation::PutToken(Token {
                            revoked_at: Some(now),
                            ..t.clone()
                        })
                    }));
                    mutations.push(Mutation::DeleteAccount(account.clone()));
                    let mut planned = WritePlan::new(mutations, output);
                    planned.details.push(detail);
                    Ok(planned)
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
        if change.edition.is_none() && change.tier.is_none() && change.supervisor_scope.is_none() {
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
            .write_upgrading(
                &Target::User(account.clone(), user.clone()),
                ctx,
                ServicesChanged::v1,
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
                    let planned = plan_services(&catalogue, account, existing, &change)?;
                    if planned.edition == existing.edition
                        && planned.tier == existing.tier
                        && planned.supervisor_scope == existing.supervisor_scope
                    {
                        let output = ServicesChanged {
                            user: existing.clone(),
                            notices: planned.notices,
                        };
                        return Ok(WritePlan::new(vec![], output));
                    }
                    let mut mutations = Vec::with_capacity(2);
                    if let Some(started) = account.starting_analytics(planned.tier, now) {
                        mutations.push(Mutation::PutAccount(started));
                    }
                    let updated = User {
                        edition: planned.edition,
                        tier: planned.tier,
                        supervisor_scope: planned.supervisor_scope,
                        revision: current.next_revision,
                        updated_at: now,
                        ..existing.clone()
                    };
                    mutations.push(Mutation::PutUser(updated.clone()));
                    let details = planned.notices.iter().map(|n| n.message.clone()).collect();
                    Ok(WritePlan {
                        mutations,
                        output: ServicesChanged {
                            user: updated,
                            notices: planned.notices,
                        },
                        details,
                        refused: None,
                    })
                },
            )
            .await
    }
}

pub(super) fn require_account<'a>(
    current: &'a TargetState,
    id: &AccountId,
) -> Result<&'a Account, DomainError> {
    current
        .account
        .as_ref()
        .ok_or_else(|| DomainError::AccountNotFound(id.clone()))
}

fn require_user<'a>(
    current: &'a TargetState,
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
