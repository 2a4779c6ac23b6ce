//! The rules of a services change (`domain.md` 2, 3, 4, 6 and 7), pure:
//! what edition and tier a change leads to, with its notices, or why it is
//! refused. UpdateUserServices and every import row apply them here.

use super::{DomainError, ServicesChange};
use crate::{
    catalogue::Catalogue,
    domain::{Account, Notice, NoticeKind, Tier, User},
};

/// What a services change leads to.
#[derive(Debug)]
pub(super) struct Planned {
    pub edition: Option<String>,
    pub tier: Tier,
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
    Ok(Planned {
        edition,
        tier,
        notices,
    })
}

fn owned(ids: Vec<&str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}
