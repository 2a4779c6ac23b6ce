//! Bulk import and export of users.

use std::collections::{HashMap, HashSet};

use super::{Caller, DomainError, Entitlements, ServicesChange, authorize, rules::plan_services};
use crate::{
    domain::{
        AccountId, DisplayName, FieldError, MAX_KEPT_REASON, Refusal, Rpc, SupervisorScope, Tier,
        User, UserId, kept,
    },
    store::{Mutation, Refusable, Target, WritePlan, Written},
};

/// The most rows one import call takes (each call is one atomic write).
pub const MAX_IMPORT_ROWS: usize = 5000;

/// The refused rows whose message is kept for a retry with the import's
/// request id; past them, a kept row has its index and code only, so what
/// is stored for a refused import stays small (a few bytes a row) however
/// long its rows' messages are.
pub const KEPT_ROW_MESSAGES: usize = 10;

/// The message a retry gets for a refused row whose message was not kept.
fn not_kept() -> String {
    format!(
        "refused on the first call with this request_id, with this code; a retry repeats the \
         messages of the first {KEPT_ROW_MESSAGES} refused rows only: send the rows again with \
         a new request_id to read this row's"
    )
}

/// One row of a bulk import, its fields validated (at the edge, row by row,
/// so every bad row can be reported on its own: a row that failed comes as
/// its `FieldError`).
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub account_id: AccountId,
    pub user_id: UserId,
    pub display_name: DisplayName,
    /// None for no licence.
    pub edition: Option<String>,
    pub tier: Tier,
    /// Rule 12, as `ServicesChange::supervisor_scope`: only with Supervisor;
    /// none keeps a supervisor's scope, or gives a new one the whole account.
    pub supervisor_scope: Option<SupervisorScope>,
}

/// Why an import, or one of its rows, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("rows holds {0} rows; send 1 to {MAX_IMPORT_ROWS} a call")]
    RowCount(usize),
    #[error("user `{user}` of account `{account}` is also in row {first}; keep one row per user")]
    Duplicate {
        account: AccountId,
        user: UserId,
        first: usize,
    },
    /// A field of the row.
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// What an import's valid rows did (or would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportCounts {
    pub created: u32,
    pub updated: u32,
    pub unchanged: u32,
}

/// The outcome of an import call: nothing is applied when `errors` is not
/// empty.
#[derive(Debug)]
pub struct Imported {
    /// (row index, why) for every bad row.
    pub errors: Vec<(usize, DomainError)>,
    pub counts: ImportCounts,
    pub revision: u64,
}

impl Entitlements {
    /// Sets each row's user (created if absent) to exactly the row's display
    /// name, edition and tier; all rows or none. Permission problems refuse
    /// the whole call; rule problems are reported row by row.
    pub async fn import_users(
        &self,
        caller: &Caller,
        rows: Vec<Result<ImportRow, FieldError>>,
        dry_run: bool,
    ) -> Result<Imported, DomainError> {
        // The role first; the scope row by row below. A call whose rows are
        // all malformed names no account, and an account admin must still
        // get the rows' errors, not a refusal for lacking one.
        let principal = &caller.principal;
        principal.may_call(Rpc::ImportUsers)?;
        if rows.is_empty() || rows.len() > MAX_IMPORT_ROWS {
            return Err(ImportError::RowCount(rows.len()).into());
        }
        let mut errors: Vec<(usize, DomainError)> = Vec::new();
        let mut targets: Vec<(AccountId, UserId)> = Vec::new();
        let mut target_rows: Vec<(usize, &ImportRow)> = Vec::new();
        let mut seen: HashMap<(&AccountId, &UserId), usize> = HashMap::new();
        for (index, row) in rows.iter().enumerate() {
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    errors.push((index, ImportError::Field(e.clone()).into()));
                    continue;
                }
            };
            if let Some(first) = seen.insert((&row.account_id, &row.user_id), index) {
                let duplicate = ImportError::Duplicate {
                    account: row.account_id.clone(),
                    user: row.user_id.clone(),
                    first,
                };
                errors.push((index, duplicate.into()));
                continue;
            }
            // Permission is for the whole call, not row by row: one row out
            // of the caller's scope refuses the call.
            principal.scope(
                Rpc::ImportUsers,
                Some(row.account_id.as_str()),
                Some(row.user_id.as_str()),
            )?;
            targets.push((row.account_id.clone(), row.user_id.clone()));
            target_rows.push((index, row));
        }

        let now = (self.clock)();
        let catalogue = std::sync::Arc::clone(&self.catalogue);
        let ctx = self.context(caller, Rpc::ImportUsers, "", "");
        let kept_if_refused = ctx.keep_refusal;
        let malformed = !errors.is_empty();
        let apply = !malformed && !dry_run;
        // The rows refused against the stored state are part of the answer
        // a retry with the same request id gets back (bounded: the first
        // rows' messages, then indices and codes), but, as a refusal, only
        // within the token's refusal rate.
        let written: Written<(ImportCounts, Vec<(usize, Refusal)>)> = self
            .store
            .write::<_, DomainError>(&Target::Users(targets.clone()), ctx, |current| {
                let mut store_errors: Vec<(usize, Refusal)> = Vec::new();
                let mut counts = ImportCounts::default();
                let mut mutations = Vec::new();
                let mut activated: HashSet<AccountId> = HashSet::new();
                let each = current.many.iter().zip(&targets).zip(&target_rows);
                for (((account, existing), (account_id, user_id)), &(index, row)) in each {
                    let Some(account) = account else {
                        let e = DomainError::AccountNotFound(account_id.clone());
                        store_errors.push((index, row_refusal(e)?));
                        continue;
                    };
                    let blank;
                    let before = match existing {
                        Some(user) => user,
                        None => {
                            blank = User::new(
                                account.id.clone(),
                                user_id.clone(),
                                String::new(),
                                current.next_revision,
                                now,
                            );
                            &blank
                        }
                    };
                    let change = ServicesChange {
                        edition: Some(row.edition.clone()),
                        tier: Some(row.tier),
                        supervisor_scope: row.supervisor_scope.clone(),
                        expected_revision: None,
                    };
                    let planned = match plan_services(&catalogue, account, before, &change) {
                        Ok(planned) => planned,
                        Err(e) => {
                            store_errors.push((index, row_refusal(e)?));
                            continue;
                        }
                    };
                    let display_name = row.display_name.as_str();
                    let same = existing.as_ref().is_some_and(|u| {
                        u.display_name == display_name
                            && u.edition == planned.edition
                            && u.tier == planned.tier
                            && u.supervisor_scope == planned.supervisor_scope
                    });
                    if same {
                        counts.unchanged += 1;
                        continue;
                    }
                    if existing.is_some() {
                        counts.updated += 1;
                    } else {
                        counts.created += 1;
                    }
                    if let Some(started) = account.starting_analytics(planned.tier, now)
                        && activated.insert(started.id.clone())
                    {
                        mutations.push(Mutation::PutAccount(started));
                    }
                    mutations.push(Mutation::PutUser(User {
                        display_name: display_name.to_owned(),
                        edition: planned.edition,
                        tier: planned.tier,
                        supervisor_scope: planned.supervisor_scope,
                        revision: current.next_revision,
                        updated_at: now,
                        ..before.clone()
                    }));
                }
                if malformed || !store_errors.is_empty() {
                    let kept = (counts.clone(), kept_rows(&store_errors));
                    return Ok(WritePlan::refused((counts, store_errors), kept));
                }
                if !apply {
                    mutations.clear();
                }
                Ok(WritePlan::new(mutations, (counts, store_errors)))
            })
            .await?;
        let (counts, store_errors) = written.output;
        let refused = malformed || !store_errors.is_empty();
        if refused && dry_run && kept_if_refused && !written.replayed {
            // A refused import's answer kept for a retry is stored: a dry
            // run's is counted against the token's refusal rate here, as
            // the refusal record of one that is not a dry run is (the gRPC
            // layer's), though a dry run leaves no record in the trail.
            self.refusals.spend(&caller.principal.token_id);
        }
        let replayed = written.replayed;
        errors.extend(store_errors.into_iter().map(|(index, mut refusal)| {
            if replayed && refusal.message.is_empty() {
                refusal.message = not_kept();
            }
            (index, DomainError::Refused(refusal))
        }));
        errors.sort_by_key(|(index, _)| *index);
        Ok(Imported {
            errors,
            counts,
            revision: written.revision,
        })
    }

    /// Every user of `account` (or of all accounts) from one snapshot, with
    /// the revision it reflects.
    pub fn export_users(
        &self,
        caller: &Caller,
        account: Option<&AccountId>,
    ) -> Result<(Vec<User>, u64), DomainError> {
        authorize(caller, Rpc::ExportUsers, account, None)?;
        Ok(self
            .store
            .read(|v| (v.all_users(account.map(AccountId::as_str)), v.revision())))
    }
}

/// The rows' refusals as a retry gets them back: the first
/// `KEPT_ROW_MESSAGES` with their messages (cut as the audit trail cuts a
/// reason), the rest with their index and code only.
fn kept_rows(rows: &[(usize, Refusal)]) -> Vec<(usize, Refusal)> {
    rows.iter()
        .enumerate()
        .map(|(i, (index, refusal))| {
            let message = if i < KEPT_ROW_MESSAGES {
                kept(&refusal.message, MAX_KEPT_REASON)
            } else {
                String::new()
            };
            (
                *index,
                Refusal {
                    kind: refusal.kind,
                    message,
                },
            )
        })
        .collect()
}

/// A row's refusal as the answer keeps it; an error that is not a refusal
/// (none of the rules' errors) fails the whole import instead.
fn row_refusal(e: DomainError) -> Result<Refusal, DomainError> {
    e.refusal().ok_or(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RefusalKind;

    #[test]
    fn a_refused_import_keeps_a_few_bytes_a_row_past_the_first_rows() {
        let long = "m".repeat(4000);
        let rows: Vec<(usize, Refusal)> = (0..MAX_IMPORT_ROWS)
            .map(|i| {
                let refusal = Refusal {
                    kind: RefusalKind::FailedPrecondition,
                    message: long.clone(),
                };
                (i, refusal)
            })
            .collect();
        let kept = kept_rows(&rows);
        assert_eq!(kept.len(), rows.len());
        assert!(
            kept[..KEPT_ROW_MESSAGES].iter().all(|(_, r)| {
                r.message.len() <= MAX_KEPT_REASON && r.message.starts_with("mmm")
            })
        );
        assert!(
            kept[KEPT_ROW_MESSAGES..]
                .iter()
                .all(|(_, r)| r.message.is_empty())
        );
        let bytes = postcard::to_allocvec(&(ImportCounts::default(), kept)).unwrap();
        // 5000 rows: about 4 bytes each, and 10 messages of at most 1 KiB.
        assert!(bytes.len() < 40_000, "{} bytes", bytes.len());
    }
}
