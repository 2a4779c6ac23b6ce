//! The load drivers: the same client loop drives each server, over the same
//! connections, concurrency and sequence of users.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use entitled::client::Bearer;
use entitled::proto::v1::{
    self as pb, access_service_client::AccessServiceClient,
    provisioning_service_client::ProvisioningServiceClient,
};
use tonic::{Status, metadata::MetadataValue, transport::Channel};

use crate::{
    BoxError,
    cli::RunArgs,
    data::{account_name, user_name, x8_users},
    proto::{self as bpb, baseline_service_client::BaselineServiceClient},
    raw::{self, PreEncoded},
    servers::{ServerProcess, connect},
    stats::{Stats, WatchRun, cpu_time, machine_busy},
};

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// A tiny deterministic generator (xorshift) so both servers see the same
/// sequence of users.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn pick(users: usize, per_account: usize, seed: &mut u64) -> (String, String) {
    let i = (next_rand(seed) % users as u64) as usize;
    (account_name(i / per_account.max(1)), user_name(i))
}

/// The generator's state for call `k` of task `task`.
fn seed(task: usize, k: u64) -> u64 {
    let base = 0x9E37_79B9_7F4A_7C15 ^ ((task as u64 + 1) << 20);
    base.wrapping_add(k.wrapping_mul(0x2545_F491_4F6C_DD1D)) | 1
}

/// The users (of a store: `ServerProcess::store`) that this process last
/// set to Essentials. Every X8 user is loaded with Supervisor
/// (`data::services`).
static AT_ESSENTIALS: LazyLock<Mutex<HashSet<StoreUser>>> = LazyLock::new(Mutex::default);

/// A user of a store: its `ServerProcess::store` and its number.
type StoreUser = (Arc<str>, usize);

/// UpdateUserServices that turns X8 user `i` of `store` to the other tier
/// than the one this process last set it to (Essentials first), so that
/// every call is a real write, however many runs wrote the user before: a
/// write of the tier a user already has is a no-op, which costs the server
/// next to nothing (each run restarting its own alternation made a quarter
/// of some runs' writes no-ops). A user's writes must not overlap, and a
/// failed write leaves its user's next one a no-op.
fn flip(store: &Arc<str>, i: usize, per_account: usize) -> pb::UpdateUserServicesRequest {
    let essentials = {
        let mut set = AT_ESSENTIALS.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Arc::clone(store), i);
        let turn = !set.remove(&key);
        if turn {
            set.insert(key);
        }
        turn
    };
    let tier = if essentials {
        pb::AnalyticsTier::Essentials
    } else {
        pb::AnalyticsTier::Supervisor
    };
    pb::UpdateUserServicesRequest {
        account_id: account_name(i / per_account.max(1)),
        user_id: user_name(i),
        edition: None,
        analytics_tier: Some(tier as i32),
        expected_revision: None,
        request_id: String::new(),
        supervisor_scope: None,
    }
}

async fn channels(addr: SocketAddr, n: usize) -> Result<Vec<Channel>, BoxError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(connect(addr).await?);
    }
    Ok(out)
}

/// Runs `concurrency` loops of `call` against `server`, spread over
/// `--connections` connections, for `--warmup` then `--duration`; `call`
/// gets the channel, its task and its call number, and returns how many
/// items it did (1 for a check).
async fn drive<F, Fut>(
    args: &RunArgs,
    server: &ServerProcess,
    concurrency: usize,
    call: F,
) -> Result<Stats, BoxError>
where
    F: Fn(Channel, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64, Status>> + Send,
{
    let channels = channels(server.addr, args.connections).await?;
    let (pid, duration) = (server.id(), args.duration);
    let start = Instant::now() + args.warmup;
    let end = start + duration;
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(start.into()).await;
        let before = (cpu_time(pid), machine_busy());
        tokio::time::sleep_until(end.into()).await;
        let after = (cpu_time(pid), machine_busy());
        let used = |a: Option<Duration>, b: Option<Duration>| Some(a?.saturating_sub(b?));
        (used(after.0, before.0), used(after.1, before.1))
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
    (total.server_cpu, total.machine_cpu) = cpu.await?;
    total.latencies.sort_unstable();
    if total.errors > 0 {
        eprintln!("  warning: {} calls failed", total.errors);
    }
    Ok(total)
}

/// One baseline call: a Lookup of the `k`-th user of task `task`'s sequence.
/// It carries `bearer` (the baseline ignores it) so that both servers get
/// the same calls: h2 never indexes `authorization` in its header table, so
/// every call's token arrives as a literal that the server's HPACK decoder
/// decodes (about 2,000 instructions), whatever the handler does with it.
pub fn baseline_call(
    users: usize,
    per: usize,
    bearer: Bearer,
) -> impl Fn(Channel, usize, u64) -> BoxFuture<Result<u64, Status>> + Clone + Send + 'static {
    move |ch, task, k| {
        let bearer = bearer.clone();
        Box::pin(async move {
            let mut s = seed(task, k);
            let (account_id, user_id) = pick(users, per, &mut s);
            BaselineServiceClient::with_interceptor(ch, bearer)
                .lookup(bpb::LookupRequest {
                    account_id,
                    user_id,
                })
                .await
                .map(|_| 1)
        })
    }
}

/// One check, as the gateway makes it (with its bearer token), of the same
/// user `baseline_call` looks up for the same `task` and `k`.
pub fn entitled_call(
    users: usize,
    per: usize,
    bearer: Bearer,
) -> impl Fn(Channel, usize, u64) -> BoxFuture<Result<u64, Status>> + Clone + Send + 'static {
    move |ch, task, k| {
        let bearer = bearer.clone();
        Box::pin(async move {
            let mut s = seed(task, k);
            let (account_id, user_id) = pick(users, per, &mut s);
            AccessServiceClient::with_interceptor(ch, bearer)
                .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                    account_id,
                    user_id,
                    min_revision: 0,
                })
                .await
                .map(|_| 1)
        })
    }
}

/// Baseline calls, each carrying `bearer` (entitled's token) as entitled's
/// do.
pub async fn baseline_checks(
    args: &RunArgs,
    server: &ServerProcess,
    bearer: &Bearer,
    concurrency: usize,
) -> Result<Stats, BoxError> {
    let call = baseline_call(args.users, args.users_per_account, bearer.clone());
    drive(args, server, concurrency, call).await
}

pub async fn entitled_checks(
    args: &RunArgs,
    server: &ServerProcess,
    users: usize,
    concurrency: usize,
) -> Result<Stats, BoxError> {
    let call = entitled_call(users, args.users_per_account, server.bearer.clone());
    drive(args, server, concurrency, call).await
}

/// `entitled_checks` while `rate` durable writes a second (UpdateUserServices
/// on X8 users, alternating tiers, each sent on its tick whatever the others
/// are doing) run beside them, from before the warm-up to the end.
pub async fn entitled_checks_while_writing(
    args: &RunArgs,
    server: &ServerProcess,
    concurrency: usize,
    rate: u64,
) -> Result<(Stats, u64), BoxError> {
    let x8 = x8_users(args.users);
    let seconds = (args.warmup + args.duration).as_secs_f64().ceil() as u64;
    let writer = write_at(
        WriteTo::from(server),
        x8,
        args.users_per_account,
        rate,
        seconds,
    )
    .await?;
    let checks = entitled_checks(args, server, args.users, concurrency).await?;
    let written = writer.await?;
    Ok((checks, written))
}

/// Where `write_at` writes: an entitled server's address, token and store.
#[derive(Clone)]
pub struct WriteTo {
    addr: SocketAddr,
    bearer: Bearer,
    store: Arc<str>,
}

impl From<&ServerProcess> for WriteTo {
    fn from(server: &ServerProcess) -> Self {
        WriteTo {
            addr: server.addr,
            bearer: server.bearer.clone(),
            store: Arc::clone(&server.store),
        }
    }
}

/// Starts `rate` UpdateUserServices a second for `seconds` on one
/// connection of its own to `to`, each flipping the next of `users` (X8
/// users of `per_account` to an account); the task's result is how many
/// were acknowledged.
pub async fn write_at(
    to: WriteTo,
    users: Vec<usize>,
    per_account: usize,
    rate: u64,
    seconds: u64,
) -> Result<tokio::task::JoinHandle<u64>, BoxError> {
    if users.is_empty() {
        return Err("no X8 users to write; raise --users".into());
    }
    let WriteTo {
        addr,
        bearer,
        store,
    } = to;
    let channel = connect(addr).await?;
    let total = rate * seconds;
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut writes = Vec::new();
        for k in 0..total as usize {
            ticker.tick().await;
            let request = flip(&store, users[k % users.len()], per_account);
            let mut client =
                ProvisioningServiceClient::with_interceptor(channel.clone(), bearer.clone());
            writes.push(tokio::spawn(async move {
                client.update_user_services(request).await.is_ok()
            }));
        }
        let mut done = 0u64;
        for w in writes {
            if w.await.unwrap_or(false) {
                done += 1;
            }
        }
        done
    }))
}

/// Exactly `calls` calls of `call`, `concurrency` at a time over
/// `connections` connections: the instruction counts divide by this.
pub async fn counted<F, Fut>(
    addr: SocketAddr,
    connections: usize,
    concurrency: usize,
    calls: u64,
    first: u64,
    call: F,
) -> Result<(), BoxError>
where
    F: Fn(Channel, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<u64, Status>> + Send,
{
    let channels = channels(addr, connections).await?;
    let concurrency = concurrency.max(1);
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let channel = channels[t % channels.len()].clone();
        let call = call.clone();
        // Task t makes calls t, t + concurrency, ...: `calls` in all.
        let mine = (calls + (concurrency - 1 - t) as u64) / concurrency as u64;
        tasks.push(tokio::spawn(async move {
            for k in 0..mine {
                call(channel.clone(), t, first + k).await?;
            }
            Ok::<_, Status>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// BatchCheckAnalyticsAccess of `--batch-size` users; with `omit_reports`,
/// asking for answers without their reports (`entitled-omit-reports`).
pub async fn entitled_batches(
    args: &RunArgs,
    server: &ServerProcess,
    omit_reports: bool,
) -> Result<Stats, BoxError> {
    let (users, per, size) = (args.users, args.users_per_account, args.batch_size);
    let call = batch_call(users, per, size, omit_reports, server.bearer.clone());
    drive(args, server, args.batch_concurrency, call).await
}

/// BatchCheckAnalyticsAccess of `size` users picked as the checks pick
/// them, through the lighter client (`raw`): `BATCH_REQUESTS` requests are
/// made and encoded once, and call `k` of task `t` sends one of them.
/// Resolves to the number of results in the answer.
pub fn batch_call(
    users: usize,
    per: usize,
    size: usize,
    omit_reports: bool,
    bearer: Bearer,
) -> impl Fn(Channel, usize, u64) -> BoxFuture<Result<u64, Status>> + Clone + Send + 'static {
    let requests: Arc<[PreEncoded]> = (0..BATCH_REQUESTS)
        .map(|r| {
            let mut s = seed(r, 0);
            let items = (0..size)
                .map(|_| {
                    let (account_id, user_id) = pick(users, per, &mut s);
                    pb::CheckItem {
                        account_id,
                        user_id,
                    }
                })
                .collect();
            PreEncoded::new(&pb::BatchCheckAnalyticsAccessRequest {
                items,
                min_revision: 0,
            })
        })
        .collect();
    move |ch, task, k| {
        let bearer = bearer.clone();
        let which = (seed(task, k) % BATCH_REQUESTS as u64) as usize;
        let mut request = tonic::Request::new(requests[which].clone());
        if omit_reports {
            request
                .metadata_mut()
                .insert("entitled-omit-reports", MetadataValue::from_static("true"));
        }
        Box::pin(raw::batch(ch, bearer, request))
    }
}

/// The distinct batch requests a run sends.
const BATCH_REQUESTS: usize = 16;

/// Durable UpdateUserServices from `write_clients` clients, each on its own
/// X8 users, alternating Essentials and Supervisor so every call writes.
pub async fn entitled_writes(args: &RunArgs, server: &ServerProcess) -> Result<Stats, BoxError> {
    entitled_writes_part(args, server, 0, 1).await
}

/// The write clients `part` of `parts` takes: the first's index and how
/// many. The last part takes the remainder, so every client writes (64
/// over three replicas: 21, 21 and 22).
pub fn clients_of_part(clients: usize, part: usize, parts: usize) -> (usize, usize) {
    let parts = parts.clamp(1, clients.max(1));
    let share = clients / parts;
    let first = part * share;
    let count = if part + 1 == parts {
        clients - first
    } else {
        share
    };
    (first, count)
}

/// Part `part` of `parts` of `entitled_writes`' clients (and their users)
/// against `server`: several replicas, each sent its share, write to
/// disjoint users as one run would.
pub async fn entitled_writes_part(
    args: &RunArgs,
    server: &ServerProcess,
    part: usize,
    parts: usize,
) -> Result<Stats, BoxError> {
    let clients = args.write_clients.max(1);
    let (first, mine_clients) = clients_of_part(clients, part, parts);
    let per = args.users_per_account;
    // Dealt out to the clients.
    let x8 = Arc::new(x8_users(args.users));
    let (store, bearer) = (Arc::clone(&server.store), server.bearer.clone());
    if x8.len() < clients {
        return Err("too few users for the write clients; raise --users".into());
    }
    drive(args, server, mine_clients, move |ch, task, k| {
        let mine = x8.len() / clients;
        let slot = (k as usize) % mine;
        let request = flip(&store, x8[first + task + slot * clients], per);
        let bearer = bearer.clone();
        async move {
            ProvisioningServiceClient::with_interceptor(ch, bearer)
                .update_user_services(request)
                .await
                .map(|_| 1)
        }
    })
    .await
}

/// Watches every change while `rate` writes a second (UpdateUserServices
/// on X8 users, alternating tiers) run for `--duration`; for each write,
/// the time from sending it to its change arriving on the watch.
pub async fn watch_latency(
    args: &RunArgs,
    server: &ServerProcess,
    rate: u64,
) -> Result<WatchRun, BoxError> {
    change_latency(args, server, server, rate, Since::Sent).await
}

/// Where `change_latency` measures each write's latency from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Sending it: its own commit is included.
    Sent,
    /// Its acknowledgement: what another replica adds.
    Acknowledged,
}

/// `rate` writes a second through `writer` for `--duration`, watched on
/// `watcher`; for each write, the time from `since` to its change arriving
/// on the watch.
pub async fn change_latency(
    args: &RunArgs,
    writer: &ServerProcess,
    watcher: &ServerProcess,
    rate: u64,
    since: Since,
) -> Result<WatchRun, BoxError> {
    let channel = connect(writer.addr).await?;
    let bearer = writer.bearer.clone();
    let mut access =
        AccessServiceClient::with_interceptor(connect(watcher.addr).await?, bearer.clone());
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
    let x8 = x8_users(args.users);
    let total = rate * args.duration.as_secs().max(1);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let began = Instant::now();
    let mut writers = Vec::new();
    for k in 0..total as usize {
        ticker.tick().await;
        let request = flip(&writer.store, x8[k % x8.len()], per);
        let mut client =
            ProvisioningServiceClient::with_interceptor(channel.clone(), bearer.clone());
        let sent_tx = sent_tx.clone();
        writers.push(tokio::spawn(async move {
            let sent = Instant::now();
            match client.update_user_services(request).await {
                Ok(reply) => {
                    let at = match since {
                        Since::Sent => sent,
                        Since::Acknowledged => Instant::now(),
                    };
                    let _ = sent_tx.send((reply.into_inner().revision, at));
                    None
                }
                Err(status) => Some(status),
            }
        }));
    }
    let mut failed = 0;
    for w in writers {
        if let Some(status) = w.await? {
            if failed == 0 {
                eprintln!("  a write failed: {status:?}");
            }
            failed += 1;
        }
    }
    if failed > 0 {
        eprintln!("  warning: {failed} of {total} writes failed");
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

/// What the disk under `dir` allows one writer: 4 KiB appended and
/// `fdatasync`ed, as often as it will take for `duration`. Each durable
/// write's flush costs at least one of these, so a flush cycle can be no
/// shorter than one.
pub fn disk_syncs(dir: &std::path::Path, duration: Duration) -> Result<DiskSyncs, BoxError> {
    use std::io::Write;
    let path = dir.join("sync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5a_u8; 4096];
    let mut latencies = Vec::new();
    let began = Instant::now();
    while began.elapsed() < duration {
        let before = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        latencies.push(u64::try_from(before.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    let elapsed = began.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort_unstable();
    Ok(DiskSyncs { elapsed, latencies })
}

/// The probe's syncs: each one's time, sorted.
pub struct DiskSyncs {
    pub elapsed: Duration,
    pub latencies: Vec<u64>,
}
