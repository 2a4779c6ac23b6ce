//! The rules of a services change (`domain.md` 2, 3, 4, 6, 7 and 12), pure:
//! what edition, tier and supervisor scope a change leads to, with its
//! notices, or why it is refused. UpdateUserServices and every import row apply them here.

use super::{DomainError, ServicesChange};
use crate::{
    catalogue::Catalogue,
    domain::{Account, Notice, NoticeKind, SupervisorScope, Tier, User},
};

/// What a services change leads to.
#[derive(Debug)]
pub(super) struct Planned {
    pub edition: Option<String>,
    pub tier: Tier,
    /// Set exactly when `tier` is Supervisor.
    pub supervisor_scope: Option<SupervisorScope>,
    /// What was changed that the caller did not ask for.
    pub notices: Vec<Notice>,
}

/// The edition and tier `change` gives `user` of `account`, or why it is
/// refused.
pub(super) fn plan_services(
    catalogue: &Catalogue,
    account: &Account,
    user: &User,
    change: &ServicesChange,
) -> Result<Planned, DomainError> {
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
    let max = catalogue.max_tier(&account.product_line, edition.as_deref());
    let mut notices = Vec::new();
    let tier = match change.tier {
        Some(tier) => {
            // Rules 2, 3, 4 and 7: a tier the edition does not allow is
            // refused, naming the editions that would allow it.
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
    let supervisor_scope = plan_scope(user, change, tier, &mut notices)?;
    Ok(Planned {
        edition,
        tier,
        supervisor_scope,
        notices,
    })
}

/// Rule 12: a scope exists only with Supervisor. One given for any other
/// tier is refused; a new supervisor given none sees the whole account; a
/// supervisor who stays one keeps the scope unless given another; and the
/// scope goes with Supervisor (with a notice when it was a list of groups).
fn plan_scope(
    user: &User,
    change: &ServicesChange,
    tier: Tier,
    notices: &mut Vec<Notice>,
) -> Result<Option<SupervisorScope>, DomainError> {
    if tier != Tier::Supervisor {
        if change.supervisor_scope.is_some() {
            return Err(DomainError::ScopeNeedsSupervisor {
                user: user.id.clone(),
                tier,
            });
        }
        if let Some(SupervisorScope::Only(refs)) = &user.supervisor_scope {
            // A list can be long: the notice (kept in the audit trail)
            // names the first few groups and counts the rest.
            const NAMED: usize = 3;
            let mut named: Vec<String> = refs.iter().take(NAMED).map(ToString::to_string).collect();
            if refs.len() > NAMED {
                named.push(format!("and {} more", refs.len() - NAMED));
            }
            notices.push(Notice {
                kind: NoticeKind::ScopeDropped,
                message: format!(
                    "analytics was lowered from supervisor to {tier}, so the supervisor scope ({}) was dropped",
                    named.join(", ")
                ),
            });
        }
        return Ok(None);
    }
    Ok(Some(
        match (&change.supervisor_scope, &user.supervisor_scope) {
            (Some(given), _) => given.clone(),
            (None, Some(kept)) if user.tier == Tier::Supervisor => kept.clone(),
            (None, _) => SupervisorScope::WholeAccount,
        },
    ))
}

fn owned(ids: Vec<&str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}
