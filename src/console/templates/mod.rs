//! The pages, as maud templates: every value is escaped unless a template
//! says otherwise (none does). Forms follow GOV.UK's patterns: a label on
//! every control, radios in a fieldset with a legend, an error summary at
//! the top linking to each field, and the error beside its field, tied to
//! it with `aria-describedby`.

pub mod accounts;
pub mod audit;
pub mod services;
pub mod sign_in;
pub mod users;

use std::time::SystemTime;

use maud::{DOCTYPE, Markup, html};

use super::service::{AccountId, Role, Tier};

/// Who is signed in, for the page's header.
pub struct Who<'a> {
    pub name: &'a str,
    pub role: Role,
    pub csrf: &'a str,
    /// Operators (and provisioners, who cannot sign in) see every account.
    pub operator: bool,
}

/// The frame of a page: who is signed in, and the account it is about.
#[derive(Default)]
pub struct Chrome<'a> {
    pub who: Option<Who<'a>>,
    pub account: Option<&'a AccountId>,
}

/// An error about one field: `target` is the id of the control to focus.
pub struct FieldError {
    pub target: String,
    pub message: String,
}

/// A whole page.
pub fn page(chrome: &Chrome, title: &str, errors: &[FieldError], body: Markup) -> Markup {
    let title_text = if errors.is_empty() {
        format!("{title} – entitled console")
    } else {
        format!("Error: {title} – entitled console")
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title_text) }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                a class="skip-link" href="#main" { "Skip to main content" }
                header class="header" {
                    div class="header-inner" {
                        a class="brand" href="/" { "entitled" span class="brand-sub" { " admin console" } }
                        @if let Some(who) = &chrome.who {
                            nav class="nav" aria-label="Main" {
                                ul {
                                    @if who.operator {
                                        li { a href="/accounts" { "Accounts" } }
                                    }
                                    @if let Some(account) = chrome.account {
                                        li { a href=(href::users(account, "", None)) { "Users" } }
                                        li { a href=(href::audit(account, None)) { "Audit" } }
                                    }
                                }
                            }
                            div class="who" {
                                span { "Signed in as " strong { (who.name) } " (" (who.role.name()) ")" }
                                form method="post" action="/sign-out" class="inline" {
                                    input type="hidden" name="csrf" value=(who.csrf);
                                    button type="submit" class="button-link" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main id="main" class="main" {
                    (error_summary(errors))
                    (body)
                }
            }
        }
    }
}

/// GOV.UK's error summary: focused first, each error a link to its field.
pub fn error_summary(errors: &[FieldError]) -> Markup {
    html! {
        @if !errors.is_empty() {
            div class="error-summary" role="alert" aria-labelledby="error-summary-title" tabindex="-1" autofocus {
                h2 class="error-summary-title" id="error-summary-title" { "There is a problem" }
                ul {
                    @for e in errors {
                        li { a href=(format!("#{}", e.target)) { (e.message) } }
                    }
                }
            }
        }
    }
}

/// The error beside a field (its id is `<field>-error`, which the control
/// names in `aria-describedby`).
pub fn field_error(field: &str, message: Option<&str>) -> Markup {
    html! {
        @if let Some(message) = message {
            p class="error-message" id=(format!("{field}-error")) {
                span class="visually-hidden" { "Error: " } (message)
            }
        }
    }
}

/// A page that only says something.
pub fn message(chrome: &Chrome, title: &str, text: &str) -> Markup {
    page(
        chrome,
        title,
        &[],
        html! {
            h1 { (title) }
            p { (text) }
            p { a href="/" { "Go to the start" } }
        },
    )
}

/// The tier as the articles name it.
pub fn tier_label(tier: Tier) -> &'static str {
    match tier {
        Tier::None => "None, do not allow access",
        Tier::Essentials => "Analytics Essentials",
        Tier::Supervisor => "Supervisor Analytics",
    }
}

/// The tier in a table cell.
pub fn tier_short(tier: Tier) -> &'static str {
    match tier {
        Tier::None => "None",
        Tier::Essentials => "Analytics Essentials",
        Tier::Supervisor => "Supervisor Analytics",
    }
}

pub fn edition_label(edition: Option<&str>) -> &str {
    edition.unwrap_or("No licence")
}

/// `48 hours`, `90 minutes`, `2s`.
pub fn duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        3600 => "1 hour".to_owned(),
        s if s > 0 && s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{} minutes", s / 60),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// A service message for a page: its backticks (which mark values in
/// messages for machines and logs) left out.
pub fn words(message: &str) -> String {
    message.replace('`', "")
}

/// `2026-05-01 14:03:07 UTC`.
pub fn time(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Links, with every value percent-encoded.
pub mod href {
    use super::AccountId;
    use crate::console::service::UserId;

    /// Everything but unreserved characters percent-encoded.
    pub fn enc(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    pub fn users(account: &AccountId, query: &str, after: Option<&str>) -> String {
        let mut url = format!("/accounts/{}/users", enc(account.as_str()));
        let mut sep = '?';
        if !query.is_empty() {
            url.push_str(&format!("{sep}q={}", enc(query)));
            sep = '&';
        }
        if let Some(after) = after {
            url.push_str(&format!("{sep}after={}", enc(after)));
        }
        url
    }

    pub fn user(account: &AccountId, user: &UserId) -> String {
        format!(
            "/accounts/{}/users/{}",
            enc(account.as_str()),
            enc(user.as_str())
        )
    }

    pub fn services(account: &AccountId, user: &UserId) -> String {
        format!("{}/services", user_path(account, user))
    }

    pub fn remove(account: &AccountId, user: &UserId) -> String {
        format!("{}/remove", user_path(account, user))
    }

    fn user_path(account: &AccountId, user: &UserId) -> String {
        self::user(account, user)
    }

    pub fn audit(account: &AccountId, after: Option<u64>) -> String {
        match after {
            Some(after) => format!("/accounts/{}/audit?after={after}", enc(account.as_str())),
            None => format!("/accounts/{}/audit", enc(account.as_str())),
        }
    }

    pub fn accounts(query: &str, after: Option<&str>) -> String {
        match (query.is_empty(), after) {
            (true, None) => "/accounts".to_owned(),
            (true, Some(after)) => format!("/accounts?after={}", enc(after)),
            (false, None) => format!("/accounts?q={}", enc(query)),
            (false, Some(after)) => format!("/accounts?q={}&after={}", enc(query), enc(after)),
        }
    }
}
