//! `entitled migrate` and `entitled store copy`: offline work on a store.

use clap::Subcommand;
use entitled::store::{self, Location, Store};

use super::CliError;

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Copy a whole store (revisions, audit trail, kept answers) into a new
    /// one, sled or PostgreSQL, and compare them record by record. Stop the
    /// servers of FROM first: writes made during the copy are not copied.
    Copy {
        /// A sled directory or `postgres://USER@HOST:PORT/DB`.
        #[arg(long, value_name = "DIR|URL")]
        from: String,
        /// A new or empty sled directory, or a database that holds no store.
        #[arg(long, value_name = "DIR|URL")]
        to: String,
    },
}

/// `entitled migrate --store URL`.
pub fn migrate(url: &str) -> Result<(), CliError> {
    let location = Location::parse(url);
    if !matches!(location, Location::Postgres(_)) {
        return Err(CliError::Usage(format!(
            "--store `{url}` is not a database; write it like postgres://USER@HOST:PORT/DB (a sled directory needs no migration)"
        )));
    }
    let (applied, version) = super::runtime()?
        .block_on(Store::migrate(url))
        .map_err(|e| CliError::Unreachable(e.to_string()))?;
    if applied.is_empty() {
        println!("`{location}` is at schema version {version}; nothing to apply");
    } else {
        println!("`{location}`: applied schema versions {applied:?}; now at version {version}");
    }
    Ok(())
}

pub fn run(command: StoreCommand) -> Result<(), CliError> {
    match command {
        StoreCommand::Copy { from, to } => {
            let (from, to) = (Location::parse(&from), Location::parse(&to));
            let summary = super::runtime()?
                .block_on(store::copy(&from, &to))
                .map_err(|e| CliError::Local(e.to_string()))?;
            println!(
                "copied `{from}` into `{to}`: revision {}, {} records, each compared after the copy",
                summary.revision, summary.records
            );
            Ok(())
        }
    }
}
