//! Printing results: every command builds JSON; `--output table` lays the
//! same values out for people.

use std::time::SystemTime;

use entitled::{domain::field, proto::v1 as pb};
use serde_json::{Value, json};

use super::OutputFormat;

pub fn print(format: OutputFormat, value: &Value) {
    match format {
        OutputFormat::Json => println!("{value}"),
        OutputFormat::Table => print!("{}", table(value)),
    }
}

/// An object as `key: value` lines; an array of objects as aligned columns.
fn table(value: &Value) -> String {
    match value {
        Value::Array(rows) => {
            let Some(Value::Object(first)) = rows.first() else {
                return "(none)\n".to_owned();
            };
            let columns: Vec<&String> = first.keys().collect();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|row| columns.iter().map(|c| cell(&row[c.as_str()])).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    cells
                        .iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |values: Vec<String>| {
                let padded: Vec<String> = values
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                format!("{}\n", padded.join("  ").trim_end())
            };
            let mut out = line(columns.iter().map(|c| c.to_uppercase()).collect());
            for row in cells {
                out.push_str(&line(row));
            }
            out
        }
        Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            map.iter()
                .map(|(k, v)| match v {
                    Value::Array(items) if items.iter().all(|i| !i.is_object()) => {
                        format!(
                            "{k:<width$}  {}\n",
                            items.iter().map(cell).collect::<Vec<_>>().join(", ")
                        )
                    }
                    Value::Array(items) => {
                        let mut s = format!("{k}:\n");
                        for line in table(&Value::Array(items.clone())).lines() {
                            s.push_str(&format!("  {line}\n"));
                        }
                        s
                    }
                    v => format!("{k:<width$}  {}\n", cell(v)),
                })
                .collect()
        }
        other => format!("{}\n", cell(other)),
    }
}

/// A value as a table shows it. Text is the server's, and much of it the
/// callers' (names, ids and reasons in the audit trail, kept before the
/// server escaped them): a control or format character is escaped by the
/// same rule as the server's messages (`field::shown_at_most`, no bound),
/// so no cell can send an escape sequence to the terminal or turn the
/// line around.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => field::shown_at_most(s, usize::MAX),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub fn time(t: Option<&prost_types::Timestamp>) -> Value {
    t.and_then(|t| SystemTime::try_from(*t).ok())
        .map_or(Value::Null, |t| {
            Value::String(humantime::format_rfc3339_seconds(t).to_string())
        })
}

pub fn tier(t: i32) -> &'static str {
    match pb::AnalyticsTier::try_from(t) {
        Ok(pb::AnalyticsTier::None) => "none",
        Ok(pb::AnalyticsTier::Essentials) => "essentials",
        Ok(pb::AnalyticsTier::Supervisor) => "supervisor",
        Ok(pb::AnalyticsTier::Unspecified) | Err(_) => "unspecified",
    }
}

pub fn role(r: i32) -> &'static str {
    match pb::Role::try_from(r) {
        Ok(pb::Role::Operator) => "operator",
        Ok(pb::Role::Provisioner) => "provisioner",
        Ok(pb::Role::AccountAdmin) => "account-admin",
        Ok(pb::Role::Gateway) => "gateway",
        Ok(pb::Role::Unspecified) | Err(_) => "unspecified",
    }
}

pub fn account(a: &pb::Account) -> Value {
    json!({
        "account_id": a.account_id,
        "display_name": a.display_name,
        "product_line": a.product_line,
        "created_at": time(a.created_at.as_ref()),
        "analytics_activated_at": time(a.analytics_activated_at.as_ref()),
    })
}

/// One user of a move's plan, a row of its table.
pub fn migrated_user(u: &pb::MigratedUser) -> Value {
    json!({
        "user": u.user_id,
        "edition_before": u.edition_before,
        "tier_before": tier(u.analytics_tier_before),
        "edition_after": u.edition_after,
        "tier_after": tier(u.analytics_tier_after),
        "changed": u.changed,
        "notices": u.notices.iter().map(|n| n.message.clone()).collect::<Vec<_>>(),
    })
}

/// A move: the plan's table, then its summary (last, where a long table
/// ends). A replay has no rows: they are in the audit trail.
pub fn migration(users: Vec<Value>, s: &pb::MigrationSummary) -> Value {
    json!({
        "users": users,
        "account": s.account_id,
        "from": s.from_product_line,
        "to": s.to_product_line,
        "dry_run": s.dry_run,
        "user_count": s.users,
        "changed": s.changed,
        "tiers_lowered": s.tiers_lowered,
        "licences_removed": s.licences_removed,
        "revision": s.revision,
        "replayed": s.replayed,
    })
}

pub fn user(u: &pb::User) -> Value {
    json!({
        "account_id": u.account_id,
        "user_id": u.user_id,
        "display_name": u.display_name,
        "edition": u.edition,
        "analytics": tier(u.analytics_tier),
        "supervisor_scope": scope(u.supervisor_scope.as_ref()),
        "revision": u.revision,
        "updated_at": time(u.updated_at.as_ref()),
    })
}

/// A supervisor's scope as `--scope` takes it (`whole-account`, or
/// `kind:id` joined by commas); null for none.
pub fn scope(s: Option<&pb::SupervisorScope>) -> Value {
    match s {
        None => Value::Null,
        Some(s) if s.whole_account => Value::String("whole-account".to_owned()),
        Some(s) => Value::String(
            s.refs
                .iter()
                .map(|r| {
                    let kind = pb::ScopeKind::try_from(r.kind)
                        .map(|k| {
                            k.as_str_name()
                                .trim_start_matches("SCOPE_KIND_")
                                .to_lowercase()
                                .replace('_', "-")
                        })
                        .unwrap_or_else(|_| r.kind.to_string());
                    format!("{kind}:{}", r.id)
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

pub fn check(c: &pb::CheckAnalyticsAccessResponse) -> Value {
    let denial = pb::DenialReason::try_from(c.denial_reason)
        .ok()
        .filter(|d| *d != pb::DenialReason::Unspecified)
        .map(|d| {
            d.as_str_name()
                .trim_start_matches("DENIAL_REASON_")
                .to_lowercase()
        });
    json!({
        "allowed": c.allowed,
        "tier": tier(c.tier),
        "edition": c.edition,
        "denial_reason": denial,
        "reason": c.reason,
        "supervisor_scope": scope(c.supervisor_scope.as_ref()),
        "data_available_at": time(c.data_available_at.as_ref()),
        "data_ready": c.data_ready,
        "reports": c.reports.iter().map(|r| json!({
            "id": &*r.id,
            "name": &*r.display_name,
            "kind": if r.kind == pb::ReportKind::Live as i32 { "live" } else { "historical" },
            "available": r.available,
        })).collect::<Vec<_>>(),
        "revision": c.revision,
    })
}

pub fn token(t: &pb::TokenInfo) -> Value {
    json!({
        "token_id": t.token_id,
        "name": t.name,
        "role": role(t.role),
        "account_id": t.account_id,
        "user_id": t.user_id,
        "created_at": time(t.created_at.as_ref()),
        "revoked_at": time(t.revoked_at.as_ref()),
    })
}

pub fn change(c: &pb::Change) -> Value {
    let state = |s: &Option<pb::UserState>| match s {
        Some(s) => Value::String(format!(
            "{} / {}{}",
            if s.edition.is_empty() {
                "no edition"
            } else {
                &s.edition
            },
            tier(s.analytics_tier),
            // A supervisor's groups, when scoped to some (rule 12).
            match (&s.supervisor_scope, scope(s.supervisor_scope.as_ref())) {
                (Some(scoped), Value::String(text)) if !scoped.whole_account => {
                    format!(" ({text})")
                }
                _ => String::new(),
            }
        )),
        None => Value::Null,
    };
    // An account's record: its states in place of a user's.
    let account = |s: &Option<pb::AccountState>| match s {
        Some(s) => Value::String(match &s.analytics_activated_at {
            Some(at) => match time(Some(at)) {
                Value::String(at) => format!("{}, analytics since {at}", s.product_line),
                _ => s.product_line.clone(),
            },
            None => s.product_line.clone(),
        }),
        None => Value::Null,
    };
    let (before, after) = if c.account_before.is_some() || c.account_after.is_some() {
        (account(&c.account_before), account(&c.account_after))
    } else {
        (state(&c.before), state(&c.after))
    };
    let caller = c.caller.as_ref();
    json!({
        "revision": c.revision,
        "time": time(c.time.as_ref()),
        "caller": caller.map(|c| format!("{} ({})", c.name, role(c.role))),
        "rpc": c.rpc.rsplit('.').next().unwrap_or(&c.rpc),
        "account_id": c.account_id,
        "user_id": c.user_id,
        "before": before,
        "after": after,
        "outcome": if c.refused { format!("refused {}: {}", c.refusal_code, c.refusal_reason) } else { c.details.join("; ") },
    })
}

pub fn catalogue(c: &pb::GetCatalogueResponse) -> Value {
    let editions: Vec<Value> = c
        .product_lines
        .iter()
        .flat_map(|l| {
            l.editions.iter().map(move |e| {
                json!({
                    "product_line": l.id,
                    "edition": e.id,
                    "analytics": e.allowed_tiers.iter().map(|t| tier(*t)).collect::<Vec<_>>(),
                })
            })
        })
        .collect();
    let delay = c
        .data_delay
        .as_ref()
        .and_then(|d| std::time::Duration::try_from(*d).ok());
    json!({
        "editions": editions,
        "reports": c.tier_reports.iter().map(|t| json!({
            "tier": tier(t.tier),
            "reports": t.reports.iter().map(|r| r.display_name.clone()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "data_delay": delay.map(|d| humantime::format_duration(d).to_string()),
        "migrations": c.migrations.iter().flat_map(|m| m.editions.iter().map(move |e| json!({
            "from": m.from_product_line,
            "to": m.to_product_line,
            "edition": e.from_edition,
            "becomes": e.to_edition,
        }))).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_escape_control_and_format_characters() {
        let rows = json!([{ "user_id": "a\u{1b}[2Jb\u{202e}c", "caller": "x" }]);
        let out = table(&rows);
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{202e}'),
            "{out:?}"
        );
        assert!(out.contains("a\\u{1b}[2Jb\\u{202e}c"), "{out}");
        let one = json!({ "reason": "x\u{200b}y", "names": ["p\u{2066}q"] });
        let out = table(&one);
        assert!(
            out.contains("x\\u{200b}y") && out.contains("p\\u{2066}q"),
            "{out}"
        );
        // What people write is left alone.
        assert_eq!(
            table(&json!("Zoë \"Ångström\" 李")),
            "Zoë \"Ångström\" 李\n"
        );
    }
}
