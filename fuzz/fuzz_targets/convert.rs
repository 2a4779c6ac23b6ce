//! Any bytes as a request message of the kind the first byte chooses,
//! decoded with prost and converted to domain values the way the handlers
//! do (`grpc::convert`). Never a panic; each conversion either gives back
//! what was sent or an error that names its field in a bounded message;
//! cursors the server issues convert back to where they pointed.
#![no_main]

use std::{borrow::Borrow, sync::Arc};

use entitled::{
    domain::{AccountId, Principal, Role, Rpc, UserId},
    grpc::convert::{self, ConversionError},
    proto::v1 as pb,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// A refusal names its field and stays short however long the value.
fn refused(field: &str, e: &ConversionError) {
    let message = e.to_string();
    assert!(message.contains(field), "{message}");
    assert!(
        message.len() < 1024,
        "{} bytes: {message:.200}",
        message.len()
    );
}

/// An id: accepted unchanged, or refused naming its field.
fn id<T: Borrow<str>>(
    field: &'static str,
    value: &str,
    parse: fn(&'static str, String) -> Result<T, ConversionError>,
) -> Option<T> {
    match parse(field, value.to_owned()) {
        Ok(id) => {
            assert_eq!(id.borrow(), value);
            Some(id)
        }
        Err(e) => {
            refused(field, &e);
            None
        }
    }
}

fn account(field: &'static str, value: &str) -> Option<AccountId> {
    id(field, value, convert::account_id)
}

fn user(field: &'static str, value: &str) -> Option<UserId> {
    id(field, value, convert::user_id)
}

fn name(value: &str) {
    match convert::display_name("display_name", value.to_owned()) {
        Ok(n) => assert_eq!(n.as_str(), value),
        Err(e) => refused("display_name", &e),
    }
}

fn tier(value: i32) {
    match convert::tier("analytics_tier", value, convert::Unspecified::Refused) {
        Ok(t) => assert_eq!(pb::AnalyticsTier::from(t) as i32, value),
        Err(e) => refused("analytics_tier", &e),
    }
}

/// A supervisor scope: given back as sent (the whole account, or the same
/// references in the same order), or refused naming its field.
fn scope(value: &pb::SupervisorScope) {
    match convert::supervisor_scope(value) {
        Ok(s) => assert_eq!(pb::SupervisorScope::from(&s), *value),
        Err(e) => refused("supervisor_scope", &e.into()),
    }
}

fn writer<M: convert::WriteRequest>(rpc: Rpc, request: &M) {
    let principal = Arc::new(Principal {
        token_id: "fuzz".into(),
        name: "fuzz".into(),
        role: Role::Operator,
        account: None,
        user: None,
    });
    match convert::writer(&principal, rpc, request) {
        Ok(caller) => {
            let id = request.request_id();
            assert_eq!(
                caller.request.map(|r| r.id),
                (!id.is_empty()).then(|| id.to_owned())
            );
        }
        Err(e) => refused("request_id", &e),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            let Ok(r) = pb::PutUserRequest::decode(bytes) else {
                return;
            };
            writer(Rpc::PutUser, &r);
            account("account_id", &r.account_id);
            user("user_id", &r.user_id);
            name(&r.display_name);
        }
        1 => {
            let Ok(r) = pb::UpdateUserServicesRequest::decode(bytes) else {
                return;
            };
            writer(Rpc::UpdateUserServices, &r);
            account("account_id", &r.account_id);
            user("user_id", &r.user_id);
            if let Some(t) = r.analytics_tier {
                tier(t);
            }
            if let Some(s) = &r.supervisor_scope {
                scope(s);
            }
        }
        2 => {
            let Ok(r) = pb::ListUsersRequest::decode(bytes) else {
                return;
            };
            let size = convert::page_size(r.page_size);
            match size {
                Ok(n) => assert!(n >= 1),
                Err(e) => refused("page_size", &e),
            }
            if let Some(acc) = account("account_id", &r.account_id) {
                match convert::page_cursor(&acc, &r.page_token) {
                    Ok(Some(last)) => {
                        // A cursor that converts is one the server could
                        // have issued.
                        let again = convert::page_token(&acc, &last);
                        assert_eq!(convert::page_cursor(&acc, &again).ok(), Some(Some(last)));
                    }
                    Ok(None) => assert!(r.page_token.is_empty()),
                    Err(e) => refused("page_token", &e),
                }
            }
        }
        3 => {
            let Ok(r) = pb::ImportUsersRequest::decode(bytes) else {
                return;
            };
            writer(Rpc::ImportUsers, &r);
            if let Err(e) = convert::batch_items("rows", r.rows.len()) {
                refused("rows", &e);
            }
            for row in &r.rows {
                match convert::import_row(row) {
                    Ok(converted) => {
                        assert_eq!(converted.account_id.as_str(), row.account_id);
                        assert_eq!(converted.user_id.as_str(), row.user_id);
                        assert_eq!(converted.display_name.as_str(), row.display_name);
                        assert_eq!(converted.edition.as_deref().unwrap_or(""), row.edition);
                    }
                    // A bad row names the field at fault, in a bounded message.
                    Err(e) => {
                        let field = [
                            "account_id",
                            "user_id",
                            "display_name",
                            "analytics_tier",
                            "edition",
                            "supervisor_scope",
                        ]
                        .into_iter()
                        .find(|f| e.to_string().starts_with(f))
                        .unwrap_or_else(|| panic!("no field named: {e}"));
                        refused(field, &e.into());
                    }
                }
            }
        }
        4 => {
            let Ok(r) = pb::ListChangesRequest::decode(bytes) else {
                return;
            };
            match convert::audit_cursor(&r.page_token) {
                Ok(seq) if !r.page_token.is_empty() => {
                    let again = convert::audit_token(seq);
                    assert_eq!(convert::audit_cursor(&again).ok(), Some(seq));
                }
                Ok(seq) => assert_eq!(seq, 0),
                Err(e) => refused("page_token", &e),
            }
        }
        5 => {
            let Ok(r) = pb::CreateTokenRequest::decode(bytes) else {
                return;
            };
            writer(Rpc::CreateToken, &r);
            match convert::role(r.role) {
                Ok(role) => assert_eq!(pb::Role::from(role) as i32, r.role),
                Err(e) => refused("role", &e),
            }
            if let Err(e) = convert::optional_id("account_id", &r.account_id, convert::account_id) {
                refused("account_id", &e);
            }
        }
        6 => {
            let Ok(r) = pb::BatchCheckAnalyticsAccessRequest::decode(bytes) else {
                return;
            };
            if let Err(e) = convert::batch_items("items", r.items.len()) {
                refused("items", &e);
            }
            for item in &r.items {
                account("account_id", &item.account_id);
                user("user_id", &item.user_id);
            }
        }
        _ => {
            let Ok(r) = pb::CreateAccountRequest::decode(bytes) else {
                return;
            };
            writer(Rpc::CreateAccount, &r);
            account("account_id", &r.account_id);
            name(&r.display_name);
        }
    }
});
