//! The `entitled` command line as a client of a running server: the admin
//! console's procedure, tokens, audit, bulk import and export.
//!
//! Exit codes: 0 success; 1 a local failure (a file, the terminal); 2 a usage
//! or configuration error; 3 the server refused the request (or rows of an
//! import); 4 the server could not be reached.

pub mod backup;
pub mod bulk;
pub mod commands;
pub mod config;
pub mod output;
pub mod restore;
pub mod store;

use std::{fmt, path::PathBuf};

use clap::{Args, ValueEnum};
use entitled::client::{Bearer, Clients};
use tonic::{
    Code, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

/// Options of every client command.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "ENTITLED_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// The bearer token (or set ENTITLED_TOKEN). Prefer --token-file: a
    /// token on the command line is visible to every user of the machine
    /// (`ps`).
    #[arg(long, global = true, env = "ENTITLED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token (or set ENTITLED_TOKEN_FILE); the
    /// preferred way to give it. Only its owner may read or write it
    /// (chmod 600): the `operator.token` a server writes on its first start
    /// is so, and can be passed as it is.
    #[arg(long, global = true, env = "ENTITLED_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate to trust for an `https://` server.
    #[arg(long, global = true, env = "ENTITLED_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Why a command failed, and so its exit code.
#[derive(Debug)]
pub enum CliError {
    /// A local problem: a file, the terminal.
    Local(String),
    /// Bad flags or configuration.
    Usage(String),
    /// The server refused the request.
    Refused(String),
    /// The server could not be reached.
    Unreachable(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Local(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Refused(_) => 3,
            CliError::Unreachable(_) => 4,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Local(m)
            | CliError::Usage(m)
            | CliError::Refused(m)
            | CliError::Unreachable(m) => f.write_str(m),
        }
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        let message = format!("{} ({:?})", status.message(), status.code());
        match status.code() {
            Code::Unavailable => {
                CliError::Unreachable(format!("the server is unavailable: {message}"))
            }
            _ => CliError::Refused(message),
        }
    }
}

/// A runtime for the commands that work on a store directly.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Local(format!("cannot start the runtime: {e}")))
}

impl ClientArgs {
    /// A connection to the server (TLS for `https://`, trusting `--tls-ca`).
    pub async fn channel(&self) -> Result<Channel, CliError> {
        let server = &self.server;
        let mut endpoint = Endpoint::from_shared(server.clone()).map_err(|e| {
            CliError::Usage(format!(
                "--server `{server}` is not a URL ({e}); write it like http://127.0.0.1:50051"
            ))
        })?;
        if server.starts_with("https://") {
            let Some(ca) = &self.tls_ca else {
                return Err(CliError::Usage(format!(
                    "`{server}` uses TLS: pass the CA certificate that signed it with --tls-ca PEM"
                )));
            };
            let pem = std::fs::read(ca)
                .map_err(|e| CliError::Local(format!("cannot read `{}`: {e}", ca.display())))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| {
                    CliError::Usage(format!("cannot use `{}` for TLS: {e}", ca.display()))
                })?;
        }
        endpoint.connect().await.map_err(|e| {
            CliError::Unreachable(format!("cannot reach the server at `{server}`: {e}"))
        })
    }

    /// The token to send, as an interceptor.
    pub fn bearer(&self) -> Result<Bearer, CliError> {
        let token = self.token()?;
        Bearer::new(token.as_deref()).map_err(|e| {
            CliError::Usage(match &self.token_file {
                Some(path) => format!("--token-file `{}`: {e}", path.display()),
                None => format!("--token: {e}"),
            })
        })
    }

    /// The token from `--token-file` or `--token` (never both), if any.
    pub fn token(&self) -> Result<Option<String>, CliError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(CliError::Usage(
                "--token (or ENTITLED_TOKEN) and --token-file (or ENTITLED_TOKEN_FILE) are both set; give only one, preferably --token-file".to_owned(),
            )),
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(path)) => read_token_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    pub async fn connect(&self) -> Result<Clients, CliError> {
        // The token first: a refused file is reported even with no server.
        let bearer = self.bearer()?;
        Ok(Clients::new(&self.channel().await?, bearer))
    }
}

/// The token in `path`, trimmed; refused if group or others may read or
/// write the file, since then the token is not the holder's alone.
fn read_token_file(path: &std::path::Path) -> Result<String, CliError> {
    use std::io::Read;
    let shown = path.display();
    let cannot = |e: &dyn fmt::Display| CliError::Local(format!("cannot read `{shown}`: {e}"));
    let mut file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    // The mode of the file opened, not of whatever is at the path later.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = file
            .metadata()
            .map_err(|e| cannot(&e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(CliError::Usage(format!(
                "token file `{shown}` is open to group or others (mode {:04o}), so its token may not be yours alone; run `chmod 600 {shown}`",
                mode & 0o7777
            )));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| cannot(&e))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CliError::Usage(format!(
            "token file `{shown}` is empty; put the token in it"
        )));
    }
    Ok(token.to_owned())
}
