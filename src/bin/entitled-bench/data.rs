//! The data set both servers hold, and the `load` child that writes it into
//! a store.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use entitled::{
    domain::{Account, AccountId, SupervisorScope, Tier, User, UserId},
    store::{Location, Store},
};

use crate::{BoxError, stats::cpu_time};

pub fn account_name(a: usize) -> String {
    format!("acct{a}")
}

pub fn user_name(u: usize) -> String {
    format!("user{u}")
}

/// User `i`'s account, and its services: a quarter each X8 Supervisor, X4
/// Supervisor, X2 Essentials, and X1 without analytics.
pub fn services(i: usize) -> (&'static str, Tier) {
    match i % 4 {
        0 => ("X8", Tier::Supervisor),
        1 => ("X4", Tier::Supervisor),
        2 => ("X2", Tier::Essentials),
        _ => ("X1", Tier::None),
    }
}

/// The X8 Supervisor users among the first `users` (see `services`): the
/// ones the write runs flip between Essentials and Supervisor.
pub fn x8_users(users: usize) -> Vec<usize> {
    (0..users).step_by(4).collect()
}

/// The `load` child: writes `users` users into a store at `dir` with the
/// store's bulk import, which bypasses the RPCs and the catalogue's rules
/// (the records are valid by construction).
pub fn load(
    dir: &Path,
    database: Option<&str>,
    users: usize,
    per_account: usize,
) -> Result<(), BoxError> {
    std::fs::create_dir_all(dir)?;
    // A runtime for a database's connections; the import itself blocks, so
    // it runs on a blocking thread of it.
    let runtime = tokio::runtime::Runtime::new()?;
    let location = match database {
        Some(url) => Location::Postgres(url.to_owned()),
        None => Location::Sled(dir.to_path_buf()),
    };
    let store = runtime.block_on(Store::open_at(&location))?;
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
                supervisor_scope: (tier == Tier::Supervisor)
                    .then_some(SupervisorScope::WholeAccount),
            })
        })
        .collect::<Result<Vec<_>, BoxError>>()?;
    runtime.block_on(async move {
        tokio::task::spawn_blocking(move || store.import(accounts, records))
            .await
            .map_err(BoxError::from)?
            .map_err(BoxError::from)
    })?;
    Ok(())
}

/// The `sled-scan` child: sled opened on the store's files (with the
/// store's cache size) and its `users` tree read whole, each record
/// touched but not decoded; prints the time and CPU time of each step. The
/// store does this and more (decoding, the view) at every start, so it is
/// the floor of a start with sled. Reads only: the store must be stopped.
pub fn sled_scan(dir: &Path, cache_mib: u64) -> Result<(), BoxError> {
    let cpu = || cpu_time(std::process::id()).unwrap_or_default();
    let (began, cpu_began) = (Instant::now(), cpu());
    let db = sled::Config::new()
        .path(dir.join("db"))
        .cache_capacity(cache_mib * 1024 * 1024)
        .open()?;
    let users = db.open_tree("users")?;
    let (opened, cpu_opened) = (began.elapsed(), cpu());
    let (mut records, mut bytes) = (0u64, 0u64);
    for item in users.iter() {
        let (key, value) = item?;
        records += 1;
        bytes += (key.len() + value.len()) as u64;
    }
    let (scanned, cpu_scanned) = (began.elapsed(), cpu());
    println!(
        "sled-scan records={records} bytes={bytes} open_ms={} open_cpu_ms={} scan_ms={} scan_cpu_ms={}",
        opened.as_millis(),
        (cpu_opened - cpu_began).as_millis(),
        (scanned - opened).as_millis(),
        (cpu_scanned - cpu_opened).as_millis(),
    );
    Ok(())
}

/// Runs the `sled-scan` child on `dir` (pinned to `pin`): its line.
pub fn run_sled_scan(dir: &Path, pin: Option<usize>) -> Result<String, BoxError> {
    let exe = std::env::current_exe()?;
    let mut command = match pin {
        Some(core) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let out = command.arg("sled-scan").arg("--dir").arg(dir).output()?;
    if !out.status.success() {
        return Err(format!("sled-scan failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs the `load` child for `users` users into `dir`; how long it took.
pub fn load_store(dir: &Path, users: usize, per_account: usize) -> Result<Duration, BoxError> {
    load_into(dir, None, users, per_account)
}

/// Runs the `load` child for `users` users into `database`, or the sled
/// store in `dir`; how long it took.
pub fn load_into(
    dir: &Path,
    database: Option<&str>,
    users: usize,
    per_account: usize,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("load").arg("--dir").arg(dir);
    if let Some(url) = database {
        command.args(["--store", url]);
    }
    let status = command
        .args(["--users", &users.to_string()])
        .args(["--users-per-account", &per_account.to_string()])
        .status()?;
    if !status.success() {
        return Err(format!("loading {users} users failed: {status}").into());
    }
    Ok(started.elapsed())
}
