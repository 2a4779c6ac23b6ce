//! Edit user → Services and permissions: the edition licence, the analytics
//! access (worded as the support articles word it), Save; and the user's
//! analytics as the dashboard gateway sees it.

use std::time::Duration;

use maud::{Markup, html};

use super::{
    Chrome, FieldError, edition_label, field_error, href, page, tier_label, tier_short, time,
};
use crate::console::service::{Account, Decision, ProductLine, ReportKind, ScopeKind, Tier, User};

/// What the page shows.
pub struct View<'a> {
    pub chrome: Chrome<'a>,
    pub account: &'a Account,
    /// The user as stored now.
    pub user: &'a User,
    pub line: Option<&'a ProductLine>,
    /// The edition and tier the form shows (the stored ones, or what the
    /// person chose when a save was refused).
    pub edition: Option<&'a str>,
    pub tier: Tier,
    /// The stored tier and revision the form is for: sent back on Save.
    pub shown_tier: Tier,
    pub revision: u64,
    pub banner: Option<String>,
    pub notices: Vec<String>,
    pub edition_error: Option<String>,
    pub tier_error: Option<String>,
    pub conflict: Option<String>,
    /// Why the form may not be used (an admin's own user).
    pub locked: Option<String>,
    pub decision: &'a Decision,
    pub data_delay: Duration,
}

pub fn render(v: &View) -> Markup {
    let mut errors = Vec::new();
    for (target, message) in [
        ("edition", &v.conflict),
        ("edition", &v.locked),
        ("edition", &v.edition_error),
        (tier_target(v), &v.tier_error),
    ] {
        if let Some(message) = message {
            errors.push(FieldError {
                target: target.to_owned(),
                message: message.clone(),
            });
        }
    }
    let user = v.user;
    let max = v.line.map_or(Tier::None, |l| l.max_tier(v.edition));
    page(
        &v.chrome,
        "Services and permissions",
        &errors,
        html! {
            nav class="breadcrumbs" aria-label="Breadcrumb" {
                ol {
                    li { a href=(href::users(&v.account.id, "", None)) { "Users" } }
                    li { a href=(href::user(&v.account.id, &user.id)) { "Edit user" } }
                    li aria-current="page" { "Services and permissions" }
                }
            }
            span class="caption" { (user.display_name) " (" (user.id.as_str()) "), " (v.account.display_name) }
            h1 { "Services and permissions" }
            @if let Some(banner) = &v.banner {
                div class="banner" role="status" { p { (banner) } }
            }
            @if let Some(conflict) = &v.conflict {
                div class="conflict" id="conflict" { p { (conflict) } }
            }
            form method="post" action=(href::services(&v.account.id, &user.id)) novalidate {
                input type="hidden" name="csrf" value=(v.chrome.who.as_ref().map_or("", |w| w.csrf));
                input type="hidden" name="revision" value=(v.revision);
                input type="hidden" name="shown_tier" value=(v.shown_tier.name());
                input type="hidden" name="tier_auto" value="" data-tier-auto;
                @if let Some(locked) = &v.locked {
                    div class="locked" id="locked" {
                        p class="error-message" { span class="visually-hidden" { "Error: " } (locked) }
                    }
                }
                fieldset class="group" disabled[v.locked.is_some()] {
                    legend class="legend-m" { "Assign services to user" }
                    (edition_field(v))
                    (tier_field(v, max))
                }
                @if v.locked.is_none() {
                    div class="actions" {
                        button type="submit" class="button" { "Save" }
                        a href=(href::user(&v.account.id, &user.id)) { "Cancel" }
                    }
                }
            }
            (gateway(v))
        },
    )
}

fn tier_target(v: &View) -> &'static str {
    match v.tier {
        Tier::None => "tier-none",
        Tier::Essentials => "tier-essentials",
        Tier::Supervisor => "tier-supervisor",
    }
}

fn edition_field(v: &View) -> Markup {
    let error = v.edition_error.as_deref();
    // A conflict or a lock is about the whole form: the first control
    // names it too, so a screen reader hears it there.
    let mut described = vec!["edition-hint"];
    for (id, present) in [
        ("edition-error", error.is_some()),
        ("conflict", v.conflict.is_some()),
        ("locked", v.locked.is_some()),
    ] {
        if present {
            described.push(id);
        }
    }
    let described = described.join(" ");
    html! {
        div class=(if error.is_some() { "field field-error" } else { "field" }) {
            label class="label" for="edition" { "Edition licence" }
            p class="hint" id="edition-hint" {
                "The licence decides which analytics access the user can have."
            }
            (field_error("edition", error))
            select class="select" id="edition" name="edition" aria-describedby=(described) data-edition {
                option value="" selected[v.edition.is_none()] { "No licence" }
                @if let Some(line) = v.line {
                    @for e in &line.editions {
                        option value=(e.id) selected[v.edition == Some(e.id.as_str())] { (e.id) }
                    }
                }
            }
        }
    }
}

fn tier_field(v: &View, max: Tier) -> Markup {
    let error = v.tier_error.as_deref();
    let mut described = vec!["tier-hint"];
    if error.is_some() {
        described.push("tier-error");
    }
    if !v.notices.is_empty() {
        described.push("tier-notice");
    }
    html! {
        div class=(if error.is_some() { "field field-error" } else { "field" }) {
            fieldset class="radios" aria-describedby=(described.join(" ")) {
                legend class="legend" { "Analytics access" }
                p class="hint" id="tier-hint" {
                    "Any user with an edition licence can be given Analytics Essentials. "
                    "Supervisor Analytics adds advanced reporting, with the editions that include it."
                }
                (field_error("tier", error))
                @if !v.notices.is_empty() {
                    div class="field-notice" id="tier-notice" role="status" {
                        @for n in &v.notices { p { (n) } }
                    }
                }
                @for tier in Tier::ALL {
                    (radio(v, tier, max))
                }
            }
        }
    }
}

fn radio(v: &View, tier: Tier, max: Tier) -> Markup {
    let id = format!("tier-{}", tier.name());
    let allowed = tier.allowed_up_to(max);
    // The checked choice stays usable, so a refusal can be corrected.
    let disabled = !allowed && tier != v.tier;
    let editions: Vec<&str> = v
        .line
        .map(|l| l.editions_allowing(tier))
        .unwrap_or_default();
    let needs = list(&editions);
    let reason = if allowed {
        None
    } else {
        Some(match v.edition {
            None => format!("Needs an edition licence: {needs}."),
            Some(e) => format!("Not included in {e}: needs {needs}."),
        })
    };
    let reason_id = format!("{id}-reason");
    html! {
        div class="radio" {
            input class="radio-input" type="radio" id=(id) name="tier" value=(tier.name())
                checked[v.tier == tier] disabled[disabled]
                data-editions=(if tier == Tier::None { "*".to_owned() } else { editions.join(" ") })
                aria-describedby=(reason_id);
            label class="radio-label" for=(id) { (tier_label(tier)) }
            p class="hint radio-hint" id=(reason_id) data-needs=(needs) hidden[reason.is_none()] {
                @if let Some(reason) = &reason { (reason) }
            }
        }
    }
}

/// `X4, X5 or X6`.
fn list(items: &[&str]) -> String {
    match items {
        [] => "an edition that includes it".to_owned(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// What `CheckAnalyticsAccess` answers for this user now.
fn scope_kind_label(kind: ScopeKind) -> &'static str {
    match kind {
        ScopeKind::Site => "site",
        ScopeKind::UserGroup => "user group",
        ScopeKind::RingGroup => "ring group",
        ScopeKind::CallQueue => "call queue",
    }
}

fn gateway(v: &View) -> Markup {
    let d = v.decision;
    let delay = super::duration(v.data_delay);
    html! {
        section class="gateway" aria-labelledby="gateway-title" {
            h2 id="gateway-title" { "Analytics as the dashboard gateway sees it" }
            dl class="summary" {
                div { dt { "Edition licence" } dd { (edition_label(v.user.edition.as_deref())) } }
                div { dt { "Analytics access" } dd { (tier_short(v.user.tier)) } }
                // Rule 12: shown, not edited here (set over the API or the
                // command line); a save that keeps Supervisor keeps it.
                @if let Some(scope) = &d.supervisor_scope {
                    div {
                        dt { "Supervisor sees" }
                        dd id="supervisor-scope" {
                            @match scope.refs() {
                                None => { "The whole account" }
                                Some(refs) => {
                                    "Only these groups: "
                                    @for (i, r) in refs.iter().enumerate() {
                                        @if i > 0 { ", " }
                                        (scope_kind_label(r.kind)) " " code { (r.id) }
                                    }
                                }
                            }
                        }
                    }
                }
                div {
                    dt { "Dashboard icon" }
                    dd id="dashboard-icon" {
                        @if d.allowed { "Shown on the user's application panel (" (tier_short(d.tier)) ")" }
                        @else { "Not shown: " (super::words(&d.reason)) }
                    }
                }
                div {
                    dt { "Historical data" }
                    dd id="historical-data" {
                        @match (d.data_available_at, d.data_ready) {
                            (Some(at), true) => { "Available since " (time(at)) "." }
                            (Some(at), false) => {
                                "Following initial purchase and setup, it takes about " (delay)
                                " for data to populate: historical reports are available from "
                                (time(at)) ". Live reports can be used now."
                            }
                            (None, _) => {
                                "Not started: historical data becomes available " (delay)
                                " after the first user of this account is given analytics."
                            }
                        }
                    }
                }
            }
            @if d.allowed {
                h3 { "Reports" }
                ul class="reports" {
                    @for r in d.reports.iter() {
                        li {
                            (r.report.display_name)
                            @if r.report.kind == ReportKind::Live { " (live)" }
                            @if !r.available {
                                span class="pending" {
                                    " — from "
                                    (d.data_available_at.map(time).unwrap_or_default())
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
