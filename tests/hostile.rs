//! Hostile input: random and mutated bytes as every request, random strings
//! in well-formed requests, mutated catalogue files, random import files, and
//! malformed HTTP/2 and gRPC frames at the port. The server is the real
//! binary; after every case it must still answer, and its log must never show
//! a panic.
//!
//! Each proptest runs `ENTITLED_FUZZ_CASES` cases when that is set (at
//! least 1: 0 would pass having tried nothing, so it fails instead), or its
//! own default (256, 64, 2000 and 24; RELIABILITY.md gives the longer
//! command), and checks at its end that it ran them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

mod common;

use std::{io::Write, time::Duration};

use common::{process::Server, raw};
use entitled::{catalogue::Catalogue, proto::v1 as pb};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use prost::Message;
use tokio::{io::AsyncWriteExt, net::TcpStream, runtime::Runtime};
use tonic::Code;

fn cases(default: u32) -> u32 {
    common::count_from_env("ENTITLED_FUZZ_CASES", default, 1)
}

/// Fails unless the runner tried at least the cases it was set to.
#[track_caller]
fn assert_ran(executions: u64, default: u32) {
    let want = cases(default);
    assert!(
        executions >= u64::from(want),
        "ran {executions} cases of {want}"
    );
}

fn runner(default: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Every unary method, with a well-formed request to mutate.
fn methods() -> Vec<(&'static str, Vec<u8>)> {
    let id = |s: &str| s.to_owned();
    vec![
        (
            "/entitled.v1.AccessService/CheckAnalyticsAccess",
            pb::CheckAnalyticsAccessRequest {
                account_id: id("acme"),
                user_id: id("ada"),
                min_revision: 0,
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.AccessService/BatchCheckAnalyticsAccess",
            pb::BatchCheckAnalyticsAccessRequest {
                items: vec![pb::CheckItem {
                    account_id: id("acme"),
                    user_id: id("ada"),
                }],
                min_revision: 0,
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/CreateAccount",
            pb::CreateAccountRequest {
                account_id: id("acme"),
                display_name: id("Acme"),
                product_line: id("work"),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/PutUser",
            pb::PutUserRequest {
                account_id: id("acme"),
                user_id: id("ada"),
                display_name: id("Ada"),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/UpdateUserServices",
            pb::UpdateUserServicesRequest {
                account_id: id("acme"),
                user_id: id("ada"),
                edition: Some(id("X8")),
                analytics_tier: Some(pb::AnalyticsTier::Supervisor as i32),
                expected_revision: Some(3),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/ImportUsers",
            pb::ImportUsersRequest {
                rows: vec![pb::UserRow {
                    account_id: id("acme"),
                    user_id: id("bob"),
                    display_name: id("Bob"),
                    edition: id("X4"),
                    analytics_tier: pb::AnalyticsTier::Essentials as i32,
                    supervisor_scope: None,
                }],
                dry_run: true,
                request_id: String::new(),
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/ListUsers",
            pb::ListUsersRequest {
                account_id: id("acme"),
                page_size: 10,
                page_token: id("abc"),
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/GetUser",
            pb::GetUserRequest {
                account_id: id("acme"),
                user_id: id("ada"),
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.ProvisioningService/DeleteUser",
            pb::DeleteUserRequest {
                account_id: id("acme"),
                user_id: id("nobody"),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.AuditService/ListChanges",
            pb::ListChangesRequest {
                account_id: id("acme"),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.TokenService/CreateToken",
            pb::CreateTokenRequest {
                name: id("gw"),
                role: pb::Role::Gateway as i32,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "/entitled.v1.TokenService/RevokeToken",
            pb::RevokeTokenRequest {
                token_id: id("tok_nothing"),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("/entitled.v1.CatalogueService/GetCatalogue", Vec::new()),
    ]
}

/// Asserts the server still answers an ordinary check and never panicked.
async fn still_serving(server: &Server) {
    let access = server.clients().await.access;
    access
        .clone()
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            min_revision: 0,
        })
        .await
        .expect("the server stopped answering checks");
    no_panic(server);
}

fn no_panic(server: &Server) {
    let log = server.log.lock().unwrap();
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "the server panicked:\n{}",
        log.join("\n")
    );
}

/// Codes a well-formed request may get for bad content: never INTERNAL or
/// UNKNOWN.
fn judged(code: i32) -> bool {
    [
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::FailedPrecondition,
        Code::Aborted,
    ]
    .iter()
    .any(|c| *c as i32 == code)
}

#[test]
fn random_and_mutated_bytes_as_every_request_never_hurt_the_server() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let methods = methods();
    let authorization = format!("Bearer {}", server.secret);
    rt.block_on(async {
        let op = server.clients().await;
        op.provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: "acme".into(),
                display_name: "Acme".into(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    // Either random bytes, or a well-formed request with bytes overwritten,
    // inserted or cut off.
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256).prop_map(|b| (None, b)),
        (
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            any::<prop::sample::Index>()
        )
            .prop_map(|(edits, cut)| (Some((edits, cut)), Vec::new())),
    ];
    let executions = std::cell::Cell::new(0u64);
    runner(256)
        .run(
            &(any::<prop::sample::Index>(), body),
            |(method, (mutation, random))| {
                let (path, valid) = method.get(&methods);
                let payload = match mutation {
                    None => random,
                    Some((edits, cut)) => {
                        let mut bytes = valid.clone();
                        for (at, byte) in edits {
                            if bytes.is_empty() {
                                bytes.push(byte);
                            } else {
                                let i = at.index(bytes.len());
                                bytes[i] ^= byte;
                            }
                        }
                        let keep = cut.index(bytes.len() + 1);
                        bytes.truncate(keep.max(bytes.len() / 2));
                        bytes
                    }
                };
                executions.set(executions.get() + 1);
                let answer = rt.block_on(raw::call(
                    server.addr,
                    path,
                    &[("authorization", &authorization)],
                    raw::frame(payload.len() as u32, &payload),
                ));
                let answer =
                    answer.map_err(|e| TestCaseError::fail(format!("{path}: transport {e}")))?;
                prop_assert!(
                    answer.grpc_status.is_some(),
                    "{path}: no status: {answer:?}"
                );
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(still_serving(&server));
    println!("{} random or mutated requests, no panic", executions.get());
    assert_ran(executions.get(), 256);
}

#[test]
fn random_strings_in_well_formed_requests_are_judged_never_internal() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let op = rt.block_on(async { server.clients().await });
    rt.block_on(async {
        op.provisioning
            .clone()
            .create_account(pb::CreateAccountRequest {
                account_id: "acme".into(),
                display_name: "Acme".into(),
                product_line: "work".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    // Mostly valid-looking ids, sometimes anything at all.
    let text = || {
        prop_oneof![
            "[a-z]{1,6}",
            ".{0,20}",
            "[A-Za-z0-9._@:+-]{120,140}",
            Just("acme".to_owned()),
        ]
    };
    let strategy = (
        text(),
        text(),
        text(),
        proptest::option::of(text()),
        proptest::option::of(-3..8i32),
        any::<u8>(),
    );
    let executions = std::cell::Cell::new(0u64);
    runner(64)
        .run(&strategy, |(account, user, name, edition, tier, which)| {
            executions.set(executions.get() + 1);
            let mut p = op.provisioning.clone();
            let mut a = op.access.clone();
            let code = rt.block_on(async {
                let code = |r: Result<(), tonic::Status>| match r {
                    Ok(()) => Code::Ok as i32,
                    Err(s) => s.code() as i32,
                };
                match which % 5 {
                    0 => code(
                        a.check_analytics_access(pb::CheckAnalyticsAccessRequest {
                            account_id: account,
                            user_id: user,
                            min_revision: 0,
                        })
                        .await
                        .map(drop),
                    ),
                    1 => code(
                        p.put_user(pb::PutUserRequest {
                            account_id: account,
                            user_id: user,
                            display_name: name,
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    ),
                    2 => code(
                        p.update_user_services(pb::UpdateUserServicesRequest {
                            account_id: account,
                            user_id: user,
                            edition,
                            analytics_tier: tier,
                            // Any text as a group's id, any number as its
                            // kind, sometimes beside the whole account.
                            supervisor_scope: (which % 2 == 0).then(|| pb::SupervisorScope {
                                whole_account: which % 4 == 0,
                                refs: vec![pb::ScopeRef {
                                    kind: tier.unwrap_or_default(),
                                    id: name,
                                }],
                            }),
                            ..Default::default()
                        })
                        .await
                        .map(drop),
                    ),
                    3 => code(
                        p.import_users(pb::ImportUsersRequest {
                            rows: vec![pb::UserRow {
                                account_id: account,
                                user_id: user,
                                display_name: name,
                                edition: edition.unwrap_or_default(),
                                analytics_tier: tier.unwrap_or_default(),
                                supervisor_scope: None,
                            }],
                            dry_run: which % 2 == 0,
                            request_id: String::new(),
                        })
                        .await
                        .map(drop),
                    ),
                    _ => code(
                        p.list_users(pb::ListUsersRequest {
                            account_id: account,
                            page_size: i32::from(which),
                            page_token: name,
                        })
                        .await
                        .map(drop),
                    ),
                }
            });
            prop_assert!(judged(code), "call {} answered code {code}", which % 5);
            Ok(())
        })
        .unwrap();
    rt.block_on(still_serving(&server));
    println!(
        "{} requests with random strings, each judged",
        executions.get()
    );
    assert_ran(executions.get(), 64);
}

#[test]
fn mutated_catalogues_parse_or_fail_with_a_line() {
    let text = entitled::catalogue::DEFAULT_TOML;
    let executions = std::cell::Cell::new(0u64);
    let edit = (
        any::<prop::sample::Index>(),
        0..40usize,
        prop_oneof!["", "[a-z_]{1,8}", "[\\[\\]=\"\n#., 0-9]{1,4}", ".{1,6}"],
    );
    runner(2000)
        .run(&proptest::collection::vec(edit, 1..4), |edits| {
            let mut mutated = text.to_owned();
            for (at, delete, insert) in edits {
                let mut start = at.index(mutated.len() + 1);
                while !mutated.is_char_boundary(start) {
                    start -= 1;
                }
                let mut end = (start + delete).min(mutated.len());
                while !mutated.is_char_boundary(end) {
                    end -= 1;
                }
                mutated.replace_range(start..end, &insert);
            }
            executions.set(executions.get() + 1);
            if let Err(e) = Catalogue::from_toml(&mutated, "fuzz") {
                let message = e.to_string();
                prop_assert!(
                    message.contains("line "),
                    "no line in {message:?} for\n{mutated}"
                );
            }
            Ok(())
        })
        .unwrap();
    println!(
        "{} mutated catalogues, each parsed or refused with a line",
        executions.get()
    );
    assert_ran(executions.get(), 2000);
}

#[test]
fn random_import_files_are_refused_row_by_row_never_a_panic() {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let line = prop_oneof![
        Just("account_id,user_id,display_name,edition,analytics_tier".to_owned()),
        Just("acme,ada,Ada,X8,supervisor".to_owned()),
        "[a-z,\"X0-9 ]{0,40}",
        ".{0,30}",
        Just("{\"account_id\":\"acme\",\"user_id\":\"ada\"}".to_owned()),
        "\\{[\"a-z_:,0-9 \\{\\}\\[\\]]{0,40}\\}",
    ];
    let file = (
        proptest::bool::ANY,
        proptest::collection::vec(line, 0..12),
        proptest::collection::vec(any::<u8>(), 0..8),
    );
    let executions = std::cell::Cell::new(0u64);
    runner(24)
        .run(&file, |(csv, lines, tail)| {
            let path = dir.path().join(if csv { "fuzz.csv" } else { "fuzz.jsonl" });
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(lines.join("\n").as_bytes()).unwrap();
            f.write_all(&tail).unwrap();
            drop(f);
            executions.set(executions.get() + 1);
            let out = common::process::output(
                std::process::Command::new(common::process::BIN)
                    .args(["import", "--dry-run", "--server"])
                    .arg(format!("http://{}", server.addr))
                    .arg(&path)
                    .env("ENTITLED_TOKEN", &server.secret),
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            prop_assert!(!stderr.contains("panicked"), "{stderr}");
            // 0 all good, 1 unreadable file, 3 rows refused.
            prop_assert!(
                matches!(out.status.code(), Some(0 | 1 | 3)),
                "exit {:?}: {stderr}",
                out.status.code()
            );
            Ok(())
        })
        .unwrap();
    rt.block_on(still_serving(&server));
    println!("{} random import files, none panicked", executions.get());
    assert_ran(executions.get(), 24);
}

/// Writes `bytes` on a fresh connection, then reads until the server closes
/// it or a second passes (a server that keeps a bad connection open is fine).
async fn send_raw(server: &Server, bytes: &[u8]) {
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let _ = tcp.write_all(bytes).await;
    let _ = tcp.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        use tokio::io::AsyncReadExt;
        let _ = tcp.read_to_end(&mut sink).await;
    })
    .await;
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
fn h2_frame(len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_and_grpc_frames_never_crash_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let authorization = format!("Bearer {}", server.secret);
    let check = "/entitled.v1.AccessService/CheckAnalyticsAccess";
    let request = pb::CheckAnalyticsAccessRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        min_revision: 0,
    }
    .encode_to_vec();
    let len = request.len() as u32;
    // gRPC framing inside a well-formed HTTP/2 stream.
    let grpc_cases: Vec<(&str, Vec<u8>, Option<Code>)> = vec![
        (
            "a declared length longer than the body",
            raw::frame(len + 100, &request),
            None,
        ),
        (
            "a declared length shorter than the body",
            raw::frame(len - 3, &request),
            None,
        ),
        (
            "a declared size of 4 GiB",
            raw::frame(u32::MAX, &request),
            Some(Code::OutOfRange),
        ),
        (
            "a declared size of 4 GiB and no body",
            raw::frame(u32::MAX, &[]),
            Some(Code::OutOfRange),
        ),
        ("a truncated prefix", vec![0, 0, 0], None),
        ("no message at all", Vec::new(), None),
        (
            "the compressed flag without an encoding",
            {
                let mut f = raw::frame(len, &request);
                f[0] = 1;
                f
            },
            None,
        ),
        (
            "an unknown flag",
            {
                let mut f = raw::frame(len, &request);
                f[0] = 0x80;
                f
            },
            None,
        ),
        (
            "two messages on a unary call",
            [raw::frame(len, &request), raw::frame(len, &request)].concat(),
            None,
        ),
    ];
    for (what, body, want) in grpc_cases {
        let answer = raw::call(
            server.addr,
            check,
            &[("authorization", &authorization)],
            body,
        )
        .await;
        match (&answer, want) {
            (Ok(a), Some(code)) => assert_eq!(a.grpc_status, Some(code as i32), "{what}: {a:?}"),
            (Err(e), Some(_)) => panic!("{what}: transport error {e}"),
            _ => {}
        }
        println!("{what}: {answer:?}");
        still_serving(&server).await;
    }
    // A declared 4 GiB message whose body keeps coming: refused from the
    // prefix, not buffered, with OUT_OF_RANGE (a reset stream or a closed
    // connection would not tell the caller why).
    let mut streaming = raw::frame(u32::MAX, &[]);
    streaming.extend(std::iter::repeat_n(0u8, 1 << 20));
    let answer = raw::call(
        server.addr,
        check,
        &[("authorization", &authorization)],
        streaming,
    )
    .await
    .unwrap_or_else(|e| panic!("1 MiB following a declared 4 GiB: transport error {e}"));
    println!("a declared size of 4 GiB, 1 MiB following: {answer:?}");
    assert_eq!(
        answer.grpc_status,
        Some(Code::OutOfRange as i32),
        "{answer:?}"
    );
    still_serving(&server).await;
    // Odd headers.
    let long = "x".repeat(64 * 1024);
    for (what, headers) in [
        (
            "a 64 KiB authorization header",
            vec![("authorization", long.as_str())],
        ),
        (
            "a malformed grpc-timeout",
            vec![
                ("authorization", authorization.as_str()),
                ("grpc-timeout", "99999999999999999999H"),
            ],
        ),
        (
            "an unknown grpc-encoding",
            vec![
                ("authorization", authorization.as_str()),
                ("grpc-encoding", "zstd-9000"),
            ],
        ),
    ] {
        let answer = raw::call(server.addr, check, &headers, raw::frame(len, &request)).await;
        println!("{what}: {answer:?}");
        still_serving(&server).await;
    }
    let unknown = raw::call(server.addr, "/entitled.v1.Nope/Nothing", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(unknown.grpc_status, Some(Code::Unimplemented as i32));
    // Broken HTTP/2 below gRPC.
    let settings = h2_frame(0, 4, 0, 0, &[]);
    let raw_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage instead of the preface",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\xfe".to_vec(),
        ),
        ("half a preface", PREFACE[..10].to_vec()),
        ("the preface, then garbage", [PREFACE, &[0xff; 64]].concat()),
        (
            "a SETTINGS frame of a bad length",
            [PREFACE, &h2_frame(5, 4, 0, 0, &[0; 5])].concat(),
        ),
        (
            "DATA on stream 0",
            [PREFACE, &settings, &h2_frame(4, 0, 0, 0, &[1, 2, 3, 4])].concat(),
        ),
        (
            "a HEADERS frame declaring 16 MiB, then nothing",
            [
                PREFACE,
                &settings,
                &h2_frame((1 << 24) - 1, 1, 4, 1, &[0; 100]),
            ]
            .concat(),
        ),
        (
            "HEADERS with a garbage header block",
            [PREFACE, &settings, &h2_frame(16, 1, 5, 1, &[0xff; 16])].concat(),
        ),
        (
            "a WINDOW_UPDATE of zero",
            [PREFACE, &settings, &h2_frame(4, 8, 0, 0, &[0; 4])].concat(),
        ),
        (
            "a frame of an unknown type",
            [PREFACE, &settings, &h2_frame(3, 0xee, 0, 1, &[1, 2, 3])].concat(),
        ),
    ];
    for (what, bytes) in raw_cases {
        send_raw(&server, &bytes).await;
        println!("{what}: server still serving");
        still_serving(&server).await;
    }
}
