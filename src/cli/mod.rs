//! The `entitled` command line as a client of a running server: the admin
//! console's procedure, tokens, audit, bulk import and export.
//!
//! Exit codes: 0 success; 1 a local failure (a file, the terminal); 2 a usage
//! or configuration error; 3 the server refused the request (or rows of an
//! import); 4 the server could not be reached.

pub mod bulk;
pub mod commands;
pub mod config;
pub mod output;

use std::fmt;

use clap::{Args, ValueEnum};
use entitled::client::{Bearer, Clients};
use tonic::{Code, Status, transport::Endpoint};

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
    /// The bearer token (or set ENTITLED_TOKEN).
    #[arg(long, global = true, env = "ENTITLED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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

impl ClientArgs {
    pub async fn connect(&self) -> Result<Clients, CliError> {
        let endpoint = Endpoint::from_shared(self.server.clone()).map_err(|e| {
            CliError::Usage(format!(
                "--server `{}` is not a URL ({e}); write it like http://127.0.0.1:50051",
                self.server
            ))
        })?;
        let channel = endpoint.connect().await.map_err(|e| {
            CliError::Unreachable(format!("cannot reach the server at `{}`: {e}", self.server))
        })?;
        let bearer = Bearer::new(self.token.as_deref())
            .map_err(|e| CliError::Usage(format!("--token: {e}")))?;
        Ok(Clients::new(&channel, bearer))
    }
}
