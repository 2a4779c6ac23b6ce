//! The audit trail of one account.

use maud::{Markup, html};

use super::{Chrome, edition_label, href, page, tier_short, time, words};
use crate::console::service::{Account, AuditRecord, Outcome, UserState, Via};

pub struct ListView<'a> {
    pub chrome: Chrome<'a>,
    pub account: &'a Account,
    pub changes: &'a [AuditRecord],
    pub paged: bool,
    /// The last sequence number of this page, when more follow.
    pub next: Option<u64>,
}

pub fn list(v: &ListView) -> Markup {
    page(
        &v.chrome,
        "Audit",
        &[],
        html! {
            span class="caption" { (v.account.display_name) " (" (v.account.id.as_str()) ")" }
            h1 { "Audit" }
            p { "Every change to this account, and every refused attempt, oldest first. Changes made in this console are marked “console”." }
            @if v.changes.is_empty() {
                p { "Nothing has been recorded yet." }
            } @else {
                table class="table audit" {
                    caption class="visually-hidden" { "Changes to " (v.account.display_name) }
                    thead { tr {
                        th scope="col" { "When" }
                        th scope="col" { "Who" }
                        th scope="col" { "What" }
                        th scope="col" { "User" }
                        th scope="col" { "Before" }
                        th scope="col" { "After" }
                        th scope="col" { "Outcome" }
                    } }
                    tbody {
                        @for c in v.changes {
                            tr {
                                td { (time(c.at)) br; span class="hint" { "revision " (c.revision) } }
                                td {
                                    (c.actor.name) br;
                                    span class="hint" { (c.actor.role.name()) ", " (c.actor.token_id) }
                                    br;
                                    @match c.actor.via {
                                        Via::Console => span class="tag" { "console" },
                                        Via::Api => span class="tag tag-grey" { "API" },
                                    }
                                }
                                td { (c.rpc.name()) }
                                td { (c.user_id) }
                                td { (state(c.before.as_ref())) }
                                td { (state(c.after.as_ref())) }
                                td {
                                    @match &c.outcome {
                                        Outcome::Applied => {
                                            "Applied"
                                            @for d in &c.details { br; span class="hint" { (words(d)) } }
                                        }
                                        Outcome::Refused { code, reason } => {
                                            strong class="refused" { "Refused" } " (" (code) ")" br;
                                            span class="hint" { (words(reason)) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav class="pager" aria-label="Pages" {
                @if v.paged { a href=(href::audit(&v.account.id, None)) { "First page" } }
                @if let Some(next) = v.next { a href=(href::audit(&v.account.id, Some(next))) { "Next page" } }
            }
        },
    )
}

fn state(s: Option<&UserState>) -> Markup {
    html! {
        @match s {
            None => { "—" }
            Some(s) => {
                (s.display_name) br;
                (edition_label(s.edition.as_deref())) ", " (tier_short(s.tier))
            }
        }
    }
}
