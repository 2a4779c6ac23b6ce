//! Moving an account to another product line (rule 15): the service runs
//! the domain's plan (`domain::migration::plan_move`, pure) on the account
//! and every one of its users as the one writer reads them, and commits
//! the changed users and the account in one write at one revision.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    Caller, DomainError, Entitlements, authorize,
    users::{MAX_WHOLE_ACCOUNT_USERS, require_account},
};
use crate::{
    domain::{
        Account, AccountId, Rpc,
        migration::{MoveCounts, MoveRequest, MovedUser, plan_move},
    },
    store::{Mutation, Target, WritePlan, Written},
};

/// The answer of a move (or of its dry run).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountMoved {
    pub account: AccountId,
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    pub counts: MoveCounts,
    /// Every user of the account, in id order, before and after. Not kept
    /// for a retry (an account may have 100,000 users): a replay answers
    /// the counts only, and the audit trail holds every change.
    #[serde(skip)]
    pub users: Vec<MovedUser>,
}

impl Entitlements {
    /// Moves `account` as `request` asks: every user in one write, or
    /// (`dry_run`) only the plan, at the revision it was planned at.
    pub async fn migrate_account(
        &self,
        caller: &Caller,
        account: AccountId,
        request: MoveRequest,
        dry_run: bool,
    ) -> Result<Written<AccountMoved>, DomainError> {
        authorize(caller, Rpc::MigrateAccount, Some(&account), None)?;
        let now = (self.clock)();
        let catalogue = Arc::clone(&self.catalogue);
        let ctx = self.context(caller, Rpc::MigrateAccount, account.as_str(), "");
        self.store
            .write(
                &Target::WholeAccount(account.clone()),
                ctx,
                move |current| {
                    let stored = require_account(&current, &account)?;
                    if current.users.len() > MAX_WHOLE_ACCOUNT_USERS {
                        return Err(DomainError::AccountTooLarge {
                            account: account.clone(),
                            users: current.users.len(),
                            max: MAX_WHOLE_ACCOUNT_USERS,
                            rpc: Rpc::MigrateAccount,
                        });
                    }
                    // What the one writer sees is the committed state: the
                    // revision a dry run answers, and the one
                    // expected_revision is compared with.
                    let committed = current.next_revision - 1;
                    let plan = plan_move(&catalogue, stored, &current.users, committed, &request)?;
                    let mut mutations = Vec::new();
                    let mut details = Vec::new();
                    if !dry_run {
                        mutations.reserve(plan.users.len() + 1);
                        for (user, moved) in current.users.iter().zip(&plan.users) {
                            debug_assert_eq!(user.id, moved.user_id);
                            if moved.changed() {
                                let after = moved.apply_to(user, current.next_revision, now);
                                mutations.push(Mutation::PutUser(after));
                            }
                        }
                        mutations.push(Mutation::PutAccount(Account {
                            product_line: plan.to.clone(),
                            ..stored.clone()
                        }));
                        // One line for the write, shared by each user's
                        // record: a user's own changes are its before and
                        // after.
                        details.push(format!(
                            "moved account `{}` from product line `{}` to `{}`",
                            stored.id, plan.from, plan.to
                        ));
                    }
                    let output = AccountMoved {
                        account: stored.id.clone(),
                        counts: plan.counts(),
                        from: plan.from,
                        to: plan.to,
                        dry_run,
                        users: plan.users,
                    };
                    Ok(WritePlan {
                        mutations,
                        output,
                        details,
                        refused: None,
                    })
                },
            )
            .await
    }
}
