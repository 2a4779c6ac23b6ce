//! Prometheus metrics, served as text on `GET /metrics` of their own
//! listener (`--metrics-listen`).
//!
//! Each server owns its `Registry`: there is no process-global recorder, so
//! several servers can run in one process (as the tests do) without mixing
//! their numbers. Counters and histograms are updated where things happen (the
//! gRPC layer for RPCs and checks, the store through `StoreObserver` for
//! writes and syncs); gauges of the store's contents are read from the store
//! at each scrape. No label carries an account or user id: every label set is
//! bounded.

use std::{future::Future, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::{
    domain::{Decision, Denial},
    store::{StoreError, StoreObserver, StoreStats},
};

/// Latency buckets, in seconds: checks answer in microseconds, durable
/// writes in milliseconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Why the metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("metrics: cannot read the store: {0}")]
    Store(#[from] StoreError),
    #[error("metrics: the text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// The label of a denial reason.
fn denial_label(denial: Denial) -> &'static str {
    match denial {
        Denial::AccountNotFound => "account_not_found",
        Denial::UserNotFound => "user_not_found",
        Denial::NoEdition => "no_edition",
        Denial::AnalyticsNotEnabled => "analytics_not_enabled",
        Denial::EditionNotEligible => "edition_not_eligible",
    }
}

/// One method's and code's series: see [`Metrics::rpc_series`].
#[derive(Clone)]
pub struct RpcSeries {
    count: IntCounter,
    seconds: Histogram,
}

impl RpcSeries {
    /// A finished call that took `took`.
    pub fn observe(&self, took: Duration) {
        self.count.inc();
        self.seconds.observe(took.as_secs_f64());
    }
}

/// The check counters, resolved once: every decision the service makes, so
/// each is exported (as 0) from the start.
struct CheckCounters {
    allowed: IntCounter,
    allowed_lowered: IntCounter,
    account_not_found: IntCounter,
    user_not_found: IntCounter,
    no_edition: IntCounter,
    analytics_not_enabled: IntCounter,
    edition_not_eligible: IntCounter,
}

impl CheckCounters {
    fn new(checks: &IntCounterVec) -> Self {
        let denied = |denial| checks.with_label_values(&["denied", denial_label(denial)]);
        CheckCounters {
            allowed: checks.with_label_values(&["allowed", "none"]),
            allowed_lowered: checks
                .with_label_values(&["allowed", denial_label(Denial::EditionNotEligible)]),
            account_not_found: denied(Denial::AccountNotFound),
            user_not_found: denied(Denial::UserNotFound),
            no_edition: denied(Denial::NoEdition),
            analytics_not_enabled: denied(Denial::AnalyticsNotEnabled),
            edition_not_eligible: denied(Denial::EditionNotEligible),
        }
    }
}

/// One server's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    rpcs: IntCounterVec,
    rpc_seconds: HistogramVec,
    checks: IntCounterVec,
    check_counters: CheckCounters,
    writes: IntCounter,
    refusals_left_out: IntCounter,
    write_seconds: Histogram,
    sync_seconds: Histogram,
    lock_wait_seconds: Histogram,
    lock_held_seconds: Histogram,
    revision: IntGauge,
    size_bytes: IntGauge,
    accounts: IntGauge,
    users: IntGauge,
    shed: ShedCounters,
    overloaded: IntGauge,
    store_reachable: IntGauge,
}

/// Calls the shedding layer ended before they ran, by reason; resolved once,
/// so each reason is exported (as 0) from the start.
#[derive(Clone)]
pub struct ShedCounters {
    /// Refused: the server was at `--max-concurrent-calls`.
    pub server_limit: IntCounter,
    /// Refused: the caller's token already held its share of the limit.
    pub token_share: IntCounter,
    /// Ended: the request message did not arrive within
    /// `--request-message-timeout`.
    pub message_timeout: IntCounter,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let latency = |name: &str, help: &str| {
            HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())
        };
        let rpcs = IntCounterVec::new(
            Opts::new(
                "entitled_rpc_requests_total",
                "gRPC calls finished, by method and status code",
            ),
            &["method", "code"],
        )?;
        let rpc_seconds = HistogramVec::new(
            latency(
                "entitled_rpc_duration_seconds",
                "time to answer a gRPC call (to the response headers), by method and status code",
            ),
            &["method", "code"],
        )?;
        let checks = IntCounterVec::new(
            Opts::new(
                "entitled_checks_total",
                "analytics access checks answered, by decision and denial reason",
            ),
            &["decision", "reason"],
        )?;
        let writes = IntCounter::new(
            "entitled_store_writes_total",
            "writes committed to the store (each raises the revision by one)",
        )?;
        let refusals_left_out = IntCounter::new(
            "entitled_audit_refusals_left_out_total",
            "refused writes not recorded in the audit trail because their token refused more than its rate",
        )?;
        let write_seconds = Histogram::with_opts(latency(
            "entitled_store_write_duration_seconds",
            "time from a write's commit starting to it being durable and visible",
        ))?;
        let sync_seconds = Histogram::with_opts(latency(
            "entitled_store_sync_duration_seconds",
            "time one sync to durable storage took (one sync covers every write committed before it)",
        ))?;
        let lock_wait_seconds = Histogram::with_opts(latency(
            "entitled_store_write_lock_wait_seconds",
            "PostgreSQL: time one batch of writes waited for the write lock that every replica's batches take in turn (one round trip included)",
        ))?;
        let lock_held_seconds = Histogram::with_opts(latency(
            "entitled_store_write_lock_held_seconds",
            "PostgreSQL: time one batch of writes held the write lock, until its COMMIT was acknowledged",
        ))?;
        let revision = IntGauge::new("entitled_store_revision", "the durable store revision")?;
        let size_bytes = IntGauge::new(
            "entitled_store_size_bytes",
            "size of the store's files on disk",
        )?;
        let accounts = IntGauge::new("entitled_accounts", "accounts in the store")?;
        let users = IntGauge::new("entitled_users", "users in the store, in all accounts")?;
        let shed = IntCounterVec::new(
            Opts::new(
                "entitled_calls_shed_total",
                "calls ended before they ran: server_limit, token_share or message_timeout",
            ),
            &["reason"],
        )?;
        let overloaded = IntGauge::new(
            "entitled_overloaded",
            "1 while health reports the entitled services NOT_SERVING because the server is at its concurrency limit",
        )?;
        registry.register(Box::new(rpcs.clone()))?;
        registry.register(Box::new(rpc_seconds.clone()))?;
        registry.register(Box::new(checks.clone()))?;
        registry.register(Box::new(writes.clone()))?;
        registry.register(Box::new(refusals_left_out.clone()))?;
        registry.register(Box::new(write_seconds.clone()))?;
        registry.register(Box::new(sync_seconds.clone()))?;
        registry.register(Box::new(lock_wait_seconds.clone()))?;
        registry.register(Box::new(lock_held_seconds.clone()))?;
        registry.register(Box::new(revision.clone()))?;
        registry.register(Box::new(size_bytes.clone()))?;
        registry.register(Box::new(accounts.clone()))?;
        registry.register(Box::new(users.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        let store_reachable = IntGauge::new(
            "entitled_store_reachable",
            "1 while the store's database answers; 0 while it cannot be reached, and reads are served as of the last revision seen (always 1 with sled)",
        )?;
        // Reachable until the store says otherwise: sled never does.
        store_reachable.set(1);
        registry.register(Box::new(overloaded.clone()))?;
        registry.register(Box::new(store_reachable.clone()))?;
        Ok(Metrics {
            inner: Arc::new(Inner {
                registry,
                rpcs,
                rpc_seconds,
                check_counters: CheckCounters::new(&checks),
                checks,
                writes,
                refusals_left_out,
                write_seconds,
                sync_seconds,
                lock_wait_seconds,
                lock_held_seconds,
                revision,
                size_bytes,
                accounts,
                users,
                shed: ShedCounters {
                    server_limit: shed.with_label_values(&["server_limit"]),
                    token_share: shed.with_label_values(&["token_share"]),
                    message_timeout: shed.with_label_values(&["message_timeout"]),
                },
                overloaded,
                store_reachable,
            }),
        })
    }

    /// The registry, for metrics kept elsewhere (the console's sign-ins).
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// A refused write was counted but not recorded (its token's refusals
    /// were over their rate).
    pub fn refusal_left_out(&self) {
        self.inner.refusals_left_out.inc();
    }

    /// The counter and histogram of one method and code. Callers keep it, so
    /// a call pays no label lookup. `method` must come from a bounded set (the
    /// gRPC layer maps unknown paths to one value).
    pub fn rpc_series(&self, method: &str, code: &str) -> RpcSeries {
        let labels = [method, code];
        RpcSeries {
            count: self.inner.rpcs.with_label_values(&labels),
            seconds: self.inner.rpc_seconds.with_label_values(&labels),
        }
    }

    /// An answered check: `allowed` or `denied`, and the denial reason
    /// (`none` when there is none; an allowed check can carry
    /// `edition_not_eligible` when the catalogue lowered its tier).
    pub fn check(&self, decision: &Decision) {
        let c = &self.inner.check_counters;
        let counter = match (decision.allowed, decision.denial) {
            (true, None) => &c.allowed,
            (true, Some(Denial::EditionNotEligible)) => &c.allowed_lowered,
            (false, Some(Denial::AccountNotFound)) => &c.account_not_found,
            (false, Some(Denial::UserNotFound)) => &c.user_not_found,
            (false, Some(Denial::NoEdition)) => &c.no_edition,
            (false, Some(Denial::AnalyticsNotEnabled)) => &c.analytics_not_enabled,
            (false, Some(Denial::EditionNotEligible)) => &c.edition_not_eligible,
            // Decisions the service does not make; counted all the same.
            (allowed, denial) => {
                let outcome = if allowed { "allowed" } else { "denied" };
                let reason = denial.map_or("none", denial_label);
                self.inner
                    .checks
                    .with_label_values(&[outcome, reason])
                    .inc();
                return;
            }
        };
        counter.inc();
    }

    /// The counters of calls shed, by reason.
    pub fn shed_counters(&self) -> ShedCounters {
        self.inner.shed.clone()
    }

    /// Whether health reports the server overloaded.
    pub fn set_overloaded(&self, overloaded: bool) {
        self.inner.overloaded.set(i64::from(overloaded));
    }

    /// The text exposition of every metric, with the store's gauges set
    /// from `stats`.
    pub fn render(&self, stats: &StoreStats) -> Result<String, MetricsError> {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.inner.revision.set(gauge(stats.revision));
        self.inner.size_bytes.set(gauge(stats.size_on_disk));
        self.inner.accounts.set(gauge(stats.accounts));
        self.inner.users.set(gauge(stats.users));
        let mut text = Vec::new();
        TextEncoder::new().encode(&self.inner.registry.gather(), &mut text)?;
        Ok(String::from_utf8(text)?)
    }
}

impl StoreObserver for Metrics {
    fn committed(&self) {
        self.inner.writes.inc();
    }

    fn durable(&self, waited: Duration) {
        self.inner.write_seconds.observe(waited.as_secs_f64());
    }

    fn synced(&self, took: Duration) {
        self.inner.sync_seconds.observe(took.as_secs_f64());
    }

    fn reachable(&self, reachable: bool) {
        self.inner.store_reachable.set(i64::from(reachable));
    }

    fn write_lock(&self, waited: Duration, held: Duration) {
        self.inner.lock_wait_seconds.observe(waited.as_secs_f64());
        self.inner.lock_held_seconds.observe(held.as_secs_f64());
    }
}

/// Reads the store's gauges at each scrape.
pub type StatsSource = Arc<dyn Fn() -> Result<StoreStats, StoreError> + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    stats: StatsSource,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state((metrics, stats));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn scrape(State((metrics, stats)): State<(Metrics, StatsSource)>) -> impl IntoResponse {
    match stats()
        .map_err(MetricsError::from)
        .and_then(|stats| metrics.render(&stats))
    {
        Ok(text) => (
            StatusCode::OK,
            [("content-type", prometheus::TEXT_FORMAT)],
            text,
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot render metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "text/plain; charset=utf-8")],
                e.to_string(),
            )
        }
    }
}
