//! The report: each figure against its target (the table), and a
//! line per run. Every word the bench prints on stdout is here.

use std::time::Duration;

use crate::stats::{Stats, WatchRun, percentile};

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
    [
        Row {
            figure: format!("check throughput vs baseline, concurrency {c}"),
            target: "≥ 0.90",
            measured: format!(
                "{ratio:.3} ({:.0} / {:.0} calls/s; server CPU per call {:.2} of the baseline's)",
                e.rps(),
                b.rps(),
                e.cpu_us_per_call() / b.cpu_us_per_call()
            ),
            met: Some(ratio >= 0.90),
        },
        Row {
            figure: format!("check p99 vs baseline p99, concurrency {c}"),
            target: "≤ 1.25",
            measured: format!(
                "{p99:.3} ({:.0} / {:.0} µs)",
                e.percentile_us(0.99),
                b.percentile_us(0.99)
            ),
            met: Some(p99 <= 1.25),
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

/// Resident memory (MiB) with `big` users, and with `small` for comparison.
pub fn memory(big: usize, rss: Option<f64>, small: usize, small_rss: Option<f64>) -> Row {
    Row {
        figure: format!("resident memory with {big} users loaded"),
        target: "≤ 400 MB",
        measured: match rss {
            Some(mib) => format!(
                "{:.0} MB (VmRSS; {:.0} MB with {small} users)",
                mib * 1.048_576,
                small_rss.unwrap_or(f64::NAN) * 1.048_576,
            ),
            None => "unknown (no /proc)".to_owned(),
        },
        met: rss.map(|mib| mib * 1.048_576 <= 400.0),
    }
}

pub fn restart(big: usize, to_serving: Duration) -> Row {
    Row {
        figure: format!("restart to SERVING with {big} users"),
        target: "≤ 5 s",
        measured: format!("{:.2} s", to_serving.as_secs_f64()),
        met: Some(to_serving <= Duration::from_secs(5)),
    }
}

pub fn durable_writes(clients: usize, writes: &Stats) -> Row {
    Row {
        figure: format!("durable UpdateUserServices, {clients} concurrent clients"),
        target: "≥ 10,000 per second",
        measured: format!("{:.0} per second", writes.rps()),
        met: Some(writes.rps() >= 10_000.0),
    }
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
        "| {name} | {in_flight} | {:.0} | {:.0} | {:.0} | {:.1} |",
        s.rps(),
        s.percentile_us(0.50),
        s.percentile_us(0.99),
        s.cpu_us_per_call()
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
    println!("| run | in flight | calls/s | p50 µs | p99 µs | server CPU µs/call |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for line in detail {
        println!("{line}");
    }
}
