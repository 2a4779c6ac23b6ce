//! The one place that converts between generated protobuf types and domain
//! types. Protobuf → domain (here) fails with a `ConversionError` that names
//! the field and the value; domain → protobuf (`answers.rs`) cannot fail.

mod answers;
mod pages;
#[cfg(test)]
mod tests;

pub use answers::{Answers, MoveAnswer};
pub use pages::{CLIENT_MESSAGE_BYTES, MAX_PAGE_BYTES, Pages, batch_answers, first_page};

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    domain::{
        AccountId, AccountIdRef, DisplayName, FieldError, Hidden, Principal, Role, Rpc, ScopeKind,
        SupervisorScope, Tier, Token, UserId, UserIdRef, Via,
        field::{self, RawScopeRef},
        migration::MoveRequest,
    },
    proto::v1 as pb,
    service::{Caller, ImportRow},
    store::RequestKey,
};

/// ListUsers' and ListTokens' page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// ListUsers' and ListTokens' largest page; larger requests are served
/// this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The most items one BatchCheckAnalyticsAccess may carry.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Why a request could not become domain values (or, for a batch check,
/// why its answer could not be sent).
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    /// One field (`domain::field`: the one message shape of every field).
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error(
        "{field} has {count} entries; send at most {max} per call and the rest in further calls"
    )]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    /// A batch whose answers would pass what a default client accepts
    /// (`pages::batch_answers`).
    #[error(
        "{field}: the answers to the first {first} of these {items} items would already be more \
         than the {max} bytes (4 MiB) a gRPC client accepts by default (supervisors scoped to \
         many groups make large answers); {advice}"
    )]
    AnswerTooLarge {
        field: &'static str,
        items: usize,
        first: usize,
        max: usize,
        advice: String,
    },
}

impl ConversionError {
    fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        FieldError::invalid(field, value, problem).into()
    }
}

/// A caller's value as a log line shows it: whole if it is short, else its
/// start and its length, so a caller cannot write megabytes into the logs.
pub struct Logged<'a>(pub &'a str);

impl std::fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MAX: usize = 128;
        let value = self.0;
        if value.len() <= MAX {
            return f.write_str(value);
        }
        let mut cut = MAX;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        write!(f, "{}… ({} bytes)", &value[..cut], value.len())
    }
}

/// Checks an id field without taking it (a token id).
pub fn id(field: &'static str, value: &str) -> Result<(), ConversionError> {
    Ok(field::id(field, value)?)
}

/// Checks a batch's item count.
pub fn batch_items(field: &'static str, count: usize) -> Result<(), ConversionError> {
    if count > MAX_BATCH_ITEMS {
        return Err(ConversionError::TooMany {
            field,
            count,
            max: MAX_BATCH_ITEMS,
        });
    }
    Ok(())
}

pub fn account_id(field: &'static str, value: String) -> Result<AccountId, ConversionError> {
    Ok(field::account_id(field, value)?)
}

pub fn user_id(field: &'static str, value: String) -> Result<UserId, ConversionError> {
    Ok(field::user_id(field, value)?)
}

/// An account id borrowed from the request: the check path allocates none.
pub fn account_id_ref<'a>(
    field: &'static str,
    value: &'a str,
) -> Result<AccountIdRef<'a>, ConversionError> {
    Ok(field::account_id_ref(field, value)?)
}

/// A user id borrowed from the request.
pub fn user_id_ref<'a>(
    field: &'static str,
    value: &'a str,
) -> Result<UserIdRef<'a>, ConversionError> {
    Ok(field::user_id_ref(field, value)?)
}

/// The metadata by which a batch's caller asks for answers without their
/// reports. Metadata rather than a request field: a field would change the
/// generated request type every client builds.
pub const OMIT_REPORTS: &str = "entitled-omit-reports";

/// Whether a batch's caller asked for answers without reports
/// (`entitled-omit-reports: true`); absent or `false` is no.
pub fn omit_reports(metadata: &tonic::metadata::MetadataMap) -> Result<bool, ConversionError> {
    match metadata.get(OMIT_REPORTS).map(|v| v.as_bytes()) {
        None | Some(b"false") => Ok(false),
        Some(b"true") => Ok(true),
        Some(other) => Err(ConversionError::invalid(
            "metadata entitled-omit-reports",
            String::from_utf8_lossy(other),
            "send `true` or `false`",
        )),
    }
}

/// A display name or a token name.
pub fn display_name(field: &'static str, value: String) -> Result<DisplayName, ConversionError> {
    Ok(field::display_name(field, value)?)
}

/// The name of a catalogue entry (an edition, a product line).
pub fn catalogue_name(field: &'static str, value: String) -> Result<String, ConversionError> {
    Ok(field::catalogue_name(field, value)?)
}

/// What `ANALYTICS_TIER_UNSPECIFIED` means in a field: each field has one
/// meaning, said in its comment in the `.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unspecified {
    /// Refused: the field is `optional`, so leaving it unset says "keep the
    /// tier" (`UpdateUserServicesRequest.analytics_tier`).
    Refused,
    /// Tier none: the field always has a value and 0 is its default, which
    /// a sender that sets nothing sends (`UserRow.analytics_tier`).
    MeansNone,
}

/// A tier a request sets; unknown values are refused, and
/// `ANALYTICS_TIER_UNSPECIFIED` means what the field says it means.
pub fn tier(
    field: &'static str,
    value: i32,
    unspecified: Unspecified,
) -> Result<Tier, ConversionError> {
    Ok(tier_field(field, value, unspecified)?)
}

/// `tier`, as a field's own error (import rows are refused one by one).
fn tier_field(
    field: &'static str,
    value: i32,
    unspecified: Unspecified,
) -> Result<Tier, FieldError> {
    match pb::AnalyticsTier::try_from(value) {
        Ok(pb::AnalyticsTier::None) => Ok(Tier::None),
        Ok(pb::AnalyticsTier::Essentials) => Ok(Tier::Essentials),
        Ok(pb::AnalyticsTier::Supervisor) => Ok(Tier::Supervisor),
        Ok(pb::AnalyticsTier::Unspecified) => match unspecified {
            Unspecified::MeansNone => Ok(Tier::None),
            Unspecified::Refused => Err(FieldError::invalid(
                field,
                "ANALYTICS_TIER_UNSPECIFIED",
                "is not a tier; set ANALYTICS_TIER_NONE, ANALYTICS_TIER_ESSENTIALS or ANALYTICS_TIER_SUPERVISOR, or leave the field unset to keep the tier",
            )),
        },
        Err(_) => Err(FieldError::invalid(
            field,
            value,
            "is not a tier; use ANALYTICS_TIER_NONE (1), ANALYTICS_TIER_ESSENTIALS (2) or ANALYTICS_TIER_SUPERVISOR (3)",
        )),
    }
}

/// A supervisor scope a request sets (rule 12): exactly one of
/// `whole_account` and 1 to 1,000 `refs`; a bad item is named by its index
/// and value (`field::scope_refs`).
pub fn supervisor_scope(scope: &pb::SupervisorScope) -> Result<SupervisorScope, FieldError> {
    if scope.whole_account {
        if !scope.refs.is_empty() {
            return Err(FieldError::invalid(
                "supervisor_scope.whole_account",
                true,
                format!(
                    "is set with {} refs; send whole_account or refs, not both",
                    scope.refs.len()
                ),
            ));
        }
        return Ok(SupervisorScope::WholeAccount);
    }
    // Bounded before each item is looked at.
    field::scope_count("supervisor_scope.refs", scope.refs.len())?;
    let refs: Vec<RawScopeRef<'_>> = scope
        .refs
        .iter()
        .map(|r| RawScopeRef {
            kind: scope_kind(r.kind),
            id: &r.id,
        })
        .collect();
    field::scope_refs("supervisor_scope.refs", &refs)
}

/// A scope kind; `SCOPE_KIND_UNSPECIFIED` and unknown values are no kind
/// (the value as the message shows it).
fn scope_kind(value: i32) -> Result<ScopeKind, String> {
    match pb::ScopeKind::try_from(value) {
        Ok(pb::ScopeKind::Site) => Ok(ScopeKind::Site),
        Ok(pb::ScopeKind::UserGroup) => Ok(ScopeKind::UserGroup),
        Ok(pb::ScopeKind::RingGroup) => Ok(ScopeKind::RingGroup),
        Ok(pb::ScopeKind::CallQueue) => Ok(ScopeKind::CallQueue),
        Ok(pb::ScopeKind::Unspecified) => Err("SCOPE_KIND_UNSPECIFIED".to_owned()),
        Err(_) => Err(value.to_string()),
    }
}

/// A page size: 0 means the default, larger than the maximum means the
/// maximum (as Google's AIP-158 has it), negative is refused.
pub fn page_size(value: i32) -> Result<usize, ConversionError> {
    match usize::try_from(value) {
        Ok(0) => Ok(DEFAULT_PAGE_SIZE),
        Ok(n) => Ok(n.min(MAX_PAGE_SIZE)),
        Err(_) => Err(ConversionError::invalid(
            "page_size",
            value,
            format!(
                "is negative; use 0 for the default ({DEFAULT_PAGE_SIZE}) or up to {MAX_PAGE_SIZE}"
            ),
        )),
    }
}

const PAGE_TOKEN_VERSION: &str = "v1";

/// An opaque cursor: the last user id served. Stable while users are added.
pub fn page_token(account: &AccountId, last: &UserId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_VERSION}\n{account}\n{last}"))
}

/// The user id to continue after, if the token is for this account.
pub fn page_cursor(account: &AccountId, token: &str) -> Result<Option<UserId>, ConversionError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = |problem: &str| ConversionError::invalid("page_token", token, problem);
    let decoded = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            bad("is not a page token; pass a next_page_token unchanged, or \"\" for the first page")
        })?;
    let mut parts = decoded.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(PAGE_TOKEN_VERSION), Some(acc), Some(last)) => {
            if acc != account.as_str() {
                return Err(bad(&format!(
                    "was issued for another account, not `{account}`; start again with an empty page_token"
                )));
            }
            UserId::try_from(last.to_owned()).map(Some).map_err(|_| {
                bad("is damaged; pass a next_page_token unchanged, or \"\" for the first page")
            })
        }
        _ => Err(bad(
            "is not a page token; pass a next_page_token unchanged, or \"\" for the first page",
        )),
    }
}

const TOKEN_PAGE_TOKEN_VERSION: &str = "t1";

/// ListTokens' opaque cursor: the creation time (nanoseconds since the
/// epoch) and id of the last token served, the order tokens are listed in.
pub fn token_page_token(last: &Token) -> String {
    let nanos = last
        .created_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    URL_SAFE_NO_PAD.encode(format!("{TOKEN_PAGE_TOKEN_VERSION}\n{nanos}\n{}", last.id))
}

/// The token to continue after (its creation time and id), if any.
pub fn token_page_cursor(token: &str) -> Result<Option<(SystemTime, String)>, ConversionError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        ConversionError::invalid(
            "page_token",
            token,
            "is not a ListTokens page token; pass a next_page_token unchanged, or \"\" for the first page",
        )
    };
    let decoded = URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = decoded.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(TOKEN_PAGE_TOKEN_VERSION), Some(nanos), Some(id)) => {
            let nanos: u64 = nanos.parse().map_err(|_| bad())?;
            Ok(Some((
                UNIX_EPOCH + Duration::from_nanos(nanos),
                id.to_owned(),
            )))
        }
        _ => Err(bad()),
    }
}

/// A write request: it carries an optional request id for safe retries.
pub trait WriteRequest: Message + Clone {
    fn request_id(&self) -> &str;
    fn clear_request_id(&mut self);
}

macro_rules! write_request {
    ($($t:ty),* $(,)?) => {$(
        impl WriteRequest for $t {
            fn request_id(&self) -> &str {
                &self.request_id
            }
            fn clear_request_id(&mut self) {
                self.request_id.clear();
            }
        }
    )*};
}

write_request!(
    pb::ImportUsersRequest,
    pb::CreateAccountRequest,
    pb::PutUserRequest,
    pb::DeleteUserRequest,
    pb::UpdateUserServicesRequest,
    pb::CreateTokenRequest,
    pb::RevokeTokenRequest,
    pb::MigrateAccountRequest,
    pb::DeleteAccountRequest,
);

/// A MigrateAccount request as the domain takes it: the account and what
/// is asked of the move.
pub fn move_request(
    r: &pb::MigrateAccountRequest,
) -> Result<(AccountId, MoveRequest), ConversionError> {
    let account = account_id("account_id", r.account_id.clone())?;
    let to = catalogue_name("to_product_line", r.to_product_line.clone())?;
    Ok((
        account,
        MoveRequest {
            to,
            remove_unmapped_licences: r.remove_unmapped_licences,
            expected_revision: r.expected_revision,
        },
    ))
}

/// The longest request id accepted.
pub const MAX_REQUEST_ID: usize = 128;

/// The caller of a write, with its request id and a fingerprint of the rest
/// of the request (so a reused id with another payload is caught).
pub fn writer<M: WriteRequest>(
    principal: &Arc<Principal>,
    rpc: Rpc,
    request: &M,
) -> Result<Caller, ConversionError> {
    let id = request.request_id();
    let request_key = if id.is_empty() {
        None
    } else {
        let len = id.chars().count();
        if len > MAX_REQUEST_ID {
            return Err(ConversionError::invalid(
                "request_id",
                id,
                format!("is {len} characters long; the most is {MAX_REQUEST_ID}"),
            ));
        }
        // The rule of names (`Hidden`): a request id is shown back in
        // messages and the audit trail, so nothing in it may hide.
        if let Some(hidden) = Hidden::find(id) {
            return Err(ConversionError::invalid(
                "request_id",
                id,
                hidden.to_string(),
            ));
        }
        let mut rest = request.clone();
        rest.clear_request_id();
        let mut hasher = Sha256::new();
        hasher.update(rpc.name().as_bytes());
        hasher.update([0]);
        hasher.update(rest.encode_to_vec());
        Some(RequestKey {
            id: id.to_owned(),
            fingerprint: hasher.finalize().into(),
        })
    };
    Ok(Caller {
        principal: Arc::clone(principal),
        request: request_key,
        via: Via::Api,
    })
}

/// An id that may be left empty.
pub fn optional_id<T>(
    field: &'static str,
    value: &str,
    parse: fn(&'static str, String) -> Result<T, ConversionError>,
) -> Result<Option<T>, ConversionError> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(field, value.to_owned()).map(Some)
    }
}

pub fn role(value: i32) -> Result<Role, ConversionError> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Operator) => Ok(Role::Operator),
        Ok(pb::Role::Provisioner) => Ok(Role::Provisioner),
        Ok(pb::Role::AccountAdmin) => Ok(Role::AccountAdmin),
        Ok(pb::Role::Gateway) => Ok(Role::Gateway),
        Ok(pb::Role::Unspecified) | Err(_) => Err(ConversionError::invalid(
            "role",
            pb::Role::try_from(value)
                .map_or_else(|_| value.to_string(), |r| r.as_str_name().to_owned()),
            "is not a role; use ROLE_OPERATOR, ROLE_PROVISIONER, ROLE_ACCOUNT_ADMIN or ROLE_GATEWAY",
        )),
    }
}

const AUDIT_TOKEN_PREFIX: &str = "a1:";

/// An opaque cursor into the audit trail: the last sequence number served.
pub fn audit_token(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{AUDIT_TOKEN_PREFIX}{seq}"))
}

pub fn audit_cursor(token: &str) -> Result<u64, ConversionError> {
    if token.is_empty() {
        return Ok(0);
    }
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.strip_prefix(AUDIT_TOKEN_PREFIX)
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| {
            ConversionError::invalid(
                "page_token",
                token,
                "is not a page token; pass a next_page_token unchanged, or \"\" for the first page",
            )
        })
}

/// A row of an import: its fields checked, in the order of the columns;
/// a bad row is the first of its fields refused. Each row on its own, so
/// the service can report every bad row.
pub fn import_row(row: &pb::UserRow) -> Result<ImportRow, FieldError> {
    let account_id = field::account_id("account_id", row.account_id.clone())?;
    let user_id = field::user_id("user_id", row.user_id.clone())?;
    let display_name = field::display_name("display_name", row.display_name.clone())?;
    let tier = tier_field("analytics_tier", row.analytics_tier, Unspecified::MeansNone)?;
    let edition = field::catalogue_name("edition", row.edition.clone())?;
    let supervisor_scope = row
        .supervisor_scope
        .as_ref()
        .map(supervisor_scope)
        .transpose()?;
    Ok(ImportRow {
        account_id,
        user_id,
        display_name,
        edition: (!edition.is_empty()).then_some(edition),
        tier,
        supervisor_scope,
    })
}
