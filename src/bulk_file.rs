//! The import and export file formats: CSV or JSON Lines with the columns
//! `account_id,user_id,display_name,edition,analytics_tier` and, optional
//! on import (files made before it existed have none), `supervisor_scope`:
//! `whole-account`, or `kind:id` references joined by commas; empty keeps a
//! supervisor's scope (a new supervisor gets the whole account).
//!
//! Parsing checks what a file alone can tell (format, tiers, display names,
//! duplicate users) and keeps each row's line number; the catalogue's rules
//! are the server's, applied by a dry run of `ImportUsers`. Kept apart from the
//! command line so that the fuzz target `import` exercises it as `entitled
//! import` does.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read},
};

use serde::{Deserialize, Serialize};

use crate::domain::{FieldError, SupervisorScope, Tier, field};

/// The columns, in the order export writes them.
pub const COLUMNS: [&str; 6] = [
    "account_id",
    "user_id",
    "display_name",
    "edition",
    "analytics_tier",
    "supervisor_scope",
];

/// The columns an imported file must have: all but `supervisor_scope`.
pub const REQUIRED_COLUMNS: [&str; 5] = [
    "account_id",
    "user_id",
    "display_name",
    "edition",
    "analytics_tier",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

/// A row as the file holds it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRow {
    pub account_id: String,
    pub user_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub edition: String,
    #[serde(default)]
    pub analytics_tier: String,
    /// Empty for none given.
    #[serde(default)]
    pub supervisor_scope: String,
}

/// A row that passed the file's own checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub account_id: String,
    pub user_id: String,
    pub display_name: String,
    /// Empty for no licence.
    pub edition: String,
    pub tier: Tier,
    /// `None` when the row gives none.
    pub supervisor_scope: Option<SupervisorScope>,
}

/// (line, problem)
pub type BadRow = (u64, String);
/// (line, row)
pub type GoodRow = (u64, Row);

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Read(String),
    /// On line 1.
    #[error("the header lacks {}; it must have {} (and may have supervisor_scope)", .0.join(", "), REQUIRED_COLUMNS.join(","))]
    Header(Vec<&'static str>),
}

/// The good rows with their line numbers, and the bad ones with why.
pub fn parse(source: impl Read, format: Format) -> Result<(Vec<GoodRow>, Vec<BadRow>), FileError> {
    let cannot = |e: &dyn std::fmt::Display| FileError::Read(e.to_string());
    let mut parsed: Vec<(u64, Result<FileRow, String>)> = Vec::new();
    match format {
        Format::Csv => {
            let mut reader = csv::ReaderBuilder::new()
                .trim(csv::Trim::All)
                .from_reader(source);
            let headers = reader.headers().map_err(|e| cannot(&e))?.clone();
            let missing: Vec<&'static str> = REQUIRED_COLUMNS
                .iter()
                .copied()
                .filter(|c| !headers.iter().any(|h| h == *c))
                .collect();
            if !missing.is_empty() {
                return Err(FileError::Header(missing));
            }
            for record in reader.records() {
                match record {
                    Ok(record) => {
                        let line = record.position().map_or(0, csv::Position::line);
                        parsed.push((
                            line,
                            record
                                .deserialize(Some(&headers))
                                .map_err(|e| e.to_string()),
                        ));
                    }
                    Err(e) => {
                        let line = e.position().map_or(0, csv::Position::line);
                        parsed.push((line, Err(e.to_string())));
                    }
                }
            }
        }
        Format::Jsonl => {
            for (i, line) in BufReader::new(source).lines().enumerate() {
                let line = line.map_err(|e| cannot(&e))?;
                if line.trim().is_empty() {
                    continue;
                }
                parsed.push((
                    (i + 1) as u64,
                    serde_json::from_str(&line).map_err(|e| e.to_string()),
                ));
            }
        }
    }
    let mut rows = Vec::with_capacity(parsed.len());
    let mut bad = Vec::new();
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    for (line, row) in parsed {
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                bad.push((line, e));
                continue;
            }
        };
        // Any case; empty for none.
        let tier = match row.analytics_tier.to_ascii_lowercase().as_str() {
            "" => Tier::None,
            name => match name.parse::<Tier>() {
                Ok(tier) => tier,
                Err(_) => {
                    let e = FieldError::invalid(
                        "analytics_tier",
                        name,
                        "is not a tier; use none, essentials or supervisor",
                    );
                    bad.push((line, e.to_string()));
                    continue;
                }
            },
        };
        // The server checks it too (the same check); here the line number
        // can go with it.
        let display_name = match field::display_name("display_name", row.display_name) {
            Ok(name) => String::from(name),
            Err(e) => {
                bad.push((line, e.to_string()));
                continue;
            }
        };
        let supervisor_scope = match row.supervisor_scope.trim() {
            "" => None,
            text => match field::scope_text("supervisor_scope", text) {
                Ok(scope) => Some(scope),
                Err(e) => {
                    bad.push((line, e.to_string()));
                    continue;
                }
            },
        };
        if let Some(first) = seen.insert((row.account_id.clone(), row.user_id.clone()), line) {
            bad.push((
                line,
                format!(
                    "user `{}` of account `{}` is also on line {first}; keep one row per user",
                    row.user_id, row.account_id
                ),
            ));
            continue;
        }
        rows.push((
            line,
            Row {
                account_id: row.account_id,
                user_id: row.user_id,
                display_name,
                edition: row.edition,
                tier,
                supervisor_scope,
            },
        ));
    }
    Ok((rows, bad))
}
