//! `entitled-bench h2load`: issue 12's check rows measured as the issue
//! measured them, with h2load (nghttp2's load generator, Debian's
//! `nghttp2-client`) on one HTTP/2 connection, 16 or 64 streams in flight,
//! the server pinned to one core and the load on the other, a token on
//! every call, the baseline and entitled in alternating rounds.
//!
//! Why beside the tonic client's figures: that client decodes every answer
//! (entitled's, twelve reports, about 560 bytes, against the baseline's
//! three fields) on the one load core, which makes it, not the server, the
//! bottleneck of entitled's runs. h2load reads the answers without
//! decoding them, as a gateway's proxy would, so the servers are compared.
//! Every call is the same request: the same user for both servers (one the
//! check allows with Supervisor, so the answer is the full one).

use std::{
    path::Path,
    process::{Command, Stdio},
};

use prost::Message;

use crate::{
    BoxError,
    child::operator_token,
    cli::H2loadArgs,
    data::{account_name, load_store, user_name, x8_users},
    drivers::{WriteTo, write_at},
    proto as bpb,
    servers::{Launch, ServerProcess, connect},
    stats::{cpu_time, percentile},
};
use entitled::{
    client::Bearer,
    proto::v1::{self as pb, access_service_client::AccessServiceClient},
};

const CHECK: &str = "/entitled.v1.AccessService/CheckAnalyticsAccess";
const LOOKUP: &str = "/bench.v1.BaselineService/Lookup";

pub fn h2load(args: H2loadArgs) -> Result<(), BoxError> {
    // The writer of the rounds with writes runs on the load core, beside
    // h2load (the servers are pinned to theirs).
    crate::run::pin_self(args.client_core)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

/// Runs `write_at` on a thread of its own that takes only the load core's
/// idle time (`SCHED_IDLE`), so that the writer does not delay h2load,
/// whose timings are the figures (the servers and h2load, started from
/// other threads, keep the normal policy). Returns the writes acknowledged.
fn idle_writer(
    server: &ServerProcess,
    users: Vec<usize>,
    per_account: usize,
    rate: u64,
    seconds: u64,
) -> std::thread::JoinHandle<Result<u64, String>> {
    let to = WriteTo::from(server);
    std::thread::spawn(move || {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue,
            ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        if let Err(e) = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        ) {
            eprintln!("h2load: the writer keeps the normal policy ({e})");
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let writer = write_at(to, users, per_account, rate, seconds)
                .await
                .map_err(|e| e.to_string())?;
            writer.await.map_err(|e| e.to_string())
        })
    })
}

/// One h2load run's figures.
struct Run {
    per_second: f64,
    p99_us: u64,
    cpu_us_per_call: f64,
}

async fn run(args: H2loadArgs) -> Result<(), BoxError> {
    if Command::new("h2load").arg("--version").output().is_err() {
        return Err("h2load not found: install Debian's `nghttp2-client`".into());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    load_store(&dir, args.users, args.users_per_account)?;
    let launch = Launch::pinned(Some(args.server_core));
    let entitled = ServerProcess::entitled(&launch, &dir).await?;
    let baseline = ServerProcess::baseline(&launch, args.users, args.users_per_account).await?;
    let token = operator_token(&dir)?;

    // User 0 is X8 with Supervisor (`data::services`): the full answer.
    let (account_id, user_id) = (account_name(0), user_name(0));
    let check = pb::CheckAnalyticsAccessRequest {
        account_id: account_id.clone(),
        user_id: user_id.clone(),
        min_revision: 0,
    };
    let answer = AccessServiceClient::with_interceptor(
        connect(entitled.addr).await?,
        Bearer::new(Some(&token))?,
    )
    .check_analytics_access(check.clone())
    .await?
    .into_inner();
    if !answer.allowed || answer.reports.is_empty() {
        return Err(format!("the request's user is not allowed with reports: {answer:?}").into());
    }
    let lookup = bpb::LookupRequest {
        account_id,
        user_id,
    };
    let check_body = tmp.path().join("check.body");
    let lookup_body = tmp.path().join("lookup.body");
    std::fs::write(&check_body, framed(&check))?;
    std::fs::write(&lookup_body, framed(&lookup))?;
    eprintln!(
        "h2load: one connection, {:?} streams, {} × {} s after 1 s of warm-up, servers on core {}, h2load on core {}; the answers: entitled {} bytes, the baseline's {}",
        args.concurrency,
        args.repeat,
        args.seconds,
        args.server_core,
        args.client_core,
        answer.encoded_len(),
        bpb::LookupResponse {
            allowed: true,
            edition: "X8".into(),
            revision: 1
        }
        .encoded_len()
    );

    let mut rows = Vec::new();
    let mut detail = Vec::new();
    for &c in &args.concurrency {
        let (mut b_runs, mut e_runs) = (Vec::new(), Vec::new());
        for round in 1..=args.repeat.max(1) {
            let b = drive(
                &args,
                &baseline,
                LOOKUP,
                &lookup_body,
                &token,
                c,
                tmp.path(),
            )?;
            let e = drive(&args, &entitled, CHECK, &check_body, &token, c, tmp.path())?;
            eprintln!(
                "streams {c}, round {round}: baseline {:.0} calls/s (p99 {} µs, server CPU {:.1} µs/call); entitled {:.0} calls/s (p99 {} µs, server CPU {:.1} µs/call)",
                b.per_second,
                b.p99_us,
                b.cpu_us_per_call,
                e.per_second,
                e.p99_us,
                e.cpu_us_per_call
            );
            b_runs.push(b);
            e_runs.push(e);
        }
        let (b, e) = (median(b_runs), median(e_runs));
        let ratio = e.per_second / b.per_second;
        let p99 = e.p99_us as f64 / b.p99_us.max(1) as f64;
        rows.push(format!(
            "| check throughput vs baseline, concurrency {c} (h2load, one connection) | ≥ 0.90 | {ratio:.3} ({:.0} / {:.0} calls/s; server CPU per call {:.2} of the baseline's) | {} |",
            e.per_second,
            b.per_second,
            e.cpu_us_per_call / b.cpu_us_per_call,
            met(ratio >= 0.90)
        ));
        rows.push(format!(
            "| check p99 vs baseline p99, concurrency {c} (h2load, one connection) | ≤ 1.25 | {p99:.3} ({} / {} µs) | {} |",
            e.p99_us,
            b.p99_us,
            met(p99 <= 1.25)
        ));
        for (name, r) in [
            ("baseline Lookup", &b),
            ("entitled CheckAnalyticsAccess", &e),
        ] {
            detail.push(format!(
                "| {name} | {c} | {:.0} | {} | {:.1} |",
                r.per_second, r.p99_us, r.cpu_us_per_call
            ));
        }
    }
    if args.writes_per_second > 0 {
        let (row, mut rounds) =
            while_writing(&args, &entitled, &check_body, &token, tmp.path()).await?;
        rows.push(row);
        detail.append(&mut rounds);
    }
    entitled.stop()?;
    baseline.stop()?;
    println!("| figure | target | measured | met |");
    println!("| --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
    println!();
    println!("| run (median round) | streams | calls/s | p99 µs | server CPU µs/call |");
    println!("| --- | --- | --- | --- | --- |");
    for row in detail {
        println!("{row}");
    }
    Ok(())
}

/// Checks idle against checks while `--writes-per-second` durable
/// UpdateUserServices are applied (to other users than the checked one, so
/// the answer stays the same), on the first concurrency, in alternating
/// rounds: the table's row and the detail rows of the median rounds.
async fn while_writing(
    args: &H2loadArgs,
    entitled: &ServerProcess,
    check_body: &Path,
    token: &str,
    tmp: &Path,
) -> Result<(String, Vec<String>), BoxError> {
    let c = args.concurrency.first().copied().unwrap_or(16);
    let rate = args.writes_per_second;
    // User 0 is the checked one; the writes flip the other X8 users.
    let users: Vec<usize> = x8_users(args.users).into_iter().skip(1).collect();
    // What the writes cost the server by themselves, with no checks.
    let before = cpu_time(entitled.id());
    // Each writer writes through the warm-up second and the measured ones.
    let writer = || {
        idle_writer(
            entitled,
            users.clone(),
            args.users_per_account,
            rate,
            args.seconds + 1,
        )
    };
    let alone = writer().join().map_err(|_| "the writer panicked")??;
    let alone_us = match (before, cpu_time(entitled.id())) {
        (Some(b), Some(a)) => a.saturating_sub(b).as_secs_f64() * 1e6 / alone.max(1) as f64,
        _ => 0.0,
    };
    eprintln!(
        "{rate} writes/s alone: {alone} writes acknowledged, server CPU {alone_us:.1} µs per write"
    );
    let (mut idle_runs, mut busy_runs) = (Vec::new(), Vec::new());
    let mut written = 0;
    for round in 1..=args.repeat.max(1) {
        let idle = drive(args, entitled, CHECK, check_body, token, c, tmp)?;
        let writing = writer();
        let busy = drive(args, entitled, CHECK, check_body, token, c, tmp)?;
        let w = writing.join().map_err(|_| "the writer panicked")??;
        eprintln!(
            "streams {c}, round {round}: idle {:.0} calls/s (p99 {} µs); with {rate} writes/s {:.0} calls/s (p99 {} µs, server CPU {:.1} µs/call), {w} writes acknowledged",
            idle.per_second, idle.p99_us, busy.per_second, busy.p99_us, busy.cpu_us_per_call
        );
        written += w;
        idle_runs.push(idle);
        busy_runs.push(busy);
    }
    let (idle, busy) = (median(idle_runs), median(busy_runs));
    let p99 = busy.p99_us as f64 / idle.p99_us.max(1) as f64;
    let expected = rate * (args.seconds + 1) * args.repeat.max(1) as u64;
    let row = format!(
        "| check p99 while {rate} writes/s are applied vs idle, concurrency {c} (h2load, one connection) | ≤ 1.25 | {p99:.3} ({} / {} µs; {:.0} / {:.0} calls/s; {written} of {expected} writes acknowledged; server CPU per write, writes alone, {alone_us:.0} µs) | {} |",
        busy.p99_us,
        idle.p99_us,
        busy.per_second,
        idle.per_second,
        met(p99 <= 1.25 && written == expected)
    );
    let detail = [("idle", &idle), ("with writes", &busy)]
        .iter()
        .map(|(name, r)| {
            format!(
                "| entitled CheckAnalyticsAccess, {name} | {c} | {:.0} | {} | {:.1} |",
                r.per_second, r.p99_us, r.cpu_us_per_call
            )
        })
        .collect();
    Ok((row, detail))
}

fn met(yes: bool) -> &'static str {
    if yes { "yes" } else { "**no**" }
}

/// A gRPC message: uncompressed, its length, its bytes.
fn framed(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

/// One h2load run against `server`: one connection, `streams` in flight,
/// one second of warm-up, then `--seconds`.
fn drive(
    args: &H2loadArgs,
    server: &ServerProcess,
    path: &str,
    body: &Path,
    token: &str,
    streams: usize,
    tmp: &Path,
) -> Result<Run, BoxError> {
    let log = tmp.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let before = cpu_time(server.id());
    let out = Command::new("taskset")
        .args([
            "-c",
            &args.client_core.to_string(),
            "h2load",
            "-c",
            "1",
            "-m",
        ])
        .arg(streams.to_string())
        .args(["-D", &args.seconds.to_string(), "--warm-up-time", "1"])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-H")
        .arg(format!("authorization: Bearer {token}"))
        .arg("--log-file")
        .arg(&log)
        .arg(format!("http://{}{path}", server.addr))
        .stderr(Stdio::inherit())
        .output()?;
    let after = cpu_time(server.id());
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("h2load failed: {text}").into());
    }
    // "finished in 3.00s, 98924.10 req/s, 8.96MB/s"
    let per_second: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.strip_suffix(" req/s"))
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| format!("no rate in h2load's output: {text}"))?;
    // "requests: N total, N started, N done, N succeeded, 0 failed, ..."
    let requests = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .ok_or_else(|| format!("no requests line in h2load's output: {text}"))?;
    if !requests.contains(" 0 failed") || !requests.contains(" 0 errored") {
        return Err(format!("calls failed: {requests}").into());
    }
    // The log: start time, HTTP status, response time in µs, per request.
    let mut latencies: Vec<u64> = std::fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    latencies.sort_unstable();
    let calls = latencies.len().max(1) as f64;
    let cpu = match (before, after) {
        (Some(b), Some(a)) => a.saturating_sub(b).as_secs_f64() * 1e6,
        _ => 0.0,
    };
    // The CPU covers the warm-up second too: per call over all calls made.
    let made = per_second * (args.seconds as f64 + 1.0);
    Ok(Run {
        per_second,
        p99_us: percentile(&latencies, 0.99),
        cpu_us_per_call: cpu / made.max(calls),
    })
}

/// The round with the median rate.
fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}
