//! `entitled restore FILE --data-dir DIR` or `--store URL`: offline, into an
//! empty or new directory, or a database that holds no store yet.

use std::path::PathBuf;

use entitled::store::{self, Location};

use super::CliError;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("into").required(true).args(["data_dir", "store"])))]
pub struct Args {
    /// Backup file made by `entitled backup`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Directory to restore into; it must be empty or not exist.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Database to restore into (`postgres://USER@HOST:PORT/DB`); it must
    /// hold no store yet.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let (summary, serve) = match (&args.data_dir, &args.store) {
        (Some(dir), _) => (
            store::restore(&args.file, dir).map_err(|e| CliError::Local(e.to_string()))?,
            format!("--data-dir {}", dir.display()),
        ),
        (None, Some(url)) => {
            let runtime = super::runtime()?;
            let summary = runtime
                .block_on(store::restore_into_database(&args.file, url))
                .map_err(|e| CliError::Local(e.to_string()))?;
            (summary, format!("--store {}", Location::parse(url)))
        }
        (None, None) => {
            return Err(CliError::Usage(
                "say where to restore: --data-dir DIR or --store URL".to_owned(),
            ));
        }
    };
    println!(
        "restored revision {} ({} records, taken at {}); start it with `entitled serve {serve}`",
        summary.revision,
        summary.entries,
        humantime::format_rfc3339_seconds(summary.taken_at),
    );
    println!(
        "tokens are restored as they were (the backup holds only their hashes); no new operator token file is written: use your existing operator token"
    );
    Ok(())
}
