//! `entitled-bench`: the load generator. In one run it measures a baseline
//! tonic server (one unary RPC answered from an in-memory map: the floor of
//! what a gRPC call costs here) and `entitled` loaded with N users, with the
//! same client, concurrency and connections, and prints the table.
//!
//! Each server runs in a child process of this binary (`serve`), pinned with
//! `taskset -c SERVER_CORE`; the load generator pins itself to
//! `CLIENT_CORE`. Users are written by `load` (another child) through the
//! store's bulk import, which bypasses the RPCs and the catalogue's rules
//! (the records it writes are valid by construction); every figure is then
//! measured through gRPC. Benchmarks print figures; nothing here asserts a
//! time.

use std::{
    collections::HashMap,
    future::Future,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use clap::{Parser, Subcommand, ValueEnum};
use entitled::{
    catalogue::Catalogue,
    client::Bearer,
    domain::{Account, AccountId, Tier, User, UserId},
    proto::{
        bench::v1::{
            self as bpb,
            baseline_service_client::BaselineServiceClient,
            baseline_service_server::{BaselineService, BaselineServiceServer},
        },
        v1::{self as pb, access_service_client::AccessServiceClient},
    },
    server::{Application, Config},
    service::OPERATOR_TOKEN_FILE,
    store::Store,
};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[derive(Parser)]
#[command(
    name = "entitled-bench",
    about = "Load generator: entitled against a baseline tonic server",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    role: Option<Role>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// Users loaded for the throughput and latency runs.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Users loaded for the large-store figures (memory, restart, throughput
    /// at scale); 0 skips them.
    #[arg(long, default_value_t = 1_000_000)]
    big_users: usize,
    /// Users per account.
    #[arg(long, default_value_t = 100)]
    users_per_account: usize,
    /// Concurrency levels (calls in flight) for the check runs.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    concurrency: Vec<usize>,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured time of each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    duration: Duration,
    /// Rounds of each check figure (baseline and entitled alternate); the
    /// median round is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Unmeasured time before each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// Items per BatchCheckAnalyticsAccess.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 4)]
    batch_concurrency: usize,
    /// Concurrent clients for the durable UpdateUserServices run.
    #[arg(long, default_value_t = 64)]
    write_clients: usize,
    /// Core the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    server_core: usize,
    /// Core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    client_core: usize,
    /// Do not pin (no `taskset`).
    #[arg(long)]
    no_pin: bool,
}

#[derive(Subcommand)]
enum Role {
    /// (internal) Writes a store of N users into DIR.
    #[command(hide = true)]
    Load {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        users: usize,
        #[arg(long)]
        users_per_account: usize,
    },
    /// (internal) Serves until stdin closes; prints `addr ADDR` when bound.
    #[command(hide = true)]
    Serve {
        #[arg(long, value_enum)]
        kind: Kind,
        /// entitled: the data directory; baseline: unused.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// baseline: the users its map holds.
        #[arg(long, default_value_t = 0)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        users_per_account: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Baseline,
    Entitled,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Load {
            dir,
            users,
            users_per_account,
        }) => load(&dir, users, users_per_account),
        Some(Role::Serve {
            kind,
            dir,
            users,
            users_per_account,
        }) => serve(kind, dir, users, users_per_account),
        None => orchestrate(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---- the data set ----

fn account_name(a: usize) -> String {
    format!("acct{a}")
}

fn user_name(u: usize) -> String {
    format!("user{u}")
}

/// User `i`'s account, and its services: a quarter each X8 Supervisor, X4
/// Supervisor, X2 Essentials, and X1 without analytics.
fn services(i: usize) -> (&'static str, Tier) {
    match i % 4 {
        0 => ("X8", Tier::Supervisor),
        1 => ("X4", Tier::Supervisor),
        2 => ("X2", Tier::Essentials),
        _ => ("X1", Tier::None),
    }
}

fn load(dir: &Path, users: usize, per_account: usize) -> Result<(), BoxError> {
    std::fs::create_dir_all(dir)?;
    let store = Store::open(dir)?;
    let now = SystemTime::now();
    // Activated long ago, so historical reports are available.
    let activated = now - Duration::from_secs(30 * 24 * 3600);
    let accounts_n = users.div_ceil(per_account.max(1));
    let accounts = (0..accounts_n)
        .map(|a| {
            Ok(Account {
                id: AccountId::try_from(account_name(a))?,
                display_name: format!("Account {a}"),
                product_line: "work".to_owned(),
                created_at: activated,
                analytics_activated_at: Some(activated),
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    let records = (0..users)
        .map(|i| {
            let (edition, tier) = services(i);
            Ok(User {
                account_id: AccountId::try_from(account_name(i / per_account.max(1)))?,
                id: UserId::try_from(user_name(i))?,
                display_name: format!("User {i}"),
                edition: Some(edition.to_owned()),
                tier,
                revision: 0,
                created_at: activated,
                updated_at: activated,
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    store.import(accounts, records)?;
    Ok(())
}

// ---- the servers (child processes) ----

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

fn serve(
    kind: Kind,
    dir: Option<PathBuf>,
    users: usize,
    per_account: usize,
) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Stops when the parent closes our stdin (or dies).
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                let _ = std::io::stdin().read_line(&mut sink);
            })
            .await;
        };
        match kind {
            Kind::Entitled => {
                let dir = dir.ok_or("serve --kind entitled needs --dir")?;
                let config = Config::new("127.0.0.1:0".parse()?, dir, Catalogue::builtin()?);
                let app = Application::build(config).await?;
                announce(app.local_addr())?;
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
                announce(listener.local_addr()?)?;
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

fn announce(addr: SocketAddr) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "addr {addr}")?;
    out.flush()?;
    Ok(())
}

/// A server child process; stopped (gracefully) when dropped.
struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    addr: SocketAddr,
    /// From spawning the process to health answering SERVING.
    to_serving: Duration,
    /// For entitled: the operator token its first start wrote. Every call
    /// sends it, so the figures include authentication.
    bearer: Bearer,
}

impl ServerProcess {
    async fn start(pin: Option<usize>, args: &[String]) -> Result<Self, BoxError> {
        let started = Instant::now();
        let exe = std::env::current_exe()?;
        let mut command = match pin {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout from the server")?;
        let addr = tokio::task::spawn_blocking(move || -> Result<SocketAddr, BoxError> {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let addr = line
                .trim()
                .strip_prefix("addr ")
                .ok_or_else(|| format!("the server said `{}`, not its address", line.trim()))?;
            Ok(addr.parse()?)
        })
        .await??;
        let channel = connect(addr).await?;
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
        let token = args
            .iter()
            .position(|a| a == "--dir")
            .and_then(|i| args.get(i + 1))
            .and_then(|dir| std::fs::read_to_string(Path::new(dir).join(OPERATOR_TOKEN_FILE)).ok());
        Ok(ServerProcess {
            child,
            stdin,
            addr,
            to_serving,
            bearer: Bearer::new(token.as_deref())?,
        })
    }

    /// The server's resident memory (VmRSS), in MiB.
    fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    fn stop(mut self) -> Result<(), BoxError> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("server exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // After a clean `stop` the child is already reaped; otherwise make
        // sure no server outlives the run.
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}

// ---- the load ----

#[derive(Default)]
struct Stats {
    calls: u64,
    items: u64,
    errors: u64,
    elapsed: Duration,
    /// CPU time the server process used during the measured window.
    server_cpu: Option<Duration>,
    /// Per-call latencies, nanoseconds, sorted.
    latencies: Vec<u64>,
}

impl Stats {
    fn rps(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    fn items_per_s(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }
    /// Server CPU per call, microseconds.
    fn cpu_us_per_call(&self) -> f64 {
        match self.server_cpu {
            Some(cpu) if self.calls > 0 => cpu.as_secs_f64() * 1e6 / self.calls as f64,
            _ => f64::NAN,
        }
    }
    fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)] as f64 / 1000.0
    }
}

/// A tiny deterministic generator (xorshift) so both servers see the same
/// sequence of users.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs `concurrency` loops of `call` spread over `channels` for `warmup`
/// then `duration`; `call` returns how many items it did (1 for a check).
async fn drive<F, Fut>(
    server: u32,
    channels: &[Channel],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> Result<Stats, BoxError>
where
    F: Fn(Channel, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64, Status>> + Send,
{
    let start = Instant::now() + warmup;
    let end = start + duration;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let before = cpu_time(server);
        tokio::time::sleep_until(end.into()).await;
        Some(cpu_time(server)?.saturating_sub(before?))
    });
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let channel = channels[t % channels.len()].clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            let mut k = 0u64;
            loop {
                let before = Instant::now();
                if before >= end {
                    break;
                }
                let result = call(channel.clone(), t, k).await;
                k += 1;
                if before < start {
                    continue;
                }
                let after = Instant::now();
                match result {
                    Ok(items) => {
                        stats.calls += 1;
                        stats.items += items;
                        stats
                            .latencies
                            .push(u64::try_from((after - before).as_nanos()).unwrap_or(u64::MAX));
                    }
                    Err(_) => stats.errors += 1,
                }
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for task in tasks {
        let s = task.await?;
        total.calls += s.calls;
        total.items += s.items;
        total.errors += s.errors;
        total.latencies.extend(s.latencies);
    }
    total.elapsed = duration;
    total.server_cpu = cpu.await?;
    total.latencies.sort_unstable();
    if total.errors > 0 {
        eprintln!("  warning: {} calls failed", total.errors);
    }
    Ok(total)
}

/// User + system CPU time of process `pid` so far (Linux `/proc`).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / clock_ticks(),
    ))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>, BoxError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(connect(addr).await?);
    }
    Ok(out)
}

fn pick(users: usize, per_account: usize, seed: &mut u64) -> (String, String) {
    let i = (next_rand(seed) % users as u64) as usize;
    (account_name(i / per_account.max(1)), user_name(i))
}

fn seed(task: usize) -> u64 {
    0x9E37_79B9_7F4A_7C15 ^ ((task as u64 + 1) << 20)
}

async fn baseline_checks(
    args: &RunArgs,
    server: &ServerProcess,
    concurrency: usize,
) -> Result<Stats, BoxError> {
    let chans = channels(server.addr, args.connections).await?;
    let (users, per) = (args.users, args.users_per_account);
    drive(
        server.child.id(),
        &chans,
        concurrency,
        args.warmup,
        args.duration,
        move |ch, task, k| async move {
            let mut s = seed(task).wrapping_add(k.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1;
            let (account_id, user_id) = pick(users, per, &mut s);
            BaselineServiceClient::new(ch)
                .lookup(bpb::LookupRequest {
                    account_id,
                    user_id,
                })
                .await
                .map(|_| 1)
        },
    )
    .await
}

async fn entitled_checks(
    args: &RunArgs,
    server: &ServerProcess,
    users: usize,
    concurrency: usize,
) -> Result<Stats, BoxError> {
    let chans = channels(server.addr, args.connections).await?;
    let per = args.users_per_account;
    let bearer = server.bearer.clone();
    drive(
        server.child.id(),
        &chans,
        concurrency,
        args.warmup,
        args.duration,
        move |ch, task, k| {
            let bearer = bearer.clone();
            async move {
                let mut s = seed(task).wrapping_add(k.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1;
                let (account_id, user_id) = pick(users, per, &mut s);
                AccessServiceClient::with_interceptor(ch, bearer)
                    .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                        account_id,
                        user_id,
                        min_revision: 0,
                    })
                    .await
                    .map(|_| 1)
            }
        },
    )
    .await
}

async fn entitled_batches(args: &RunArgs, server: &ServerProcess) -> Result<Stats, BoxError> {
    let chans = channels(server.addr, args.connections).await?;
    let (users, per, size) = (args.users, args.users_per_account, args.batch_size);
    let bearer = server.bearer.clone();
    drive(
        server.child.id(),
        &chans,
        args.batch_concurrency,
        args.warmup,
        args.duration,
        move |ch, task, k| {
            let bearer = bearer.clone();
            async move {
                let mut s = seed(task).wrapping_add(k.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1;
                let items = (0..size)
                    .map(|_| {
                        let (account_id, user_id) = pick(users, per, &mut s);
                        pb::CheckItem {
                            account_id,
                            user_id,
                        }
                    })
                    .collect();
                AccessServiceClient::with_interceptor(ch, bearer)
                    .batch_check_analytics_access(pb::BatchCheckAnalyticsAccessRequest {
                        items,
                        min_revision: 0,
                    })
                    .await
                    .map(|r| r.into_inner().results.len() as u64)
            }
        },
    )
    .await
}

/// Durable UpdateUserServices from `write_clients` clients, each on its own
/// X8 users, alternating Essentials and Supervisor so every call writes.
async fn entitled_writes(args: &RunArgs, server: &ServerProcess) -> Result<Stats, BoxError> {
    let chans = channels(server.addr, args.connections).await?;
    let clients = args.write_clients.max(1);
    let per = args.users_per_account;
    // The X8 Supervisor users (i % 4 == 0), dealt out to the clients.
    let x8: Arc<Vec<usize>> = Arc::new((0..args.users).step_by(4).collect());
    let bearer = server.bearer.clone();
    if x8.len() < clients {
        return Err("too few users for the write clients; raise --users".into());
    }
    drive(
        server.child.id(),
        &chans,
        clients,
        args.warmup,
        args.duration,
        move |ch, task, k| {
            let x8 = Arc::clone(&x8);
            let bearer = bearer.clone();
            async move {
                let mine = x8.len() / clients;
                let slot = (k as usize) % mine;
                let i = x8[task + slot * clients];
                // First pass lowers each user to Essentials, the next raises
                // it back, and so on: each call is a real write.
                let tier = if (k as usize / mine).is_multiple_of(2) {
                    pb::AnalyticsTier::Essentials
                } else {
                    pb::AnalyticsTier::Supervisor
                };
                entitled::proto::v1::provisioning_service_client::ProvisioningServiceClient::with_interceptor(ch, bearer)
                    .update_user_services(pb::UpdateUserServicesRequest {
                        account_id: account_name(i / per.max(1)),
                        user_id: user_name(i),
                        edition: None,
                        analytics_tier: Some(tier as i32),
                        expected_revision: None,
                        request_id: String::new(),
                    })
                    .await
                    .map(|_| 1)
            }
        },
    )
    .await
}

// ---- the run ----

fn pin_self(core: usize) -> Result<(), BoxError> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            format!(
                "cannot run `taskset` ({e}); install util-linux, or pass --no-pin to run unpinned"
            )
        })?;
    if !status.success() {
        return Err(format!("taskset could not pin the load generator to core {core}").into());
    }
    Ok(())
}

/// What the watch run measured.
struct WatchRun {
    writes: u64,
    elapsed: Duration,
    /// Send-to-event latency of each write, nanoseconds, sorted.
    latencies: Vec<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Watches every change while `rate` writes a second (UpdateUserServices
/// on X8 users, alternating tiers) run for `--duration`; for each write,
/// the time from sending it to its change arriving on the watch.
async fn watch_latency(
    args: &RunArgs,
    server: &ServerProcess,
    rate: u64,
) -> Result<WatchRun, BoxError> {
    use std::collections::HashMap;
    let channel = connect(server.addr).await?;
    let bearer = server.bearer.clone();
    let mut access = AccessServiceClient::with_interceptor(channel.clone(), bearer.clone());
    let start = access
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: account_name(0),
            user_id: user_name(0),
            min_revision: 0,
        })
        .await?
        .into_inner()
        .revision;
    let mut stream = access
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: String::new(),
            after_revision: start,
        })
        .await?
        .into_inner();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let reader = tokio::spawn(async move {
        while let Ok(Some(message)) = stream.message().await {
            if let Some(pb::watch_entitlements_response::Event::Change(c)) = message.event
                && seen_tx.send((c.revision, Instant::now())).is_err()
            {
                return;
            }
        }
    });
    let per = args.users_per_account;
    let x8: Vec<usize> = (0..args.users).step_by(4).collect();
    let total = rate * args.duration.as_secs().max(1);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    let mut writers = Vec::new();
    for k in 0..total as usize {
        ticker.tick().await;
        let i = x8[k % x8.len()];
        // Each pass over the users flips their tier, so every call writes.
        let tier = if (k / x8.len()).is_multiple_of(2) {
            pb::AnalyticsTier::Essentials
        } else {
            pb::AnalyticsTier::Supervisor
        };
        let mut client = entitled::proto::v1::provisioning_service_client::ProvisioningServiceClient::with_interceptor(
            channel.clone(),
            bearer.clone(),
        );
        let sent_tx = sent_tx.clone();
        writers.push(tokio::spawn(async move {
            let sent = Instant::now();
            if let Ok(reply) = client
                .update_user_services(pb::UpdateUserServicesRequest {
                    account_id: account_name(i / per.max(1)),
                    user_id: user_name(i),
                    edition: None,
                    analytics_tier: Some(tier as i32),
                    expected_revision: None,
                    request_id: String::new(),
                })
                .await
            {
                let _ = sent_tx.send((reply.into_inner().revision, sent));
            }
        }));
    }
    for w in writers {
        w.await?;
    }
    let elapsed = began.elapsed();
    drop(sent_tx);
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    while let Some((revision, at)) = sent_rx.recv().await {
        sent.insert(revision, at);
    }
    let mut latencies = Vec::with_capacity(sent.len());
    let deadline = Instant::now() + Duration::from_secs(5);
    while latencies.len() < sent.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen_rx.recv()).await {
            Ok(Some((revision, at))) => {
                if let Some(sent_at) = sent.get(&revision) {
                    latencies.push(at.saturating_duration_since(*sent_at).as_nanos() as u64);
                }
            }
            _ => break,
        }
    }
    reader.abort();
    latencies.sort_unstable();
    Ok(WatchRun {
        writes: sent.len() as u64,
        elapsed,
        latencies,
    })
}

fn load_store(args: &RunArgs, dir: &Path, users: usize) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let status = Command::new(std::env::current_exe()?)
        .arg("load")
        .arg("--dir")
        .arg(dir)
        .args(["--users", &users.to_string()])
        .args(["--users-per-account", &args.users_per_account.to_string()])
        .status()?;
    if !status.success() {
        return Err(format!("loading {users} users failed: {status}").into());
    }
    Ok(started.elapsed())
}

fn entitled_args(dir: &Path) -> Vec<String> {
    vec![
        "--kind".into(),
        "entitled".into(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}

struct Row {
    figure: String,
    target: &'static str,
    measured: String,
    met: Option<bool>,
}

fn orchestrate(args: RunArgs) -> Result<(), BoxError> {
    let pin = !args.no_pin;
    if pin {
        pin_self(args.client_core)?;
    }
    let server_pin = pin.then_some(args.server_core);
    // Built after pinning, so its workers inherit the client core.
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args, server_pin))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The run whose calls/s is the median of `runs` (they are interleaved
/// with the other server's, so drift on a shared machine hits both).
fn median(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn detail_row(name: &str, in_flight: usize, s: &Stats) -> String {
    format!(
        "| {name} | {in_flight} | {:.0} | {:.0} | {:.0} | {:.1} |",
        s.rps(),
        s.percentile_us(0.50),
        s.percentile_us(0.99),
        s.cpu_us_per_call()
    )
}

async fn run(args: RunArgs, server_pin: Option<usize>) -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    // Other work on the machine skews every figure; the run says how much
    // there was.
    let load_before = load_average();
    eprintln!(
        "entitled-bench: {} users ({} per account), concurrency {:?}, {} connections, {} × {:?} per figure after {:?} warm-up, {}",
        args.users,
        args.users_per_account,
        args.concurrency,
        args.connections,
        args.repeat,
        args.duration,
        args.warmup,
        match server_pin {
            Some(core) => format!(
                "servers on core {core}, load generator on core {}",
                args.client_core
            ),
            None => "unpinned".to_owned(),
        }
    );
    let mut rows = Vec::new();
    let mut detail = Vec::new();

    // (a) the baseline and (b) entitled with N users, both up; their runs
    // alternate so that noise from elsewhere on the machine hits both.
    let base_args = vec![
        "--kind".into(),
        "baseline".into(),
        "--users".into(),
        args.users.to_string(),
        "--users-per-account".into(),
        args.users_per_account.to_string(),
    ];
    let baseline = ServerProcess::start(server_pin, &base_args).await?;
    let small_dir = tmp.path().join("small");
    let load_time = load_store(&args, &small_dir, args.users)?;
    eprintln!("entitled: {} users loaded in {load_time:?}", args.users);
    let small = ServerProcess::start(server_pin, &entitled_args(&small_dir)).await?;
    let small_rss = small.rss_mib();
    let mut small_top = None;
    for &c in &args.concurrency {
        let (mut b_runs, mut e_runs) = (Vec::new(), Vec::new());
        for rep in 1..=args.repeat.max(1) {
            eprintln!("concurrency {c}, round {rep}: baseline, entitled");
            b_runs.push(baseline_checks(&args, &baseline, c).await?);
            e_runs.push(entitled_checks(&args, &small, args.users, c).await?);
        }
        let (b, e) = (median(b_runs), median(e_runs));
        detail.push(detail_row("baseline Lookup", c, &b));
        detail.push(detail_row("entitled CheckAnalyticsAccess", c, &e));
        let ratio = e.rps() / b.rps();
        rows.push(Row {
            figure: format!("check throughput vs baseline, concurrency {c}"),
            target: "≥ 0.90",
            measured: format!(
                "{ratio:.3} ({:.0} / {:.0} calls/s; server CPU per call {:.2} of the baseline's)",
                e.rps(),
                b.rps(),
                e.cpu_us_per_call() / b.cpu_us_per_call()
            ),
            met: Some(ratio >= 0.90),
        });
        let p99 = e.percentile_us(0.99) / b.percentile_us(0.99);
        rows.push(Row {
            figure: format!("check p99 vs baseline p99, concurrency {c}"),
            target: "≤ 1.25",
            measured: format!(
                "{p99:.3} ({:.0} / {:.0} µs)",
                e.percentile_us(0.99),
                b.percentile_us(0.99)
            ),
            met: Some(p99 <= 1.25),
        });
        small_top = Some(c);
    }
    baseline.stop()?;

    eprintln!("entitled: batches of {}", args.batch_size);
    let batches = entitled_batches(&args, &small).await?;
    detail.push(detail_row(
        &format!("entitled BatchCheck × {}", args.batch_size),
        args.batch_concurrency,
        &batches,
    ));
    rows.push(Row {
        figure: format!(
            "batch of {} users, user-checks per second on one core",
            args.batch_size
        ),
        target: "≥ 1,000,000",
        measured: format!(
            "{:.0} (server CPU {:.2} µs per user-check: {:.0} per second at a full core)",
            batches.items_per_s(),
            batches.cpu_us_per_call() / args.batch_size as f64,
            1e6 * args.batch_size as f64 / batches.cpu_us_per_call()
        ),
        met: Some(batches.items_per_s() >= 1_000_000.0),
    });

    // The large store, with its check rounds alternating with the small
    // store's.
    if args.big_users > 0 {
        let big_dir = tmp.path().join("big");
        eprintln!("entitled: loading {} users", args.big_users);
        let load_time = load_store(&args, &big_dir, args.big_users)?;
        eprintln!("entitled: {} users loaded in {load_time:?}", args.big_users);
        let big = ServerProcess::start(server_pin, &entitled_args(&big_dir)).await?;
        let to_serving = big.to_serving;
        let rss = big.rss_mib();
        if let Some(c) = small_top {
            let (mut small_runs, mut runs) = (Vec::new(), Vec::new());
            for rep in 1..=args.repeat.max(1) {
                eprintln!(
                    "concurrency {c}, round {rep}: entitled with {} users, with {} users",
                    args.users, args.big_users
                );
                small_runs.push(entitled_checks(&args, &small, args.users, c).await?);
                runs.push(entitled_checks(&args, &big, args.big_users, c).await?);
            }
            let (small_s, s) = (median(small_runs), median(runs));
            detail.push(detail_row(
                &format!("entitled CheckAnalyticsAccess, {} users", args.users),
                c,
                &small_s,
            ));
            detail.push(detail_row(
                &format!("entitled CheckAnalyticsAccess, {} users", args.big_users),
                c,
                &s,
            ));
            let ratio = s.rps() / small_s.rps();
            rows.push(Row {
                figure: format!(
                    "check throughput at {} users vs {} users (concurrency {c})",
                    args.big_users, args.users
                ),
                target: "≥ 0.90",
                measured: format!(
                    "{ratio:.3} ({:.0} / {:.0} calls/s; server CPU per call {:.2} of the small store's)",
                    s.rps(),
                    small_s.rps(),
                    s.cpu_us_per_call() / small_s.cpu_us_per_call()
                ),
                met: Some(ratio >= 0.90),
            });
        }
        rows.push(Row {
            figure: format!("resident memory with {} users loaded", args.big_users),
            target: "≤ 400 MB",
            measured: match rss {
                Some(mib) => format!(
                    "{:.0} MB (VmRSS; {:.0} MB with {} users)",
                    mib * 1.048_576,
                    small_rss.unwrap_or(f64::NAN) * 1.048_576,
                    args.users
                ),
                None => "unknown (no /proc)".to_owned(),
            },
            met: rss.map(|mib| mib * 1.048_576 <= 400.0),
        });
        rows.push(Row {
            figure: format!("restart to SERVING with {} users", args.big_users),
            target: "≤ 5 s",
            measured: format!("{:.2} s", to_serving.as_secs_f64()),
            met: Some(to_serving <= Duration::from_secs(5)),
        });
        big.stop()?;
    }

    eprintln!("entitled: watch latency at 1,000 writes/s");
    let watch = watch_latency(&args, &small, 1000).await?;
    eprintln!("entitled: {} write clients", args.write_clients);
    let writes = entitled_writes(&args, &small).await?;
    detail.push(detail_row(
        "entitled UpdateUserServices (durable)",
        args.write_clients,
        &writes,
    ));
    small.stop()?;

    rows.push(Row {
        figure: format!(
            "durable UpdateUserServices, {} concurrent clients",
            args.write_clients
        ),
        target: "≥ 10,000 per second",
        measured: format!("{:.0} per second", writes.rps()),
        met: Some(writes.rps() >= 10_000.0),
    });
    let p99 = Duration::from_nanos(percentile(&watch.latencies, 0.99));
    rows.push(Row {
        figure: "Watch: commit to event delivered, p99, at 1,000 writes/s".to_owned(),
        target: "≤ 50 ms",
        measured: format!(
            "{:.1} ms (p50 {:.1} ms; from sending each write, so its own commit and flush are included; {} of {} writes seen, {:.0} writes/s)",
            p99.as_secs_f64() * 1e3,
            Duration::from_nanos(percentile(&watch.latencies, 0.5)).as_secs_f64() * 1e3,
            watch.latencies.len(),
            watch.writes,
            watch.writes as f64 / watch.elapsed.as_secs_f64(),
        ),
        met: Some(p99 <= Duration::from_millis(50) && watch.latencies.len() as u64 == watch.writes),
    });

    println!(
        "Load average (1, 5, 15 min) before: {load_before}; after: {}.",
        load_average()
    );
    println!();
    println!("| figure | target | measured | met |");
    println!("| --- | --- | --- | --- |");
    for r in &rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!("| {} | {} | {} | {met} |", r.figure, r.target, r.measured);
    }
    println!();
    println!("| run | in flight | calls/s | p50 µs | p99 µs | server CPU µs/call |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for line in &detail {
        println!("{line}");
    }
    Ok(())
}
