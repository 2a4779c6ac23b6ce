//! The `entitled` binary: parses flags, sets up logging, and hands a shutdown
//! signal to the library's server; other subcommands live in `cli/`.

mod cli;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use entitled::{
    catalogue::Catalogue,
    server::{Application, Config, TlsFiles},
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "entitled",
    version,
    about = "Analytics entitlements for a cloud phone system, over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Take an online, consistent backup of a running server (operator token).
    Backup(cli::backup::Args),
    /// Restore a backup into an empty or new data directory (server stopped).
    Restore(cli::restore::Args),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ENTITLED_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory of the sled database (created if absent).
    #[arg(long, env = "ENTITLED_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Catalogue file (TOML) to use instead of the built-in one.
    #[arg(long, env = "ENTITLED_CATALOGUE")]
    catalogue: Option<PathBuf>,
    /// How long after activation historical analytics data is available,
    /// e.g. `48h` or `2s`; overrides the catalogue's data_delay.
    #[arg(long, env = "ENTITLED_ANALYTICS_DATA_DELAY", value_parser = humantime::parse_duration)]
    analytics_data_delay: Option<Duration>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "ENTITLED_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ENTITLED_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate: also require client certificates signed by it.
    #[arg(long, env = "ENTITLED_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (none when unset).
    #[arg(long, env = "ENTITLED_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        // The server's log records why it stopped; client commands only print.
        Command::Serve(args) => serve(args).inspect_err(|message| tracing::error!("{message}")),
        Command::Backup(args) => cli::backup::run(args),
        Command::Restore(args) => cli::restore::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let catalogue = match &args.catalogue {
        Some(path) => Catalogue::from_file(path),
        None => Catalogue::builtin(),
    }
    .map_err(|e| e.to_string())?;
    let catalogue = match args.analytics_data_delay {
        Some(delay) => catalogue.with_data_delay(delay),
        None => catalogue,
    };
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async {
        let mut config = Config::new(args.listen, args.data_dir, catalogue);
        config.metrics_listen = args.metrics_listen;
        if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
            config.tls = Some(TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca,
            });
        }
        let app = Application::build(config)
            .await
            .map_err(|e| e.to_string())?;
        app.run(shutdown_signal()).await.map_err(|e| e.to_string())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
