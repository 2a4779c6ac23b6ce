//! Bulk import and export of users.

use std::collections::{HashMap, HashSet};

use super::{Caller, DomainError, Entitlements, ServicesChange, authorize, plan_services};
use crate::store::Refusable;
use crate::{
    domain::{
        AccountId, MAX_ID_LEN, MAX_KEPT_ID, MAX_KEPT_REASON, Refusal, Rpc, Tier, User, UserId,
        kept, validate_display_name,
    },
    store::{Decided, Mutation, Target, Written},
};

/// The most rows one import call takes (each call is one atomic write).
pub const MAX_IMPORT_ROWS: usize = 5000;

/// One row of a bulk import as sent: ids are checked here, row by row, so
/// every bad row can be reported on its own.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub account_id: String,
    pub user_id: String,
    pub display_name: String,
    /// Empty for no licence.
    pub edition: String,
    /// `Err` holds why the tier given is not a tier.
    pub tier: Result<Tier, String>,
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
        rows: Vec<ImportRow>,
        dry_run: bool,
    ) -> Result<Imported, DomainError> {
        // The role first; the scope row by row below. A call whose rows are
        // all malformed names no account, and an account admin must still
        // get the rows' errors, not a refusal for lacking one.
        let principal = &caller.principal;
        principal
            .may_call(Rpc::ImportUsers)
            .map_err(DomainError::PermissionDenied)?;
        if rows.is_empty() || rows.len() > MAX_IMPORT_ROWS {
            return Err(DomainError::BadImport(format!(
                "rows holds {} rows; send 1 to {MAX_IMPORT_ROWS} a call",
                rows.len()
            )));
        }
        let mut errors: Vec<(usize, DomainError)> = Vec::new();
        let mut targets: Vec<(AccountId, UserId)> = Vec::new();
        let mut target_rows: Vec<usize> = Vec::new();
        let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
        for (index, row) in rows.iter().enumerate() {
            match check_row(row) {
                Err(e) => errors.push((index, e)),
                Ok((account, user)) => {
                    let key = (row.account_id.as_str(), row.user_id.as_str());
                    if let Some(first) = seen.insert(key, index) {
                        errors.push((
                            index,
                            DomainError::BadImport(format!(
                                "user `{user}` of account `{account}` is also in row {first}; keep one row per user"
                            )),
                        ));
                        continue;
                    }
                    // Permission is for the whole call, not row by row: one
                    // row out of the caller's scope refuses the call.
                    principal
                        .scope(
                            Rpc::ImportUsers,
                            Some(row.account_id.as_str()),
                            Some(row.user_id.as_str()),
                        )
                        .map_err(DomainError::PermissionDenied)?;
                    targets.push((account, user));
                    target_rows.push(index);
                }
            }
        }

        let now = (self.clock)();
        let catalogue = std::sync::Arc::clone(&self.catalogue);
        let ctx = self.context(caller, Rpc::ImportUsers, "", "");
        let apply = errors.is_empty() && !dry_run;
        // The rows refused against the stored state are part of the answer
        // a retry with the same request id gets back.
        let written: Written<(ImportCounts, Vec<(usize, Refusal)>)> = self
            .store
            .write::<_, DomainError>(&Target::Users(targets.clone()), ctx, |current| {
                let mut store_errors: Vec<(usize, Refusal)> = Vec::new();
                let mut counts = ImportCounts::default();
                let mut mutations = Vec::new();
                let mut activated: HashSet<AccountId> = HashSet::new();
                let each = current.many.iter().zip(&targets).zip(&target_rows);
                for (((account, existing), (account_id, user_id)), &index) in each {
                    let row = &rows[index];
                    let Some(account) = account else {
                        let e = DomainError::AccountNotFound(account_id.clone());
                        store_errors.push((index, row_refusal(e)?));
                        continue;
                    };
                    let blank;
                    let before = match existing {
                        Some(user) => user,
                        None => {
                            blank = User {
                                account_id: account.id.clone(),
                                id: user_id.clone(),
                                display_name: String::new(),
                                edition: None,
                                tier: Tier::None,
                                revision: current.next_revision,
                                created_at: now,
                                updated_at: now,
                            };
                            &blank
                        }
                    };
                    let change = ServicesChange {
                        edition: Some((!row.edition.is_empty()).then(|| row.edition.clone())),
                        tier: row.tier.clone().ok(),
                        expected_revision: None,
                    };
                    let (edition, tier, _) =
                        match plan_services(&catalogue, account, before, &change) {
                            Ok(planned) => planned,
                            Err(e) => {
                                store_errors.push((index, row_refusal(e)?));
                                continue;
                            }
                        };
                    let same = existing.as_ref().is_some_and(|u| {
                        u.display_name == row.display_name && u.edition == edition && u.tier == tier
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
                    if tier.grants_access()
                        && account.analytics_activated_at.is_none()
                        && activated.insert(account.id.clone())
                    {
                        mutations.push(Mutation::PutAccount(crate::domain::Account {
                            analytics_activated_at: Some(now),
                            ..account.clone()
                        }));
                    }
                    mutations.push(Mutation::PutUser(User {
                        display_name: row.display_name.clone(),
                        edition,
                        tier,
                        revision: current.next_revision,
                        updated_at: now,
                        ..before.clone()
                    }));
                }
                if !apply || !store_errors.is_empty() {
                    mutations.clear();
                }
                Ok(Decided::new(mutations, (counts, store_errors)))
            })
            .await?;
        let (counts, store_errors) = written.output;
        errors.extend(
            store_errors
                .into_iter()
                .map(|(index, refusal)| (index, DomainError::Refused(refusal))),
        );
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

/// A row's refusal as the answer keeps it; an error that is not a refusal
/// (none of the rules' errors) fails the whole import instead.
fn row_refusal(e: DomainError) -> Result<Refusal, DomainError> {
    e.refusal().ok_or(e)
}

/// The checks a row needs before the store is asked.
fn check_row(row: &ImportRow) -> Result<(AccountId, UserId), DomainError> {
    let bad = |field: &str, value: &str, e: &dyn std::fmt::Display| {
        let value = kept(value, MAX_KEPT_ID);
        DomainError::BadImport(format!("{field} `{value}` {e}"))
    };
    let account = AccountId::try_from(row.account_id.clone())
        .map_err(|e| bad("account_id", &row.account_id, &e))?;
    let user =
        UserId::try_from(row.user_id.clone()).map_err(|e| bad("user_id", &row.user_id, &e))?;
    validate_display_name(&row.display_name).map_err(|e| {
        bad(
            "display_name",
            &row.display_name.escape_debug().to_string(),
            &e,
        )
    })?;
    if let Err(e) = &row.tier {
        return Err(DomainError::BadImport(kept(e, MAX_KEPT_REASON)));
    }
    let len = row.edition.chars().count();
    if len > MAX_ID_LEN {
        return Err(bad(
            "edition",
            &row.edition,
            &format!("is {len} characters long; no catalogue name is longer than {MAX_ID_LEN}"),
        ));
    }
    Ok((account, user))
}
