//! Domain → protobuf: the answers. These cannot fail (`From`); the
//! requests' way in, which can, is the parent module's.

use std::sync::Arc;

use crate::{
    catalogue::{Catalogue, Report, ReportKind},
    domain::{
        Account, AccountState, AuditRecord, Decision, Denial, Notice, NoticeKind, Outcome,
        ReportAccess, Role, ScopeKind, ScopeRef, SupervisorScope, Tier, Token, User, UserState,
        Via, migration::MovedUser,
    },
    proto::{CheckAnswer, EncodedReports, EncodedScope, v1 as pb},
    service::{AccountChangeKind, AccountMoved, WatchEvent},
    store::Written,
};

use super::pages::Pages;

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

impl From<ScopeKind> for pb::ScopeKind {
    fn from(k: ScopeKind) -> Self {
        match k {
            ScopeKind::Site => pb::ScopeKind::Site,
            ScopeKind::UserGroup => pb::ScopeKind::UserGroup,
            ScopeKind::RingGroup => pb::ScopeKind::RingGroup,
            ScopeKind::CallQueue => pb::ScopeKind::CallQueue,
        }
    }
}

impl From<&ScopeRef> for pb::ScopeRef {
    fn from(r: &ScopeRef) -> Self {
        pb::ScopeRef {
            kind: pb::ScopeKind::from(r.kind) as i32,
            id: r.id.clone(),
        }
    }
}

impl From<&SupervisorScope> for pb::SupervisorScope {
    fn from(s: &SupervisorScope) -> Self {
        match s {
            SupervisorScope::WholeAccount => pb::SupervisorScope {
                whole_account: true,
                refs: Vec::new(),
            },
            SupervisorScope::Only(refs) => pb::SupervisorScope {
                whole_account: false,
                refs: refs.iter().map(Into::into).collect(),
            },
        }
    }
}

fn pb_scope(s: &Option<SupervisorScope>) -> Option<pb::SupervisorScope> {
    s.as_ref().map(Into::into)
}

/// A decision's scope as the fast path writes it: the whole account is a
/// constant; only a list of groups is encoded for the answer.
fn encoded_scope(s: &Option<SupervisorScope>) -> EncodedScope {
    match s {
        None => EncodedScope::NONE,
        Some(SupervisorScope::WholeAccount) => EncodedScope::WHOLE_ACCOUNT,
        Some(scope) => EncodedScope::new(&scope.into()),
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
            supervisor_scope: pb_scope(&u.supervisor_scope),
        }
    }
}

impl From<&Notice> for pb::Notice {
    fn from(n: &Notice) -> Self {
        let kind = match n.kind {
            NoticeKind::TierLowered => pb::NoticeKind::TierLowered,
            NoticeKind::TierRemoved => pb::NoticeKind::TierRemoved,
            NoticeKind::ScopeDropped => pb::NoticeKind::ScopeDropped,
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
            edition: d.edition.map(String::from).unwrap_or_default(),
            denial_reason: d.denial.map_or(pb::DenialReason::Unspecified, Into::into) as i32,
            data_available_at: d.data_available_at.map(Into::into),
            data_ready: d.data_ready,
            reports: pb_reports(&d.reports),
            revision: d.revision,
            stored_tier: tier_i32(d.stored_tier),
            reason: d.reason.into(),
            supervisor_scope: pb_scope(&d.supervisor_scope),
        }
    }
}

/// The reports of a decision as the generated type has them.
fn pb_reports(reports: &[ReportAccess]) -> Vec<pb::Report> {
    reports
        .iter()
        .map(|r| pb::Report {
            id: Arc::clone(&r.report.id),
            display_name: Arc::clone(&r.report.display_name),
            kind: pb::ReportKind::from(r.report.kind) as i32,
            available: r.available,
        })
        .collect()
}

/// Writes the fast path's answers (`proto::CheckAnswer`): the same fields
/// as `From<Decision>` below, with the report list taken from the lists
/// encoded once, at start, from the catalogue's.
pub struct Answers {
    /// The catalogue's lists (tier × data ready), each with its encoding.
    lists: Vec<(Arc<[ReportAccess]>, EncodedReports)>,
    none: EncodedReports,
}

impl Answers {
    /// `lists`: every report list a decision can carry
    /// (`Entitlements::check_report_lists`).
    pub fn new(lists: impl IntoIterator<Item = Arc<[ReportAccess]>>) -> Self {
        Answers {
            lists: lists
                .into_iter()
                .map(|list| {
                    let encoded = EncodedReports::new(&pb_reports(&list));
                    (list, encoded)
                })
                .collect(),
            none: EncodedReports::new(&[]),
        }
    }

    /// A check's answer.
    pub fn answer(&self, d: Decision) -> CheckAnswer {
        let reports = self.encoded(&d.reports);
        write(d, reports)
    }

    /// A batch item's answer; without its reports when the request asked
    /// for none (`omit_reports`).
    pub fn item(&self, d: Decision, omit_reports: bool) -> CheckAnswer {
        let reports = if omit_reports {
            self.none.clone()
        } else {
            self.encoded(&d.reports)
        };
        write(d, reports)
    }

    /// The encoding of `reports`: the one made at start when it is one of
    /// the catalogue's lists (the same allocation, so one pointer compare
    /// says so), else made now (no decision carries another list today).
    fn encoded(&self, reports: &Arc<[ReportAccess]>) -> EncodedReports {
        self.lists
            .iter()
            .find(|(list, _)| Arc::ptr_eq(list, reports))
            .map_or_else(
                || EncodedReports::new(&pb_reports(reports)),
                |(_, encoded)| encoded.clone(),
            )
    }
}

fn write(d: Decision, reports: EncodedReports) -> CheckAnswer {
    let supervisor_scope = encoded_scope(&d.supervisor_scope);
    CheckAnswer {
        allowed: d.allowed,
        tier: tier_i32(d.tier),
        edition: d.edition.unwrap_or_default(),
        denial_reason: d.denial.map_or(pb::DenialReason::Unspecified, Into::into) as i32,
        data_available_at: d.data_available_at.map(Into::into),
        data_ready: d.data_ready,
        reports,
        revision: d.revision,
        stored_tier: tier_i32(d.stored_tier),
        reason: d.reason,
        supervisor_scope,
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
            migrations: c
                .migrations()
                .iter()
                .map(|m| pb::ProductLineMigration {
                    from_product_line: m.from.clone(),
                    to_product_line: m.to.clone(),
                    editions: match (c.product_line(&m.from), c.product_line(&m.to)) {
                        (Some(from), Some(to)) => from
                            .editions
                            .iter()
                            .map(|e| pb::EditionMapping {
                                from_edition: e.id.clone(),
                                to_edition: m.map_edition(to, &e.id).unwrap_or_default().to_owned(),
                            })
                            .collect(),
                        _ => Vec::new(),
                    },
                })
                .collect(),
            tier_reports: [Tier::Essentials, Tier::Supervisor]
                .into_iter()
                .map(|t| pb::TierReports {
                    tier: tier_i32(t),
                    reports: c.reports_for(t).map(report_definition).collect(),
                })
                .collect(),
            data_delay: prost_types::Duration::try_from(c.data_delay()).ok(),
        }
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
            supervisor_scope: pb_scope(&u.supervisor_scope),
        }
    }
}

impl From<&AccountState> for pb::AccountState {
    fn from(a: &AccountState) -> Self {
        pb::AccountState {
            display_name: a.display_name.clone(),
            product_line: a.product_line.clone(),
            analytics_activated_at: a.analytics_activated_at.map(Into::into),
        }
    }
}

impl From<AccountChangeKind> for pb::AccountChangeKind {
    fn from(k: AccountChangeKind) -> Self {
        match k {
            AccountChangeKind::Created => pb::AccountChangeKind::Created,
            AccountChangeKind::AnalyticsActivated => pb::AccountChangeKind::AnalyticsActivated,
            AccountChangeKind::ProductLineChanged => pb::AccountChangeKind::ProductLineChanged,
            AccountChangeKind::Deleted => pb::AccountChangeKind::Deleted,
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
            account_before: r.account_before.as_ref().map(Into::into),
            account_after: r.account_after.as_ref().map(Into::into),
            details: r.details.clone(),
            refused,
            refusal_code,
            refusal_reason,
        }
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
            supervisor_scope: pb_scope(&u.supervisor_scope),
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
                    Some(s) => (
                        s.edition.clone().unwrap_or_default(),
                        tier_i32(s.tier),
                        pb_scope(&s.supervisor_scope),
                    ),
                    None => (String::new(), pb::AnalyticsTier::Unspecified as i32, None),
                };
                let (before_edition, before_tier, before_supervisor_scope) = state(&c.before);
                let (after_edition, after_tier, after_supervisor_scope) = state(&c.after);
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
                    before_supervisor_scope,
                    after_supervisor_scope,
                })
            }
            WatchEvent::Account(a) => {
                pb::watch_entitlements_response::Event::Account(pb::AccountChange {
                    revision: a.revision,
                    time: Some(a.at.into()),
                    account_id: a.account_id.clone(),
                    kind: pb::AccountChangeKind::from(a.kind) as i32,
                    display_name: a.display_name.clone(),
                    product_line: a.product_line.clone(),
                    before_product_line: a.before_product_line.clone().unwrap_or_default(),
                    data_available_at: a.data_available_at.map(Into::into),
                })
            }
        };
        pb::WatchEntitlementsResponse { event: Some(event) }
    }
}

impl From<&MovedUser> for pb::MigratedUser {
    fn from(u: &MovedUser) -> Self {
        pb::MigratedUser {
            user_id: u.user_id.to_string(),
            edition_before: u.edition_before.clone().unwrap_or_default(),
            analytics_tier_before: tier_i32(u.tier_before),
            edition_after: u.edition_after.clone().unwrap_or_default(),
            analytics_tier_after: tier_i32(u.tier_after),
            notices: u.notices.iter().map(Into::into).collect(),
            changed: u.changed(),
        }
    }
}

/// The messages of a MigrateAccount answer, made as they are sent: the
/// plan's users in chunks of at most `MOVE_CHUNK_USERS` users and
/// `MAX_PAGE_BYTES` bytes (`Pages`), then the summary. An account of any
/// size fits a default client's 4 MiB message limit.
pub struct MoveAnswer {
    users: Pages<std::vec::IntoIter<MovedUser>, fn(&MovedUser) -> pb::MigratedUser>,
    summary: Option<pb::MigrationSummary>,
}

/// The most users one MigrateAccount message carries.
pub const MOVE_CHUNK_USERS: usize = 1000;

impl From<Written<AccountMoved>> for MoveAnswer {
    fn from(written: Written<AccountMoved>) -> Self {
        let moved = written.output;
        let summary = pb::MigrationSummary {
            account_id: moved.account.to_string(),
            from_product_line: moved.from,
            to_product_line: moved.to,
            dry_run: moved.dry_run,
            users: moved.counts.users,
            changed: moved.counts.changed,
            tiers_lowered: moved.counts.tiers_lowered,
            licences_removed: moved.counts.licences_removed,
            revision: written.revision,
            replayed: written.replayed,
        };
        MoveAnswer {
            users: Pages::new(moved.users.into_iter(), MOVE_CHUNK_USERS, |u| {
                pb::MigratedUser::from(u)
            }),
            summary: Some(summary),
        }
    }
}

impl Iterator for MoveAnswer {
    type Item = pb::MigrateAccountResponse;

    fn next(&mut self) -> Option<Self::Item> {
        use pb::migrate_account_response::Item;
        let item = match self.users.next() {
            Some(users) => Item::Users(pb::MigrationPlanChunk { users }),
            None => Item::Summary(self.summary.take()?),
        };
        Some(pb::MigrateAccountResponse { item: Some(item) })
    }
}
