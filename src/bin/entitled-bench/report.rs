//! The report: each figure against its target (the table), and a
//! line per run. Every word the bench prints on stdout is here.

use std::time::Duration;

use crate::{
    drivers::DiskSyncs,
    stats::{Stats, WatchRun, percentile},
};

/// One figure of the table.
pub struct Row {
    figure: String,
    target: &'static str,
    measured: String,
    met: Option<bool>,
}

/// Check throughput and p99 of entitled (`e`) against the baseline (`b`) at
/// `c` calls in flight.
pub fn checks_vs_baseline(c: usize, b: &Stats, e: &Stats) -> [Row; 2] {
    let ratio = e.rps() / b.rps();
    let p99 = e.percentile_us(0.99) / b.percentile_us(0.99);
    // No target here: this client decodes every answer on its one core, so
    // entitled's larger answer makes the client part of what is measured.
    // Issue 12's rows are measured as the issue did, with h2load
    // (`entitled-bench h2load`).
    [
        Row {
            figure: format!(
                "check throughput vs baseline, concurrency {c} (this client; the issue's rows: `entitled-bench h2load`)"
            ),
            target: "",
            measured: format!(
                "{ratio:.3} ({:.0} / {:.0} calls/s; server CPU per call {:.2} of the baseline's)",
                e.rps(),
                b.rps(),
                e.cpu_us_per_call() / b.cpu_us_per_call()
            ),
            met: None,
        },
        Row {
            figure: format!(
                "check p99 vs baseline p99, concurrency {c} (this client; the issue's rows: `entitled-bench h2load`)"
            ),
            target: "",
            measured: format!(
                "{p99:.3} ({:.0} / {:.0} µs)",
                e.percentile_us(0.99),
                b.percentile_us(0.99)
            ),
            met: None,
        },
    ]
}

/// Check p99 with writes applied beside them (`busy`) against the same
/// checks idle; `written` writes acknowledged over `rounds` rounds.
pub fn checks_while_writing(
    c: usize,
    idle: &Stats,
    busy: &Stats,
    written: u64,
    rounds: usize,
) -> Row {
    let p99 = busy.percentile_us(0.99) / idle.percentile_us(0.99);
    Row {
        figure: format!("check p99 while 1,000 writes/s are applied vs idle, concurrency {c}"),
        target: "≤ 1.25",
        measured: format!(
            "{p99:.3} ({:.0} / {:.0} µs; {:.0} / {:.0} checks/s; {written} writes acknowledged in {rounds} rounds)",
            busy.percentile_us(0.99),
            idle.percentile_us(0.99),
            busy.rps(),
            idle.rps(),
        ),
        met: Some(p99 <= 1.25),
    }
}

pub fn batches(batch_size: usize, answers: &str, batches: &Stats) -> Row {
    Row {
        figure: format!(
            "batch of {batch_size} users ({answers}), user-checks per second on one core"
        ),
        target: "≥ 1,000,000",
        measured: format!(
            "{:.0} (server CPU {:.2} µs per user-check: {:.0} per second at a full core)",
            batches.items_per_s(),
            batches.cpu_us_per_call() / batch_size as f64,
            1e6 * batch_size as f64 / batches.cpu_us_per_call()
        ),
        met: Some(batches.items_per_s() >= 1_000_000.0),
    }
}

/// Check throughput on the large store (`big` users, `s`) against the small
/// one (`small` users, `small_s`) at `c` calls in flight.
pub fn big_vs_small(c: usize, big: usize, s: &Stats, small: usize, small_s: &Stats) -> Row {
    let ratio = s.rps() / small_s.rps();
    Row {
        figure: format!("check throughput at {big} users vs {small} users (concurrency {c})"),
        target: "≥ 0.90",
        measured: format!(
            "{ratio:.3} ({:.0} / {:.0} calls/s; server CPU per call {:.2} of the small store's)",
            s.rps(),
            small_s.rps(),
            s.cpu_us_per_call() / small_s.cpu_us_per_call()
        ),
        met: Some(ratio >= 0.90),
    }
}

/// One start of the big store, as the server measured and logged it.
pub struct Start {
    pub to_serving: Duration,
    pub cpu: Option<Duration>,
    pub rss_mib: Option<f64>,
    /// Whether its view was built from the view checkpoint.
    pub from_checkpoint: bool,
    /// The "store opened" line's parts of opening the store.
    pub sled_ms: Option<u64>,
    pub watermark_ms: Option<u64>,
    pub view_ms: Option<u64>,
}

impl Start {
    /// Where the store's opening went, as logged.
    fn opening(&self) -> String {
        let ms = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        format!(
            "opening sled {} ms, the watermark check {} ms, the view {} ms",
            ms(self.sled_ms),
            ms(self.watermark_ms),
            ms(self.view_ms)
        )
    }
}

impl std::fmt::Display for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} s to SERVING, CPU {:.2} s, VmRSS {:.0} MiB, {}, from_checkpoint={}",
            self.to_serving.as_secs_f64(),
            self.cpu.map_or(f64::NAN, |c| c.as_secs_f64()),
            self.rss_mib.unwrap_or(f64::NAN),
            self.opening(),
            self.from_checkpoint
        )
    }
}

/// Resident memory with `big` users after the median start from the view
/// checkpoint (`warm`) and after the median start that read sled (`cold`);
/// the target holds for the larger. With `small` users for comparison.
pub fn memory(big: usize, warm: &Start, cold: &Start, small: usize, small_rss: Option<f64>) -> Row {
    let mb = |mib: Option<f64>| mib.map(|m| m * 1.048_576);
    let worst = match (mb(warm.rss_mib), mb(cold.rss_mib)) {
        (Some(w), Some(c)) => Some(w.max(c)),
        _ => None,
    };
    Row {
        figure: format!("resident memory with {big} users loaded"),
        target: "≤ 250 MB",
        measured: match worst {
            Some(_) => format!(
                "{:.0} MB after a restart from the view checkpoint, {:.0} MB after a start that read sled (VmRSS; {:.0} MB with {small} users)",
                mb(warm.rss_mib).unwrap_or(f64::NAN),
                mb(cold.rss_mib).unwrap_or(f64::NAN),
                mb(small_rss).unwrap_or(f64::NAN),
            ),
            None => "unknown (no /proc)".to_owned(),
        },
        met: worst.map(|mb| mb <= 250.0),
    }
}

/// The median start after a graceful stop, which builds its view from the
/// checkpoint that stop wrote; `stop` is the median graceful stop's time.
pub fn restart(big: usize, warm: &Start, stop: Duration) -> Row {
    Row {
        figure: format!("restart to SERVING with {big} users (after a graceful stop)"),
        target: "≤ 1 s",
        measured: format!(
            "{:.2} s (server CPU {:.2} s; {}; the graceful stop before it, which writes the view checkpoint: {:.2} s)",
            warm.to_serving.as_secs_f64(),
            warm.cpu.map_or(f64::NAN, |c| c.as_secs_f64()),
            warm.opening(),
            stop.as_secs_f64(),
        ),
        met: Some(warm.to_serving <= Duration::from_secs(1)),
    }
}

/// The median start after a crash: no checkpoint, so sled's users are
/// read. `scan` is the `sled-scan` child's line: sled's own open and read
/// of the users, the floor under such a start. No target.
pub fn cold_start(big: usize, cold: &Start, scan: &str) -> Row {
    let field = |name: &str| {
        scan.split_whitespace()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |ms| ms / 1e3)
    };
    Row {
        figure: format!("start to SERVING with {big} users after a crash (no checkpoint)"),
        target: "",
        measured: format!(
            "{:.2} s (server CPU {:.2} s; {}; sled alone, opening and reading the users undecoded: {:.2} s, CPU {:.2} s)",
            cold.to_serving.as_secs_f64(),
            cold.cpu.map_or(f64::NAN, |c| c.as_secs_f64()),
            cold.opening(),
            field("open_ms") + field("scan_ms"),
            field("open_cpu_ms") + field("scan_cpu_ms"),
        ),
        met: None,
    }
}

pub fn durable_writes(clients: usize, writes: &Stats, disk: &DiskSyncs) -> [Row; 2] {
    let syncs = disk.latencies.len() as f64 / disk.elapsed.as_secs_f64();
    [
        Row {
            figure: format!("durable UpdateUserServices, {clients} concurrent clients"),
            target: "≥ 10,000 per second",
            measured: format!(
                "{:.0} per second (server CPU {:.1} µs per write)",
                writes.rps(),
                writes.cpu_us_per_call()
            ),
            met: Some(writes.rps() >= 10_000.0),
        },
        Row {
            figure: "the disk: 4 KiB write + fdatasync, one after another".to_owned(),
            target: "",
            measured: format!(
                "{syncs:.0} per second (p50 {:.0} µs, p99 {:.0} µs)",
                percentile(&disk.latencies, 0.5) as f64 / 1e3,
                percentile(&disk.latencies, 0.99) as f64 / 1e3,
            ),
            met: None,
        },
    ]
}

pub fn watch(watch: &WatchRun) -> Row {
    let p99 = Duration::from_nanos(percentile(&watch.latencies, 0.99));
    Row {
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
    }
}

/// A line of the table of runs.
pub fn detail_row(name: &str, in_flight: usize, s: &Stats) -> String {
    format!(
        "| {name} | {in_flight} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
        s.rps(),
        s.percentile_us(0.50),
        s.percentile_us(0.99),
        s.cpu_us_per_call(),
        s.machine_us_per_call()
    )
}

/// The load average (1, 5, 15 min): other work on the machine skews every
/// figure, so the report says how much there was.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Prints the report on stdout.
pub fn print(load_before: &str, rows: &[Row], detail: &[String]) {
    println!(
        "Load average (1, 5, 15 min) before: {load_before}; after: {}.",
        load_average()
    );
    println!();
    println!("| figure | target | measured | met |");
    println!("| --- | --- | --- | --- |");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        println!("| {} | {} | {} | {met} |", r.figure, r.target, r.measured);
    }
    println!();
    println!(
        "| run | in flight | calls/s | p50 µs | p99 µs | server CPU µs/call | machine CPU µs/call |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for line in detail {
        println!("{line}");
    }
}

/// Issue 11: checks on a PostgreSQL-backed replica against sled's.
pub fn postgres_checks(c: usize, pg: &Stats, sled: &Stats) -> Row {
    let ratio = pg.rps() / sled.rps();
    Row {
        figure: format!("check throughput, PostgreSQL replica vs sled, concurrency {c}"),
        target: "≥ 0.95",
        measured: format!("{ratio:.2} ({:.0} vs {:.0} calls/s)", pg.rps(), sled.rps()),
        met: Some(ratio >= 0.95),
    }
}

/// Issue 11: durable writes on one PostgreSQL replica against sled's.
pub fn postgres_writes(clients: usize, pg: &Stats, sled: &Stats) -> Row {
    let ratio = pg.rps() / sled.rps();
    Row {
        figure: format!("durable writes/s, {clients} clients, PostgreSQL 1 replica vs sled"),
        target: "≥ 1.0",
        measured: format!(
            "{ratio:.2} ({:.0} vs {:.0} per second; the machine's CPU per write {:.0} vs {:.0} µs)",
            pg.rps(),
            sled.rps(),
            pg.machine_us_per_call(),
            sled.machine_us_per_call()
        ),
        met: Some(ratio >= 1.0),
    }
}

/// Issue 11: durable writes spread over several replicas.
pub fn replicas_writes(
    clients: usize,
    replicas: usize,
    total: f64,
    machine_us: f64,
    one: &Stats,
) -> Row {
    Row {
        figure: format!("durable writes/s, {clients} clients spread over {replicas} replicas"),
        target: "≥ the 1-replica figure",
        measured: format!(
            "{total:.0} per second (1 replica: {:.0}); the machine's CPU per write {machine_us:.0} µs (1 replica: {:.0} µs)",
            one.rps(),
            one.machine_us_per_call()
        ),
        met: Some(total >= one.rps()),
    }
}

/// Issue 11: a write acknowledged on one replica, to its change on
/// another's Watch.
pub fn replication_lag(lag: &WatchRun) -> Row {
    let p99 = Duration::from_nanos(percentile(&lag.latencies, 0.99));
    Row {
        figure: "replication lag, acknowledged on A to visible on B, p99, at 1,000 writes/s"
            .to_owned(),
        target: "≤ 50 ms",
        measured: format!(
            "{:.1} ms (p50 {:.1} ms; {} of {} writes seen, {:.0} writes/s)",
            p99.as_secs_f64() * 1e3,
            Duration::from_nanos(percentile(&lag.latencies, 0.5)).as_secs_f64() * 1e3,
            lag.latencies.len(),
            lag.writes,
            lag.writes as f64 / lag.elapsed.as_secs_f64(),
        ),
        met: Some(p99 <= Duration::from_millis(50) && lag.latencies.len() as u64 == lag.writes),
    }
}

/// Issue 11: a replica's start on a large database.
pub fn replica_start(users: usize, to_serving: Duration, rss: Option<f64>) -> Row {
    Row {
        figure: format!("replica start to SERVING with {users} users in PostgreSQL"),
        target: "≤ 10 s",
        measured: format!(
            "{:.2} s (RSS {})",
            to_serving.as_secs_f64(),
            rss.map_or_else(|| "unknown".to_owned(), |r| format!("{r:.0} MiB"))
        ),
        met: Some(to_serving <= Duration::from_secs(10)),
    }
}
