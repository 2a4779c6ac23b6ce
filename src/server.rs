//! Start-up and shutdown: the library owns them, so tests run exactly what the
//! binary runs. `Application::build` opens the store and binds the listener
//! (port 0 works; `local_addr` reports the port bound); `run` serves until the
//! shutdown future completes, then drains in-flight calls and flushes. With
//! `metrics_listen` set, Prometheus metrics are served there on `/metrics`
//! for as long as the gRPC server runs; with `console_listen` set, the web
//! console (`console/`) is served there, over TLS when gRPC is.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, sync::oneshot, time::MissedTickBehavior};
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    catalogue::{Catalogue, CatalogueError},
    console::{Console, ConsoleListener},
    grpc::{
        AccessServer, Api, Authenticate, ChecksFirstLayer, OverloadMonitor, RpcMetricsLayer,
        ShedLayer, Unvectored,
    },
    metrics::{Metrics, MetricsError},
    proto::{
        FILE_DESCRIPTOR_SET,
        v1::{
            audit_service_server::AuditServiceServer, backup_service_server::BackupServiceServer,
            catalogue_service_server::CatalogueServiceServer,
            provisioning_service_server::ProvisioningServiceServer,
            token_service_server::TokenServiceServer,
        },
    },
    service::{
        Clock, DomainError, Entitlements, OPERATOR_TOKEN_FILE, Pruner, RetentionOptions,
        WatchOptions, system_clock,
    },
    store::{Location, Store, StoreError},
};

/// The services health reports on, besides the whole server ("").
const SERVICE_NAMES: [&str; 7] = [
    "",
    "entitled.v1.CatalogueService",
    "entitled.v1.ProvisioningService",
    "entitled.v1.AccessService",
    "entitled.v1.AuditService",
    "entitled.v1.TokenService",
    "entitled.v1.BackupService",
];

/// Where the TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain of the server.
    pub cert: PathBuf,
    /// PEM private key of the server.
    pub key: PathBuf,
    /// PEM CA certificate(s); when set, clients must present a certificate
    /// signed by one of them.
    pub client_ca: Option<PathBuf>,
}

/// Where the catalogue in force comes from.
#[derive(Debug, Clone)]
pub enum CatalogueSource {
    /// The catalogue built into the binary.
    Builtin,
    /// A TOML file, read when the server starts.
    File(PathBuf),
    /// A catalogue already read (tests, the benchmark).
    Given(Catalogue),
}

impl From<Catalogue> for CatalogueSource {
    fn from(catalogue: Catalogue) -> Self {
        CatalogueSource::Given(catalogue)
    }
}

impl CatalogueSource {
    fn load(self) -> Result<Catalogue, CatalogueError> {
        match self {
            CatalogueSource::Builtin => Catalogue::builtin(),
            CatalogueSource::File(path) => Catalogue::from_file(&path),
            CatalogueSource::Given(catalogue) => Ok(catalogue),
        }
    }
}

/// The server's settings: everything it needs to start, and the one type
/// that holds them. `entitled serve` fills it from its flags, environment
/// and file over `Config::default()`; `entitled config show` prints it;
/// tests set its fields directly.
#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The sled store's directory, unless `store` names another.
    pub data_dir: PathBuf,
    /// Where the store is, when not sled in `data_dir`: a PostgreSQL
    /// database that many replicas may share.
    pub store: Option<Location>,
    /// Where the first start writes the operator token's secret (mode
    /// 0600): by default `operator.token` in `data_dir`, or, with
    /// PostgreSQL, in the working directory.
    pub operator_token_file: Option<PathBuf>,
    pub catalogue: CatalogueSource,
    /// Overrides the catalogue's `data_delay` when set.
    pub analytics_data_delay: Option<Duration>,
    pub clock: Clock,
    /// Serve TLS (and optionally require client certificates).
    pub tls: Option<TlsFiles>,
    /// Serve Prometheus metrics on `GET /metrics` here (plain HTTP); none
    /// when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the web console here (HTTPS when `tls` is set, else HTTP);
    /// none when unset.
    pub console_listen: Option<SocketAddr>,
    /// How WatchEntitlements behaves (history kept, heartbeat, buffer).
    pub watch: WatchOptions,
    /// How long audit records are kept (default: for ever), and how the
    /// background pruning goes.
    pub audit_retention: RetentionOptions,
    /// At most this many calls run at once, and one token at most half of
    /// them (`grpc::token_share`); calls beyond are answered
    /// `RESOURCE_EXHAUSTED` at once. Health is exempt.
    pub max_concurrent_calls: usize,
    /// A call whose request message has not arrived whole this long after
    /// the call began is answered `DEADLINE_EXCEEDED`, and its slot freed.
    pub request_message_timeout: Duration,
    /// The largest request message accepted (bytes, after decompression);
    /// larger ones are refused before they are decoded.
    pub max_request_bytes: usize,
}

/// The default of `Config::listen`: loopback only, so a server started
/// without thought is not reachable from the network.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);

/// The default of `Config::console_listen`: loopback only, as `listen`.
pub const DEFAULT_CONSOLE_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

/// The default of `Config::data_dir`.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// The default of `Config::max_concurrent_calls`: well above the 64 clients
/// of the benchmarks, well below what exhausts memory.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// The default of `Config::request_message_timeout`: short enough that a
/// caller who stalls keeps a slot only briefly, long enough for a request
/// sent with its headers: a 5000-row import of some hundreds of KiB needs
/// under 1 Mbit/s to arrive in time (a request of the full 4 MiB, about
/// 7 Mbit/s; raise it for large imports over slow links).
pub const DEFAULT_REQUEST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The default of `Config::max_request_bytes`: tonic's own (4 MiB), which
/// holds the largest import (5000 rows).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

impl Default for Config {
    /// The documented defaults: a plaintext server on `DEFAULT_LISTEN` with
    /// the built-in catalogue and the system clock.
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            store: None,
            operator_token_file: None,
            catalogue: CatalogueSource::Builtin,
            analytics_data_delay: None,
            clock: system_clock(),
            tls: None,
            metrics_listen: None,
            console_listen: Some(DEFAULT_CONSOLE_LISTEN),
            watch: WatchOptions::default(),
            audit_retention: RetentionOptions::default(),
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            request_message_timeout: DEFAULT_REQUEST_MESSAGE_TIMEOUT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

impl Config {
    /// A plaintext server with the system clock, and no console: the
    /// console's fixed default port would be shared by every server built
    /// this way (tests, the benchmark); set `console_listen` for one.
    pub fn new(
        listen: SocketAddr,
        data_dir: PathBuf,
        catalogue: impl Into<CatalogueSource>,
    ) -> Self {
        Config {
            listen,
            data_dir,
            catalogue: catalogue.into(),
            console_listen: None,
            ..Config::default()
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The catalogue file is unreadable or wrong: a configuration error.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    #[error("cannot create data directory `{path}`: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot read TLS file `{path}`: {source}")]
    TlsFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the first operator token: {0}")]
    Bootstrap(#[from] DomainError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("metrics server failed: {0}")]
    MetricsServe(std::io::Error),
    #[error("console: cannot use the TLS certificate: {0}")]
    ConsoleTls(String),
    #[error("console server failed: {0}")]
    ConsoleServe(std::io::Error),
}

/// A built server: store open, listener bound.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    entitlements: Entitlements,
    tls: Option<ServerTlsConfig>,
    metrics: Metrics,
    /// Bound when `metrics_listen` is set, with the address actually bound.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    /// Bound when `console_listen` is set, with the console it serves.
    console: Option<(ConsoleListener, Console)>,
    console_addr: Option<SocketAddr>,
    max_concurrent_calls: usize,
    request_message_timeout: Duration,
    max_request_bytes: usize,
    pruner: Pruner,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, ServerError> {
        // The catalogue first: a bad file stops start-up before anything
        // is created or taken.
        let catalogue = config.catalogue.load()?;
        let catalogue = match config.analytics_data_delay {
            Some(delay) => catalogue.with_data_delay(delay),
            None => catalogue,
        };
        let location = config
            .store
            .clone()
            .unwrap_or_else(|| Location::Sled(config.data_dir.clone()));
        if let Location::Sled(dir) = &location {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        // The store first: a directory in use, or a database that cannot
        // be reached, fails before the port is taken.
        let store = Store::open_at(&location).await?;
        let (listener, local_addr) = bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let console_listener = match config.console_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let tls = config.tls.as_ref().map(tls_config).transpose()?;
        if tls.is_none() && !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "listening beyond loopback without TLS: tokens cross the network in clear; use --tls-cert and --tls-key");
        }
        let metrics = Metrics::new()?;
        store.observe(Arc::new(metrics.clone()));
        let revision = store.read(|v| v.revision());
        tracing::info!(%local_addr, store = %location, revision, "store opened");
        let clock = config.clock.clone();
        let entitlements =
            Entitlements::new(store, catalogue, config.clock).with_watch_options(config.watch);
        let pruner = entitlements.pruner(config.audit_retention);
        let token_file = config
            .operator_token_file
            .clone()
            .unwrap_or_else(|| match &location {
                Location::Sled(dir) => dir.join(OPERATOR_TOKEN_FILE),
                Location::Postgres(_) => PathBuf::from(OPERATOR_TOKEN_FILE),
            });
        if let Some(path) = entitlements.bootstrap(&token_file).await? {
            // The file, never the secret.
            tracing::info!(file = %path.display(), "first start: an operator token was written to this file (mode 0600)");
        }
        let (console, console_addr) = match console_listener {
            Some((listener, addr)) => {
                let tls = config.tls.as_ref().map(console_tls).transpose()?;
                let secure = tls.is_some();
                let listener = ConsoleListener::new(listener, tls)
                    .map_err(|source| ServerError::Bind { addr, source })?;
                let console = Console::new(entitlements.clone(), &metrics, clock, secure)
                    .map_err(MetricsError::from)?;
                (Some((listener, console)), Some(addr))
            }
            None => (None, None),
        };
        Ok(Application {
            listener,
            local_addr,
            entitlements,
            tls,
            metrics,
            metrics_listener,
            console,
            console_addr,
            max_concurrent_calls: config.max_concurrent_calls,
            request_message_timeout: config.request_message_timeout,
            max_request_bytes: config.max_request_bytes,
            pruner,
        })
    }

    /// The audit trail's pruner: `run` starts it in the background when a
    /// retention is set; a test can run a pass itself.
    pub fn pruner(&self) -> Pruner {
        self.pruner.clone()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address metrics are served on, if `metrics_listen` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The address the console is served on, if `console_listen` was set.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console_addr
    }

    /// Serves until `shutdown` completes; then health turns NOT_SERVING,
    /// in-flight calls finish, and the store is flushed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let (reporter, health) = tonic_health::server::health_reporter();
        set_status(&reporter, ServingStatus::Serving).await;

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        // grpcurl 1.8 still speaks only v1alpha.
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let api = Api::new(self.entitlements.clone(), self.metrics.clone());
        let auth = Authenticate::new(self.entitlements.clone());
        // Each connection without vectored writes: a check's answer then
        // leaves in one write with its trailers (`grpc::Unvectored`).
        let incoming = TcpIncoming::from(self.listener)
            .with_nodelay(Some(true))
            .map(|connection| connection.map(Unvectored));
        // The metrics server stops when the gRPC server has stopped, so the
        // last calls are still counted while they drain.
        let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics_server = self.metrics_listener.map(|(listener, addr)| {
            tracing::info!(%addr, "serving metrics on /metrics");
            let entitlements = self.entitlements.clone();
            tokio::spawn(crate::metrics::serve(
                listener,
                self.metrics.clone(),
                Arc::new(move || entitlements.store_stats()),
                async {
                    let _ = metrics_stopped.await;
                },
            ))
        });
        // The console stops with the gRPC server, as metrics do.
        let (console_stop, console_stopped) = oneshot::channel::<()>();
        let console_server = self.console.map(|(listener, console)| {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            let url = format!(
                "{scheme}://{}/",
                self.console_addr
                    .map_or_else(String::new, |a| a.to_string())
            );
            tracing::info!(%url, "serving the console");
            tokio::spawn(crate::console::serve(listener, console, async {
                let _ = console_stopped.await;
            }))
        });
        let shed = ShedLayer::new(
            self.max_concurrent_calls,
            self.request_message_timeout,
            self.metrics.clone(),
        );
        let (overload_stop, overload_stopped) = oneshot::channel::<()>();
        let overload = tokio::spawn(report_overload(
            reporter.clone(),
            shed.monitor(),
            overload_stopped,
        ));
        // Pruning stops before the final flush.
        let (pruner_stop, pruner_stopped) = oneshot::channel::<()>();
        let pruner = tokio::spawn(self.pruner.clone().run(async {
            let _ = pruner_stopped.await;
        }));
        tracing::info!(addr = %self.local_addr, "serving");
        let entitlements = self.entitlements.clone();
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: health is NOT_SERVING, finishing in-flight calls");
            // Stopped first, so it cannot turn health SERVING again.
            let _ = overload_stop.send(());
            let _ = overload.await;
            set_status(&reporter, ServingStatus::NotServing).await;
            // Watches never finish by themselves: end them, so the calls
            // in flight can.
            entitlements.begin_shutdown();
        };
        // Metrics outside the shedding, so shed calls are counted too.
        // tonic itself answers a `grpc-timeout` that expires with CANCELLED.
        let max = self.max_request_bytes;
        let access = AccessServer::new(api.clone(), &auth, max);
        // The checks go straight to `access`, inside the metrics and the
        // shedding, ahead of the router (`ChecksFirstLayer` says why).
        let mut builder = Server::builder()
            .layer(RpcMetricsLayer::new(self.metrics.clone()))
            .layer(shed)
            .layer(ChecksFirstLayer::new(access.clone()));
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        // Health and reflection are open; everything else needs a token.
        builder
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                auth.wrap(CatalogueServiceServer::new(api.clone()).max_decoding_message_size(max)),
            )
            .add_service(
                auth.wrap(
                    ProvisioningServiceServer::new(api.clone()).max_decoding_message_size(max),
                ),
            )
            .add_service(access)
            .add_service(
                auth.wrap(AuditServiceServer::new(api.clone()).max_decoding_message_size(max)),
            )
            .add_service(
                auth.wrap(TokenServiceServer::new(api.clone()).max_decoding_message_size(max)),
            )
            .add_service(auth.wrap(BackupServiceServer::new(api).max_decoding_message_size(max)))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await?;
        let _ = metrics_stop.send(());
        let _ = console_stop.send(());
        let _ = pruner_stop.send(());
        let _ = pruner.await;
        let console_result = match console_server {
            Some(server) => match server.await {
                Ok(result) => result,
                Err(e) => Err(std::io::Error::other(e)),
            },
            None => Ok(()),
        };
        let metrics_result = match metrics_server {
            Some(server) => match server.await {
                Ok(result) => result,
                Err(e) => Err(std::io::Error::other(e)),
            },
            None => Ok(()),
        };
        self.entitlements.sync_on_stop().await?;
        tracing::info!("stopped; store flushed");
        metrics_result.map_err(ServerError::MetricsServe)?;
        console_result.map_err(ServerError::ConsoleServe)
    }
}

async fn set_status(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Turns the entitled services NOT_SERVING while the server is overloaded
/// (its concurrency limit full, or calls shed for it, for about a second),
/// and SERVING again once it is not, until `stop`. The whole server (`""`)
/// stays SERVING: the process is alive and health answers, so a liveness
/// probe on `""` does not restart a server that is only busy; a load
/// balancer checks a service name and sends its calls elsewhere.
async fn report_overload(
    reporter: HealthReporter,
    mut monitor: OverloadMonitor,
    mut stop: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(OverloadMonitor::TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let Some(overloaded) = monitor.tick() else {
            continue;
        };
        let status = if overloaded {
            tracing::warn!(
                limit = monitor.limit(),
                "overloaded: at the concurrency limit for a second; health is NOT_SERVING for the entitled services"
            );
            ServingStatus::NotServing
        } else {
            tracing::info!("below the concurrency limit again; health is SERVING");
            ServingStatus::Serving
        };
        for name in SERVICE_NAMES.into_iter().filter(|name| !name.is_empty()) {
            reporter.set_service_status(name, status).await;
        }
    }
}

/// A listener on `addr`, and the address it got (for port 0).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let bind_error = |source| ServerError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local = listener.local_addr().map_err(bind_error)?;
    Ok((listener, local))
}

/// The console's TLS: the same certificate, key and client CA as gRPC.
fn console_tls(files: &TlsFiles) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, ServerError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            path: path.display().to_string(),
            source,
        })
    };
    let ca = files.client_ca.as_ref().map(read).transpose()?;
    crate::console::tls_config(&read(&files.cert)?, &read(&files.key)?, ca.as_deref())
        .map_err(ServerError::ConsoleTls)
}

fn tls_config(files: &TlsFiles) -> Result<ServerTlsConfig, ServerError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| ServerError::TlsFile {
            path: path.display().to_string(),
            source,
        })
    };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?));
    if let Some(ca) = &files.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(tls)
}
