//! The one place that converts between generated protobuf types and domain
//! types. Domain → protobuf cannot fail; protobuf → domain fails with a
//! `ConversionError` that names the field and the value.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    catalogue::{Catalogue, Report, ReportKind},
    domain::{
        Account, AccountId, Decision, Denial, DisplayNameError, IdError, MAX_ID_LEN, Notice,
        NoticeKind, Tier, User, UserId, validate_display_name, validate_id,
    },
    domain::{AuditRecord, Outcome, Principal, Role, Rpc, Token, UserState, Via},
    proto::v1 as pb,
    service::{Caller, ImportRow, WatchEvent},
    store::RequestKey,
};

/// ListUsers' page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// ListUsers' largest page; larger requests are served this many.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The most items one BatchCheckAnalyticsAccess may carry.
pub const MAX_BATCH_ITEMS: usize = 1000;

/// Why a request field could not become a domain value.
#[derive(Debug, thiserror::Error)]
pub enum ConversionError {
    #[error("{field} is required: give 1 to 128 characters of A-Z a-z 0-9 . _ - @ : +")]
    Missing { field: &'static str },
    #[error("{field} `{value}` {problem}")]
    Invalid {
        field: &'static str,
        value: String,
        problem: String,
    },
    #[error(
        "{field} has {count} entries; send at most {max} per call and the rest in further calls"
    )]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
}

impl ConversionError {
    fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        ConversionError::Invalid {
            field,
            value: shorten(&value.to_string()),
            problem: problem.into(),
        }
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

/// Keeps error messages short when a caller sends a huge value.
fn shorten(value: &str) -> String {
    const MAX: usize = 64;
    match value.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Checks an id field without taking it (the check path borrows its ids).
pub fn id(field: &'static str, value: &str) -> Result<(), ConversionError> {
    validate_id(value).map_err(|e| match e {
        IdError::Empty => ConversionError::Missing { field },
        e => ConversionError::invalid(field, value, e.to_string()),
    })
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
    id(field, &value)?;
    AccountId::try_from(value).map_err(|e| ConversionError::invalid(field, "", e.to_string()))
}

pub fn user_id(field: &'static str, value: String) -> Result<UserId, ConversionError> {
    id(field, &value)?;
    UserId::try_from(value).map_err(|e| ConversionError::invalid(field, "", e.to_string()))
}

/// A display name or a token name (`validate_display_name`).
pub fn display_name(field: &'static str, value: String) -> Result<String, ConversionError> {
    match validate_display_name(&value) {
        Ok(()) => Ok(value),
        Err(e @ DisplayNameError::TooLong(_)) => {
            Err(ConversionError::invalid(field, &value, e.to_string()))
        }
        // Escaped, so the message shows the character rather than hiding it.
        Err(e @ DisplayNameError::Hidden { .. }) => Err(ConversionError::invalid(
            field,
            value.escape_debug(),
            e.to_string(),
        )),
    }
}

/// The name of a catalogue entry (an edition, a product line) as a request
/// gives it: the catalogue says whether it exists, but a name longer than
/// any catalogue id can hold is refused here, so no refusal echoes it whole.
pub fn catalogue_name(field: &'static str, value: String) -> Result<String, ConversionError> {
    let len = value.chars().count();
    if len > MAX_ID_LEN {
        return Err(ConversionError::invalid(
            field,
            &value,
            format!("is {len} characters long; no catalogue name is longer than {MAX_ID_LEN}"),
        ));
    }
    Ok(value)
}

/// A tier a request sets: unspecified and unknown values are refused.
pub fn tier(field: &'static str, value: i32) -> Result<Tier, ConversionError> {
    match pb::AnalyticsTier::try_from(value) {
        Ok(pb::AnalyticsTier::None) => Ok(Tier::None),
        Ok(pb::AnalyticsTier::Essentials) => Ok(Tier::Essentials),
        Ok(pb::AnalyticsTier::Supervisor) => Ok(Tier::Supervisor),
        Ok(pb::AnalyticsTier::Unspecified) => Err(ConversionError::invalid(
            field,
            "ANALYTICS_TIER_UNSPECIFIED",
            "is not a tier; set ANALYTICS_TIER_NONE, ANALYTICS_TIER_ESSENTIALS or ANALYTICS_TIER_SUPERVISOR, or leave the field unset to keep the tier",
        )),
        Err(_) => Err(ConversionError::invalid(
            field,
            value,
            "is not a tier; use ANALYTICS_TIER_NONE (1), ANALYTICS_TIER_ESSENTIALS (2) or ANALYTICS_TIER_SUPERVISOR (3)",
        )),
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

impl From<Tier> for pb::AnalyticsTier {
    fn from(t: Tier) -> Self {
        match t {
            Tier::None => pb::AnalyticsTier::None,
            Tier::Essentials => pb::AnalyticsTier::Essentials,
            Tier::Supervisor => pb::AnalyticsTier::Supervisor,
        }
    }
}

fn tier_i32(t: Tier) -> i32 {
    pb::AnalyticsTier::from(t) as i32
}

impl From<ReportKind> for pb::ReportKind {
    fn from(k: ReportKind) -> Self {
        match k {
            ReportKind::Live => pb::ReportKind::Live,
            ReportKind::Historical => pb::ReportKind::Historical,
        }
    }
}

impl From<&Account> for pb::Account {
    fn from(a: &Account) -> Self {
        pb::Account {
            account_id: a.id.to_string(),
            display_name: a.display_name.clone(),
            product_line: a.product_line.clone(),
            created_at: Some(a.created_at.into()),
            analytics_activated_at: a.analytics_activated_at.map(Into::into),
        }
    }
}

impl From<&User> for pb::User {
    fn from(u: &User) -> Self {
        pb::User {
            account_id: u.account_id.to_string(),
            user_id: u.id.to_string(),
            display_name: u.display_name.clone(),
            edition: u.edition.clone().unwrap_or_default(),
            analytics_tier: tier_i32(u.tier),
            revision: u.revision,
            updated_at: Some(u.updated_at.into()),
            created_at: Some(u.created_at.into()),
        }
    }
}

impl From<&Notice> for pb::Notice {
    fn from(n: &Notice) -> Self {
        let kind = match n.kind {
            NoticeKind::TierLowered => pb::NoticeKind::TierLowered,
            NoticeKind::TierRemoved => pb::NoticeKind::TierRemoved,
        };
        pb::Notice {
            kind: kind as i32,
            message: n.message.clone(),
        }
    }
}

impl From<Denial> for pb::DenialReason {
    fn from(d: Denial) -> Self {
        match d {
            Denial::AccountNotFound => pb::DenialReason::AccountNotFound,
            Denial::UserNotFound => pb::DenialReason::UserNotFound,
            Denial::NoEdition => pb::DenialReason::NoEdition,
            Denial::AnalyticsNotEnabled => pb::DenialReason::AnalyticsNotEnabled,
            Denial::EditionNotEligible => pb::DenialReason::EditionNotEligible,
        }
    }
}

impl From<Decision> for pb::CheckAnalyticsAccessResponse {
    fn from(d: Decision) -> Self {
        pb::CheckAnalyticsAccessResponse {
            allowed: d.allowed,
            tier: tier_i32(d.tier),
            edition: d.edition.unwrap_or_default(),
            denial_reason: d.denial.map_or(pb::DenialReason::Unspecified, Into::into) as i32,
            data_available_at: d.data_available_at.map(Into::into),
            data_ready: d.data_ready,
            reports: d
                .reports
                .iter()
                .map(|r| pb::Report {
                    id: Arc::clone(&r.report.id),
                    display_name: Arc::clone(&r.report.display_name),
                    kind: pb::ReportKind::from(r.report.kind) as i32,
                    available: r.available,
                })
                .collect(),
            revision: d.revision,
            stored_tier: tier_i32(d.stored_tier),
            reason: d.reason,
        }
    }
}

fn report_definition(r: &Report) -> pb::ReportDefinition {
    pb::ReportDefinition {
        id: r.id.to_string(),
        display_name: r.display_name.to_string(),
        kind: pb::ReportKind::from(r.kind) as i32,
    }
}

impl From<&Catalogue> for pb::GetCatalogueResponse {
    fn from(c: &Catalogue) -> Self {
        pb::GetCatalogueResponse {
            product_lines: c
                .product_lines()
                .iter()
                .map(|l| pb::ProductLine {
                    id: l.id.clone(),
                    display_name: l.display_name.clone(),
                    editions: l
                        .editions
                        .iter()
                        .map(|e| pb::Edition {
                            id: e.id.clone(),
                            allowed_tiers: Tier::ALL
                                .into_iter()
                                .filter(|t| e.allows(*t))
                                .map(tier_i32)
                                .collect(),
                        })
                        .collect(),
                })
                .collect(),
            tier_reports: [Tier::Essentials, Tier::Supervisor]
                .into_iter()
                .map(|t| pb::TierReports {
                    tier: tier_i32(t),
                    reports: c.reports_for(t).iter().map(report_definition).collect(),
                })
                .collect(),
            data_delay: prost_types::Duration::try_from(c.data_delay()).ok(),
        }
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
);

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
        if id.chars().any(char::is_control) {
            return Err(ConversionError::invalid(
                "request_id",
                id.escape_debug(),
                "contains a control character; use printable characters, e.g. a UUID",
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

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Operator => pb::Role::Operator,
            Role::Provisioner => pb::Role::Provisioner,
            Role::AccountAdmin => pb::Role::AccountAdmin,
            Role::Gateway => pb::Role::Gateway,
        }
    }
}

impl From<&Token> for pb::TokenInfo {
    fn from(t: &Token) -> Self {
        pb::TokenInfo {
            token_id: t.id.clone(),
            name: t.name.clone(),
            role: pb::Role::from(t.role) as i32,
            account_id: t
                .account
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            user_id: t.user.as_ref().map(ToString::to_string).unwrap_or_default(),
            created_at: Some(t.created_at.into()),
            revoked_at: t.revoked_at.map(Into::into),
        }
    }
}

impl From<&UserState> for pb::UserState {
    fn from(u: &UserState) -> Self {
        pb::UserState {
            display_name: u.display_name.clone(),
            edition: u.edition.clone().unwrap_or_default(),
            analytics_tier: tier_i32(u.tier),
        }
    }
}

impl From<&AuditRecord> for pb::Change {
    fn from(r: &AuditRecord) -> Self {
        let (refused, refusal_code, refusal_reason) = match &r.outcome {
            Outcome::Applied => (false, String::new(), String::new()),
            Outcome::Refused { code, reason } => (true, code.clone(), reason.clone()),
        };
        pb::Change {
            sequence: r.seq,
            revision: r.revision,
            time: Some(r.at.into()),
            caller: Some(pb::Caller {
                token_id: r.actor.token_id.clone(),
                name: r.actor.name.clone(),
                role: pb::Role::from(r.actor.role) as i32,
                via: match r.actor.via {
                    Via::Api => pb::Via::Api,
                    Via::Console => pb::Via::Console,
                } as i32,
            }),
            rpc: r.rpc.to_string(),
            account_id: r.account_id.clone(),
            user_id: r.user_id.clone(),
            before: r.before.as_ref().map(Into::into),
            after: r.after.as_ref().map(Into::into),
            details: r.details.clone(),
            refused,
            refusal_code,
            refusal_reason,
        }
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

/// A row as sent; its ids and names are checked row by row by the service.
pub fn import_row(row: &pb::UserRow) -> ImportRow {
    let tier = match pb::AnalyticsTier::try_from(row.analytics_tier) {
        Ok(pb::AnalyticsTier::Unspecified | pb::AnalyticsTier::None) => Ok(Tier::None),
        Ok(pb::AnalyticsTier::Essentials) => Ok(Tier::Essentials),
        Ok(pb::AnalyticsTier::Supervisor) => Ok(Tier::Supervisor),
        Err(_) => Err(format!(
            "analytics_tier `{}` is not a tier; use none, essentials or supervisor",
            row.analytics_tier
        )),
    };
    ImportRow {
        account_id: row.account_id.clone(),
        user_id: row.user_id.clone(),
        display_name: row.display_name.clone(),
        edition: row.edition.clone(),
        tier,
    }
}

impl From<&User> for pb::UserRow {
    fn from(u: &User) -> Self {
        pb::UserRow {
            account_id: u.account_id.to_string(),
            user_id: u.id.to_string(),
            display_name: u.display_name.clone(),
            edition: u.edition.clone().unwrap_or_default(),
            analytics_tier: tier_i32(u.tier),
        }
    }
}

impl From<&WatchEvent> for pb::WatchEntitlementsResponse {
    fn from(e: &WatchEvent) -> Self {
        let event = match e {
            WatchEvent::Heartbeat(revision) => {
                pb::watch_entitlements_response::Event::Heartbeat(pb::Heartbeat {
                    revision: *revision,
                })
            }
            WatchEvent::Change(c) => {
                let state = |s: &Option<UserState>| match s {
                    Some(s) => (s.edition.clone().unwrap_or_default(), tier_i32(s.tier)),
                    None => (String::new(), pb::AnalyticsTier::Unspecified as i32),
                };
                let (before_edition, before_tier) = state(&c.before);
                let (after_edition, after_tier) = state(&c.after);
                pb::watch_entitlements_response::Event::Change(pb::EntitlementChange {
                    revision: c.revision,
                    time: Some(c.at.into()),
                    account_id: c.account_id.clone(),
                    user_id: c.user_id.clone(),
                    before_edition,
                    before_tier,
                    after_edition,
                    after_tier,
                    deleted: c.after.is_none(),
                    created: c.before.is_none(),
                })
            }
        };
        pb::WatchEntitlementsResponse { event: Some(event) }
    }
}
