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
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

#[derive(clap::Args)]
pub struct Args {
    /// File to write the backup to (replaced only once the backup is whole
    /// and checked).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Server to back up.
    #[arg(
        long,
        env = "ENTITLED_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// An operator token.
    #[arg(long, env = "ENTITLED_TOKEN", hide_env_values = true)]
    token: String,
    /// PEM CA certificate to trust for an `https://` server.
    #[arg(long, env = "ENTITLED_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(backup(args))
}

async fn backup(args: Args) -> Result<(), String> {
    let bearer: MetadataValue<Ascii> = format!("Bearer {}", args.token.trim())
        .parse()
        .map_err(|_| "the token holds characters a token never has; copy it again".to_owned())?;
    let channel = connect(&args.server, args.tls_ca.as_deref()).await?;
    let mut client = BackupServiceClient::with_interceptor(channel, move |mut r: Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok::<_, Status>(r)
    })
    .max_decoding_message_size(usize::MAX);
    let mut stream = client
        .backup(BackupRequest {})
        .await
        .map_err(|s| refused(&args.server, &s))?
        .into_inner();

    let partial = partial_path(&args.out);
    let mut file = create_private(&partial)
        .map_err(|e| format!("cannot write `{}`: {e}", partial.display()))?;
    let written = async {
        let mut revision = None;
        while let Some(message) = stream
            .message()
            .await
            .map_err(|s| refused(&args.server, &s))?
        {
            revision = Some(message.revision);
            file.write_all(&message.chunk)
                .map_err(|e| format!("cannot write `{}`: {e}", partial.display()))?;
        }
        file.sync_all()
            .map_err(|e| format!("cannot write `{}`: {e}", partial.display()))?;
        let summary = std::fs::File::open(&partial)
            .map_err(|e| e.to_string())
            .and_then(|f| store::verify(f).map_err(|e| e.to_string()))
            .map_err(|e| format!("the backup received is not whole: {e}"))?;
        if revision != Some(summary.revision) {
            return Err(format!(
                "the backup received is of revision {}, but the server announced {revision:?}; take it again",
                summary.revision
            ));
        }
        std::fs::rename(&partial, &args.out)
            .map_err(|e| format!("cannot write `{}`: {e}", args.out.display()))?;
        Ok::<_, String>(summary)
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

async fn connect(server: &str, tls_ca: Option<&Path>) -> Result<Channel, String> {
    let mut endpoint = Endpoint::from_shared(server.to_owned()).map_err(|_| {
        format!("`{server}` is not a server URL; use one like `http://127.0.0.1:50051`")
    })?;
    if server.starts_with("https://") {
        let Some(ca) = tls_ca else {
            return Err(format!(
                "`{server}` uses TLS: pass the CA certificate that signed it with --tls-ca PEM"
            ));
        };
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read `{}`: {e}", ca.display()))?;
        endpoint = endpoint
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| format!("cannot use `{}` for TLS: {e}", ca.display()))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot reach the server at `{server}`: {e}"))
}

fn refused(server: &str, status: &Status) -> String {
    format!(
        "the server at `{server}` refused the backup ({:?}): {}",
        status.code(),
        status.message()
    )
}
