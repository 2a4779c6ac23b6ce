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
    /// The bearer token (or set ENTITLED_TOKEN).
    #[arg(long, global = true, env = "ENTITLED_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
        Bearer::new(self.token.as_deref()).map_err(|e| CliError::Usage(format!("--token: {e}")))
    }

    pub async fn connect(&self) -> Result<Clients, CliError> {
        Ok(Clients::new(&self.channel().await?, self.bearer()?))
    }
}
