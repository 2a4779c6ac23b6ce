//! The check: may this user of this account open analytics, and at which
//! tier? Answered from the in-memory view against the catalogue in force;
//! a decision is a value, never an error (rule 14). The hot path: no disk,
//! and no allocation beyond the answer's own strings.

use std::{sync::Arc, time::SystemTime};

use super::{Caller, DomainError, Entitlements, FRESHNESS_WAIT};
use crate::{
    domain::{
        AccountIdRef, Decision, Denial, ReportAccess, Rpc, Text, Tier, UserIdRef,
        catalogue::Catalogue,
    },
    store::View,
};

impl Entitlements {
    /// Answers a check from the durable view against the catalogue in force.
    /// Never fails: unknown accounts and users are answers. Waits (at most
    /// `FRESHNESS_WAIT`) for `min_revision` first; 0 asks for none.
    pub async fn check(
        &self,
        caller: &Caller,
        account: AccountIdRef<'_>,
        user: UserIdRef<'_>,
        min_revision: u64,
    ) -> Result<Decision, DomainError> {
        caller
            .principal
            .authorize(Rpc::CheckAnalyticsAccess, Some(account.as_str()), None)?;
        self.await_revision(caller, min_revision).await?;
        Ok(self.read_answer(account, user))
    }

    /// `check` with no `min_revision` (0): there is nothing to wait for, so
    /// it answers at once, and the fast path needs no future for it.
    pub fn check_now(
        &self,
        caller: &Caller,
        account: AccountIdRef<'_>,
        user: UserIdRef<'_>,
    ) -> Result<Decision, DomainError> {
        caller
            .principal
            .authorize(Rpc::CheckAnalyticsAccess, Some(account.as_str()), None)?;
        Ok(self.read_answer(account, user))
    }

    fn read_answer(&self, account: AccountIdRef<'_>, user: UserIdRef<'_>) -> Decision {
        let now = (self.clock)();
        self.store
            .read(|view| self.answer(view, now, account, user))
    }

    /// Checks every `(account, user)` pair against one consistent view, in
    /// order, passing through items the caller already refused (`Err`); an
    /// item on an account the caller may not see gets its own
    /// PERMISSION_DENIED. Returns the results and the revision they reflect.
    pub async fn check_many<'a, E: From<DomainError>>(
        &self,
        caller: &Caller,
        items: impl IntoIterator<Item = Result<(AccountIdRef<'a>, UserIdRef<'a>), E>>,
        min_revision: u64,
    ) -> Result<(Vec<Result<Decision, E>>, u64), DomainError> {
        let principal = &caller.principal;
        principal.may_call(Rpc::BatchCheckAnalyticsAccess)?;
        self.await_revision(caller, min_revision).await?;
        let now = (self.clock)();
        Ok(self.store.read(|view| {
            let results = items
                .into_iter()
                .map(|item| {
                    let (account, user) = item?;
                    principal
                        .scope(Rpc::BatchCheckAnalyticsAccess, Some(account.as_str()), None)
                        .map_err(|e| E::from(DomainError::from(e)))?;
                    Ok(self.answer(view, now, account, user))
                })
                .collect();
            (results, view.revision())
        }))
    }

    /// Every report list a check can answer with (tier × data ready), the
    /// catalogue's own (`Decision::reports` is one of them), for the edge
    /// to encode once.
    pub fn check_report_lists(&self) -> Vec<Arc<[ReportAccess]>> {
        Tier::ALL
            .into_iter()
            .flat_map(|tier| [false, true].map(|ready| self.catalogue.report_access(tier, ready)))
            .collect()
    }

    /// Waits (at most `FRESHNESS_WAIT`) until reads reflect `min_revision`;
    /// 0 asks for nothing. The caller's token was checked against the view
    /// as it was before the wait: a revocation at or below `min_revision`
    /// (made on another replica, say) refuses the call now.
    async fn await_revision(&self, caller: &Caller, min_revision: u64) -> Result<(), DomainError> {
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
            })?;
        self.still_valid(&caller.principal)
    }

    /// The check's rules against one view.
    fn answer(
        &self,
        view: &View,
        now: SystemTime,
        account: AccountIdRef<'_>,
        user: UserIdRef<'_>,
    ) -> Decision {
        let revision = view.revision();
        let (account_rec, user_rec) = view.account_and_user(account.as_str(), user.as_str());
        let deny = |denial, stored_tier, edition, reason| Decision {
            allowed: false,
            tier: Tier::None,
            stored_tier,
            edition,
            denial: Some(denial),
            data_available_at: None,
            data_ready: false,
            reports: self.catalogue.report_access(Tier::None, false),
            revision,
            reason,
            supervisor_scope: None,
        };
        let Some(account_rec) = account_rec else {
            return deny(
                Denial::AccountNotFound,
                Tier::None,
                None,
                text(&["account `", account.as_str(), "` does not exist"]),
            );
        };
        let Some(user_rec) = user_rec else {
            return deny(
                Denial::UserNotFound,
                Tier::None,
                None,
                text(&[
                    "user `",
                    user.as_str(),
                    "` does not exist in account `",
                    account.as_str(),
                    "`",
                ]),
            );
        };
        let stored = user_rec.tier;
        let Some(edition) = user_rec.edition else {
            return deny(
                Denial::NoEdition,
                stored,
                None,
                text(&["user `", user.as_str(), "` has no edition licence"]),
            );
        };
        // Rule 13: the catalogue in force caps the stored tier; an edition
        // it does not hold (in this line) allows none.
        let found = self
            .catalogue
            .locate(&account_rec.product_line, edition)
            .map(|(line, at, e)| (e.max_tier, &self.texts.lines[line][at]));
        let edition_text = || {
            found.map_or_else(
                || Text::Made(edition.to_owned()),
                |(_, t)| Text::Shared(Arc::clone(&t.id)),
            )
        };
        if !stored.grants_access() {
            return deny(
                Denial::AnalyticsNotEnabled,
                stored,
                Some(edition_text()),
                text(&["analytics is not enabled for user `", user.as_str(), "`"]),
            );
        }
        let max = found.map_or(Tier::None, |(max, _)| max);
        let tier = stored.min(max);
        if !tier.grants_access() {
            let reason = found.map_or_else(
                || Text::Made(not_granted(edition, stored)),
                |(_, t)| Text::Shared(Arc::clone(&t.not_granted[stored as usize])),
            );
            return deny(
                Denial::EditionNotEligible,
                stored,
                Some(edition_text()),
                reason,
            );
        }
        let data_available_at = account_rec.data_available_at(self.catalogue.data_delay());
        let data_ready = data_available_at.is_some_and(|at| now >= at);
        let reports = self.catalogue.report_access(tier, data_ready);
        // `found` is set here: an edition the catalogue does not hold
        // allows no tier, so its check was denied above.
        let (denial, reason) = if tier < stored {
            (
                Some(Denial::EditionNotEligible),
                found.map_or_else(
                    || Text::Made(lowered(edition, stored, tier)),
                    |(_, t)| Text::Shared(Arc::clone(&t.lowered[stored as usize][tier as usize])),
                ),
            )
        } else {
            (
                None,
                found.map_or_else(
                    || Text::Made(enabled(edition, tier)),
                    |(_, t)| Text::Shared(Arc::clone(&t.enabled[tier as usize])),
                ),
            )
        };
        // Rule 12: the scope goes with the effective tier; a supervisor
        // lowered by the catalogue in force sees no scope.
        let supervisor_scope = if tier == Tier::Supervisor {
            user_rec.supervisor_scope
        } else {
            None
        };
        Decision {
            allowed: true,
            tier,
            stored_tier: stored,
            edition: Some(edition_text()),
            denial,
            data_available_at,
            data_ready,
            reports,
            revision,
            reason,
            supervisor_scope,
        }
    }
}

/// The texts of a check's answer that name only an edition and tiers, made
/// once per edition of the catalogue (`Text` says why), indexed as
/// `Catalogue::locate` places the edition.
pub(super) struct CheckTexts {
    lines: Vec<Vec<EditionTexts>>,
}

/// One edition's: by tier as `Tier as usize` (None, Essentials, Supervisor).
struct EditionTexts {
    id: Arc<str>,
    /// An allowed check's reason, by effective tier.
    enabled: [Arc<str>; 3],
    /// A lowered check's reason, by stored then effective tier.
    lowered: [[Arc<str>; 3]; 3],
    /// The reason of a stored tier the catalogue no longer grants at all.
    not_granted: [Arc<str>; 3],
}

impl CheckTexts {
    pub(super) fn new(catalogue: &Catalogue) -> Self {
        let lines = catalogue
            .product_lines()
            .iter()
            .map(|line| {
                line.editions
                    .iter()
                    .map(|e| {
                        let id = e.id.as_str();
                        EditionTexts {
                            id: Arc::from(id),
                            enabled: Tier::ALL.map(|t| Arc::from(enabled(id, t))),
                            lowered: Tier::ALL
                                .map(|stored| Tier::ALL.map(|t| Arc::from(lowered(id, stored, t)))),
                            not_granted: Tier::ALL.map(|stored| Arc::from(not_granted(id, stored))),
                        }
                    })
                    .collect()
            })
            .collect();
        CheckTexts { lines }
    }
}

/// The reason of an allowed check.
fn enabled(edition: &str, tier: Tier) -> String {
    [
        tier.name(),
        " analytics enabled with edition `",
        edition,
        "`",
    ]
    .concat()
}

/// The reason of a check whose stored tier the catalogue in force lowers.
fn lowered(edition: &str, stored: Tier, tier: Tier) -> String {
    [
        "edition `",
        edition,
        "` no longer includes ",
        stored.name(),
        " analytics in the catalogue in force; granted ",
        tier.name(),
    ]
    .concat()
}

/// The reason of a check whose stored tier the catalogue in force no longer
/// grants at all.
fn not_granted(edition: &str, stored: Tier) -> String {
    [
        "edition `",
        edition,
        "` no longer includes analytics in the catalogue in force; the stored ",
        stored.name(),
        " tier is not granted",
    ]
    .concat()
}

/// A text put together from its parts: one allocation of the right size,
/// where `format!` cost about 450 instructions a check (callgrind).
fn text(parts: &[&str]) -> Text {
    Text::Made(parts.concat())
}
