//! Services and permissions: the form and its Save.
//!
//! Save is one `UpdateUserServices` write at the revision the page was
//! rendered at, so a change made meanwhile (by anyone, through any door) is
//! a conflict that overwrites nothing. The analytics choice is sent only if
//! the person changed it: when it is still the tier the page was rendered
//! with (or the one the script moved it to as the edition changed), it is
//! left out, so lowering the licence alone lowers Supervisor to Essentials
//! with the service's notice (rule 6), with JavaScript on or off.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;

use super::{CsrfForm, Posted, Signed, failure, page, sentence, user_of};
use crate::console::{
    Console,
    service::{AccountId, DomainError, Notice, NoticeKind, Service, Tier, User},
    templates::{
        services::{View, render},
        tier_label,
    },
};

const OWN_SERVICES: &str = "You cannot change your own services: admins cannot assign permissions to themselves. Another admin of this account can.";

pub async fn show(
    State(console): State<Console>,
    signed: Signed,
    Path((account, user)): Path<(String, String)>,
) -> Response {
    let (account, user) = match user_of(&signed, &account, &user) {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    let stored = match console.service().user(&signed.caller, &account, &user) {
        Ok(u) => u,
        Err(e) => return failure(&signed, Some(&account), &e),
    };
    let form = Shown::stored(&stored);
    respond(
        &console,
        &signed,
        &account,
        &stored,
        form,
        Outcome::default(),
    )
    .await
}

#[derive(Deserialize)]
pub struct ServicesForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    revision: String,
    #[serde(default)]
    shown_tier: String,
    #[serde(default)]
    edition: String,
    /// Absent when no radio was sent (none checked, or the checked one
    /// disabled).
    tier: Option<String>,
    /// The tier the script chose as the edition changed; empty if none.
    #[serde(default)]
    tier_auto: String,
}

impl CsrfForm for ServicesForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn save(
    State(console): State<Console>,
    Path((account, user)): Path<(String, String)>,
    Posted(signed, form): Posted<ServicesForm>,
) -> Response {
    let (account, user) = match user_of(&signed, &account, &user) {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    let service = console.service();
    let (Ok(revision), Ok(shown_tier)) = (form.revision.parse::<u64>(), form.shown_tier.parse())
    else {
        return page(
            StatusCode::BAD_REQUEST,
            crate::console::templates::message(
                &signed.chrome(Some(&account)),
                "The form could not be read",
                "Go back, reload the page and try again. Nothing was changed.",
            ),
        );
    };
    let edition = Some(form.edition.trim()).filter(|e| !e.is_empty());
    let chosen: Option<Tier> = form.tier.as_deref().and_then(|t| t.parse().ok());
    let auto: Option<Tier> = form.tier_auto.parse().ok();
    // Sent only when the person chose it (see the module's comment).
    let tier = chosen.filter(|t| *t != shown_tier && Some(*t) != auto);
    let result = service
        .save_services(
            &signed.caller,
            &account,
            &user,
            edition.map(str::to_owned),
            tier,
            revision,
        )
        .await;
    let mut outcome = Outcome::default();
    let (stored, form) = match result {
        Ok(saved) => {
            outcome.banner = Some(saved_banner(&saved.user, &saved.notices, revision));
            outcome.notices = saved
                .notices
                .iter()
                .map(|n| notice_text(n, saved.user.edition.as_deref()))
                .collect();
            let form = Shown::stored(&saved.user);
            (saved.user, form)
        }
        Err(error) => {
            let stored = match service.user(&signed.caller, &account, &user) {
                Ok(u) => u,
                Err(e) => return failure(&signed, Some(&account), &e),
            };
            let kept = Shown {
                edition: edition.map(str::to_owned),
                tier: chosen.unwrap_or(shown_tier),
                shown_tier,
                revision,
            };
            match error {
                DomainError::RevisionMismatch { .. } => {
                    outcome.conflict = Some(format!(
                        "Someone else changed this user's services while this page was open, so nothing was saved. The page now shows the current values (you had chosen {} and {}). Check them, then save again.",
                        edition.unwrap_or("no licence"),
                        tier_label(kept.tier)
                    ));
                    let fresh = Shown::stored(&stored);
                    (stored, fresh)
                }
                DomainError::TierNotAllowed {
                    edition, allowing, ..
                } => {
                    outcome.tier_error = Some(format!(
                        "{edition} does not include {}. Choose a lower level, or an edition that includes it: {}. Nothing was changed.",
                        tier_label(kept.tier),
                        or_list(&allowing)
                    ));
                    (stored, kept)
                }
                DomainError::TierNeedsEdition { allowing, .. } => {
                    outcome.tier_error = Some(format!(
                        "{} needs an edition licence: choose one of {} first. Nothing was changed.",
                        tier_label(kept.tier),
                        or_list(&allowing)
                    ));
                    (stored, kept)
                }
                DomainError::UnknownEdition { .. } | DomainError::ProductLineRetired(_) => {
                    outcome.edition_error = Some(sentence(&error.to_string()));
                    (stored, kept)
                }
                DomainError::PermissionDenied(_)
                    if !Service::may_change_services(&signed.caller, &account, &user) =>
                {
                    (stored, kept)
                }
                other => return failure(&signed, Some(&account), &other),
            }
        }
    };
    respond(&console, &signed, &account, &stored, form, outcome).await
}

/// The values the form shows, and the state it is for.
struct Shown {
    edition: Option<String>,
    tier: Tier,
    shown_tier: Tier,
    revision: u64,
}

impl Shown {
    fn stored(user: &User) -> Self {
        Shown {
            edition: user.edition.clone(),
            tier: user.tier,
            shown_tier: user.tier,
            revision: user.revision,
        }
    }
}

#[derive(Default)]
struct Outcome {
    banner: Option<String>,
    notices: Vec<String>,
    edition_error: Option<String>,
    tier_error: Option<String>,
    conflict: Option<String>,
}

async fn respond(
    console: &Console,
    signed: &Signed,
    account_id: &AccountId,
    stored: &User,
    form: Shown,
    outcome: Outcome,
) -> Response {
    let service = console.service();
    let caller = &signed.caller;
    let account = match service.account(caller, account_id) {
        Ok(a) => a,
        Err(e) => return failure(signed, Some(account_id), &e),
    };
    let (catalogue, decision) = match (
        service.catalogue(caller),
        service.check(caller, account_id, &stored.id).await,
    ) {
        (Ok(c), Ok(d)) => (c, d),
        (Err(e), _) | (_, Err(e)) => return failure(signed, Some(account_id), &e),
    };
    let locked = (!Service::may_change_services(caller, account_id, &stored.id))
        .then(|| OWN_SERVICES.to_owned());
    let view = View {
        chrome: signed.chrome(Some(account_id)),
        account: &account,
        user: stored,
        line: catalogue.product_line(&account.product_line),
        edition: form.edition.as_deref(),
        tier: form.tier,
        shown_tier: form.shown_tier,
        revision: form.revision,
        banner: outcome.banner,
        notices: outcome.notices,
        edition_error: outcome.edition_error,
        tier_error: outcome.tier_error,
        conflict: outcome.conflict,
        locked,
        decision: &decision,
        data_delay: catalogue.data_delay(),
    };
    let status = if view.tier_error.is_some() || view.edition_error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else if view.conflict.is_some() {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    page(status, render(&view))
}

fn saved_banner(user: &User, notices: &[Notice], before: u64) -> String {
    if user.revision == before && notices.is_empty() {
        return "Nothing to save: the services were already as chosen.".to_owned();
    }
    format!(
        "Saved: {} with {}.",
        user.edition.as_deref().unwrap_or("No licence"),
        tier_label(user.tier)
    )
}

/// The service's notice in the page's words.
fn notice_text(notice: &Notice, edition: Option<&str>) -> String {
    match notice.kind {
        NoticeKind::TierLowered => format!(
            "Supervisor Analytics was lowered to Analytics Essentials: {} does not include Supervisor Analytics.",
            edition.unwrap_or("the new edition")
        ),
        NoticeKind::TierRemoved => "Analytics access was set to None, do not allow access: without an edition licence no analytics can be given.".to_owned(),
        NoticeKind::ScopeDropped => "The groups this supervisor was limited to were removed with Supervisor Analytics.".to_owned(),
    }
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => "none in this product line".to_owned(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}
