//! The run: pinning, then each server started, driven in alternating rounds
//! and stopped, in the order the report lists the figures.

use std::process::{Command, Stdio};

use crate::{
    BoxError,
    cli::RunArgs,
    data::{load_store, run_sled_scan},
    drivers::{
        baseline_checks, disk_syncs, entitled_batches, entitled_checks,
        entitled_checks_while_writing, entitled_writes, watch_latency,
    },
    report::{self, detail_row},
    servers::{Launch, ServerProcess},
    stats::{Stats, median},
};

/// A start of `server`, as it measured and logged it.
fn start_of(server: &ServerProcess) -> report::Start {
    let ms = |field| {
        server
            .logged("from_checkpoint=", field)
            .and_then(|v| v.parse().ok())
    };
    report::Start {
        to_serving: server.to_serving,
        cpu: server.start_cpu,
        rss_mib: server.rss_mib(),
        from_checkpoint: server
            .logged("from_checkpoint=", "from_checkpoint")
            .is_some_and(|v| v == "true"),
        sled_ms: ms("sled_ms"),
        watermark_ms: ms("watermark_ms"),
        view_ms: ms("view_ms"),
    }
}

/// The median of `starts` by time to SERVING.
fn median_start(mut starts: Vec<report::Start>) -> report::Start {
    starts.sort_by_key(|s| s.to_serving);
    starts.swap_remove(starts.len() / 2)
}

pub fn orchestrate(args: RunArgs) -> Result<(), BoxError> {
    let pin = !args.no_pin;
    if pin {
        pin_self(args.client_core)?;
    }
    let server_pin = pin.then_some(args.server_core);
    // Built after pinning, so its workers inherit the client core.
    let runtime = tokio::runtime::Runtime::new()?;
    match args.postgres.clone() {
        Some(url) => runtime.block_on(crate::postgres::run(&args, server_pin, &url)),
        None => runtime.block_on(run(args, server_pin)),
    }
}

pub fn pin_self(core: usize) -> Result<(), BoxError> {
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

async fn run(args: RunArgs, server_pin: Option<usize>) -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    // Other work on the machine skews every figure; the run says how much
    // there was.
    let load_before = report::load_average();
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
    let launch = Launch::pinned(server_pin);
    let mut rows = Vec::new();
    let mut detail = Vec::new();

    let small_dir = tmp.path().join("small");
    let load_time = load_store(&small_dir, args.users, args.users_per_account)?;
    eprintln!("entitled: {} users loaded in {load_time:?}", args.users);
    let small = ServerProcess::entitled(&launch, &small_dir).await?;
    let small_rss = small.rss_mib();
    let mut small_top = None;
    if !args.storage_only {
        // (a) the baseline and (b) entitled with N users, both up; their
        // runs alternate so that noise from elsewhere on the machine hits
        // both.
        let baseline = ServerProcess::baseline(&launch, args.users, args.users_per_account).await?;
        for &c in &args.concurrency {
            let (mut b_runs, mut e_runs) = (Vec::new(), Vec::new());
            for rep in 1..=args.repeat.max(1) {
                eprintln!("concurrency {c}, round {rep}: baseline, entitled");
                let b = baseline_checks(&args, &baseline, &small.bearer, c).await?;
                let e = entitled_checks(&args, &small, args.users, c).await?;
                eprintln!("  baseline {}; entitled {}", round(&b), round(&e));
                b_runs.push(b);
                e_runs.push(e);
            }
            let (b, e) = (median(b_runs), median(e_runs));
            detail.push(detail_row("baseline Lookup", c, &b));
            detail.push(detail_row("entitled CheckAnalyticsAccess", c, &e));
            rows.extend(report::checks_vs_baseline(c, &b, &e));
            small_top = Some(c);
        }
        baseline.stop()?;

        for omit_reports in [false, true] {
            let answers = if omit_reports {
                "answers without reports"
            } else {
                "full answers"
            };
            eprintln!("entitled: batches of {}, {answers}", args.batch_size);
            let batches = entitled_batches(&args, &small, omit_reports).await?;
            detail.push(detail_row(
                &format!("entitled BatchCheck × {}, {answers}", args.batch_size),
                args.batch_concurrency,
                &batches,
            ));
            rows.push(report::batches(args.batch_size, answers, &batches));
        }

        // Checks while writes are applied, against the same checks idle, in
        // alternating rounds.
        if let Some(&c) = args.concurrency.first() {
            let (mut idle_runs, mut busy_runs) = (Vec::new(), Vec::new());
            let mut written = 0;
            for rep in 1..=args.repeat.max(1) {
                eprintln!("concurrency {c}, round {rep}: checks idle, checks with 1,000 writes/s");
                idle_runs.push(entitled_checks(&args, &small, args.users, c).await?);
                let (busy, w) = entitled_checks_while_writing(&args, &small, c, 1000).await?;
                busy_runs.push(busy);
                written += w;
            }
            let (idle, busy) = (median(idle_runs), median(busy_runs));
            detail.push(detail_row("entitled CheckAnalyticsAccess, idle", c, &idle));
            detail.push(detail_row(
                "entitled CheckAnalyticsAccess, 1,000 writes/s",
                c,
                &busy,
            ));
            rows.push(report::checks_while_writing(
                c,
                &idle,
                &busy,
                written,
                args.repeat.max(1),
            ));
        }
    }

    // The large store, with its check rounds alternating with the small
    // store's.
    if args.big_users > 0 {
        let big_dir = tmp.path().join("big");
        eprintln!("entitled: loading {} users", args.big_users);
        let load_time = load_store(&big_dir, args.big_users, args.users_per_account)?;
        eprintln!("entitled: {} users loaded in {load_time:?}", args.big_users);
        // Started after the loader (which replays sled's whole log), then
        // `--repeat` times after a crash (SIGKILL: no view checkpoint, so
        // sled's users are read), then `--repeat` times after a graceful
        // stop (as an operator restarts it: the view from the checkpoint).
        // The last start stays up for the rounds below.
        let repeat = args.repeat.max(1);
        let mut big = ServerProcess::entitled(&launch, &big_dir).await?;
        let first = start_of(&big);
        let mut cold = Vec::new();
        for _ in 0..repeat {
            big.kill()?;
            big = ServerProcess::entitled(&launch, &big_dir).await?;
            cold.push(start_of(&big));
        }
        let (mut warm, mut stops) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            stops.push(big.stop()?);
            big = ServerProcess::entitled(&launch, &big_dir).await?;
            warm.push(start_of(&big));
        }
        eprintln!(
            "entitled: {} users; the start after the loader: {first}",
            args.big_users
        );
        for (what, starts) in [("after a crash", &cold), ("after a graceful stop", &warm)] {
            for start in starts {
                eprintln!("entitled: {} users, start {what}: {start}", args.big_users);
            }
        }
        eprintln!(
            "entitled: {} users, graceful stops {stops:?}",
            args.big_users
        );
        if cold.iter().any(|s| s.from_checkpoint) || !warm.iter().all(|s| s.from_checkpoint) {
            return Err("a start after a crash used a view checkpoint, or one after a graceful stop did not".into());
        }
        let (cold, warm) = (median_start(cold), median_start(warm));
        stops.sort();
        let stop = stops[stops.len() / 2];
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
            rows.push(report::big_vs_small(
                c,
                args.big_users,
                &s,
                args.users,
                &small_s,
            ));
        }
        rows.push(report::memory(
            args.big_users,
            &warm,
            &cold,
            args.users,
            small_rss,
        ));
        big.stop()?;
        let scan = run_sled_scan(&big_dir, server_pin)?;
        eprintln!("{scan}");
        rows.push(report::restart(args.big_users, &warm, stop));
        rows.push(report::cold_start(args.big_users, &cold, &scan));
    }

    let watch = if args.storage_only {
        None
    } else {
        eprintln!("entitled: watch latency at 1,000 writes/s");
        Some(watch_latency(&args, &small, 1000).await?)
    };
    eprintln!("entitled: {} write clients", args.write_clients);
    let writes = entitled_writes(&args, &small).await?;
    detail.push(detail_row(
        "entitled UpdateUserServices (durable)",
        args.write_clients,
        &writes,
    ));
    small.stop()?;

    eprintln!("the disk: syncs per second");
    let disk = disk_syncs(tmp.path(), args.duration)?;
    rows.extend(report::durable_writes(args.write_clients, &writes, &disk));
    if let Some(watch) = &watch {
        rows.push(report::watch(watch));
    }
    report::print(&load_before, &rows, &detail);
    Ok(())
}

/// One round's figures, for the log: calls a second and the server's CPU
/// per call.
fn round(s: &Stats) -> String {
    let per_second = s.calls as f64 / s.elapsed.as_secs_f64();
    let cpu = s.server_cpu.map_or_else(
        || "?".to_owned(),
        |c| format!("{:.1}", c.as_secs_f64() * 1e6 / s.calls.max(1) as f64),
    );
    format!("{per_second:.0} calls/s, server CPU {cpu} µs/call")
}
