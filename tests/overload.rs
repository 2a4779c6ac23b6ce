//! Overload: past `--max-concurrent-calls` calls are refused at once with
//! RESOURCE_EXHAUSTED, health keeps answering, memory stays bounded and the
//! server recovers; `grpc-timeout` deadlines are honoured; oversized requests
//! are refused before they are decoded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, clients, process::Server, raw};
use entitled::proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A check that waits (1 s) for a revision the server never reaches, then
/// answers UNAVAILABLE: a call that is slow on purpose.
fn slow_check() -> pb::CheckAnalyticsAccessRequest {
    pb::CheckAnalyticsAccessRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        min_revision: 1 << 40,
    }
}

const LIMIT: usize = 8;
/// Calls in each wave of the flood, spread over `CONNECTIONS` connections
/// (h2 caps the streams of one connection at 200).
const WAVE: usize = 600;
const CONNECTIONS: usize = 4;
const WAVES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_limit_is_shed_fast_health_answers_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-concurrent-calls", &LIMIT.to_string()]);
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(server.channel().await);
    }
    let ordinary = clients(&channels[0], Some(&server.secret));
    let mut health = HealthClient::new(channels[0].clone());
    // Warm up: every connection used once, so memory is measured with them.
    for channel in &channels {
        clients(channel, Some(&server.secret))
            .access
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                min_revision: 0,
            })
            .await
            .unwrap();
    }
    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    let (mut shed_total, mut slow_total) = (0, 0);
    for wave in 0..WAVES {
        let started = Instant::now();
        let (shed_tx, mut shed_rx) = mpsc::unbounded_channel::<()>();
        let mut calls = Vec::new();
        for i in 0..WAVE {
            let mut access = clients(&channels[i % CONNECTIONS], Some(&server.secret)).access;
            let shed_tx = shed_tx.clone();
            calls.push(tokio::spawn(async move {
                let sent = Instant::now();
                let result = access.check_analytics_access(slow_check()).await;
                let code = result.err().map(|s| s.code());
                if code == Some(Code::ResourceExhausted) {
                    let _ = shed_tx.send(());
                }
                (code, sent.elapsed())
            }));
        }
        drop(shed_tx);
        // Once a call has been shed the limit is full: health must answer now.
        shed_rx.recv().await.expect("no call was shed");
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "wave {wave}");
        rss_peak = rss_peak.max(server.rss_kib());
        let (mut shed, mut slow) = (0, 0);
        for call in calls {
            let (code, took) = call.await.unwrap();
            match code {
                Some(Code::ResourceExhausted) => {
                    shed += 1;
                    // Refused at once, not after the 1 s wait.
                    assert!(
                        took < Duration::from_millis(900),
                        "a shed call took {took:?}"
                    );
                }
                Some(Code::Unavailable) => {
                    slow += 1;
                    assert!(
                        took >= Duration::from_millis(900),
                        "a slow call took {took:?}"
                    );
                }
                other => panic!("wave {wave}: unexpected outcome {other:?}"),
            }
        }
        rss_peak = rss_peak.max(server.rss_kib());
        // At most LIMIT calls run at once, each for about 1 s.
        let seconds = started.elapsed().as_secs() as usize + 1;
        assert!(
            slow <= LIMIT * seconds,
            "wave {wave}: {slow} calls ran in {seconds} s with a limit of {LIMIT}"
        );
        assert!(slow >= 1 && shed >= WAVE - LIMIT * seconds);
        shed_total += shed;
        slow_total += slow;
        // Recovered: an ordinary call succeeds at once after the flood.
        ordinary
            .access
            .clone()
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: "acme".into(),
                user_id: "ada".into(),
                min_revision: 0,
            })
            .await
            .unwrap();
    }
    let grown = rss_peak.saturating_sub(rss_before);
    println!(
        "flood: {WAVES} waves of {WAVE} calls, limit {LIMIT}: {shed_total} shed, {slow_total} ran; VmRSS {rss_before} KiB before, peak {rss_peak} KiB"
    );
    // Generous: refused calls hold no memory after they are answered.
    assert!(
        grown < 64 * 1024,
        "the server grew by {grown} KiB during the flood"
    );
}

#[tokio::test]
async fn health_is_exempt_from_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-concurrent-calls", "1"]);
    let channel = server.channel().await;
    // Two slow calls race for the one permit: one runs (for 1 s), the other
    // is shed, which shows the limit is full while the first still runs.
    let mut held = None;
    for _ in 0..5 {
        let mut a = clients(&channel, Some(&server.secret)).access;
        let mut b = clients(&channel, Some(&server.secret)).access;
        let mut first = tokio::spawn(async move { a.check_analytics_access(slow_check()).await });
        let mut second = tokio::spawn(async move { b.check_analytics_access(slow_check()).await });
        let (shed, running) = tokio::select! {
            r = &mut first => (r.unwrap(), second),
            r = &mut second => (r.unwrap(), first),
        };
        match shed {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("limit of 1 concurrent calls"), "{s:?}");
                held = Some(running);
                break;
            }
            // Both ran one after the other: try again.
            _ => drop(running.await),
        }
    }
    let running = held.expect("neither call was shed with a limit of 1");
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "entitled.v1.AccessService".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);
    assert!(
        !running.is_finished(),
        "the slow call ended before health was asked"
    );
    assert_eq!(
        running.await.unwrap().unwrap_err().code(),
        Code::Unavailable
    );
}

#[tokio::test]
async fn a_grpc_timeout_shorter_than_the_call_ends_it_promptly() {
    let app = TestApp::spawn().await;
    // Through the raw client: tonic's own client would enforce the deadline
    // itself, and this is about the server.
    let authorization = format!("Bearer {}", app.operator_secret);
    let body = frame_of(&slow_check());
    let started = Instant::now();
    let answer = raw::call(
        app.addr,
        "/entitled.v1.AccessService/CheckAnalyticsAccess",
        &[("authorization", &authorization), ("grpc-timeout", "100m")],
        body.clone(),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    println!("expired deadline: {answer:?} after {took:?}");
    assert!(
        matches!(answer.grpc_status, Some(s) if s == Code::Cancelled as i32 || s == Code::DeadlineExceeded as i32),
        "{answer:?}"
    );
    assert!(took < Duration::from_millis(800), "took {took:?}");
    // Without the header the same call waits its full second.
    let started = Instant::now();
    let answer = raw::call(
        app.addr,
        "/entitled.v1.AccessService/CheckAnalyticsAccess",
        &[("authorization", &authorization)],
        body,
    )
    .await
    .unwrap();
    assert_eq!(
        answer.grpc_status,
        Some(Code::Unavailable as i32),
        "{answer:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
}

fn frame_of(message: &impl prost::Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    raw::frame(payload.len() as u32, &payload)
}

#[tokio::test]
async fn a_request_above_the_size_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-request-bytes", "65536"]);
    let channel: Channel = server.channel().await;
    let mut provisioning = clients(&channel, Some(&server.secret)).provisioning;
    let big = pb::PutUserRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        display_name: "x".repeat(100_000),
        ..Default::default()
    };
    let status = provisioning.put_user(big).await.unwrap_err();
    println!("oversized: {status:?}");
    // tonic's code for a message above the decoding limit.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("65536"), "{status:?}");
    // Under the cap the same call is judged on its merits.
    let small = pb::PutUserRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        display_name: "x".repeat(1000),
        ..Default::default()
    };
    let status = provisioning.put_user(small).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}
