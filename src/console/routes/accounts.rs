//! Operators pick the account first (list and search), and can create one.

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;

use super::{CsrfForm, Posted, Signed, failure, page, sentence};
use crate::console::{
    Console,
    service::{DomainError, account_id, display_name},
    templates::{accounts, href},
};

/// Accounts per page.
const PAGE: usize = 50;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: String,
}

pub async fn list(
    State(console): State<Console>,
    signed: Signed,
    Query(query): Query<ListQuery>,
) -> Response {
    render(
        &console,
        &signed,
        &query,
        accounts::CreateForm::default(),
        StatusCode::OK,
    )
}

fn render(
    console: &Console,
    signed: &Signed,
    query: &ListQuery,
    form: accounts::CreateForm,
    status: StatusCode,
) -> Response {
    let service = console.service();
    let after = account_id(&query.after).ok();
    let (found, more) = match service.accounts(&signed.caller, &query.q, after.as_ref(), PAGE) {
        Ok(found) => found,
        Err(e) => return failure(signed, None, &e),
    };
    let lines = match service.catalogue(&signed.caller) {
        Ok(c) => c.product_lines().to_vec(),
        Err(e) => return failure(signed, None, &e),
    };
    page(
        status,
        accounts::list(&accounts::ListView {
            chrome: signed.chrome(None),
            accounts: &found,
            query: query.q.trim(),
            paged: after.is_some(),
            next: more.then(|| found.last().map(|a| a.id.as_str())).flatten(),
            lines: &lines,
            form,
        }),
    )
}

#[derive(Deserialize)]
pub struct CreateAccount {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    account_id: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    product_line: String,
}

impl CsrfForm for CreateAccount {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn create(
    State(console): State<Console>,
    Posted(signed, form): Posted<CreateAccount>,
) -> Response {
    let mut kept = accounts::CreateForm {
        account_id: form.account_id.trim().to_owned(),
        display_name: form.display_name.trim().to_owned(),
        product_line: form.product_line.clone(),
        ..Default::default()
    };
    let id = match account_id(&kept.account_id) {
        Ok(id) => Some(id),
        Err(e) => {
            kept.id_error = Some(if kept.account_id.is_empty() {
                "Enter an account ID".to_owned()
            } else {
                sentence(&format!(
                    "account ID {e}; use letters, digits and . _ - @ : +"
                ))
            });
            None
        }
    };
    let typed = match display_name(&kept.display_name) {
        Ok(typed) => Some(typed),
        Err(e) => {
            kept.name_error = Some(sentence(&format!("display name {e}")));
            None
        }
    };
    if let (Some(id), Some(typed)) = (&id, typed) {
        let created = console
            .service()
            .create_account(&signed.caller, id, typed, kept.product_line.clone())
            .await;
        match created {
            Ok(_) => return Redirect::to(&href::users(id, "", None)).into_response(),
            Err(DomainError::AccountExists(_)) => {
                kept.id_error = Some(format!("An account with ID {id} already exists"));
            }
            Err(e @ DomainError::UnknownProductLine { .. }) => {
                kept.line_error = Some(sentence(&e.to_string()));
            }
            Err(e) => return failure(&signed, None, &e),
        }
    }
    let query = ListQuery {
        q: String::new(),
        after: String::new(),
    };
    render(
        &console,
        &signed,
        &query,
        kept,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
}
