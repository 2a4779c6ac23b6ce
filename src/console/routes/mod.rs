//! The console's routes, and the two extractors every page goes through:
//! `Signed` (a live session whose token still authenticates) and `Posted`
//! (`Signed`, plus a form whose CSRF token is the session's).

mod accounts;
mod audit;
mod services;
mod sign_in;
mod users;

use std::sync::Arc;

use axum::{
    Form, Router,
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use maud::Markup;
use serde::de::DeserializeOwned;

use super::{
    Console,
    service::{AccountId, DomainError, Principal, Role, Service, UserId, account_id, user_id},
    session::{Lookup, same_token},
    templates::{self, Chrome},
};
use crate::service::Caller;

pub fn router() -> Router<Console> {
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in::form).post(sign_in::submit))
        .route("/sign-out", axum::routing::post(sign_in::sign_out))
        .route("/accounts", get(accounts::list).post(accounts::create))
        .route(
            "/accounts/{account}/users",
            get(users::list).post(users::add),
        )
        .route("/accounts/{account}/users/new", get(users::add_form))
        .route(
            "/accounts/{account}/users/{user}",
            get(users::edit).post(users::rename),
        )
        .route(
            "/accounts/{account}/users/{user}/services",
            get(services::show).post(services::save),
        )
        .route(
            "/accounts/{account}/users/{user}/remove",
            get(users::remove_form).post(users::remove),
        )
        .route("/accounts/{account}/audit", get(audit::list))
        .fallback(not_found)
}

/// A signed-in request: its session is live and its token still
/// authenticates (a revoked token's sessions end here).
pub struct Signed {
    pub caller: Caller,
    pub csrf: String,
    /// The session cookie's value (to end it at sign-out).
    session: String,
}

impl Signed {
    pub fn principal(&self) -> &Arc<Principal> {
        &self.caller.principal
    }

    /// The page frame for this person, about `account` if any.
    pub fn chrome<'a>(&'a self, account: Option<&'a AccountId>) -> Chrome<'a> {
        Chrome {
            who: Some(templates::Who {
                name: &self.principal().name,
                role: self.principal().role,
                csrf: &self.csrf,
                operator: self.principal().role != Role::AccountAdmin,
            }),
            account,
        }
    }
}

fn cookie_value<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Why a request was sent to the sign-in page.
fn to_sign_in(reason: &str) -> Response {
    Redirect::to(&format!("/sign-in?ended={reason}")).into_response()
}

impl FromRequestParts<Console> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Console) -> Result<Self, Response> {
        let Some(id) = cookie_value(parts, console.session_cookie()) else {
            return Err(Redirect::to("/sign-in").into_response());
        };
        let (secret, csrf) = match console.inner.sessions.touch(id) {
            Lookup::Live { secret, csrf } => (secret, csrf),
            Lookup::Expired => return Err(to_sign_in("expired")),
            Lookup::Missing => return Err(Redirect::to("/sign-in").into_response()),
        };
        match console.service().authenticate(secret.expose()) {
            Ok(principal) => Ok(Signed {
                caller: Service::caller(principal),
                csrf,
                session: id.to_owned(),
            }),
            Err(_) => {
                console.inner.sessions.end(id);
                Err(to_sign_in("revoked"))
            }
        }
    }
}

/// A form that carries the session's CSRF token.
pub trait CsrfForm {
    fn csrf(&self) -> &str;
}

/// A signed-in POST whose form carries the session's CSRF token.
pub struct Posted<T>(pub Signed, pub T);

impl<T> FromRequest<Console> for Posted<T>
where
    T: DeserializeOwned + CsrfForm + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, console: &Console) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed = Signed::from_request_parts(&mut parts, console).await?;
        let request = Request::from_parts(parts, body);
        let Form(form) = Form::<T>::from_request(request, console)
            .await
            .map_err(|e| {
                let chrome = signed.chrome(None);
                page(
                    StatusCode::BAD_REQUEST,
                    templates::message(&chrome, "The form could not be read", &e.body_text()),
                )
            })?;
        if !same_token(&signed.csrf, form.csrf()) {
            return Err(page(
                StatusCode::FORBIDDEN,
                templates::message(
                    &signed.chrome(None),
                    "This form has expired",
                    "The form did not come from this session of the console. Nothing was changed. Go back, reload the page and try again.",
                ),
            ));
        }
        Ok(Posted(signed, form))
    }
}

pub fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page for a refusal or failure that is not about one form field.
pub fn failure(signed: &Signed, account: Option<&AccountId>, error: &DomainError) -> Response {
    let chrome = signed.chrome(account);
    let (status, title) = match error {
        DomainError::PermissionDenied(_) => (StatusCode::FORBIDDEN, "You may not see this page"),
        DomainError::AccountNotFound(_) | DomainError::UserNotFound { .. } => {
            (StatusCode::NOT_FOUND, "Page not found")
        }
        DomainError::Unauthenticated(_) => return to_sign_in("revoked"),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sorry, the service cannot do that now",
        ),
    };
    page(
        status,
        templates::message(&chrome, title, &sentence(&error.to_string())),
    )
}

/// A service message as a sentence for a page (without the backticks that
/// mark values for machines and logs).
pub fn sentence(message: &str) -> String {
    let message = templates::words(message);
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => {
            let mut s: String = first.to_uppercase().collect();
            s.push_str(chars.as_str());
            if !s.ends_with('.') {
                s.push('.');
            }
            s
        }
        None => String::new(),
    }
}

/// The account of a URL, checked as gRPC checks ids; a malformed one is a
/// page that does not exist.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the page a handler returns at once, made at most once per request"
)]
pub fn account_of(signed: &Signed, account: &str) -> Result<AccountId, Response> {
    account_id(account).map_err(|_| missing(signed))
}

/// The account and user of a URL; see [`account_of`].
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the page a handler returns at once, made at most once per request"
)]
pub fn user_of(
    signed: &Signed,
    account: &str,
    user: &str,
) -> Result<(AccountId, UserId), Response> {
    Ok((
        account_of(signed, account)?,
        user_id(user).map_err(|_| missing(signed))?,
    ))
}

fn missing(signed: &Signed) -> Response {
    page(
        StatusCode::NOT_FOUND,
        templates::message(
            &signed.chrome(None),
            "Page not found",
            "There is no such account or user.",
        ),
    )
}

async fn home(signed: Signed) -> Response {
    match (&signed.principal().role, &signed.principal().account) {
        (Role::AccountAdmin, Some(account)) => {
            Redirect::to(&templates::href::users(account, "", None)).into_response()
        }
        _ => Redirect::to("/accounts").into_response(),
    }
}

async fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        templates::message(
            &Chrome::default(),
            "Page not found",
            "If you typed the address, check it is correct.",
        ),
    )
}
