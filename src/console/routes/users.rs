//! Users: the list (search, paging), Edit user, add a user, remove a user.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{CsrfForm, Posted, Signed, account_of, failure, page, sentence, user_of};
use crate::console::{
    Console,
    service::{DomainError, Service, display_name, user_id},
    templates::{href, users},
};

/// Users per page.
pub const PAGE: usize = 50;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: String,
    /// What was just done, for the banner: `added` or `removed`.
    #[serde(default)]
    done: String,
    #[serde(default)]
    user: String,
}

pub async fn list(
    State(console): State<Console>,
    signed: Signed,
    Path(account): Path<String>,
    Query(query): Query<ListQuery>,
) -> Response {
    let account = match account_of(&signed, &account) {
        Ok(a) => a,
        Err(response) => return response,
    };
    let service = console.service();
    let after = user_id(&query.after).ok();
    let found = service.account(&signed.caller, &account).and_then(|a| {
        service
            .users(&signed.caller, &account, &query.q, after.as_ref(), PAGE)
            .map(|page| (a, page))
    });
    let (record, (users, more)) = match found {
        Ok(found) => found,
        Err(e) => return failure(&signed, Some(&account), &e),
    };
    let banner = match (query.done.as_str(), user_id(&query.user)) {
        ("removed", Ok(user)) => Some(format!("User {user} was removed.")),
        _ => None,
    };
    page(
        StatusCode::OK,
        users::list(&users::ListView {
            chrome: signed.chrome(Some(&account)),
            account: &record,
            users: &users,
            query: query.q.trim(),
            paged: after.is_some(),
            next: more.then(|| users.last().map(|u| u.id.as_str())).flatten(),
            banner,
            own_user: signed.principal().user.as_ref(),
        }),
    )
}

pub async fn edit(
    State(console): State<Console>,
    signed: Signed,
    Path((account, user)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
) -> Response {
    let (account, user) = match user_of(&signed, &account, &user) {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    let service = console.service();
    let found = service
        .account(&signed.caller, &account)
        .and_then(|a| Ok((a, service.user(&signed.caller, &account, &user)?)));
    let (record, stored) = match found {
        Ok(found) => found,
        Err(e) => return failure(&signed, Some(&account), &e),
    };
    let banner = match query.done.as_str() {
        "added" => Some("The user was added. Give them services below.".to_owned()),
        "renamed" => Some("The display name was saved.".to_owned()),
        _ => None,
    };
    page(
        StatusCode::OK,
        users::edit(&users::EditView {
            chrome: signed.chrome(Some(&account)),
            account: &record,
            user: &stored,
            name: &stored.display_name,
            name_error: None,
            banner,
            own: !Service::may_change_services(&signed.caller, &account, &user),
        }),
    )
}

#[derive(Deserialize)]
pub struct NameForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    display_name: String,
}

impl CsrfForm for NameForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Edit user → Save display name.
pub async fn rename(
    State(console): State<Console>,
    Path((account, user)): Path<(String, String)>,
    Posted(signed, form): Posted<NameForm>,
) -> Response {
    let (account, user) = match user_of(&signed, &account, &user) {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    let service = console.service();
    let name = form.display_name.trim().to_owned();
    let result = match display_name(&name) {
        Err(e) => Err(sentence(&format!("display name {e}"))),
        Ok(typed) => match service.user(&signed.caller, &account, &user) {
            Err(e) => return failure(&signed, Some(&account), &e),
            Ok(_) => match service
                .put_user(&signed.caller, &account, &user, typed)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => return failure(&signed, Some(&account), &e),
            },
        },
    };
    match result {
        Ok(_) => {
            Redirect::to(&format!("{}?done=renamed", href::user(&account, &user))).into_response()
        }
        Err(message) => {
            let found = service
                .account(&signed.caller, &account)
                .and_then(|a| Ok((a, service.user(&signed.caller, &account, &user)?)));
            let (record, stored) = match found {
                Ok(found) => found,
                Err(e) => return failure(&signed, Some(&account), &e),
            };
            page(
                StatusCode::UNPROCESSABLE_ENTITY,
                users::edit(&users::EditView {
                    chrome: signed.chrome(Some(&account)),
                    account: &record,
                    user: &stored,
                    name: &name,
                    name_error: Some(message),
                    banner: None,
                    own: !Service::may_change_services(&signed.caller, &account, &user),
                }),
            )
        }
    }
}

pub async fn add_form(
    State(console): State<Console>,
    signed: Signed,
    Path(account): Path<String>,
) -> Response {
    let account = match account_of(&signed, &account) {
        Ok(a) => a,
        Err(response) => return response,
    };
    match console.service().account(&signed.caller, &account) {
        Ok(record) => page(
            StatusCode::OK,
            users::add(&users::AddView {
                chrome: signed.chrome(Some(&account)),
                account: &record,
                user_id: "",
                name: "",
                id_error: None,
                name_error: None,
            }),
        ),
        Err(e) => failure(&signed, Some(&account), &e),
    }
}

/// Add a user: created with no licence and no analytics.
pub async fn add(
    State(console): State<Console>,
    Path(account): Path<String>,
    Posted(signed, form): Posted<NameForm>,
) -> Response {
    let account = match account_of(&signed, &account) {
        Ok(a) => a,
        Err(response) => return response,
    };
    let service = console.service();
    let record = match service.account(&signed.caller, &account) {
        Ok(a) => a,
        Err(e) => return failure(&signed, Some(&account), &e),
    };
    let id_text = form.user_id.trim();
    let name = form.display_name.trim();
    let mut id_error = None;
    let mut name_error = None;
    let user = match user_id(id_text) {
        Ok(user) => Some(user),
        Err(e) => {
            id_error = Some(if id_text.is_empty() {
                "Enter a user ID".to_owned()
            } else {
                sentence(&format!(
                    "user ID {e}; use letters, digits and . _ - @ : +, up to 128 characters"
                ))
            });
            None
        }
    };
    let typed = match display_name(name) {
        Ok(typed) => Some(typed),
        Err(e) => {
            name_error = Some(sentence(&format!("display name {e}")));
            None
        }
    };
    if let (Some(user), Some(typed)) = (&user, typed) {
        match service
            .add_user(&signed.caller, &account, user, typed)
            .await
        {
            Ok(_) => {
                return Redirect::to(&format!("{}?done=added", href::user(&account, user)))
                    .into_response();
            }
            Err(DomainError::UserExists { .. }) => {
                id_error = Some(format!(
                    "A user with ID {user} already exists in this account"
                ));
            }
            Err(e) => return failure(&signed, Some(&account), &e),
        }
    }
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        users::add(&users::AddView {
            chrome: signed.chrome(Some(&account)),
            account: &record,
            user_id: id_text,
            name,
            id_error,
            name_error,
        }),
    )
}

pub async fn remove_form(
    State(console): State<Console>,
    signed: Signed,
    Path((account, user)): Path<(String, String)>,
) -> Response {
    let (account, user) = match user_of(&signed, &account, &user) {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    match console.service().user(&signed.caller, &account, &user) {
        Ok(stored) => page(
            StatusCode::OK,
            users::remove(&signed.chrome(Some(&account)), &stored),
        ),
        Err(e) => failure(&signed, Some(&account), &e),
    }
}

#[derive(Deserialize)]
pub struct Confirm {
    #[serde(default)]
    csrf: String,
}

impl CsrfForm for Confirm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn remove(
    State(console): State<Console>,
    Path((account, user)): Path<(String, String)>,
    Posted(signed, _): Posted<Confirm>,
) -> Response {
    let (account, user) = match user_of(&signed, &account, &user) {
        Ok(ids) => ids,
        Err(response) => return response,
    };
    match console
        .service()
        .delete_user(&signed.caller, &account, &user)
        .await
    {
        Ok(()) => Redirect::to(&format!(
            "{}?done=removed&user={}",
            href::users(&account, "", None),
            href::enc(user.as_str())
        ))
        .into_response(),
        Err(e) => failure(&signed, Some(&account), &e),
    }
}
