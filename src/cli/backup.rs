//! `entitled backup --out FILE`: an online, consistent backup of a running
//! server, through `BackupService.Backup` (operator token).
//!
//! The stream is written to `FILE.partial`, synced, read back and checked
//! (format, checksum, revision), and only then renamed to `FILE`: `FILE` is
//! either a whole, checked backup or untouched.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use entitled::{
    proto::v1::{BackupRequest, backup_service_client::BackupServiceClient},
    store,
};

use super::{CliError, ClientArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// File to write the backup to (replaced only once the backup is whole
    /// and checked).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Needs an operator token (`--token-file`, `--token` or their environment
/// variables).
pub async fn run(client: &ClientArgs, args: Args) -> Result<(), CliError> {
    let bearer = client.bearer()?;
    let channel = client.channel().await?;
    let mut client = BackupServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(usize::MAX);
    let mut stream = client.backup(BackupRequest {}).await?.into_inner();

    let partial = partial_path(&args.out);
    let cannot_write = |path: &Path, e: &dyn std::fmt::Display| {
        CliError::Local(format!("cannot write `{}`: {e}", path.display()))
    };
    let mut file = create_private(&partial).map_err(|e| cannot_write(&partial, &e))?;
    let written = async {
        let mut revision = None;
        while let Some(message) = stream.message().await? {
            revision = Some(message.revision);
            file.write_all(&message.chunk)
                .map_err(|e| cannot_write(&partial, &e))?;
        }
        file.sync_all().map_err(|e| cannot_write(&partial, &e))?;
        let summary = std::fs::File::open(&partial)
            .map_err(|e| e.to_string())
            .and_then(|f| store::verify(f).map_err(|e| e.to_string()))
            .map_err(|e| CliError::Local(format!("the backup received is not whole: {e}")))?;
        if revision != Some(summary.revision) {
            return Err(CliError::Local(format!(
                "the backup received is of revision {}, but the server announced {revision:?}; take it again",
                summary.revision
            )));
        }
        std::fs::rename(&partial, &args.out).map_err(|e| cannot_write(&args.out, &e))?;
        Ok::<_, CliError>(summary)
    }
    .await;
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    println!(
        "backup of revision {} ({} records, {} bytes) written to `{}`",
        summary.revision,
        summary.entries,
        summary.bytes,
        args.out.display()
    );
    Ok(())
}

/// Mode 0600 on Unix: a backup holds every record (token hashes too).
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    // A leftover from an earlier run would keep its own mode.
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn partial_path(out: &Path) -> PathBuf {
    let mut partial = out.as_os_str().to_owned();
    partial.push(".partial");
    PathBuf::from(partial)
}
