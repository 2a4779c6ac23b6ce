//! The command line: the run's flags, and the hidden roles of the child
//! processes the run starts.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "entitled-bench",
    about = "Load generator: entitled against a baseline tonic server",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Option<Role>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// Users loaded for the throughput and latency runs.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Users loaded for the large-store figures (memory, restart, throughput
    /// at scale); 0 skips them.
    #[arg(long, default_value_t = 1_000_000)]
    pub big_users: usize,
    /// Users per account.
    #[arg(long, default_value_t = 100)]
    pub users_per_account: usize,
    /// Concurrency levels (calls in flight) for the check runs.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub concurrency: Vec<usize>,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Measured time of each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub duration: Duration,
    /// Rounds of each check figure (baseline and entitled alternate); the
    /// median round is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Unmeasured time before each run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Items per BatchCheckAnalyticsAccess.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Batches in flight.
    #[arg(long, default_value_t = 4)]
    pub batch_concurrency: usize,
    /// Concurrent clients for the durable UpdateUserServices run.
    #[arg(long, default_value_t = 64)]
    pub write_clients: usize,
    /// Core the servers are pinned to.
    #[arg(long, default_value_t = 0)]
    pub server_core: usize,
    /// Core the load generator is pinned to.
    #[arg(long, default_value_t = 1)]
    pub client_core: usize,
    /// Do not pin (no `taskset`).
    #[arg(long)]
    pub no_pin: bool,
    /// Instead of the figures above, measure PostgreSQL-backed replicas
    /// against sled (issue 11's table) on this server, whose user may
    /// create databases (one is made for the run and dropped after).
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Only the storage figures: durable writes, and memory and restart
    /// with `--big-users` (no baseline, checks, batches or Watch).
    #[arg(long)]
    pub storage_only: bool,
}

#[derive(Subcommand)]
pub enum Role {
    /// Counts the servers' user-space instructions per call under valgrind's
    /// callgrind: the baseline and entitled, the same calls in one run.
    Callgrind(CallgrindArgs),
    /// Issue 12's check rows as the issue measured them: h2load (nghttp2's
    /// load generator) on one connection against the baseline and entitled,
    /// alternating, a token on every call.
    H2load(H2loadArgs),
    /// Times MigrateAccount: one Virtual Office account of N users moved
    /// to X Series in one write, on sled and (with --postgres) PostgreSQL.
    Migrate(MigrateArgs),
    /// Prunes a large audit trail (audit retention) while writes run, and
    /// compares the writes with a baseline without pruning in the same run.
    Prune(PruneArgs),
    /// (internal) Writes a store of N users into DIR.
    #[command(hide = true)]
    Load {
        #[arg(long)]
        dir: PathBuf,
        /// A database to load instead of the sled store in DIR.
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        users: usize,
        #[arg(long)]
        users_per_account: usize,
        /// Accounts on `virtual-office`, with its editions (for `migrate`).
        #[arg(long)]
        legacy: bool,
    },
    /// (internal) Opens sled's files in DIR/db and reads every user record
    /// without decoding it: the floor under a start's load of the view.
    #[command(hide = true)]
    SledScan {
        #[arg(long)]
        dir: PathBuf,
        /// sled's page cache, MiB (the store's is 16).
        #[arg(long, default_value_t = 16)]
        cache_mib: u64,
    },
    /// (internal) Serves until SIGTERM or until stdin closes; logs
    /// `serving addr=ADDR` on stderr when bound.
    #[command(hide = true)]
    Serve {
        #[arg(long, value_enum)]
        kind: Kind,
        /// entitled: the data directory (with a database, where the
        /// operator token is written); baseline: unused.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// entitled: a database to serve instead of the sled store in DIR.
        #[arg(long)]
        store: Option<String>,
        /// baseline: the users its map holds.
        #[arg(long, default_value_t = 0)]
        users: usize,
        #[arg(long, default_value_t = 100)]
        users_per_account: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Baseline,
    Entitled,
}

#[derive(clap::Args, Clone)]
pub struct H2loadArgs {
    /// Users loaded into both servers.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    #[arg(long, default_value_t = 100)]
    pub users_per_account: usize,
    /// Streams in flight on the one connection.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub concurrency: Vec<usize>,
    /// Measured seconds of each run (h2load's `-D`), after one second of
    /// warm-up.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Rounds of each figure (baseline and entitled alternate); the median
    /// round is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long, default_value_t = 0)]
    pub server_core: usize,
    #[arg(long, default_value_t = 1)]
    pub client_core: usize,
    /// Durable writes a second for the rounds of checks with writes (issue
    /// 12's "check p99 while 1,000 writes/s"); 0 leaves those rounds out.
    #[arg(long, default_value_t = 1000)]
    pub writes_per_second: u64,
}

#[derive(clap::Args, Clone)]
pub struct CallgrindArgs {
    /// Users loaded into both servers.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    #[arg(long, default_value_t = 100)]
    pub users_per_account: usize,
    /// Measured calls to each server.
    #[arg(long, default_value_t = 20_000)]
    pub calls: u64,
    /// Unmeasured calls first.
    #[arg(long, default_value_t = 2_000)]
    pub warmup_calls: u64,
    /// Calls in flight.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Where callgrind's files are written (for `callgrind_annotate`).
    #[arg(long, default_value = "target/callgrind")]
    pub out: PathBuf,
    /// Baseline calls without entitled's token (by default they carry it,
    /// so that both servers get the same calls).
    #[arg(long)]
    pub bare_baseline: bool,
    /// Core the servers are pinned to (one tokio worker, as in the run).
    #[arg(long, default_value_t = 0)]
    pub server_core: usize,
    /// Do not pin (no `taskset`).
    #[arg(long)]
    pub no_pin: bool,
    /// Instead of single checks, count entitled's BatchCheckAnalyticsAccess
    /// of this many users per call (no baseline): instructions per
    /// user-check, for the batch row's profile.
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
    /// With `--batch-size`, answers without their reports
    /// (`entitled-omit-reports`).
    #[arg(long)]
    pub omit_reports: bool,
}

#[derive(clap::Args, Clone)]
pub struct MigrateArgs {
    /// Users of the one account moved.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Also on a database made (and dropped) on this server, whose user
    /// may create databases.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}

#[derive(clap::Args, Clone)]
pub struct PruneArgs {
    /// Audit records written before pruning (rounded up to whole imports of
    /// 5,000 users, each with its account's record).
    #[arg(long, default_value_t = 1_000_000)]
    pub records: usize,
    /// Records deleted per pruning batch (the server's default).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// The least pause between pruning batches.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    pub pause: Duration,
    /// The most of a pass's time spent in batches (the server's default).
    #[arg(long, default_value_t = 10)]
    pub busy_percent: u32,
    /// Concurrent UpdateUserServices clients.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// How long the baseline writes (without pruning) run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Where the sled store's directory is made (default: here).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Prune a new database on this PostgreSQL server (made for the run and
    /// dropped after) instead of sled.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
}
