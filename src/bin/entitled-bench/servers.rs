//! The two servers, each in a child process of the bench (`serve`): the
//! baseline and `entitled`, and the handle the run holds on each (started,
//! watched and stopped by the tests' `child.rs`).

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use entitled::{
    catalogue::Catalogue,
    client::Bearer,
    server::{Application, Config},
    service::OPERATOR_TOKEN_FILE,
    store::Location,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    signal::unix::{SignalKind, signal},
};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    BoxError,
    child::{SERVING, ServerChild, operator_token},
    cli::Kind,
    data::{account_name, services, user_name},
    proto::{
        self as bpb,
        baseline_service_server::{BaselineService, BaselineServiceServer},
    },
    stats::cpu_time,
};

/// How long a server may take to bind: the large store is read into memory
/// first (about 2 s for a million users on an idle machine).
const START_WAIT: Duration = Duration::from_secs(600);

struct Baseline {
    /// account → user → the answer.
    map: HashMap<String, HashMap<String, bpb::LookupResponse>>,
}

#[tonic::async_trait]
impl BaselineService for Baseline {
    async fn lookup(
        &self,
        request: Request<bpb::LookupRequest>,
    ) -> Result<Response<bpb::LookupResponse>, Status> {
        let r = request.get_ref();
        let answer = self
            .map
            .get(&r.account_id)
            .and_then(|users| users.get(&r.user_id))
            .cloned()
            .unwrap_or_default();
        Ok(Response::new(answer))
    }
}

/// The `serve` child: serves until SIGTERM, or until its stdin closes.
pub fn serve(
    kind: Kind,
    dir: Option<PathBuf>,
    store: Option<String>,
    users: usize,
    per_account: usize,
) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let stop = stop_requested()?;
        match kind {
            Kind::Entitled => {
                let dir = dir.ok_or("serve --kind entitled needs --dir")?;
                // The sled store's lines (its "store opened" line says
                // where a start's time went, and whether the view came
                // from the checkpoint) and every warning, on stderr, which
                // the run reads; nothing per call.
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(
                        "warn,entitled::store::sled=info",
                    ))
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .init();
                let mut config =
                    Config::new("127.0.0.1:0".parse()?, dir.clone(), Catalogue::builtin()?);
                if let Some(url) = store {
                    config.store = Some(Location::Postgres(url));
                    config.operator_token_file = Some(dir.join(OPERATOR_TOKEN_FILE));
                    // For the write lock's figures (`ServerProcess::write_lock`).
                    config.metrics_listen = Some("127.0.0.1:0".parse()?);
                }
                let app = Application::build(config).await?;
                if let Some(addr) = app.metrics_addr() {
                    eprintln!("{METRICS}{addr}");
                }
                announce(app.local_addr());
                app.run(stop).await?;
            }
            Kind::Baseline => {
                let mut map: HashMap<String, HashMap<String, bpb::LookupResponse>> = HashMap::new();
                for i in 0..users {
                    let (edition, tier) = services(i);
                    map.entry(account_name(i / per_account.max(1)))
                        .or_default()
                        .insert(
                            user_name(i),
                            bpb::LookupResponse {
                                allowed: tier.grants_access(),
                                edition: edition.to_owned(),
                                revision: 1,
                            },
                        );
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                announce(listener.local_addr()?);
                let (reporter, health) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                Server::builder()
                    .add_service(health)
                    .add_service(BaselineServiceServer::new(Baseline { map }))
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        stop,
                    )
                    .await?;
            }
        }
        Ok(())
    })
}

/// Resolves on SIGTERM (how the run stops a server, as an operator stops
/// `entitled`), or when stdin closes: the parent holds its write end, so a
/// run that dies leaves no server behind.
fn stop_requested() -> Result<impl Future<Output = ()>, BoxError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    // A thread of its own, not `spawn_blocking`: the read outlives a stop
    // by SIGTERM, and the runtime would wait for it on the way out.
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        let _ = closed.send(());
    });
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = stdin_closed => {}
        }
    })
}

/// What a PostgreSQL replica's `serve` logs before `SERVING`: where its
/// metrics are.
const METRICS: &str = "metrics addr=";

/// Says where the server listens, in the line `entitled serve` logs.
fn announce(addr: SocketAddr) {
    eprintln!("{SERVING}{addr}");
}

/// What a server process is started behind: `taskset -c CORE` when pinned,
/// and valgrind's callgrind for the instruction counts (each program execs
/// the next, so the child's pid is the server's).
#[derive(Clone, Default)]
pub struct Launch {
    prefix: Vec<String>,
}

impl Launch {
    /// Pinned to `core`, or not pinned.
    pub fn pinned(core: Option<usize>) -> Self {
        let prefix = core.map_or_else(Vec::new, |core| {
            vec!["taskset".to_owned(), "-c".to_owned(), core.to_string()]
        });
        Launch { prefix }
    }

    /// The same, under `program ARGS`.
    pub fn under(mut self, program: &str, args: impl IntoIterator<Item = String>) -> Self {
        self.prefix.push(program.to_owned());
        self.prefix.extend(args);
        self
    }
}

/// A replica's batches, the writes it committed, and the batches' time
/// waiting for and holding the write lock, in seconds, in all so far.
#[derive(Clone, Copy, Default)]
pub struct WriteLock {
    pub batches: f64,
    pub writes: f64,
    pub waited: f64,
    pub held: f64,
}

impl WriteLock {
    /// What happened between `before` and `self`.
    pub fn since(self, before: WriteLock) -> WriteLock {
        WriteLock {
            batches: self.batches - before.batches,
            writes: self.writes - before.writes,
            waited: self.waited - before.waited,
            held: self.held - before.held,
        }
    }

    /// A row of the write lock's table.
    pub fn row(self, name: &str) -> String {
        let per = |v: f64| v / self.batches.max(1.0);
        format!(
            "| {name} | {:.0} | {:.1} | {:.2} | {:.2} |",
            self.batches,
            self.writes / self.batches.max(1.0),
            per(self.waited) * 1e3,
            per(self.held) * 1e3
        )
    }
}

/// A server child process; killed if dropped before `stop`.
pub struct ServerProcess {
    child: ServerChild,
    pub addr: SocketAddr,
    /// From spawning the process to health answering SERVING.
    pub to_serving: Duration,
    /// The server's CPU time (user + system) by then: steadier than
    /// `to_serving` on a shared machine.
    pub start_cpu: Option<Duration>,
    /// For entitled: the operator token its first start wrote. Every call
    /// sends it, so the figures include authentication.
    pub bearer: Bearer,
    /// For entitled: its store (the database's URL, or the sled directory),
    /// which replicas of one database share; empty for the baseline.
    pub store: Arc<str>,
}

impl ServerProcess {
    /// The baseline, holding `users` users.
    pub async fn baseline(
        launch: &Launch,
        users: usize,
        per_account: usize,
    ) -> Result<Self, BoxError> {
        let args = [
            "--kind".to_owned(),
            "baseline".to_owned(),
            "--users".to_owned(),
            users.to_string(),
            "--users-per-account".to_owned(),
            per_account.to_string(),
        ];
        Self::start(launch, &args, None).await
    }

    /// `entitled` on the store at `dir`.
    pub async fn entitled(launch: &Launch, dir: &Path) -> Result<Self, BoxError> {
        Self::replica(launch, dir, None, dir).await
    }

    /// `entitled` on `database` (or the sled store in `dir`), writing its
    /// first start's operator token into `dir`; the calls send the token
    /// found in `token_dir` (another replica's, when it made it).
    pub async fn replica(
        launch: &Launch,
        dir: &Path,
        database: Option<&str>,
        token_dir: &Path,
    ) -> Result<Self, BoxError> {
        let mut args = vec![
            "--kind".to_owned(),
            "entitled".to_owned(),
            "--dir".to_owned(),
            dir.display().to_string(),
        ];
        if let Some(url) = database {
            args.extend(["--store".to_owned(), url.to_owned()]);
        }
        let mut server = Self::start(launch, &args, Some(token_dir)).await?;
        server.store = database
            .map_or_else(|| dir.display().to_string(), str::to_owned)
            .into();
        Ok(server)
    }

    /// Starts `serve ARGS` (behind `launch`'s programs) and waits for health
    /// to answer SERVING; `data_dir` holds its operator token.
    async fn start(
        launch: &Launch,
        args: &[String],
        data_dir: Option<&Path>,
    ) -> Result<Self, BoxError> {
        let started = Instant::now();
        let exe = std::env::current_exe()?;
        let mut command = match launch.prefix.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        command
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        let child =
            tokio::task::spawn_blocking(move || ServerChild::spawn(&mut command, START_WAIT))
                .await??;
        let channel = connect(child.addr).await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status != ServingStatus::Serving as i32 {
            return Err(format!("the server is not SERVING (status {status})").into());
        }
        let to_serving = started.elapsed();
        let start_cpu = cpu_time(child.id());
        let token = data_dir.map(operator_token).transpose()?;
        Ok(ServerProcess {
            addr: child.addr,
            to_serving,
            start_cpu,
            bearer: Bearer::new(token.as_deref())?,
            store: Arc::from(""),
            child,
        })
    }

    /// The process id, for its CPU time.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// A PostgreSQL replica's write lock so far, from its metrics: none for
    /// a server without them (sled's, the baseline).
    pub async fn write_lock(&self) -> Result<Option<WriteLock>, BoxError> {
        let log = self.child.log_text();
        let Some(addr) = log.lines().find_map(|l| l.split(METRICS).nth(1)) else {
            return Ok(None);
        };
        let scrape = async {
            let mut stream = tokio::net::TcpStream::connect(addr.trim()).await?;
            stream
                .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
                .await?;
            let mut text = String::new();
            stream.read_to_string(&mut text).await?;
            Ok::<_, std::io::Error>(text)
        };
        let text = tokio::time::timeout(Duration::from_secs(10), scrape)
            .await
            .map_err(|_| format!("the metrics at {addr} did not answer within 10 s"))??;
        let sample = |name: &str| -> Result<f64, BoxError> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .ok_or_else(|| format!("no `{name}` in the metrics at {addr}"))?
                .trim()
                .parse()
                .map_err(|e| format!("`{name}` at {addr}: {e}").into())
        };
        Ok(Some(WriteLock {
            batches: sample("entitled_store_write_lock_wait_seconds_count")?,
            writes: sample("entitled_store_writes_total")?,
            waited: sample("entitled_store_write_lock_wait_seconds_sum")?,
            held: sample("entitled_store_write_lock_held_seconds_sum")?,
        }))
    }

    /// The server's resident memory (VmRSS), in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        Some(self.child.rss_kib()? as f64 / 1024.0)
    }

    /// Stops the server gracefully (SIGTERM) and checks that it exited
    /// well; how long it took (with sled, that includes writing the view
    /// checkpoint).
    pub fn stop(self) -> Result<Duration, BoxError> {
        let began = Instant::now();
        let log = Arc::clone(&self.child.log);
        let status = self.child.terminate()?;
        if !status.success() {
            let log = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            return Err(format!("server exited with {status}; its log:\n{log}").into());
        }
        Ok(began.elapsed())
    }

    /// Stops the server as a crash would (SIGKILL): no final flush, so no
    /// view checkpoint for the next start.
    pub fn kill(self) -> Result<(), BoxError> {
        Ok(self.child.kill()?)
    }

    /// `field`'s value in the first line of the server's log that says
    /// `message` (tracing's `field=value`).
    pub fn logged(&self, message: &str, field: &str) -> Option<String> {
        let log = self.child.log_text();
        let line = log.lines().find(|l| l.contains(message))?;
        let value = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(field)?.strip_prefix('='))?;
        Some(value.to_owned())
    }
}

pub async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}
