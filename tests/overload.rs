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

use common::{clients, process::Server, raw};
use entitled::proto::v1 as pb;
use tokio::sync::mpsc;
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

const CHECK: &str = "/entitled.v1.AccessService/CheckAnalyticsAccess";

/// A check answered at once.
fn ordinary_check() -> pb::CheckAnalyticsAccessRequest {
    pb::CheckAnalyticsAccessRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        min_revision: 0,
    }
}

/// Long enough that no call a test holds is ended for its late message
/// while the test runs.
const HOLD_BOUND: &str = "1h";

/// Fills the limit of `server` (`limit` slots) with checks whose message is
/// held back, `per_token` to each of `secrets`, and shows that they hold
/// every slot: a call from `probe` (whose token has nothing running) is
/// shed. A held call that was itself shed, because it arrived while a probe
/// held a slot, is replaced.
async fn fill_the_limit(
    server: &Server,
    limit: usize,
    secrets: &[String],
    per_token: usize,
    probe: &common::Clients,
) -> Vec<raw::Held> {
    assert_eq!(secrets.len() * per_token, limit);
    let mut held: Vec<(usize, raw::Held)> = Vec::new();
    common::within(
        common::CALL_TIMEOUT,
        "the limit filling with held calls",
        async {
            loop {
                held.retain(|(_, h)| !h.answered());
                for (t, secret) in secrets.iter().enumerate() {
                    while held.iter().filter(|(owner, _)| *owner == t).count() < per_token {
                        let authorization = format!("Bearer {secret}");
                        let call = raw::Held::open(
                            server.addr,
                            CHECK,
                            &[("authorization", &authorization)],
                            frame_of(&ordinary_check()),
                        )
                        .await;
                        held.push((t, call));
                    }
                }
                match probe
                    .access
                    .clone()
                    .check_analytics_access(ordinary_check())
                    .await
                {
                    Ok(_) => tokio::task::yield_now().await,
                    Err(s) if s.code() == Code::ResourceExhausted => {
                        assert!(
                            s.message()
                                .contains(&format!("limit of {limit} concurrent calls")),
                            "{s:?}"
                        );
                        return;
                    }
                    Err(s) => panic!("the probe: {s:?}"),
                }
            }
        },
    )
    .await;
    held.into_iter().map(|(_, h)| h).collect()
}

/// Releases held calls: each gets the ordinary answer.
async fn release(held: Vec<raw::Held>) {
    for call in held {
        let answer = call.release().await.unwrap();
        assert_eq!(answer.grpc_status, Some(Code::Ok as i32), "{answer:?}");
    }
}

/// The limit held for the whole of each wave, so the outcome alone tells:
/// every call of the flood is shed, and all are answered while the slots
/// are still held (a call that waited for a slot would never be answered).
/// No clock is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_limit_is_shed_fast_health_answers_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--max-concurrent-calls",
            &LIMIT.to_string(),
            "--request-message-timeout",
            HOLD_BOUND,
        ],
    );
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
    // The slots are held by two tokens (each may hold only half the limit);
    // a third probes.
    let holders = vec![
        gateway_token(&ordinary, "holder 1").await,
        gateway_token(&ordinary, "holder 2").await,
    ];
    // Warm up: every connection used once, so memory is measured with them.
    for channel in &channels {
        clients(channel, Some(&server.secret))
            .access
            .check_analytics_access(ordinary_check())
            .await
            .unwrap();
    }
    let rss_before = server.rss_kib();
    let mut rss_peak = rss_before;
    let mut shed_total = 0;
    for wave in 0..WAVES {
        let held = fill_the_limit(&server, LIMIT, &holders, LIMIT / 2, &ordinary).await;
        let mut calls = Vec::new();
        for i in 0..WAVE {
            let secret = &secrets[i % TOKENS];
            let mut access = clients(&channels[i % CONNECTIONS], Some(secret)).access;
            calls.push(tokio::spawn(async move {
                access.check_analytics_access(slow_check()).await
            }));
        }
        // The limit is full: health must answer now, and the whole server
        // is alive.
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
        for call in calls {
            let outcome = common::within(
                common::CALL_TIMEOUT,
                "an answer to a call of the flood while the limit was held",
                call,
            )
            .await
            .unwrap();
            match outcome {
                Err(s) if s.code() == Code::ResourceExhausted => shed_total += 1,
                other => panic!("wave {wave}: a call past the limit got {other:?}"),
            }
        }
        rss_peak = rss_peak.max(server.rss_kib());
        // Every refusal came while the slots were held: none waited for one.
        for call in &held {
            assert!(
                !call.answered(),
                "wave {wave}: a held call ended during the flood"
            );
        }
        // Recovered: the held calls are answered once their message comes,
        // and an ordinary call succeeds.
        release(held).await;
        ordinary
            .access
            .clone()
            .check_analytics_access(ordinary_check())
            .await
            .unwrap();
    }
    assert_eq!(shed_total, WAVES * WAVE);
    let grown = rss_peak.saturating_sub(rss_before);
    println!(
        "flood: {WAVES} waves of {WAVE} calls, limit {LIMIT} held throughout: {shed_total} shed; VmRSS {rss_before} KiB before, peak {rss_peak} KiB"
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
    let server = Server::start(
        dir.path(),
        &[
            "--max-concurrent-calls",
            "1",
            "--request-message-timeout",
            HOLD_BOUND,
        ],
    );
    let operator = server.clients().await;
    // A limit of 1, held by a call of another token until released (the
    // operator's probe is then shed by the server's limit).
    let holder = gateway_token(&operator, "holder").await;
    let held = fill_the_limit(&server, 1, &[holder], 1, &operator).await;
    let mut health = HealthClient::new(server.channel().await);
    let whole = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(whole.status(), ServingStatus::Serving);
    // A service's health answers too; while the limit stays full for a
    // second or more it says NOT_SERVING (README), so either is right here.
    let access = health
        .check(HealthCheckRequest {
            service: "entitled.v1.AccessService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    println!(
        "AccessService while the limit is full: {:?}",
        access.status()
    );
    assert!(
        !held[0].answered(),
        "the held call ended before health was asked"
    );
    release(held).await;
}

/// The deadline, not the handler, ends the call: its request message never
/// comes, so nothing but the server's deadline can end it. A call without
/// the header, opened before it, is still open after the first is ended.
#[tokio::test]
async fn a_grpc_timeout_ends_the_call_on_the_server_with_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--request-message-timeout", HOLD_BOUND]);
    // Through the raw client: tonic's own client would enforce the deadline
    // itself, and this is about the server.
    let authorization = format!("Bearer {}", server.secret);
    let message = frame_of(&ordinary_check());
    let without = raw::Held::open(
        server.addr,
        CHECK,
        &[("authorization", authorization.as_str())],
        message.clone(),
    )
    .await;
    let started = Instant::now();
    let with = raw::Held::open(
        server.addr,
        CHECK,
        &[
            ("authorization", authorization.as_str()),
            ("grpc-timeout", "100m"),
        ],
        message,
    )
    .await;
    let answer = with.answer_without_message().await.unwrap();
    let took = started.elapsed();
    println!("expired deadline: {answer:?} after {took:?}");
    // What README and ARCHITECTURE promise (tonic's server: `Timeout
    // expired`), and never before the deadline.
    assert_eq!(
        answer.grpc_status,
        Some(Code::Cancelled as i32),
        "{answer:?}"
    );
    assert!(took >= Duration::from_millis(100), "took {took:?}");
    assert!(
        !without.answered(),
        "a call without a deadline was ended too"
    );
    let answer = without.release().await.unwrap();
    assert_eq!(answer.grpc_status, Some(Code::Ok as i32), "{answer:?}");
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
    let text = common::metrics_answer(&addr).await;
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
