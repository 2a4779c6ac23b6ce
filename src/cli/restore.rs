//! `entitled restore FILE --data-dir DIR`: offline, into an empty or new
//! directory.

use std::path::PathBuf;

use entitled::store;

use super::CliError;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Backup file made by `entitled backup`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Directory to restore into; it must be empty or not exist.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

pub fn run(args: Args) -> Result<(), CliError> {
    let summary =
        store::restore(&args.file, &args.data_dir).map_err(|e| CliError::Local(e.to_string()))?;
    println!(
        "restored revision {} ({} records, taken at {}) into `{}`; start it with `entitled serve --data-dir {}`",
        summary.revision,
        summary.entries,
        humantime::format_rfc3339_seconds(summary.taken_at),
        args.data_dir.display(),
        args.data_dir.display(),
    );
    println!(
        "tokens are restored as they were (the backup holds only their hashes); no new operator token file is written: use your existing operator token"
    );
    Ok(())
}
