//! Signing in with an API token, and out. The token's secret goes from the
//! form into the session map and nowhere else: it is never put back in a
//! page, a URL, a cookie or a log line.

use std::time::Instant;

use axum::{
    Form,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{CsrfForm, Posted, page};
use crate::console::{
    Console,
    listener::Peer,
    service::Role,
    session::{Secret, random_token, same_token},
    templates::{Chrome, sign_in},
};

#[derive(Deserialize)]
pub struct Ended {
    ended: Option<String>,
}

pub async fn form(State(console): State<Console>, Query(ended): Query<Ended>) -> Response {
    let notice = match ended.ended.as_deref() {
        Some("expired") => Some("Your session has expired. Sign in again."),
        Some("revoked") => Some(
            "Your session has ended: its token is no longer valid. Sign in with a valid token.",
        ),
        Some("signed-out") => Some("You have signed out."),
        _ => None,
    };
    fresh_form(&console, StatusCode::OK, notice, None)
}

/// The sign-in form with a new CSRF token, in a cookie and in the form
/// (there is no session yet to keep it in).
fn fresh_form(
    console: &Console,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&str>,
) -> Response {
    let Ok(csrf) = random_token() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::console::templates::message(
                &Chrome::default(),
                "Sorry, you cannot sign in now",
                "The server has no secure random numbers.",
            ),
        );
    };
    let cookie = console.cookie(console.sign_in_cookie(), &csrf, false);
    let mut response = page(status, sign_in::page(&csrf, notice, error));
    if let Ok(value) = cookie.parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub struct SignInForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub async fn submit(
    State(console): State<Console>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let expected = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == console.sign_in_cookie())
        .map_or("", |(_, v)| v);
    if !same_token(expected, &form.csrf) {
        return fresh_form(
            &console,
            StatusCode::FORBIDDEN,
            None,
            Some("The sign-in form had expired. Enter the token again."),
        );
    }
    let counters = &console.inner.sign_ins;
    let limiter = &console.inner.limiter;
    let now = Instant::now();
    if !limiter.may_try(peer.ip(), now) {
        counters.rate_limited.inc();
        tracing::warn!(addr = %peer.ip(), "console: sign-in refused untried: too many failed sign-ins");
        return fresh_form(
            &console,
            StatusCode::TOO_MANY_REQUESTS,
            None,
            Some("Too many failed sign-ins. Wait a minute, then try again."),
        );
    }
    let secret = form.token.trim();
    let principal = match console.service().authenticate(secret) {
        Ok(principal) => principal,
        Err(_) => {
            limiter.failed(peer.ip(), now);
            counters.bad_token.inc();
            tracing::info!(addr = %peer.ip(), "console: sign-in refused: token not accepted");
            return fresh_form(
                &console,
                StatusCode::UNAUTHORIZED,
                None,
                Some(
                    "The token was not accepted: it is unknown, revoked or mistyped. Check it and try again.",
                ),
            );
        }
    };
    if !matches!(principal.role, Role::Operator | Role::AccountAdmin) {
        limiter.failed(peer.ip(), now);
        counters.role_refused.inc();
        tracing::info!(token_id = %principal.token_id, role = %principal.role, "console: sign-in refused: role may not sign in");
        let message = format!(
            "A {} token cannot sign in to the console. Only operator and account-admin tokens may sign in.",
            principal.role
        );
        return fresh_form(&console, StatusCode::FORBIDDEN, None, Some(&message));
    }
    let Ok(id) = console.inner.sessions.start(Secret::new(secret.to_owned())) else {
        return fresh_form(
            &console,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            Some("The server cannot start a session now. Try again."),
        );
    };
    counters.signed_in.inc();
    tracing::info!(token_id = %principal.token_id, role = %principal.role, "console: signed in");
    let mut response = Redirect::to("/").into_response();
    let headers = response.headers_mut();
    for cookie in [
        console.cookie(console.session_cookie(), &id, false),
        console.cookie(console.sign_in_cookie(), "", true),
    ] {
        if let Ok(value) = cookie.parse() {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

impl CsrfForm for CsrfOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn sign_out(
    State(console): State<Console>,
    Posted(signed, _): Posted<CsrfOnly>,
) -> Response {
    console.inner.sessions.end(&signed.session);
    let mut response = Redirect::to("/sign-in?ended=signed-out").into_response();
    if let Ok(value) = console.cookie(console.session_cookie(), "", true).parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
