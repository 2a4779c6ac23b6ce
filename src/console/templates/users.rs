//! Users, Edit user, add a user, remove a user.

use maud::{Markup, html};

use super::{Chrome, FieldError, edition_label, field_error, href, page, tier_short};
use crate::console::service::{Account, User, UserId};

pub struct ListView<'a> {
    pub chrome: Chrome<'a>,
    pub account: &'a Account,
    pub users: &'a [User],
    pub query: &'a str,
    /// Not the first page.
    pub paged: bool,
    /// The last id of this page, when more follow.
    pub next: Option<&'a str>,
    pub banner: Option<String>,
    /// The signed-in admin's own user, marked in the list.
    pub own_user: Option<&'a UserId>,
}

pub fn list(v: &ListView) -> Markup {
    let account = &v.account.id;
    page(
        &v.chrome,
        "Users",
        &[],
        html! {
            span class="caption" { (v.account.display_name) " (" (account.as_str()) "), " (v.account.product_line) }
            h1 { "Users" }
            @if let Some(banner) = &v.banner {
                div class="banner" role="status" { p { (banner) } }
            }
            div class="toolbar" {
                form method="get" action=(href::users(account, "", None)) class="search" role="search" {
                    label class="label" for="q" { "Search by user ID or name" }
                    div class="search-row" {
                        input class="input" type="search" id="q" name="q" value=(v.query);
                        button type="submit" class="button button-secondary" { "Search" }
                    }
                }
                a class="button" href=(format!("{}/new", href::users(account, "", None))) { "Add a user" }
            }
            @if v.users.is_empty() {
                p { @if v.query.is_empty() { "This account has no users yet." } @else { "No users match your search." } }
            } @else {
                table class="table" {
                    caption class="visually-hidden" { "Users of " (v.account.display_name) }
                    thead {
                        tr {
                            th scope="col" { "User ID" }
                            th scope="col" { "Display name" }
                            th scope="col" { "Edition licence" }
                            th scope="col" { "Analytics access" }
                            th scope="col" { span class="visually-hidden" { "Actions" } }
                        }
                    }
                    tbody {
                        @for u in v.users {
                            tr {
                                td { (u.id.as_str()) @if v.own_user == Some(&u.id) { " (you)" } }
                                td { (u.display_name) }
                                td { (edition_label(u.edition.as_deref())) }
                                td { (tier_short(u.tier)) }
                                td {
                                    a class="edit" href=(href::user(account, &u.id)) {
                                        "Edit" span class="visually-hidden" { " " (u.id.as_str()) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            nav class="pager" aria-label="Pages" {
                @if v.paged { a href=(href::users(account, v.query, None)) { "First page" } }
                @if let Some(next) = v.next { a href=(href::users(account, v.query, Some(next))) { "Next page" } }
            }
        },
    )
}

pub struct EditView<'a> {
    pub chrome: Chrome<'a>,
    pub account: &'a Account,
    pub user: &'a User,
    /// The display name in the form (what was typed, after a refusal).
    pub name: &'a str,
    pub name_error: Option<String>,
    pub banner: Option<String>,
    /// The signed-in admin's own user.
    pub own: bool,
}

pub fn edit(v: &EditView) -> Markup {
    let u = v.user;
    let errors: Vec<FieldError> = v
        .name_error
        .iter()
        .map(|m| FieldError {
            target: "display_name".to_owned(),
            message: m.clone(),
        })
        .collect();
    page(
        &v.chrome,
        "Edit user",
        &errors,
        html! {
            nav class="breadcrumbs" aria-label="Breadcrumb" {
                ol {
                    li { a href=(href::users(&v.account.id, "", None)) { "Users" } }
                    li aria-current="page" { "Edit user" }
                }
            }
            span class="caption" { (v.account.display_name) }
            h1 { "Edit user: " (u.display_name) }
            @if let Some(banner) = &v.banner {
                div class="banner" role="status" { p { (banner) } }
            }
            dl class="summary" {
                div { dt { "User ID" } dd { (u.id.as_str()) } }
                div { dt { "Edition licence" } dd { (edition_label(u.edition.as_deref())) } }
                div { dt { "Analytics access" } dd { (tier_short(u.tier)) } }
            }
            ul class="tabs" {
                li { a class="tab" href=(href::services(&v.account.id, &u.id)) { "Services and permissions" } }
            }
            @if v.own {
                p class="hint" { "This is your own user: you cannot change its services." }
            }
            form method="post" action=(href::user(&v.account.id, &u.id)) novalidate {
                input type="hidden" name="csrf" value=(v.chrome.who.as_ref().map_or("", |w| w.csrf));
                div class=(if v.name_error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="display_name" { "Display name" }
                    (field_error("display_name", v.name_error.as_deref()))
                    input class="input" type="text" id="display_name" name="display_name"
                        value=(v.name) maxlength="256"
                        aria-describedby=[v.name_error.as_ref().map(|_| "display_name-error")];
                }
                button type="submit" class="button button-secondary" { "Save display name" }
            }
            p { a class="danger-link" href=(href::remove(&v.account.id, &u.id)) { "Remove user" } }
        },
    )
}

pub struct AddView<'a> {
    pub chrome: Chrome<'a>,
    pub account: &'a Account,
    pub user_id: &'a str,
    pub name: &'a str,
    pub id_error: Option<String>,
    pub name_error: Option<String>,
}

pub fn add(v: &AddView) -> Markup {
    let mut errors = Vec::new();
    for (target, message) in [("user_id", &v.id_error), ("display_name", &v.name_error)] {
        if let Some(m) = message {
            errors.push(FieldError {
                target: target.to_owned(),
                message: m.clone(),
            });
        }
    }
    page(
        &v.chrome,
        "Add a user",
        &errors,
        html! {
            span class="caption" { (v.account.display_name) }
            h1 { "Add a user" }
            form method="post" action=(href::users(&v.account.id, "", None)) novalidate {
                input type="hidden" name="csrf" value=(v.chrome.who.as_ref().map_or("", |w| w.csrf));
                div class=(if v.id_error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="user_id" { "User ID" }
                    p class="hint" id="user_id-hint" { "The extension's ID: letters, digits and . _ - @ : +, up to 128 characters." }
                    (field_error("user_id", v.id_error.as_deref()))
                    input class="input" type="text" id="user_id" name="user_id" value=(v.user_id)
                        aria-describedby=(if v.id_error.is_some() { "user_id-hint user_id-error" } else { "user_id-hint" });
                }
                div class=(if v.name_error.is_some() { "field field-error" } else { "field" }) {
                    label class="label" for="display_name" { "Display name" }
                    (field_error("display_name", v.name_error.as_deref()))
                    input class="input" type="text" id="display_name" name="display_name" value=(v.name)
                        maxlength="256" aria-describedby=[v.name_error.as_ref().map(|_| "display_name-error")];
                }
                div class="actions" {
                    button type="submit" class="button" { "Add user" }
                    a href=(href::users(&v.account.id, "", None)) { "Cancel" }
                }
            }
        },
    )
}

/// The confirmation before a user is removed.
pub fn remove(chrome: &Chrome, u: &User) -> Markup {
    page(
        chrome,
        "Remove user",
        &[],
        html! {
            h1 { "Remove " (u.display_name) " (" (u.id.as_str()) ")?" }
            div class="warning" {
                p { "The user and their services are removed at once: their dashboard icon disappears and their analytics access ends. This cannot be undone." }
            }
            form method="post" action=(href::remove(&u.account_id, &u.id)) {
                input type="hidden" name="csrf" value=(chrome.who.as_ref().map_or("", |w| w.csrf));
                div class="actions" {
                    button type="submit" class="button button-danger" { "Yes, remove user" }
                    a href=(href::user(&u.account_id, &u.id)) { "No, keep user" }
                }
            }
        },
    )
}
