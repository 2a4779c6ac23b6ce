//! Moving an account to another product line (rule 15), pure: the plan of
//! a move (each user's edition and tier before and after, with notices),
//! or why the move is refused. The service runs it on what the one writer
//! read and commits the changed users and the account in one write.

use std::{fmt, time::SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    Account, AccountId, Notice, NoticeKind, RefusalKind, Tier, User, UserId,
    catalogue::{Catalogue, ProductLine},
};

/// How many users a refusal names; it gives the count of the rest.
pub const NAMED_IN_REFUSAL: usize = 5;

/// What a caller asks of a move, beyond the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveRequest {
    /// The product line to move to.
    pub to: String,
    /// Remove the licences that have no mapping (tier then none), instead
    /// of refusing the move.
    pub remove_unmapped_licences: bool,
    /// The move applies only if no user of the account changed after it.
    pub expected_revision: Option<u64>,
}

/// One user in a move's plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedUser {
    pub user_id: UserId,
    pub edition_before: Option<String>,
    pub tier_before: Tier,
    pub edition_after: Option<String>,
    pub tier_after: Tier,
    /// What the move changed that a same-named edition would not have: a
    /// lowered tier, a removed licence.
    pub notices: Vec<Notice>,
}

impl MovedUser {
    /// Whether the move changes this user's stored record.
    pub fn changed(&self) -> bool {
        self.edition_before != self.edition_after || self.tier_before != self.tier_after
    }

    /// The user as the move leaves it, at the move's `revision`: the one
    /// place a moved user is built (whatever else a lowered tier takes away
    /// with it belongs here).
    pub fn apply_to(&self, user: &User, revision: u64, now: SystemTime) -> User {
        User {
            edition: self.edition_after.clone(),
            tier: self.tier_after,
            // Rule 12: a scope exists only with Supervisor.
            supervisor_scope: match self.tier_after {
                Tier::Supervisor => user.supervisor_scope.clone(),
                _ => None,
            },
            revision,
            updated_at: now,
            ..user.clone()
        }
    }
}

/// The plan of a move: every user of the account, in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMove {
    pub from: String,
    pub to: String,
    pub users: Vec<MovedUser>,
}

/// The counts of a move's plan, which is what a retry gets back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveCounts {
    pub users: u64,
    /// Users whose edition or tier the move changes.
    pub changed: u64,
    pub tiers_lowered: u64,
    pub licences_removed: u64,
}

impl AccountMove {
    pub fn counts(&self) -> MoveCounts {
        let mut counts = MoveCounts {
            users: self.users.len() as u64,
            ..MoveCounts::default()
        };
        for u in &self.users {
            counts.changed += u64::from(u.changed());
            counts.tiers_lowered +=
                u64::from(u.edition_after.is_some() && u.tier_after < u.tier_before);
            counts.licences_removed +=
                u64::from(u.edition_before.is_some() && u.edition_after.is_none());
        }
        counts
    }
}

/// A user a refusal names, with what it names them for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named<T> {
    pub user: UserId,
    pub value: T,
}

/// The first few of many users, and how many there are in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstOf<T> {
    pub first: Vec<Named<T>>,
    pub count: usize,
}

impl<T> FirstOf<T> {
    fn new() -> Self {
        FirstOf {
            first: Vec::new(),
            count: 0,
        }
    }

    fn push(&mut self, user: &UserId, value: T) {
        if self.first.len() < NAMED_IN_REFUSAL {
            self.first.push(Named {
                user: user.clone(),
                value,
            });
        }
        self.count += 1;
    }
}

impl<T: fmt::Display> fmt::Display for FirstOf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, named) in self.first.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{}` ({})", named.user, named.value)?;
        }
        let rest = self.count - self.first.len();
        if rest > 0 {
            write!(f, " and {rest} more")?;
        }
        Ok(())
    }
}

/// An edition for a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditionName(pub String);

impl fmt::Display for EditionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "edition `{}`", self.0)
    }
}

/// A user's revision for a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtRevision(pub u64);

impl fmt::Display for AtRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "revision {}", self.0)
    }
}

/// Why a move is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoveRefused {
    /// The product line asked for is not in the catalogue (a bad request).
    #[error("to_product_line `{}` is unknown; use one of {}", super::field::shown(.given), .valid.join(", "))]
    UnknownLine { given: String, valid: Vec<String> },
    #[error("account `{account}` is already on product line `{line}`; there is nothing to move")]
    SameLine { account: AccountId, line: String },
    #[error(
        "the catalogue has no migration from product line `{from}` to `{to}`; account `{account}` can move to {}",
        if .available.is_empty() { "no other line".to_owned() } else { .available.join(", ") }
    )]
    NoMigration {
        account: AccountId,
        from: String,
        to: String,
        available: Vec<String>,
    },
    #[error(
        "users of account `{account}` hold an edition with no mapping to product line `{to}` ({} in all): {users}; give them an edition that maps, or set remove_unmapped_licences to remove those licences",
        .users.count
    )]
    Unmapped {
        account: AccountId,
        to: String,
        users: FirstOf<EditionName>,
    },
    #[error(
        "users of account `{account}` changed after expected_revision {expected} ({} in all): {users}; plan the move again (dry_run) and apply that plan",
        .users.count
    )]
    Changed {
        account: AccountId,
        expected: u64,
        users: FirstOf<AtRevision>,
    },
    #[error(
        "expected_revision {expected} is above the store's revision {current}; pass the revision a dry run answered"
    )]
    RevisionAhead { expected: u64, current: u64 },
}

impl MoveRefused {
    /// How the refusal is answered (and kept for a retry): a bad request,
    /// an account the move does not fit, or one that changed.
    pub fn kind(&self) -> RefusalKind {
        match self {
            MoveRefused::UnknownLine { .. } | MoveRefused::RevisionAhead { .. } => {
                RefusalKind::InvalidArgument
            }
            MoveRefused::SameLine { .. }
            | MoveRefused::NoMigration { .. }
            | MoveRefused::Unmapped { .. } => RefusalKind::FailedPrecondition,
            MoveRefused::Changed { .. } => RefusalKind::Aborted,
        }
    }
}

/// The plan of moving `account`, with its `users` (every one, as stored,
/// at store revision `revision`), as `request` asks, or why it is refused.
pub fn plan_move(
    catalogue: &Catalogue,
    account: &Account,
    users: &[User],
    revision: u64,
    request: &MoveRequest,
) -> Result<AccountMove, MoveRefused> {
    let to = catalogue
        .product_line(&request.to)
        .ok_or_else(|| MoveRefused::UnknownLine {
            given: request.to.clone(),
            valid: catalogue
                .product_lines()
                .iter()
                .map(|l| l.id.clone())
                .collect(),
        })?;
    let from = account.product_line.as_str();
    if from == to.id {
        return Err(MoveRefused::SameLine {
            account: account.id.clone(),
            line: to.id.clone(),
        });
    }
    let migration = catalogue
        .migration(from, &to.id)
        .ok_or_else(|| MoveRefused::NoMigration {
            account: account.id.clone(),
            from: from.to_owned(),
            to: to.id.clone(),
            available: catalogue
                .migrations()
                .iter()
                .filter(|m| m.from == from)
                .map(|m| m.to.clone())
                .collect(),
        })?;
    if let Some(expected) = request.expected_revision {
        unchanged_since(account, users, revision, expected)?;
    }
    let mut unmapped = FirstOf::new();
    let mut moved = Vec::with_capacity(users.len());
    for user in users {
        let Some(edition) = &user.edition else {
            // No licence: nothing to map, and no tier (rule 2).
            moved.push(unchanged(user));
            continue;
        };
        let mapped = migration.map_edition(to, edition);
        if mapped.is_none() && !request.remove_unmapped_licences {
            unmapped.push(&user.id, EditionName(edition.clone()));
            continue;
        }
        moved.push(move_user(user, edition, mapped, to));
    }
    if unmapped.count > 0 {
        return Err(MoveRefused::Unmapped {
            account: account.id.clone(),
            to: to.id.clone(),
            users: unmapped,
        });
    }
    Ok(AccountMove {
        from: from.to_owned(),
        to: to.id.clone(),
        users: moved,
    })
}

/// `expected_revision`: no user of the account changed (or was made) after
/// it, and it is a revision the store has reached.
fn unchanged_since(
    account: &Account,
    users: &[User],
    revision: u64,
    expected: u64,
) -> Result<(), MoveRefused> {
    if expected > revision {
        return Err(MoveRefused::RevisionAhead {
            expected,
            current: revision,
        });
    }
    let mut changed = FirstOf::new();
    for user in users.iter().filter(|u| u.revision > expected) {
        changed.push(&user.id, AtRevision(user.revision));
    }
    if changed.count > 0 {
        return Err(MoveRefused::Changed {
            account: account.id.clone(),
            expected,
            users: changed,
        });
    }
    Ok(())
}

fn unchanged(user: &User) -> MovedUser {
    MovedUser {
        user_id: user.id.clone(),
        edition_before: user.edition.clone(),
        tier_before: user.tier,
        edition_after: user.edition.clone(),
        tier_after: user.tier,
        notices: Vec::new(),
    }
}

/// One licensed user's move: the mapped edition, the tier kept where it
/// allows it and lowered where not (never raised); with no mapping (and
/// the caller's leave), no licence and no tier (rule 7).
fn move_user(user: &User, edition: &str, mapped: Option<&str>, to: &ProductLine) -> MovedUser {
    let mut notices = Vec::new();
    let (edition_after, tier_after) = match mapped {
        Some(mapped) => {
            let max = to.max_tier(Some(mapped));
            if user.tier > max {
                notices.push(Notice {
                    kind: NoticeKind::TierLowered,
                    message: format!(
                        "edition `{mapped}` of product line `{}` does not include {} analytics, so analytics was lowered to {max}",
                        to.id, user.tier
                    ),
                });
            }
            (Some(mapped.to_owned()), user.tier.min(max))
        }
        None => {
            let lowered = if user.tier > Tier::None {
                format!(" and analytics lowered from {} to none", user.tier)
            } else {
                String::new()
            };
            notices.push(Notice {
                kind: NoticeKind::TierRemoved,
                message: format!(
                    "edition `{edition}` has no mapping to product line `{}`, so the licence was removed{lowered}",
                    to.id
                ),
            });
            (None, Tier::None)
        }
    };
    if tier_after != Tier::Supervisor {
        // Rule 12: the scope goes with Supervisor (`apply_to`).
        notices.extend(
            user.supervisor_scope
                .as_ref()
                .and_then(|s| s.dropped(tier_after)),
        );
    }
    MovedUser {
        user_id: user.id.clone(),
        edition_before: user.edition.clone(),
        tier_before: user.tier,
        edition_after,
        tier_after,
        notices,
    }
}

#[cfg(test)]
mod tests;
