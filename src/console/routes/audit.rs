//! The account's audit trail: who changed what and when, before and after,
//! refusals included, and through which door.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use serde::Deserialize;

use super::{Signed, account_of, failure, page};
use crate::console::{Console, templates::audit};

/// Records per page.
const PAGE: usize = 50;

#[derive(Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: u64,
}

pub async fn list(
    State(console): State<Console>,
    signed: Signed,
    Path(account): Path<String>,
    Query(query): Query<AuditQuery>,
) -> Response {
    let account = match account_of(&signed, &account) {
        Ok(a) => a,
        Err(response) => return response,
    };
    let service = console.service();
    let found = match service.account(&signed.caller, &account) {
        Ok(a) => service
            .changes(&signed.caller, &account, query.after, PAGE)
            .await
            .map(|changes| (a, changes)),
        Err(e) => Err(e),
    };
    let (record, (changes, more)) = match found {
        Ok(found) => found,
        Err(e) => return failure(&signed, Some(&account), &e),
    };
    page(
        StatusCode::OK,
        audit::list(&audit::ListView {
            chrome: signed.chrome(Some(&account)),
            account: &record,
            changes: &changes,
            paged: query.after > 0,
            next: more.then(|| changes.last().map(|c| c.seq)).flatten(),
        }),
    )
}
