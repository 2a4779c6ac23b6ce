//! The `entitled` binary: the server (`serve`) and a command-line client of
//! it. Parses flags, sets up logging, hands a shutdown signal to the
//! library's server; the client commands live in `cli/`.

mod cli;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};
use cli::{
    CliError, ClientArgs,
    bulk::{Format, ImportArgs},
    commands::{AccountCommand, AuditCommand, CatalogueCommand, TokenCommand, UserCommand},
    config::{Effective, LogFormat, ServeArgs},
};
use entitled::server::{Application, ServerError};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "entitled",
    version,
    about = "Analytics entitlements for a cloud phone system, over gRPC",
    after_help = "Exit codes: 0 success, 1 local failure, 2 usage or configuration error, 3 refused by the server, 4 server unreachable."
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(ServeArgs),
    /// Accounts (customer companies).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Users (extensions) and their services.
    #[command(subcommand)]
    User(UserCommand),
    /// Ask what a dashboard gateway asks: may this user open analytics?
    Check { account: String, user: String },
    /// The catalogue in force.
    #[command(subcommand)]
    Catalogue(CatalogueCommand),
    /// API tokens (operators only).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Bulk-load users from CSV or JSON Lines
    /// (account_id,user_id,display_name,edition,analytics_tier).
    Import {
        file: PathBuf,
        /// csv or jsonl; by default from the file's extension.
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Check every row against the server's rules; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Rows per atomic chunk (at most 5000).
        #[arg(long, default_value_t = entitled::service::MAX_IMPORT_ROWS)]
        chunk_size: usize,
    },
    /// Write users from one consistent snapshot, readable by `import`.
    Export {
        /// One account; all by default.
        #[arg(long, default_value = "")]
        account: String,
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// A file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Take an online, consistent backup of a running server (operator token).
    Backup(cli::backup::Args),
    /// Restore a backup into an empty or new data directory, or a database
    /// that holds no store (servers stopped).
    Restore(cli::restore::Args),
    /// Apply the database's schema migrations (`serve` also does, at start).
    Migrate {
        /// `postgres://USER@HOST:PORT/DB`.
        #[arg(long, env = "ENTITLED_STORE", value_name = "URL")]
        store: String,
    },
    /// Work on a whole store offline.
    #[command(subcommand)]
    Store(cli::store::StoreCommand),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the configuration `serve` would run with (same flags).
    Show(ServeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => args.resolve().and_then(serve),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "entitled",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Config(ConfigCommand::Show(args)) => args.resolve().and_then(|effective| {
            let mut shown = effective.to_json();
            if let serde_json::Value::Object(map) = &mut shown {
                map.insert("server".to_owned(), cli.client.server.clone().into());
                // What a client command would send, and from which file.
                let token = cli.client.token()?;
                map.insert("token".to_owned(), token.as_deref().map(mask).into());
                let file = cli.client.token_file.as_ref();
                map.insert(
                    "token_file".to_owned(),
                    file.map(|p| p.display().to_string()).into(),
                );
            }
            cli::output::print(cli.client.output, &shown);
            Ok(())
        }),
        Command::Restore(args) => cli::restore::run(args),
        Command::Migrate { store } => {
            init_logging(LogFormat::Text, "warn");
            cli::store::migrate(&store)
        }
        Command::Store(command) => {
            init_logging(LogFormat::Text, "warn");
            cli::store::run(command)
        }
        command => client(&cli.client, command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// A token as `config show` prints it: the id, never the secret.
fn mask(token: &str) -> String {
    match token.split_once('.') {
        Some((id, _)) => format!("{id}.****"),
        None => "****".to_owned(),
    }
}

fn client(args: &ClientArgs, command: Command) -> Result<(), CliError> {
    init_logging(LogFormat::Text, "warn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        match command {
            Command::Account(c) => cli::commands::account(args, c).await,
            Command::User(c) => cli::commands::user(args, c).await,
            Command::Check { account, user } => cli::commands::check(args, account, user).await,
            Command::Catalogue(c) => cli::commands::catalogue(args, c).await,
            Command::Token(c) => cli::commands::token(args, c).await,
            Command::Audit(c) => cli::commands::audit(args, c).await,
            Command::Import {
                file,
                format,
                dry_run,
                chunk_size,
            } => {
                let import = ImportArgs {
                    file,
                    format,
                    dry_run,
                    chunk_size,
                };
                cli::bulk::import(args, import).await
            }
            Command::Export {
                account,
                format,
                out,
            } => cli::bulk::export(args, account, format, out).await,
            Command::Backup(backup) => cli::backup::run(args, backup).await,
            Command::Serve(_)
            | Command::Config(_)
            | Command::Completions { .. }
            | Command::Restore(_)
            | Command::Migrate { .. }
            | Command::Store(_) => Ok(()),
        }
    })
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(config: Effective) -> Result<(), CliError> {
    init_logging(config.log_format, "info");
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| CliError::Local(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        // Listen for the signals before anything is served: a SIGTERM that
        // arrives once the server has said it serves must stop it
        // gracefully, never kill it.
        let stop = shutdown_signal();
        let app = Application::build(config.server)
            .await
            .map_err(|e| match e {
                // A catalogue the server cannot use is the operator's to fix.
                ServerError::Catalogue(e) => CliError::Usage(e.to_string()),
                e => CliError::Local(e.to_string()),
            })?;
        app.run(stop)
            .await
            .map_err(|e| CliError::Local(e.to_string()))
    })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled; call it inside the runtime.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        match (interrupt, term) {
            (Ok(mut interrupt), Ok(mut term)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = term.recv() => {}
                }
            }
            (Ok(mut only), Err(e)) | (Err(e), Ok(mut only)) => {
                tracing::warn!(error = %e, "cannot listen for one of SIGINT and SIGTERM; only the other stops the server");
                only.recv().await;
            }
            (Err(e), Err(_)) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT or SIGTERM; stop the server with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
