//! `--postgres URL`: issue 11's figures. PostgreSQL-backed replicas against
//! a sled server holding the same users, in one run: checks (both answer
//! from memory), durable writes on one replica and spread over three, the
//! replication lag from one replica to another, and a replica's start on a
//! database of `--big-users` users. Each database is made for the run and
//! dropped after.

use std::str::FromStr;

use tokio_postgres::NoTls;

use crate::{
    BoxError,
    cli::RunArgs,
    data::load_into,
    drivers::{
        Since, change_latency, clients_of_part, entitled_checks, entitled_writes,
        entitled_writes_part,
    },
    report::{self, detail_row},
    servers::{Launch, ServerProcess, WriteLock},
    stats::median,
};

/// A database made for the run on the server at `admin_url`; dropped with
/// `drop_database`.
pub struct Database {
    pub url: String,
    pub name: String,
}

pub async fn admin(admin_url: &str) -> Result<tokio_postgres::Client, BoxError> {
    let (client, connection) = tokio_postgres::connect(admin_url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

pub async fn create_database(admin_url: &str, what: &str) -> Result<Database, BoxError> {
    let name = format!("entitled_bench_{what}_{}", std::process::id());
    let client = admin(admin_url).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .await?;
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let mut config = tokio_postgres::Config::from_str(admin_url)?;
    config.dbname(&name);
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    let password = config
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    Ok(Database {
        url: format!("postgres://{user}{password}@{host}:{port}/{name}"),
        name,
    })
}

pub async fn drop_database(admin_url: &str, db: &Database) -> Result<(), BoxError> {
    admin(admin_url)
        .await?
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
        .await?;
    Ok(())
}

pub async fn run(
    args: &RunArgs,
    server_pin: Option<usize>,
    admin_url: &str,
) -> Result<(), BoxError> {
    let load_before = report::load_average();
    let tmp = tempfile::tempdir()?;
    let db = create_database(admin_url, "small").await?;
    let result = small_store_figures(args, server_pin, &db, tmp.path()).await;
    drop_database(admin_url, &db).await?;
    let (mut rows, detail, lock) = result?;
    if args.big_users > 0 {
        let big = create_database(admin_url, "big").await?;
        let result = big_store_figure(args, server_pin, &big, tmp.path()).await;
        drop_database(admin_url, &big).await?;
        rows.push(result?);
    }
    report::print(&load_before, &rows, &detail);
    println!();
    println!(
        "| write lock, each replica | batches | writes per batch | waited for the lock, mean ms | held it, mean ms |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for line in lock {
        println!("{line}");
    }
    Ok(())
}

async fn small_store_figures(
    args: &RunArgs,
    pin: Option<usize>,
    db: &Database,
    tmp: &std::path::Path,
) -> Result<(Vec<report::Row>, Vec<String>, Vec<String>), BoxError> {
    let launch = Launch::pinned(pin);
    let (mut rows, mut detail, mut lock) = (Vec::new(), Vec::new(), Vec::new());
    let sled_dir = tmp.join("sled");
    let took = load_into(&sled_dir, None, args.users, args.users_per_account)?;
    eprintln!("sled: {} users loaded in {took:?}", args.users);
    let dirs: Vec<_> = (0..3).map(|i| tmp.join(format!("replica{i}"))).collect();
    let took = load_into(&dirs[0], Some(&db.url), args.users, args.users_per_account)?;
    eprintln!("PostgreSQL: {} users loaded in {took:?}", args.users);
    let sled = ServerProcess::entitled(&launch, &sled_dir).await?;
    let a = ServerProcess::replica(&launch, &dirs[0], Some(&db.url), &dirs[0]).await?;
    let b = ServerProcess::replica(&launch, &dirs[1], Some(&db.url), &dirs[0]).await?;

    // First, while every write it makes is a change (the write runs below
    // flip the same users back and forth).
    eprintln!("replication lag at 1,000 writes/s: written on replica 1, watched on replica 2");
    let lag = change_latency(args, &a, &b, 1000, Since::Acknowledged).await?;

    let c = args.concurrency.iter().copied().max().unwrap_or(64);
    let (mut s_runs, mut p_runs) = (Vec::new(), Vec::new());
    for round in 1..=args.repeat.max(1) {
        eprintln!("concurrency {c}, round {round}: sled, PostgreSQL replica");
        s_runs.push(entitled_checks(args, &sled, args.users, c).await?);
        p_runs.push(entitled_checks(args, &a, args.users, c).await?);
    }
    let (s, p) = (median(s_runs), median(p_runs));
    detail.push(detail_row("sled CheckAnalyticsAccess", c, &s));
    detail.push(detail_row("PostgreSQL replica CheckAnalyticsAccess", c, &p));
    rows.push(report::postgres_checks(c, &p, &s));

    let clients = args.write_clients;
    let (mut s_runs, mut p_runs) = (Vec::new(), Vec::new());
    let before = write_lock(&a).await?;
    for round in 1..=args.repeat.max(1) {
        eprintln!("{clients} write clients, round {round}: sled, PostgreSQL replica");
        s_runs.push(entitled_writes(args, &sled).await?);
        p_runs.push(entitled_writes(args, &a).await?);
    }
    lock.push(
        write_lock(&a)
            .await?
            .since(before)
            .row(&format!("1 replica, {clients} clients, every round")),
    );
    let (s, one) = (median(s_runs), median(p_runs));
    detail.push(detail_row("sled UpdateUserServices (durable)", clients, &s));
    detail.push(detail_row(
        "PostgreSQL 1 replica UpdateUserServices (durable)",
        clients,
        &one,
    ));
    rows.push(report::postgres_writes(clients, &one, &s));
    sled.stop()?;

    let c3 = ServerProcess::replica(&launch, &dirs[2], Some(&db.url), &dirs[0]).await?;
    eprintln!("{clients} write clients over 3 replicas");
    let replicas = [&a, &b, &c3];
    let part_clients = |i: usize| clients_of_part(clients, i, 3).1;
    let mut before = Vec::new();
    for r in replicas {
        before.push(write_lock(r).await?);
    }
    let (ra, rb, rc) = tokio::join!(
        entitled_writes_part(args, &a, 0, 3),
        entitled_writes_part(args, &b, 1, 3),
        entitled_writes_part(args, &c3, 2, 3),
    );
    let mut parts = [ra?, rb?, rc?];
    for (i, (r, before)) in replicas.into_iter().zip(before).enumerate() {
        let row = write_lock(r).await?.since(before);
        lock.push(row.row(&format!(
            "replica {} of 3, {} clients",
            i + 1,
            part_clients(i)
        )));
    }
    // The machine's CPU over the window the three share, per write of all
    // three (each part measured the same machine).
    let calls: u64 = parts.iter().map(|p| p.calls).sum();
    let machine_us = parts[0].machine_cpu.map_or(f64::NAN, |cpu| {
        cpu.as_secs_f64() * 1e6 / calls.max(1) as f64
    });
    for part in &mut parts {
        part.machine_cpu = None;
    }
    for (i, part) in parts.iter().enumerate() {
        detail.push(detail_row(
            &format!("replica {} of 3, UpdateUserServices (durable)", i + 1),
            part_clients(i),
            part,
        ));
    }
    let total: f64 = parts.iter().map(|p| p.rps()).sum();
    rows.push(report::replicas_writes(clients, 3, total, machine_us, &one));
    rows.push(report::replication_lag(&lag));

    for server in [a, b, c3] {
        server.stop()?;
    }
    Ok((rows, detail, lock))
}

/// A replica's write lock so far (its metrics are on in the bench).
async fn write_lock(replica: &ServerProcess) -> Result<WriteLock, BoxError> {
    replica
        .write_lock()
        .await?
        .ok_or_else(|| "a PostgreSQL replica without metrics".into())
}

async fn big_store_figure(
    args: &RunArgs,
    pin: Option<usize>,
    db: &Database,
    tmp: &std::path::Path,
) -> Result<report::Row, BoxError> {
    let launch = Launch::pinned(pin);
    let dir = tmp.join("big");
    eprintln!("PostgreSQL: loading {} users", args.big_users);
    let took = load_into(&dir, Some(&db.url), args.big_users, args.users_per_account)?;
    eprintln!("PostgreSQL: {} users loaded in {took:?}", args.big_users);
    // Its first start makes the operator token, in `dir`.
    let replica = ServerProcess::replica(&launch, &dir, Some(&db.url), &dir).await?;
    let row = report::replica_start(args.big_users, replica.to_serving, replica.rss_mib());
    replica.stop()?;
    Ok(row)
}
