//! What a run measured, and the arithmetic on it: rates, percentiles, the
//! median round, and the server's CPU time.

use std::{process::Command, sync::OnceLock, time::Duration};

#[derive(Default)]
pub struct Stats {
    pub calls: u64,
    pub items: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// CPU time the server process used during the measured window.
    pub server_cpu: Option<Duration>,
    /// CPU time the whole machine was busy (every process, every core,
    /// PostgreSQL and the load generator included) during the window.
    pub machine_cpu: Option<Duration>,
    /// Per-call latencies, nanoseconds, sorted.
    pub latencies: Vec<u64>,
}

impl Stats {
    pub fn rps(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }
    pub fn items_per_s(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }
    /// Server CPU per call, microseconds.
    pub fn cpu_us_per_call(&self) -> f64 {
        match self.server_cpu {
            Some(cpu) if self.calls > 0 => cpu.as_secs_f64() * 1e6 / self.calls as f64,
            _ => f64::NAN,
        }
    }
    /// The whole machine's CPU per call, microseconds.
    pub fn machine_us_per_call(&self) -> f64 {
        match self.machine_cpu {
            Some(cpu) if self.calls > 0 => cpu.as_secs_f64() * 1e6 / self.calls as f64,
            _ => f64::NAN,
        }
    }
    pub fn percentile_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)] as f64 / 1000.0
    }
}

/// What the watch run measured.
pub struct WatchRun {
    pub writes: u64,
    pub elapsed: Duration,
    /// Send-to-event latency of each write, nanoseconds, sorted.
    pub latencies: Vec<u64>,
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The run whose calls/s is the median of `runs` (they are interleaved
/// with the other server's, so drift on a shared machine hits both).
pub fn median(mut runs: Vec<Stats>) -> Stats {
    runs.sort_by(|a, b| a.rps().total_cmp(&b.rps()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// User + system CPU time of process `pid` so far (Linux `/proc`).
pub fn cpu_time(pid: u32) -> Option<Duration> {
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

/// CPU time the machine has spent busy since boot, all cores: user, nice,
/// system, irq and softirq (not idle, I/O wait or time stolen by the host).
pub fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied())
        .sum::<Option<u64>>()?;
    Some(Duration::from_secs_f64(busy as f64 / clock_ticks()))
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
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
