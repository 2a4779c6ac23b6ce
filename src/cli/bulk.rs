//! `entitled import` and `entitled export`: CSV or JSON Lines with the
//! columns `account_id,user_id,display_name,edition,analytics_tier` and
//! `supervisor_scope` (optional on import).
//!
//! Import checks every row before changing anything: locally (format, tiers,
//! display names, duplicates), then against the server (a dry run of every chunk, which
//! applies the catalogue's rules). Only if every row is good does it apply,
//! chunk by chunk, each chunk atomic. Rows that match what is stored change
//! nothing, so a re-run is harmless.

use std::{
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
};

use clap::ValueEnum;
use entitled::{
    bulk_file::{self, BadRow, COLUMNS, FileError, FileRow},
    domain::field,
    proto::v1 as pb,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{CliError, ClientArgs, output};

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

impl Format {
    fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

impl From<Format> for bulk_file::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Csv => bulk_file::Format::Csv,
            Format::Jsonl => bulk_file::Format::Jsonl,
        }
    }
}

pub struct ImportArgs {
    pub file: PathBuf,
    pub format: Option<Format>,
    pub dry_run: bool,
    pub chunk_size: usize,
}

pub async fn import(args: &ClientArgs, import: ImportArgs) -> Result<(), CliError> {
    let format = import
        .format
        .or_else(|| Format::of(&import.file))
        .ok_or_else(|| {
            CliError::Usage(format!(
                "cannot tell the format of `{}`: name it .csv or .jsonl, or pass --format",
                import.file.display()
            ))
        })?;
    let (rows, mut bad) = read(&import.file, format)?;
    let clients = args.connect().await?;
    let mut provisioning = clients.provisioning;

    // Every row against the server's rules, changing nothing.
    let chunk_size = import
        .chunk_size
        .clamp(1, entitled::service::MAX_IMPORT_ROWS);
    let mut would = (0u32, 0u32, 0u32);
    for chunk in rows.chunks(chunk_size) {
        let r = provisioning
            .import_users(pb::ImportUsersRequest {
                rows: chunk.iter().map(|(_, r)| r.clone()).collect(),
                dry_run: true,
                request_id: String::new(),
            })
            .await?
            .into_inner();
        for e in r.errors {
            let line = chunk.get(e.index as usize).map_or(0, |(line, _)| *line);
            bad.push((line, format!("{} ({})", e.message, e.code)));
        }
        would = (
            would.0 + r.created,
            would.1 + r.updated,
            would.2 + r.unchanged,
        );
    }
    if !bad.is_empty() {
        bad.sort();
        for (line, problem) in &bad {
            // A problem can quote the file's own text (a parser's message,
            // a duplicate's ids): escaped as a table cell is.
            eprintln!(
                "{}:{line}: {}",
                import.file.display(),
                field::shown_at_most(problem, usize::MAX)
            );
        }
        return Err(CliError::Refused(format!(
            "{} bad rows; nothing was changed",
            bad.len()
        )));
    }
    if import.dry_run {
        output::print(
            args.output,
            &json!({ "dry_run": true, "rows": rows.len(), "would_create": would.0, "would_update": would.1, "unchanged": would.2 }),
        );
        return Ok(());
    }

    let progress = Progress::new(rows.len() as u64);
    let mut done = (0u32, 0u32, 0u32);
    let mut revision = 0;
    for chunk in rows.chunks(chunk_size) {
        let r = provisioning
            .import_users(pb::ImportUsersRequest {
                rows: chunk.iter().map(|(_, r)| r.clone()).collect(),
                dry_run: false,
                request_id: String::new(),
            })
            .await?
            .into_inner();
        if let Some(e) = r.errors.first() {
            progress.finish();
            let line = chunk.get(e.index as usize).map_or(0, |(line, _)| *line);
            return Err(CliError::Refused(format!(
                "{}:{line}: {} ({}); the rows before line {} were applied: fix the file and run the import again",
                import.file.display(),
                e.message,
                e.code,
                chunk.first().map_or(0, |(l, _)| *l)
            )));
        }
        done = (done.0 + r.created, done.1 + r.updated, done.2 + r.unchanged);
        revision = revision.max(r.revision);
        progress.advance(chunk.len() as u64);
    }
    progress.finish();
    output::print(
        args.output,
        &json!({ "rows": rows.len(), "created": done.0, "updated": done.1, "unchanged": done.2, "revision": revision }),
    );
    Ok(())
}

/// (line, row as sent)
type GoodRow = (u64, pb::UserRow);

/// The good rows with their line numbers, and the bad ones with why.
fn read(path: &Path, format: Format) -> Result<(Vec<GoodRow>, Vec<BadRow>), CliError> {
    let cannot = |e: &dyn std::fmt::Display| {
        CliError::Local(format!("cannot read `{}`: {e}", path.display()))
    };
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let (rows, bad) = bulk_file::parse(file, format.into()).map_err(|e| match e {
        FileError::Read(e) => cannot(&e),
        FileError::Header(_) => CliError::Refused(format!("{}:1: {e}", path.display())),
    })?;
    let rows = rows
        .into_iter()
        .map(|(line, r)| {
            let row = pb::UserRow {
                account_id: r.account_id,
                user_id: r.user_id,
                display_name: r.display_name,
                edition: r.edition,
                analytics_tier: pb::AnalyticsTier::from(r.tier) as i32,
                supervisor_scope: r.supervisor_scope.as_ref().map(Into::into),
            };
            (line, row)
        })
        .collect();
    Ok((rows, bad))
}

/// A progress bar on a terminal; plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    done: std::cell::Cell<u64>,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) =
                ProgressStyle::with_template("{bar:40} {pos}/{len} rows ({per_sec}, {eta} left)")
            {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            total,
            done: std::cell::Cell::new(0),
        }
    }

    fn advance(&self, n: u64) {
        self.done.set(self.done.get() + n);
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => eprintln!("imported {}/{} rows", self.done.get(), self.total),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

pub async fn export(
    args: &ClientArgs,
    account: String,
    format: Format,
    out: Option<PathBuf>,
) -> Result<(), CliError> {
    let mut provisioning = args.connect().await?.provisioning;
    let mut stream = provisioning
        .export_users(pb::ExportUsersRequest {
            account_id: account,
        })
        .await?
        .into_inner();
    let sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| CliError::Local(format!("cannot write `{}`: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let local =
        |e: &dyn std::fmt::Display| CliError::Local(format!("cannot write the export: {e}"));
    let mut csv_writer = None;
    let mut jsonl_writer = None;
    match format {
        Format::Csv => {
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(sink);
            w.write_record(COLUMNS).map_err(|e| local(&e))?;
            csv_writer = Some(w);
        }
        Format::Jsonl => jsonl_writer = Some(std::io::BufWriter::new(sink)),
    }
    let mut count = 0u64;
    while let Some(message) = stream.message().await? {
        for row in message.rows {
            let row = FileRow {
                account_id: row.account_id,
                user_id: row.user_id,
                display_name: row.display_name,
                edition: row.edition,
                analytics_tier: output::tier(row.analytics_tier).to_owned(),
                supervisor_scope: match output::scope(row.supervisor_scope.as_ref()) {
                    serde_json::Value::String(text) => text,
                    _ => String::new(),
                },
            };
            if let Some(w) = &mut csv_writer {
                w.serialize(&row).map_err(|e| local(&e))?;
            }
            if let Some(w) = &mut jsonl_writer {
                serde_json::to_writer(&mut *w, &row).map_err(|e| local(&e))?;
                w.write_all(b"\n").map_err(|e| local(&e))?;
            }
            count += 1;
        }
    }
    if let Some(mut w) = csv_writer {
        w.flush().map_err(|e| local(&e))?;
    }
    if let Some(mut w) = jsonl_writer {
        w.flush().map_err(|e| local(&e))?;
    }
    if out.is_some() {
        eprintln!("exported {count} users");
    }
    Ok(())
}
