//! Test harness: the real server (the library's own `Application`) on
//! 127.0.0.1:0 with a temporary sled directory or a fresh PostgreSQL
//! database (`postgres.rs`), called through the generated tonic clients.
//! Set `TEST_LOG=1` to see the server's logs.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

pub mod postgres;
pub mod process;
pub mod proxy;
pub mod raw;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Once},
    time::{Duration, SystemTime},
};

use entitled::{
    catalogue::Catalogue,
    proto::v1::{
        self as pb, access_service_client::AccessServiceClient,
        audit_service_client::AuditServiceClient, catalogue_service_client::CatalogueServiceClient,
        provisioning_service_client::ProvisioningServiceClient,
        token_service_client::TokenServiceClient,
    },
    server::{Application, Config, ServerError},
    service::{Clock, OPERATOR_TOKEN_FILE},
    store::Location,
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Code, Status, transport::Channel};

pub use entitled::client::Clients;
use entitled::client::{Authed, Bearer};
pub use pb::AnalyticsTier as T;

/// Clients that send `secret` (or no token at all).
pub fn clients(channel: &Channel, secret: Option<&str>) -> Clients {
    Clients::new(channel, Bearer::new(secret).unwrap())
}

/// The longest any one call of a test may take before it fails instead of
/// hanging: far beyond what any call of the suite needs, even on a busy
/// machine (the slowest, a 1 s freshness wait, is 60 times shorter).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// An endpoint at `url` whose connection and every call (up to its response
/// headers) fail after [`CALL_TIMEOUT`] rather than hang.
pub fn endpoint(url: String) -> tonic::transport::Endpoint {
    Channel::from_shared(url)
        .unwrap()
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
}

/// `future`'s output, or a failure saying `what` did not happen within
/// `limit`. For every wait on something the server should do (an event on
/// a stream, a stop), so that a test that would hang fails instead.
#[track_caller]
pub fn within<F: std::future::Future>(
    limit: Duration,
    what: &str,
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    let what = what.to_owned();
    async move {
        tokio::time::timeout(limit, future)
            .await
            .unwrap_or_else(|_| panic!("{caller}: {what} did not happen within {limit:?}"))
    }
}

/// A count a test reads from the environment (`ENTITLED_FUZZ_CASES`,
/// `ENTITLED_CRASH_CYCLES`), or `default` when unset. A value that is not a
/// number, or is below `least`, fails the test: a setting that turned the
/// test into a no-op would pass while proving nothing.
pub fn count_from_env(var: &str, default: u32, least: u32) -> u32 {
    match std::env::var(var) {
        Err(std::env::VarError::NotPresent) => default,
        Err(e) => panic!("{var}: {e}"),
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(n) if n >= least => n,
            Ok(n) => panic!(
                "{var}={n} is too few for this test to prove what it says; set at least {least}, or unset it for the default of {default}"
            ),
            Err(_) => panic!(
                "{var}=`{text}` is not a whole number; set at least {least}, or unset it for the default of {default}"
            ),
        },
    }
}

/// A clock the test moves by hand.
#[derive(Clone)]
pub struct ManualClock(Arc<Mutex<SystemTime>>);

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        ManualClock(Arc::new(Mutex::new(start)))
    }
    pub fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
    pub fn clock(&self) -> Clock {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

pub struct Options {
    pub catalogue: Catalogue,
    pub clock: Option<Clock>,
    pub watch: Option<entitled::service::WatchOptions>,
    /// Audit retention (default: keep everything).
    pub retention: Option<entitled::service::RetentionOptions>,
    /// The store: sled in the test's directory unless this names a
    /// database (the directory then holds only the operator token file).
    pub store: Option<Location>,
    /// With `Backend::Postgres` and no `store`, `spawn_with` makes a fresh
    /// database, which the `TestApp` keeps (and drops) with its directory.
    pub backend: Backend,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            catalogue: Catalogue::builtin().unwrap(),
            clock: None,
            watch: None,
            retention: None,
            store: None,
            backend: Backend::Sled,
        }
    }
}

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sled,
    Postgres,
}

/// `$name` as two tests, `$name::sled` and `$name::postgres`, each running
/// `$body` with `$backend` set; the PostgreSQL one is skipped (said once)
/// where no server answers, unless `ENTITLED_REQUIRE_POSTGRES=1`.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            // Named so as not to hide a helper of the test file (`run`
            // did, in tests/cli.rs).
            $(#[$meta])*
            async fn on_both_backends_body($backend: $crate::common::Backend) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sled() {
                on_both_backends_body($crate::common::Backend::Sled).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::common::postgres::available().await {
                    on_both_backends_body($crate::common::Backend::Postgres).await
                }
            }
        }
    };
}

/// How long a graceful stop may take before the test fails (a stop waits
/// for open calls, and tells watches within a second).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// One running server and clients connected to it.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    /// Where `GET /metrics` is served (every test server has metrics on).
    pub metrics_addr: std::net::SocketAddr,
    /// Where the web console is served (every test server has one).
    pub console_addr: std::net::SocketAddr,
    pub channel: Channel,
    /// The first start's operator token, read from its file.
    pub operator_secret: String,
    pub provisioning: ProvisioningServiceClient<Authed>,
    pub access: AccessServiceClient<Authed>,
    pub catalogue: CatalogueServiceClient<Authed>,
    pub tokens: TokenServiceClient<Authed>,
    pub audit: AuditServiceClient<Authed>,
    pub data_dir: PathBuf,
    /// The database, when not sled in `data_dir`.
    pub store: Option<Location>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), ServerError>>>,
    _tempdir: Option<tempfile::TempDir>,
    /// The test's own database, made by `spawn_with`.
    pub database: Option<std::sync::Arc<postgres::TestDatabase>>,
    /// The server's audit pruner: a test runs a pass with it.
    pub pruner: entitled::service::Pruner,
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter("debug,h2=info,hyper=info,tower=info,sled=info")
                .with_test_writer()
                .init();
        }
    });
}

impl TestApp {
    /// A server with the built-in catalogue on a fresh directory.
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(mut options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let database = match (options.backend, &options.store) {
            (Backend::Postgres, None) => {
                let db = std::sync::Arc::new(postgres::TestDatabase::create().await);
                options.store = Some(Location::Postgres(db.url.clone()));
                Some(db)
            }
            _ => None,
        };
        let mut app = Self::start(&path, options).await;
        app._tempdir = Some(dir);
        app.database = database;
        app
    }

    /// A server with the built-in catalogue on `backend`.
    pub async fn spawn_on(backend: Backend) -> Self {
        Self::spawn_with(Options {
            backend,
            ..Options::default()
        })
        .await
    }

    /// A server on an existing directory (the caller keeps it alive), with
    /// the operator token from its file.
    pub async fn start(data_dir: &Path, options: Options) -> Self {
        let file = data_dir.join(OPERATOR_TOKEN_FILE);
        Self::start_inner(data_dir, options, move || {
            std::fs::read_to_string(file).unwrap().trim().to_owned()
        })
        .await
    }

    /// A server on an existing directory whose token file is gone.
    pub async fn start_with_secret(data_dir: &Path, options: Options, secret: String) -> Self {
        Self::start_inner(data_dir, options, move || secret).await
    }

    async fn start_inner(
        data_dir: &Path,
        options: Options,
        secret: impl FnOnce() -> String,
    ) -> Self {
        init_tracing();
        let mut config = Config::new(
            "127.0.0.1:0".parse().unwrap(),
            data_dir.to_path_buf(),
            options.catalogue,
        );
        let store = options.store.clone();
        if store.is_some() {
            config.store = store.clone();
            config.operator_token_file = Some(data_dir.join(OPERATOR_TOKEN_FILE));
        }
        if let Some(clock) = options.clock {
            config.clock = clock;
        }
        if let Some(watch) = options.watch {
            config.watch = watch;
        }
        if let Some(retention) = options.retention {
            config.audit_retention = retention;
        }
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config.console_listen = Some("127.0.0.1:0".parse().unwrap());
        // Bound before the server task starts: no sleeps, no races.
        let app = Application::build(config).await.unwrap();
        let addr = app.local_addr();
        let metrics_addr = app.metrics_addr().unwrap();
        let console_addr = app.console_addr().unwrap();
        let pruner = app.pruner();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        let channel = endpoint(format!("http://{addr}")).connect().await.unwrap();
        let operator_secret = secret();
        let clients = clients(&channel, Some(&operator_secret));
        TestApp {
            addr,
            metrics_addr,
            console_addr,
            provisioning: clients.provisioning,
            access: clients.access,
            catalogue: clients.catalogue,
            tokens: clients.tokens,
            audit: clients.audit,
            operator_secret,
            channel,
            data_dir: data_dir.to_path_buf(),
            store,
            shutdown: Some(tx),
            server: Some(server),
            _tempdir: None,
            database: None,
            pruner,
        }
    }

    /// Stops the server gracefully and waits until it has flushed and
    /// released its directory. Returns the directory (kept alive) so a new
    /// server can start on it.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        self.shutdown_and_wait().await;
        self._tempdir.take()
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    async fn shutdown_and_wait(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            within(STOP_TIMEOUT, "the server's graceful stop", server)
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// A server restarted on the same directory (and database) with
    /// `options`.
    pub async fn restart_with(self, mut options: Options) -> Self {
        let data_dir = self.data_dir.clone();
        options.store = options.store.or_else(|| self.store.clone());
        let database = self.database.clone();
        let keep = self.stop().await;
        let mut app = Self::start(&data_dir, options).await;
        app._tempdir = keep;
        app.database = database;
        app
    }

    pub async fn restart(self) -> Self {
        self.restart_with(Options::default()).await
    }

    /// A server restarted on the same directory (and database) whose token
    /// file is gone: its clients send `secret`.
    pub async fn restart_with_secret(self, secret: String) -> Self {
        let data_dir = self.data_dir.clone();
        let options = Options {
            store: self.store.clone(),
            ..Options::default()
        };
        let database = self.database.clone();
        let keep = self.stop().await;
        let mut app = Self::start_with_secret(&data_dir, options, secret).await;
        app._tempdir = keep;
        app.database = database;
        app
    }

    /// Clients that send `secret` (or no token at all).
    pub fn clients(&self, secret: Option<&str>) -> Clients {
        clients(&self.channel, secret)
    }

    /// Makes a token and returns its secret.
    pub async fn token(&self, name: &str, role: pb::Role, account: &str, user: &str) -> String {
        self.tokens
            .clone()
            .create_token(pb::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                account_id: account.into(),
                user_id: user.into(),
                request_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    // ---- the calls tests make most, each one line at the call site ----

    pub async fn create_account(&self, account: &str, product_line: &str) -> pb::Account {
        self.provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: account.into(),
                display_name: format!("{account} Inc."),
                product_line: product_line.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .account
            .unwrap()
    }

    /// Users `prefix0000`, `prefix0001`, … of `acme` in one import:
    /// `count` changes at one revision, which it returns.
    pub async fn import_users(&self, prefix: &str, count: usize) -> u64 {
        let rows: Vec<pb::UserRow> = (0..count)
            .map(|i| pb::UserRow {
                account_id: "acme".into(),
                user_id: format!("{prefix}{i:04}"),
                ..Default::default()
            })
            .collect();
        self.import_rows(&rows).await
    }

    /// `rows` imported, as many calls as the import limit needs, each
    /// without a row error; the last call's revision.
    pub async fn import_rows(&self, rows: &[pb::UserRow]) -> u64 {
        let mut revision = 0;
        for chunk in rows.chunks(entitled::service::MAX_IMPORT_ROWS) {
            let imported = self
                .provisioning
                .clone()
                .import_users(pb::ImportUsersRequest {
                    rows: chunk.to_vec(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(imported.errors.is_empty(), "{:?}", imported.errors);
            revision = imported.revision;
        }
        revision
    }

    pub async fn put_user(&self, account: &str, user: &str) -> pb::User {
        self.provisioning
            .clone()
            .put_user(pb::PutUserRequest {
                account_id: account.into(),
                user_id: user.into(),
                display_name: format!("User {user}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
    }

    pub async fn get_user(&self, account: &str, user: &str) -> Result<pb::User, Status> {
        self.provisioning
            .clone()
            .get_user(pb::GetUserRequest {
                account_id: account.into(),
                user_id: user.into(),
            })
            .await
            .map(|r| r.into_inner().user.unwrap())
    }

    pub async fn get_account(&self, account: &str) -> Result<pb::Account, Status> {
        self.provisioning
            .clone()
            .get_account(pb::GetAccountRequest {
                account_id: account.into(),
            })
            .await
            .map(|r| r.into_inner().account.unwrap())
    }

    /// UpdateUserServices: `edition` None keeps it, Some("") removes it.
    pub async fn set(
        &self,
        account: &str,
        user: &str,
        edition: Option<&str>,
        tier: Option<T>,
    ) -> Result<pb::UpdateUserServicesResponse, Status> {
        self.update(pb::UpdateUserServicesRequest {
            account_id: account.into(),
            user_id: user.into(),
            edition: edition.map(Into::into),
            analytics_tier: tier.map(|t| t as i32),
            ..Default::default()
        })
        .await
    }

    pub async fn update(
        &self,
        request: pb::UpdateUserServicesRequest,
    ) -> Result<pb::UpdateUserServicesResponse, Status> {
        self.provisioning
            .clone()
            .update_user_services(request)
            .await
            .map(|r| r.into_inner())
    }

    pub async fn check(&self, account: &str, user: &str) -> pb::CheckAnalyticsAccessResponse {
        self.try_check(account, user).await.unwrap()
    }

    pub async fn try_check(
        &self,
        account: &str,
        user: &str,
    ) -> Result<pb::CheckAnalyticsAccessResponse, Status> {
        self.access
            .clone()
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: account.into(),
                user_id: user.into(),
                min_revision: 0,
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The store revision, as a check reports it. A new server is at 1: the
    /// first start's operator token is its first write.
    pub async fn revision(&self) -> u64 {
        self.check("any", "any").await.revision
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Asserts a call failed with `code` and a message containing every piece.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, pieces: &[&str]) {
    match result {
        Ok(v) => panic!("expected {code:?}, got Ok({v:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "message: {}", status.message());
            for piece in pieces {
                assert!(
                    status.message().contains(piece),
                    "message {:?} does not contain {piece:?}",
                    status.message()
                );
            }
        }
    }
}

/// A catalogue from the built-in text with `edit` applied.
pub fn catalogue_with(edit: impl FnOnce(String) -> String) -> Catalogue {
    let text = edit(entitled::catalogue::DEFAULT_TOML.to_owned());
    Catalogue::from_toml(&text, "test").unwrap()
}

/// `GET /metrics` from `addr` (`host:port`) over plain HTTP/1.0, which
/// closes the connection after the answer: the whole answer, head included.
pub async fn metrics_answer(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    within(
        CALL_TIMEOUT,
        "the metrics answer",
        stream.read_to_string(&mut answer),
    )
    .await
    .unwrap();
    answer
}
