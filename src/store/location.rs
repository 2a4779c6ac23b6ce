//! Where a store is, and moving a whole store from one place to another
//! (`entitled store copy`, a restore into PostgreSQL).

use std::{fmt, path::PathBuf, str::FromStr};

use super::{
    Store, StoreError,
    backend::{Counters, Record},
    backup::{self, BackupError, BackupSummary},
    postgres::{self, PgBackend},
    sled,
};

/// Where a store is: a sled directory (the default), or a PostgreSQL
/// database that many replicas share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sled(PathBuf),
    /// A `postgres://USER@HOST:PORT/DB` URL.
    Postgres(String),
}

impl Location {
    /// `postgres://…` or `postgresql://…` is a database; anything else is a
    /// directory.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_owned())
        } else {
            Location::Sled(PathBuf::from(s))
        }
    }
}

impl fmt::Display for Location {
    /// A database without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sled(dir) => write!(f, "{}", dir.display()),
            Location::Postgres(url) => match tokio_postgres::Config::from_str(url) {
                Ok(config) => f.write_str(&postgres::shown(&config)),
                Err(_) => f.write_str("postgres://…"),
            },
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `location` and loads the view. A
    /// database's schema is migrated first (or one newer than this binary
    /// knows is refused).
    pub async fn open_at(location: &Location) -> Result<Store, StoreError> {
        match location {
            Location::Sled(dir) => Store::open(dir),
            Location::Postgres(url) => Ok(Store {
                backend: std::sync::Arc::new(PgBackend::open(url).await?),
            }),
        }
    }

    /// `entitled migrate`: brings a database's schema up to date. Returns
    /// the versions applied now and the version it is at.
    pub async fn migrate(url: &str) -> Result<(Vec<i32>, i32), StoreError> {
        PgBackend::migrate(url).await
    }

    /// Every record, as of one revision (blocking work on a blocking
    /// thread).
    async fn records(&self) -> Result<(u64, Vec<Record>), StoreError> {
        let backend = std::sync::Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let revision = backend.snapshot(&mut |r| {
                records.push(r);
                Ok(())
            })?;
            Ok((revision, records))
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopySummary {
    pub revision: u64,
    /// Records copied, and compared one by one after.
    pub records: u64,
}

/// Copies the whole store at `from` (revisions, audit trail and kept
/// answers included) into `to`, which must hold no store yet, then reads
/// `to` back and compares it with what was read, record by record. `from`
/// is read at one revision; writes made to it meanwhile are not copied
/// (stop its servers first).
pub async fn copy(from: &Location, to: &Location) -> Result<CopySummary, StoreError> {
    if from == to {
        return Err(StoreError::Open {
            path: to.to_string(),
            reason: "it is the store being copied; copy into another".to_owned(),
        });
    }
    let source = Store::open_at(from).await?;
    let (revision, records) = source.records().await?;
    drop(source);
    let expected = fingerprint(&records)?;
    create(to, records).await?;
    let target = Store::open_at(to).await?;
    let (copied_revision, copied) = target.records().await?;
    let found = fingerprint(&copied)?;
    if copied_revision != revision || found != expected {
        let differ = expected
            .iter()
            .zip(&found)
            .position(|(a, b)| a != b)
            .unwrap_or(expected.len().min(found.len()));
        return Err(StoreError::Failed(format!(
            "the copy at `{to}` does not match `{from}`: revision {copied_revision} against {revision}, {} records against {}, the first difference at sorted record {differ}",
            found.len(),
            expected.len()
        )));
    }
    Ok(CopySummary {
        revision,
        records: u64::try_from(expected.len()).unwrap_or(u64::MAX),
    })
}

/// Each record's section and bytes, sorted: two stores hold the same
/// records when these are equal, whatever order each lists them in.
fn fingerprint(records: &[Record]) -> Result<Vec<(&'static str, Vec<u8>)>, StoreError> {
    let mut all = records
        .iter()
        .map(backup::encoded)
        .collect::<Result<Vec<_>, _>>()?;
    all.sort();
    Ok(all)
}

/// Puts `records` into a new store at `to`.
async fn create(to: &Location, records: Vec<Record>) -> Result<(), StoreError> {
    match to {
        Location::Sled(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || sled::create(&dir, records))
                .await
                .map_err(|e| StoreError::Failed(e.to_string()))?
        }
        Location::Postgres(url) => postgres::create(url, records).await,
    }
}

/// `entitled restore FILE --store URL`: a backup into a database that
/// holds no store yet. The file is checked whole before anything is
/// written, and written in one transaction.
pub async fn restore_into_database(
    file: &std::path::Path,
    url: &str,
) -> Result<BackupSummary, BackupError> {
    let source = std::fs::File::open(file).map_err(|source| BackupError::Open {
        path: file.display().to_string(),
        source,
    })?;
    // Read whole and checked (framing, checksum, every record) before
    // anything is written: the records wait in memory until then, so no
    // separate `verify` pass is needed.
    let mut records = Vec::new();
    let summary = backup::read(source, |batch| {
        records.extend(batch);
        Ok(())
    })?;
    let counters = records.iter().find_map(|r| match r {
        Record::Counters(c) => Some(*c),
        _ => None,
    });
    if counters.map(|c: Counters| c.revision) != Some(summary.revision) {
        return Err(BackupError::Damaged(format!(
            "its header says revision {} but its counters do not",
            summary.revision
        )));
    }
    postgres::create(url, records).await?;
    Ok(summary)
}
