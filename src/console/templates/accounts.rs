//! Accounts (operators): pick one, search, or create one.

use maud::{Markup, html};

use super::{Chrome, FieldError, field_error, href, page};
use crate::console::service::{Account, ProductLine};

/// The create-account form as typed, with its errors.
#[derive(Default)]
pub struct CreateForm {
    pub account_id: String,
    pub display_name: String,
    pub product_line: String,
    pub id_error: Option<String>,
    pub name_error: Option<String>,
    pub line_error: Option<String>,
}

pub struct ListView<'a> {
    pub chrome: Chrome<'a>,
    pub accounts: &'a [Account],
    pub query: &'a str,
    pub paged: bool,
    pub next: Option<&'a str>,
    pub lines: &'a [ProductLine],
    pub form: CreateForm,
}

pub fn list(v: &ListView) -> Markup {
    let f = &v.form;
    let mut errors = Vec::new();
    for (target, message) in [
        ("account_id", &f.id_error),
        ("account_name", &f.name_error),
        ("product_line", &f.line_error),
    ] {
        if let Some(m) = message {
            errors.push(FieldError {
                target: target.to_owned(),
                message: m.clone(),
            });
        }
    }
    page(
        &v.chrome,
        "Accounts",
        &errors,
        html! {
            h1 { "Accounts" }
            p { "Pick the account whose users you want to manage." }
            form method="get" action="/accounts" class="search" role="search" {
                label class="label" for="q" { "Search by account ID or name" }
                div class="search-row" {
                    input class="input" type="search" id="q" name="q" value=(v.query);
                    button type="submit" class="button button-secondary" { "Search" }
                }
            }
            @if v.accounts.is_empty() {
                p { @if v.query.is_empty() { "There are no accounts yet." } @else { "No accounts match your search." } }
            } @else {
                table class="table" {
                    caption class="visually-hidden" { "Accounts" }
                    thead { tr {
                        th scope="col" { "Account ID" }
                        th scope="col" { "Name" }
                        th scope="col" { "Product line" }
                    } }
                    tbody {
                        @for a in v.accounts {
                            tr {
                                td { a href=(href::users(&a.id, "", None)) { (a.id.as_str()) } }
                                td { (a.display_name) }
                                td { (a.product_line) }
                            }
                        }
                    }
                }
            }
            nav class="pager" aria-label="Pages" {
                @if v.paged { a href=(href::accounts(v.query, None)) { "First page" } }
                @if let Some(next) = v.next { a href=(href::accounts(v.query, Some(next))) { "Next page" } }
            }
            h2 id="create" { "Create an account" }
            form method="post" action="/accounts" novalidate {
                input type="hidden" name="csrf" value=(v.chrome.who.as_ref().map_or("", |w| w.csrf));
                div class=(if f.id_error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="account_id" { "Account ID" }
                    (field_error("account_id", f.id_error.as_deref()))
                    input class="input" type="text" id="account_id" name="account_id" value=(f.account_id)
                        aria-describedby=[f.id_error.as_ref().map(|_| "account_id-error")];
                }
                div class=(if f.name_error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="account_name" { "Account name" }
                    (field_error("account_name", f.name_error.as_deref()))
                    input class="input" type="text" id="account_name" name="display_name" value=(f.display_name)
                        maxlength="256" aria-describedby=[f.name_error.as_ref().map(|_| "account_name-error")];
                }
                div class=(if f.line_error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="product_line" { "Product line" }
                    (field_error("product_line", f.line_error.as_deref()))
                    select class="select" id="product_line" name="product_line"
                        aria-describedby=[f.line_error.as_ref().map(|_| "product_line-error")] {
                        @for l in v.lines {
                            option value=(l.id) selected[f.product_line == l.id] { (l.display_name) " (" (l.id) ")" }
                        }
                    }
                }
                button type="submit" class="button" { "Create account" }
            }
        },
    )
}
