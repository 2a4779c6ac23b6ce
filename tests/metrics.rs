//! Prometheus metrics: scraped over HTTP from a real server after real
//! traffic, parsed with a Prometheus text parser, and compared with what the
//! traffic must have done. The tests with traffic run on sled and on
//! PostgreSQL; those about the listener alone start no store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::net::SocketAddr;

use common::{Backend, T, TestApp, assert_status};
use entitled::{
    catalogue::Catalogue,
    proto::v1 as pb,
    server::{Application, Config},
};
use prometheus_parse::{Sample, Scrape, Value};
use tonic::{Code, Request};

const CHECK: &str = "entitled.v1.AccessService/CheckAnalyticsAccess";
const UPDATE: &str = "entitled.v1.ProvisioningService/UpdateUserServices";

/// `GET /metrics` over plain HTTP/1.0 (the connection closes after the
/// answer), parsed.
async fn scrape(addr: SocketAddr) -> Scrape {
    let answer = common::metrics_answer(&addr.to_string()).await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The value of the sample `name` whose labels include all of `labels`; 0
/// when there is none (a counter not yet incremented is absent).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
    match found.first().map(|s| &s.value) {
        None => 0.0,
        Some(Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v)) => *v,
        Some(other) => panic!("{name} is not a number: {other:?}"),
    }
}

fn rpcs(scrape: &Scrape, method: &str, code: &str) -> f64 {
    value(
        scrape,
        "entitled_rpc_requests_total",
        &[("method", method), ("code", code)],
    )
}

fn checks(scrape: &Scrape, decision: &str, reason: &str) -> f64 {
    value(
        scrape,
        "entitled_checks_total",
        &[("decision", decision), ("reason", reason)],
    )
}

on_both_backends! {
    async fn rpcs_checks_and_writes_are_counted_after_traffic(backend) {
        let app = TestApp::spawn_on(backend).await;
        let before = scrape(app.metrics_addr).await;
        assert_eq!(rpcs(&before, CHECK, "OK"), 0.0);
        // Every decision a check can make is exported from the start, at 0.
        let series = before
            .samples
            .iter()
            .filter(|s| s.metric == "entitled_checks_total")
            .count();
        assert_eq!(series, 7);

        app.create_account("acme", "work").await;
        app.create_account("globex", "work").await;
        app.put_user("acme", "ada").await;
        app.put_user("acme", "bob").await;
        app.put_user("globex", "cy").await;
        app.set("acme", "ada", Some("X8"), Some(T::Supervisor))
            .await
            .unwrap();
        app.set("acme", "bob", Some("X2"), None).await.unwrap();
        // Refused: X2 does not include Supervisor.
        assert_status(
            app.set("acme", "bob", None, Some(T::Supervisor)).await,
            Code::FailedPrecondition,
            &[],
        );
        assert!(app.check("acme", "ada").await.allowed);
        assert!(!app.check("acme", "bob").await.allowed);
        assert!(!app.check("acme", "nobody").await.allowed);
        assert!(!app.check("initech", "ada").await.allowed);
        assert!(!app.check("globex", "cy").await.allowed);
        // No token.
        let anonymous = app.clients(None);
        assert_status(
            anonymous
                .access
                .clone()
                .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                    account_id: "acme".into(),
                    user_id: "ada".into(),
                    min_revision: 0,
                })
                .await,
            Code::Unauthenticated,
            &[],
        );
        // A path that is no method of ours is counted under one bounded label.
        let mut raw = tonic::client::Grpc::new(app.channel.clone());
        // (The second has no token: the service's interceptor answers first.)
        for (path, code) in [
            ("/entitled.v1.NoSuchService/Nothing", Code::Unimplemented),
            (
                "/entitled.v1.AccessService/NoSuchMethod",
                Code::Unauthenticated,
            ),
        ] {
            raw.ready().await.unwrap();
            let status = raw
                .unary::<_, pb::GetCatalogueResponse, _>(
                    Request::new(pb::GetCatalogueRequest {}),
                    http::uri::PathAndQuery::from_static(path),
                    tonic_prost::ProstCodec::default(),
                )
                .await
                .unwrap_err();
            assert_eq!(status.code(), code);
        }
        let revision = app.revision().await;

        let after = scrape(app.metrics_addr).await;
        // Five checks answered OK (plus the one `revision` made), one refused.
        assert_eq!(rpcs(&after, CHECK, "OK"), 6.0);
        assert_eq!(rpcs(&after, CHECK, "UNAUTHENTICATED"), 1.0);
        assert_eq!(rpcs(&after, UPDATE, "OK"), 2.0);
        assert_eq!(rpcs(&after, UPDATE, "FAILED_PRECONDITION"), 1.0);
        assert_eq!(
            rpcs(&after, "entitled.v1.ProvisioningService/PutUser", "OK"),
            3.0
        );
        assert_eq!(rpcs(&after, "unknown", "UNIMPLEMENTED"), 1.0);
        assert_eq!(rpcs(&after, "unknown", "UNAUTHENTICATED"), 1.0);
        assert!(
            !after
                .samples
                .iter()
                .any(|s| s.labels.get("method").is_some_and(|m| m.contains("NoSuch"))),
            "a client's path never becomes a label"
        );
        // Each call timed under the same labels.
        assert_eq!(
            value(
                &after,
                "entitled_rpc_duration_seconds_count",
                &[("method", CHECK), ("code", "OK")]
            ),
            6.0
        );

        assert_eq!(checks(&after, "allowed", "none"), 1.0);
        assert_eq!(checks(&after, "denied", "analytics_not_enabled"), 1.0);
        assert_eq!(checks(&after, "denied", "user_not_found"), 1.0);
        // `initech` and the `any` of `revision`.
        assert_eq!(checks(&after, "denied", "account_not_found"), 2.0);
        assert_eq!(checks(&after, "denied", "no_edition"), 1.0);

        // Every write since the first start (its operator token included) was
        // committed and made durable; the refusal raised nothing.
        let writes = value(&after, "entitled_store_writes_total", &[]);
        assert_eq!(writes, revision as f64);
        assert_eq!(
            writes - value(&before, "entitled_store_writes_total", &[]),
            7.0
        );
        assert_eq!(
            value(&after, "entitled_store_write_duration_seconds_count", &[]),
            writes
        );
        let syncs = value(&after, "entitled_store_sync_duration_seconds_count", &[]);
        assert!((1.0..=writes).contains(&syncs), "{syncs} syncs");
        // The write lock replicas take in turn: every PostgreSQL batch
        // waited for it and held it. Here: the seven writes, made one after
        // another, a batch each; the refused write's (rolled back); and,
        // once the follower commits it (every 200 ms), the refusal's
        // record. Sled has no such lock.
        for what in ["wait", "held"] {
            let count = format!("entitled_store_write_lock_{what}_seconds_count");
            let batches = value(&after, &count, &[]) - value(&before, &count, &[]);
            match backend {
                Backend::Sled => assert_eq!(value(&after, &count, &[]), 0.0, "{count}"),
                Backend::Postgres => {
                    assert!((8.0..=9.0).contains(&batches), "{count}: {batches} batches");
                }
            }
        }
        if backend == Backend::Postgres {
            let held = value(&after, "entitled_store_write_lock_held_seconds_sum", &[]);
            assert!(held > 0.0, "the lock held for {held} s in all");
        }

        assert_eq!(
            value(&after, "entitled_store_revision", &[]),
            revision as f64
        );
        assert_eq!(value(&after, "entitled_accounts", &[]), 2.0);
        assert_eq!(value(&after, "entitled_users", &[]), 3.0);
        assert!(value(&after, "entitled_store_size_bytes", &[]) > 0.0);
    }
}

on_both_backends! {
    async fn each_server_counts_only_its_own_calls(backend) {
        let busy = TestApp::spawn_on(backend).await;
        let idle = TestApp::spawn_on(backend).await;
        busy.check("acme", "ada").await;
        busy.check("acme", "ada").await;
        assert_eq!(rpcs(&scrape(busy.metrics_addr).await, CHECK, "OK"), 2.0);
        assert_eq!(rpcs(&scrape(idle.metrics_addr).await, CHECK, "OK"), 0.0);
    }
}

#[tokio::test]
async fn no_metrics_listener_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().to_path_buf(),
        Catalogue::builtin().unwrap(),
    );
    let app = Application::build(config).await.unwrap();
    assert_eq!(app.metrics_addr(), None);
}

#[tokio::test]
async fn a_metrics_address_in_use_stops_start_up_naming_it() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().to_path_buf(),
        Catalogue::builtin().unwrap(),
    );
    config.metrics_listen = Some(addr);
    let error = Application::build(config).await.err().unwrap().to_string();
    assert!(
        error.contains(&format!("cannot listen on {addr}")),
        "{error}"
    );
}
