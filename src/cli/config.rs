//! `entitled serve` configuration: flags, `ENTITLED_<FLAG>` environment
//! variables, and a TOML file (`--config`), in that order of precedence, then
//! the defaults. Unknown keys and bad values stop start-up naming them.
//!
//! The settings themselves are the library's `server::Config`, defaults
//! included (`Config::default()`); this module only reads the two ways an
//! operator writes them (flags and environment: `ServeArgs`; the file:
//! `FileConfig`) and lays them over the defaults.

use std::{fmt::Display, net::SocketAddr, ops::Range, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use serde::Deserialize;
use serde_json::{Value, json};
use toml::Spanned;

use super::CliError;

use entitled::{
    server::{CatalogueSource, Config, TlsFiles},
    store::Location,
};

/// The shortest `--audit-retention` accepted.
pub const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(3600);

/// `--console-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleListen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for ConsoleListen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "off" {
            return Ok(ConsoleListen::Off);
        }
        s.parse()
            .map(ConsoleListen::At)
            .map_err(|_| format!("`{s}` is not an address or `off`; write it like 127.0.0.1:8080"))
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The flags of `entitled serve` (and `entitled config show`). None of them
/// has a clap default, so a value here came from a flag or the environment;
/// the file and the defaults fill the rest.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// TOML file with any of the flags below as keys (snake_case).
    #[arg(long, env = "ENTITLED_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "ENTITLED_LISTEN", help = with_default("Address to listen on", Config::default().listen))]
    pub listen: Option<SocketAddr>,
    #[arg(long, env = "ENTITLED_DATA_DIR", help = with_default("Directory of the sled database, created if absent", Config::default().data_dir.display()))]
    pub data_dir: Option<PathBuf>,
    /// The store, when not sled in --data-dir: `postgres://USER@HOST:PORT/DB`
    /// (many replicas may share one database), or a sled directory.
    #[arg(long, env = "ENTITLED_STORE", value_name = "URL|DIR")]
    pub store: Option<String>,
    /// Where the first start writes the operator token's secret (mode 0600)
    /// [default: operator.token in --data-dir, or in the working directory
    /// with PostgreSQL].
    #[arg(long, env = "ENTITLED_OPERATOR_TOKEN_FILE", value_name = "PATH")]
    pub operator_token_file: Option<PathBuf>,
    /// Catalogue file (TOML) to use instead of the built-in one.
    #[arg(long, env = "ENTITLED_CATALOGUE")]
    pub catalogue: Option<PathBuf>,
    /// How long after activation historical analytics data is available,
    /// e.g. `48h` or `2s`; overrides the catalogue's data_delay.
    #[arg(long, env = "ENTITLED_ANALYTICS_DATA_DELAY", value_parser = humantime::parse_duration)]
    pub analytics_data_delay: Option<Duration>,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, env = "ENTITLED_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ENTITLED_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate: also require client certificates signed by it.
    #[arg(long, env = "ENTITLED_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (none when unset).
    #[arg(long, env = "ENTITLED_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    #[arg(long, env = "ENTITLED_CONSOLE_LISTEN", value_name = "ADDR|off", help = with_default("Serve the web console on http://ADDR/ (https with --tls-cert), or `off`", Config::default().console_listen.map_or_else(|| "off".to_owned(), |a| a.to_string())))]
    pub console_listen: Option<ConsoleListen>,
    #[arg(long, env = "ENTITLED_WATCH_HISTORY", value_parser = humantime::parse_duration, help = with_default("How far back WatchEntitlements may start, e.g. `7d`", humantime::format_duration(Config::default().watch.history)))]
    pub watch_history: Option<Duration>,
    /// Prune audit records (and so ListChanges and Watch history) older than this, in the background, e.g. `90d` [default: keep everything].
    #[arg(long, env = "ENTITLED_AUDIT_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub audit_retention: Option<Duration>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "ENTITLED_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "ENTITLED_MAX_CONCURRENT_CALLS", value_name = "N", help = with_default("At most this many calls at once, one token at most half of them; more are answered RESOURCE_EXHAUSTED (health is exempt)", Config::default().max_concurrent_calls))]
    pub max_concurrent_calls: Option<usize>,
    #[arg(long, env = "ENTITLED_REQUEST_MESSAGE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help = with_default("A call whose request message has not arrived within this long of its start is ended (DEADLINE_EXCEEDED), e.g. `5s`", humantime::format_duration(Config::default().request_message_timeout)))]
    pub request_message_timeout: Option<Duration>,
    #[arg(long, env = "ENTITLED_MAX_REQUEST_BYTES", value_name = "BYTES", help = with_default("The largest request message accepted, in bytes", Config::default().max_request_bytes))]
    pub max_request_bytes: Option<usize>,
}

/// A flag's help with the default it falls back to, from the one place the
/// default is set (`Config::default()`), never a copy of it.
fn with_default(help: &str, default: impl Display) -> String {
    format!("{help} [default: {default}]")
}

/// The configuration in force: the server's settings, and how the binary
/// logs.
#[derive(Clone)]
pub struct Effective {
    pub server: Config,
    pub log_format: LogFormat,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    operator_token_file: Option<PathBuf>,
    catalogue: Option<PathBuf>,
    analytics_data_delay: Option<Spanned<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    metrics_listen: Option<Spanned<String>>,
    console_listen: Option<Spanned<String>>,
    watch_history: Option<Spanned<String>>,
    audit_retention: Option<Spanned<String>>,
    log_format: Option<LogFormat>,
    max_concurrent_calls: Option<usize>,
    request_message_timeout: Option<Spanned<String>>,
    max_request_bytes: Option<usize>,
}

impl ServeArgs {
    /// Flags and environment over the file over the defaults.
    pub fn resolve(&self) -> Result<Effective, CliError> {
        let (file, text, origin) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::Usage(format!("cannot read config file `{}`: {e}", path.display()))
                })?;
                let origin = path.display().to_string();
                let file: FileConfig = toml::from_str(&text).map_err(|e| {
                    CliError::Usage(format!("config `{origin}`: {}", e.to_string().trim_end()))
                })?;
                (file, text, origin)
            }
            None => (FileConfig::default(), String::new(), String::new()),
        };
        let bad = |span: Range<usize>, message: String| {
            let line = entitled::catalogue::line_of(&text, span.start);
            CliError::Usage(format!("config `{origin}` line {line}: {message}"))
        };
        let file_listen = file
            .listen
            .map(|l| {
                l.get_ref().parse::<SocketAddr>().map_err(|_| {
                    bad(
                        l.span(),
                        format!(
                            "listen `{}` is not an address; write it like 127.0.0.1:50051",
                            l.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let file_metrics = file
            .metrics_listen
            .map(|l| {
                l.get_ref().parse::<SocketAddr>().map_err(|_| {
                    bad(
                        l.span(),
                        format!(
                            "metrics_listen `{}` is not an address; write it like 127.0.0.1:9090",
                            l.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let file_console = file
            .console_listen
            .map(|l| {
                l.get_ref()
                    .parse::<ConsoleListen>()
                    .map_err(|e| bad(l.span(), format!("console_listen {e}")))
            })
            .transpose()?;
        let file_delay = file
            .analytics_data_delay
            .map(|d| {
                humantime::parse_duration(d.get_ref()).map_err(|e| {
                    bad(d.span(), format!("analytics_data_delay `{}` is not a duration ({e}); write it like `48h`", d.get_ref()))
                })
            })
            .transpose()?;
        let file_history = file
            .watch_history
            .map(|d| {
                humantime::parse_duration(d.get_ref()).map_err(|e| {
                    bad(
                        d.span(),
                        format!(
                            "watch_history `{}` is not a duration ({e}); write it like `7d`",
                            d.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let file_retention = file
            .audit_retention
            .map(|d| {
                humantime::parse_duration(d.get_ref()).map_err(|e| {
                    bad(
                        d.span(),
                        format!(
                            "audit_retention `{}` is not a duration ({e}); write it like `90d`",
                            d.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let file_message_timeout = file
            .request_message_timeout
            .map(|d| {
                humantime::parse_duration(d.get_ref()).map_err(|e| {
                    bad(
                        d.span(),
                        format!(
                            "request_message_timeout `{}` is not a duration ({e}); write it like `5s`",
                            d.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let mut server = Config::default();
        if let Some(listen) = self.listen.or(file_listen) {
            server.listen = listen;
        }
        if let Some(data_dir) = self.data_dir.clone().or(file.data_dir) {
            server.data_dir = data_dir;
        }
        if let Some(store) = self.store.clone().or(file.store) {
            server.store = Some(Location::parse(&store));
        }
        server.operator_token_file = self
            .operator_token_file
            .clone()
            .or(file.operator_token_file);
        if let Some(path) = self.catalogue.clone().or(file.catalogue) {
            server.catalogue = CatalogueSource::File(path);
        }
        server.analytics_data_delay = self.analytics_data_delay.or(file_delay);
        server.metrics_listen = self.metrics_listen.or(file_metrics);
        match self.console_listen.or(file_console) {
            Some(ConsoleListen::Off) => server.console_listen = None,
            Some(ConsoleListen::At(addr)) => server.console_listen = Some(addr),
            None => {}
        }
        if let Some(history) = self.watch_history.or(file_history) {
            server.watch.history = history;
        }
        if let Some(keep) = self.audit_retention.or(file_retention) {
            // With PostgreSQL, pruning also drops the change feed the
            // other replicas follow: a retention shorter than an hour would
            // leave a replica that lags by more (a pause, a lost
            // connection) unable to catch up without a restart.
            if keep < MIN_AUDIT_RETENTION {
                return Err(CliError::Usage(format!(
                    "audit_retention `{}` is shorter than the least, `1h`: records would be pruned before replicas and watchers that lag have read them; give at least `1h`, or leave it unset to keep everything",
                    humantime::format_duration(keep)
                )));
            }
            server.audit_retention.keep = Some(keep);
        }
        if let Some(calls) = self.max_concurrent_calls.or(file.max_concurrent_calls) {
            server.max_concurrent_calls = calls;
        }
        if let Some(timeout) = self.request_message_timeout.or(file_message_timeout) {
            server.request_message_timeout = timeout;
        }
        if let Some(bytes) = self.max_request_bytes.or(file.max_request_bytes) {
            server.max_request_bytes = bytes;
        }
        if server.max_concurrent_calls == 0 {
            return Err(CliError::Usage(
                "max_concurrent_calls `0` would refuse every call; give at least 1".to_owned(),
            ));
        }
        if server.request_message_timeout.is_zero() {
            return Err(CliError::Usage(
                "request_message_timeout `0s` would end every call; give at least `1s`".to_owned(),
            ));
        }
        if server.max_request_bytes == 0 {
            return Err(CliError::Usage(
                "max_request_bytes `0` would refuse every request; give at least 1".to_owned(),
            ));
        }
        let tls_cert = self.tls_cert.clone().or(file.tls_cert);
        let tls_key = self.tls_key.clone().or(file.tls_key);
        let tls_client_ca = self.tls_client_ca.clone().or(file.tls_client_ca);
        server.tls = match (tls_cert, tls_key, tls_client_ca) {
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(CliError::Usage(
                    "tls_cert and tls_key go together: give both or neither".to_owned(),
                ));
            }
            (None, None, Some(_)) => {
                return Err(CliError::Usage(
                    "tls_client_ca needs tls_cert and tls_key: client certificates are checked only over TLS".to_owned(),
                ));
            }
            (Some(cert), Some(key), client_ca) => Some(TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
        };
        Ok(Effective {
            server,
            log_format: self
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
        })
    }
}

impl Effective {
    /// For `entitled config show`. Holds no secrets (tokens never are
    /// configuration; key files are shown by path only).
    pub fn to_json(&self) -> Value {
        let server = &self.server;
        let path = |p: Option<&PathBuf>| p.map(|p| p.display().to_string());
        let tls = server.tls.as_ref();
        json!({
            "listen": server.listen.to_string(),
            "data_dir": server.data_dir.display().to_string(),
            "store": server.store.as_ref().map(|s| s.to_string()),
            "operator_token_file": path(server.operator_token_file.as_ref()),
            "catalogue": match &server.catalogue {
                CatalogueSource::Builtin => "(built-in)".to_owned(),
                CatalogueSource::File(path) => path.display().to_string(),
                CatalogueSource::Given(_) => "(given)".to_owned(),
            },
            "analytics_data_delay": server.analytics_data_delay.map(|d| humantime::format_duration(d).to_string()),
            "tls_cert": path(tls.map(|t| &t.cert)),
            "tls_key": path(tls.map(|t| &t.key)),
            "tls_client_ca": path(tls.and_then(|t| t.client_ca.as_ref())),
            "metrics_listen": server.metrics_listen.map(|a| a.to_string()),
            "console_listen": server.console_listen.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "watch_history": humantime::format_duration(server.watch.history).to_string(),
            "audit_retention": server.audit_retention.keep.map(|d| humantime::format_duration(d).to_string()),
            "log_format": match self.log_format { LogFormat::Text => "text", LogFormat::Json => "json" },
            "max_concurrent_calls": server.max_concurrent_calls,
            "request_message_timeout": humantime::format_duration(server.request_message_timeout).to_string(),
            "max_request_bytes": server.max_request_bytes,
        })
    }
}
