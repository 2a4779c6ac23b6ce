//! `entitled-bench prune`: pruning a large audit trail while writes run
//! (audit retention). One entitled server in this process (sled in a new
//! directory, or a new PostgreSQL database with `--postgres`), with a clock
//! the run moves: `--records` audit records are written through
//! ImportUsers (5,000 users per call, one account each), the clock moves
//! past the retention, and then, in the same run, concurrent
//! UpdateUserServices writes are measured for `--duration` without
//! pruning (the baseline) and again while one pass prunes every old
//! record. Prints the pruning rate, the write throughput and p99 of both
//! phases, and the size of the store before and after (and, on
//! PostgreSQL, after a plain VACUUM and after VACUUM FULL).
//!
//! Client and server share the process and its cores (no pinning): the
//! figures compare the two phases with each other, not with the other
//! tables of BENCHMARKS.md.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use entitled::{
    catalogue::Catalogue,
    client::{Bearer, Clients},
    proto::v1 as pb,
    server::{Application, Config},
    service::{OPERATOR_TOKEN_FILE, RetentionOptions},
    store::Location,
};
use tonic::transport::Channel;

use crate::{BoxError, cli::PruneArgs, postgres, stats::Stats};

const ROWS_PER_IMPORT: usize = 5000;
const HOUR: Duration = Duration::from_secs(3600);

pub fn prune(args: PruneArgs) -> Result<(), BoxError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: PruneArgs) -> Result<(), BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("entitled-bench-prune")
        .tempdir_in(args.dir.as_deref().unwrap_or(Path::new(".")))?;
    let database = match &args.postgres {
        Some(admin) => Some(postgres::create_database(admin, "prune").await?),
        None => None,
    };
    let result = measure(&args, dir.path(), database.as_ref()).await;
    if let (Some(admin), Some(db)) = (&args.postgres, &database) {
        postgres::drop_database(admin, db).await?;
    }
    result
}

async fn measure(
    args: &PruneArgs,
    dir: &Path,
    database: Option<&postgres::Database>,
) -> Result<(), BoxError> {
    // Seconds since the epoch, moved by the run.
    let now = Arc::new(AtomicU64::new(1_800_000_000));
    let clock = {
        let now = Arc::clone(&now);
        Arc::new(move || SystemTime::UNIX_EPOCH + Duration::from_secs(now.load(Ordering::Relaxed)))
    };
    let mut config = Config::new(
        "127.0.0.1:0".parse()?,
        dir.to_path_buf(),
        Catalogue::builtin()?,
    );
    config.clock = clock;
    config.audit_retention = RetentionOptions {
        keep: Some(HOUR),
        // Passes only when the run starts one.
        every: Duration::from_secs(365 * 24 * 3600),
        batch: args.batch,
        request_batch: RetentionOptions::default().request_batch,
        pause: args.pause,
        busy_percent: args.busy_percent,
    };
    if let Some(db) = database {
        config.store = Some(Location::Postgres(db.url.clone()));
        config.operator_token_file = Some(dir.join(OPERATOR_TOKEN_FILE));
    }
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    let pruner = app.pruner();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let secret = std::fs::read_to_string(dir.join(OPERATOR_TOKEN_FILE))?;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let clients = Clients::new(&channel, Bearer::new(Some(secret.trim()))?);

    let imports = args.records.div_ceil(ROWS_PER_IMPORT);
    let loading = Instant::now();
    for a in 0..imports {
        let account = format!("acct{a:05}");
        clients
            .provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: account.clone(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await?;
        let rows = (0..ROWS_PER_IMPORT)
            .map(|u| pb::UserRow {
                account_id: account.clone(),
                user_id: format!("u{u:05}"),
                edition: "X8".into(),
                analytics_tier: pb::AnalyticsTier::Essentials as i32,
                ..Default::default()
            })
            .collect();
        let imported = clients
            .provisioning
            .clone()
            .import_users(pb::ImportUsersRequest {
                rows,
                ..Default::default()
            })
            .await?
            .into_inner();
        if !imported.errors.is_empty() {
            return Err(format!("import refused rows: {:?}", imported.errors[0]).into());
        }
    }
    let records = imports * (ROWS_PER_IMPORT + 1);
    println!(
        "loaded {records} audit records ({imports} accounts of {ROWS_PER_IMPORT} users) in {:.1} s",
        loading.elapsed().as_secs_f64()
    );
    // Every record so far is now older than the retention.
    now.fetch_add(2 * HOUR.as_secs(), Ordering::Relaxed);
    let size_before = size(dir, database).await?;

    let baseline = writes(&clients, args, imports, None).await;
    let running = Arc::new(AtomicBool::new(true));
    let pass = {
        let running = Arc::clone(&running);
        let pruner = pruner.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let report = pruner.pass().await;
            running.store(false, Ordering::Release);
            (report, started.elapsed())
        })
    };
    let during = writes(&clients, args, imports, Some(running)).await;
    let (report, took) = pass.await?;
    let report = report?;
    let size_after = size(dir, database).await?;

    println!();
    println!(
        "pruned {} records in {} batches of up to {} (pause {:?}, busy at most {} %) in {:.2} s: {:.0} records/s",
        report.records,
        report.batches,
        args.batch,
        args.pause,
        args.busy_percent,
        took.as_secs_f64(),
        report.records as f64 / took.as_secs_f64()
    );
    println!(
        "| writes ({} clients) | calls/s | p50 ms | p99 ms | errors |",
        args.writers
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, s) in [("without pruning", &baseline), ("while pruning", &during)] {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} |",
            s.rps(),
            s.percentile_us(0.5) / 1000.0,
            s.percentile_us(0.99) / 1000.0,
            s.errors
        );
    }
    println!();
    println!("| store size | MiB |");
    println!("|---|---:|");
    println!("| before pruning | {:.1} |", mib(size_before));
    println!("| after pruning | {:.1} |", mib(size_after));
    if let Some(db) = database {
        let admin = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
        tokio::spawn(admin.1);
        admin.0.batch_execute("VACUUM entitled_audit").await?;
        println!(
            "| after VACUUM entitled_audit | {:.1} |",
            mib(size(dir, database).await?)
        );
        admin.0.batch_execute("VACUUM FULL entitled_audit").await?;
        println!(
            "| after VACUUM FULL entitled_audit | {:.1} |",
            mib(size(dir, database).await?)
        );
    }
    let _ = stop.send(());
    server.await??;
    if database.is_none() {
        // sled writes its last segments at a stop.
        println!("| after a stop | {:.1} |", mib(size(dir, None).await?));
    }
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The store's size: sled's files in `dir`, or the audit table (with its
/// indexes and TOAST) and the whole database.
async fn size(dir: &Path, database: Option<&postgres::Database>) -> Result<u64, BoxError> {
    match database {
        None => Ok(dir_size(dir)?),
        Some(db) => {
            let (client, connection) =
                tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await?;
            Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
        }
    }
}

fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// `writers` clients flipping the tier of users of the loaded accounts,
/// for `duration`, or (with `until`) for as long as it stays true.
async fn writes(
    clients: &Clients,
    args: &PruneArgs,
    accounts: usize,
    until: Option<Arc<AtomicBool>>,
) -> Stats {
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let mut client = clients.provisioning.clone();
        let until = until.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut pass = 0usize;
            loop {
                let go_on = match &until {
                    Some(flag) => flag.load(Ordering::Acquire),
                    None => Instant::now() < deadline,
                };
                if !go_on {
                    break;
                }
                let tier = if pass.is_multiple_of(2) {
                    pb::AnalyticsTier::Supervisor
                } else {
                    pb::AnalyticsTier::Essentials
                };
                let call = Instant::now();
                let answer = client
                    .update_user_services(pb::UpdateUserServicesRequest {
                        account_id: format!("acct{:05}", w % accounts.max(1)),
                        user_id: format!("u{:05}", w),
                        edition: None,
                        analytics_tier: Some(tier as i32),
                        expected_revision: None,
                        request_id: String::new(),
                        supervisor_scope: None,
                    })
                    .await;
                latencies.push(u64::try_from(call.elapsed().as_nanos()).unwrap_or(u64::MAX));
                errors += u64::from(answer.is_err());
                pass += 1;
            }
            (latencies, errors)
        }));
    }
    let mut stats = Stats::default();
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            stats.calls += latencies.len() as u64;
            stats.errors += errors;
            stats.latencies.extend(latencies);
        }
    }
    stats.elapsed = started.elapsed();
    stats.latencies.sort_unstable();
    stats
}
