//! Overload: past `--max-concurrent-calls` calls are refused at once with
//! RESOURCE_EXHAUSTED, health keeps answering, memory stays bounded and the
//! server recovers; one token cannot hold more than its share of the limit,
//! a call whose request message does not arrive is ended, and health reports
//! a limit that stays full; `grpc-timeout` deadlines are honoured; oversized
//! requests are refused before they are decoded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::time::{Duration, Instant};

use common::{TestApp, clients, process::Server, raw};
use entitled::proto::v1 as pb;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tonic::{Code, Streaming, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
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

/// A new gateway token's secret.
async fn gateway_token(operator: &common::Clients, name: &str) -> String {
    operator
        .tokens
        .clone()
        .create_token(pb::CreateTokenRequest {
            name: name.into(),
            role: pb::Role::Gateway as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

const LIMIT: usize = 8;
/// Calls in each wave of the flood, spread over `CONNECTIONS` connections
/// (h2 caps the streams of one connection at 200).
const WAVE: usize = 600;
const CONNECTIONS: usize = 4;
const WAVES: usize = 3;
/// The flood's calls come from this many tokens in turn: each may hold only
/// half the limit, so it takes more than one to fill it.
const TOKENS: usize = 4;

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
    let mut secrets = vec![server.secret.clone()];
    for n in 1..TOKENS {
        secrets.push(gateway_token(&ordinary, &format!("flood {n}")).await);
    }
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
            let secret = &secrets[i % TOKENS];
            let mut access = clients(&channels[i % CONNECTIONS], Some(secret)).access;
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

const GET_CATALOGUE: &str = "/entitled.v1.CatalogueService/GetCatalogue";

/// The next `n` answers to stalled calls (within 60 s: nothing hangs).
async fn answers(
    calls: &mut mpsc::UnboundedReceiver<(usize, Result<raw::Answer, h2::Error>)>,
    n: usize,
) -> Vec<raw::Answer> {
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while got.len() < n {
            let (i, answer) = calls.recv().await.expect("a stalled call vanished");
            got.push(answer.unwrap_or_else(|e| panic!("call {i}: {e}")));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} of {n} answers came within 60 s", got.len()));
    got
}

#[track_caller]
fn assert_answer(answer: &raw::Answer, code: Code, piece: &str) {
    assert_eq!(answer.grpc_status, Some(code as i32), "{answer:?}");
    // grpc-message is percent-encoded on the wire.
    let mut bytes = Vec::new();
    let mut rest = answer.message.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match (byte, tail.get(..2).map(std::str::from_utf8)) {
            (b'%', Some(Ok(hex))) if u8::from_str_radix(hex, 16).is_ok() => {
                bytes.push(u8::from_str_radix(hex, 16).unwrap());
                rest = &tail[2..];
            }
            _ => {
                bytes.push(byte);
                rest = tail;
            }
        }
    }
    let message = String::from_utf8(bytes).unwrap();
    assert!(message.contains(piece), "{message:?} lacks {piece:?}");
}

/// Waits (at most 60 s) until a health watch reports `want`.
async fn health_becomes(watch: &mut Streaming<HealthCheckResponse>, want: ServingStatus) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = watch.message().await.unwrap().expect("health watch ended");
            if status.status() == want {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health did not turn {want:?} within 60 s"));
}

/// The value of one sample of the server's metrics (0 when absent).
async fn metric(server: &Server, sample: &str) -> f64 {
    let addr = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.split("serving metrics on /metrics addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the server logs its metrics address");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Issue #15 D. Before the fix, the calls of one gateway token that sent
/// headers and never their message held every slot for as long as it liked:
/// every other caller, operators included, was refused RESOURCE_EXHAUSTED
/// while health said SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_stalling_calls_cannot_stop_other_callers_and_the_stalled_calls_are_ended() {
    const BOUND: &str = "8s";
    const STALLED: usize = 40;
    const SHARE: usize = LIMIT / 2;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--max-concurrent-calls",
            &LIMIT.to_string(),
            "--request-message-timeout",
            BOUND,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let channel = server.channel().await;
    let operator = clients(&channel, Some(&server.secret));
    let get_catalogue = || {
        let mut catalogue = operator.catalogue.clone();
        async move { catalogue.get_catalogue(pb::GetCatalogueRequest {}).await }
    };
    let a = gateway_token(&operator, "attacker a").await;
    let b = gateway_token(&operator, "attacker b").await;
    let a_id = a.split_once('.').unwrap().0;
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "entitled.v1.CatalogueService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    health_becomes(&mut watch, ServingStatus::Serving).await;

    // Token A opens many calls that send headers and nothing more.
    let started = Instant::now();
    let bearer_a = format!("Bearer {a}");
    let mut a_calls = raw::stalled_calls(
        server.addr,
        GET_CATALOGUE,
        &[("authorization", &bearer_a)],
        &[],
        STALLED,
    )
    .await;
    // Those beyond what A may hold are refused at once (before the fix, all
    // but LIMIT; now all but its share).
    let mut refused = answers(&mut a_calls, STALLED - LIMIT).await;
    // Another caller is answered while A's calls stall.
    get_catalogue()
        .await
        .expect("the operator was refused while one token stalled its calls");
    refused.extend(answers(&mut a_calls, LIMIT - SHARE).await);
    for answer in &refused {
        assert_answer(
            answer,
            Code::ResourceExhausted,
            &format!("token `{a_id}` already has {SHARE} calls running"),
        );
    }

    // Token B sends its whole message but never ends its stream: as good as
    // no message (tonic reads a request to its end), and B takes the rest.
    let bearer_b = format!("Bearer {b}");
    let mut b_calls = raw::stalled_calls(
        server.addr,
        GET_CATALOGUE,
        &[("authorization", &bearer_b)],
        &frame_of(&pb::GetCatalogueRequest {}),
        STALLED,
    )
    .await;
    for answer in answers(&mut b_calls, STALLED - SHARE).await {
        assert_answer(&answer, Code::ResourceExhausted, "");
    }
    // Two tokens together fill the limit: now the server's limit refuses,
    // and health reports it to load balancers, while the calls still stall.
    common::assert_status(
        get_catalogue().await,
        Code::ResourceExhausted,
        &[&format!("limit of {LIMIT} concurrent calls")],
    );
    health_becomes(&mut watch, ServingStatus::NotServing).await;
    assert!(
        a_calls.try_recv().is_err() && b_calls.try_recv().is_err(),
        "a stalled call ended before health reported the full limit"
    );
    assert_eq!(metric(&server, "entitled_overloaded").await, 1.0);
    // The whole server is alive: a liveness probe must not restart it.
    let whole = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.status(), ServingStatus::Serving);

    // After the bound, every stalled call is ended and its slot freed.
    let mut ended = answers(&mut a_calls, SHARE).await;
    ended.extend(answers(&mut b_calls, SHARE).await);
    let took = started.elapsed();
    for answer in &ended {
        assert_answer(
            answer,
            Code::DeadlineExceeded,
            &format!("the request message did not arrive within {BOUND}"),
        );
    }
    assert!(took >= Duration::from_secs(7), "ended after {took:?}");
    health_becomes(&mut watch, ServingStatus::Serving).await;
    get_catalogue().await.unwrap();
    assert_eq!(metric(&server, "entitled_overloaded").await, 0.0);
    let shed = |reason: &str| format!("entitled_calls_shed_total{{reason=\"{reason}\"}}");
    assert_eq!(
        metric(&server, &shed("message_timeout")).await,
        (2 * SHARE) as f64
    );
    let refusals =
        metric(&server, &shed("token_share")).await + metric(&server, &shed("server_limit")).await;
    assert_eq!(refusals, (2 * (STALLED - SHARE) + 1) as f64);
    println!("stalled calls ended after {took:?}; {refusals} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_not_cut_once_its_request_has_arrived() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--request-message-timeout", "1s"]);
    let operator = server.clients().await;
    let mut watch = operator
        .access
        .clone()
        .watch_entitlements(pb::WatchEntitlementsRequest {
            account_id: String::new(),
            after_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    // Well past the bound, then a change the watch must deliver.
    tokio::time::sleep(Duration::from_secs(3)).await;
    operator
        .provisioning
        .clone()
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            display_name: "Acme".into(),
            product_line: "work".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    operator
        .provisioning
        .clone()
        .put_user(pb::PutUserRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            display_name: "Ada".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let event = watch.message().await.unwrap().expect("the watch ended");
            if let Some(pb::watch_entitlements_response::Event::Change(change)) = event.event {
                return change;
            }
        }
    })
    .await
    .expect("no change within 60 s");
    assert_eq!(change.user_id, "ada", "{change:?}");
}
