//! The `entitled` binary as an operator runs it: start-up errors, a second
//! process on the same directory, and acknowledged writes surviving SIGKILL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::process::Command;

mod common;

use common::process::{BIN, Server};
use entitled::proto::v1 as pb;

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = common::process::output(
        Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "off")
            .env("ENTITLED_CONSOLE_LISTEN", "off"),
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_process_on_the_same_directory_exits_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Server::start(dir.path(), &[]);
    let (code, stderr) = run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_catalogue_stops_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("catalogue.toml");
    std::fs::write(
        &file,
        "data_delay = \"48h\"\n\n[[product_line]]\nid = \"work\"\neditions = [{ id = \"X1\", max_tier = \"gold\" }]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let (code, stderr) = run_to_exit(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--catalogue",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "a configuration error: {stderr}");
    assert!(stderr.contains("line 5: unknown tier `gold`"), "{stderr}");
    let (code, stderr) = run_to_exit(&["serve", "--analytics-data-delay", "soon"]);
    assert_eq!(code, 2, "a usage error: {stderr}");
    assert!(stderr.contains("--analytics-data-delay"), "{stderr}");
}

/// `--analytics-data-delay` is what the real binary's checks use: the
/// catalogue reports it, and a check's `data_available_at` is the account's
/// activation (its first tier) plus that delay, not the catalogue's 48 h.
#[tokio::test]
async fn the_data_delay_flag_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--analytics-data-delay", "90m"]);
    let c = server.clients().await;
    let catalogue = c
        .catalogue
        .clone()
        .get_catalogue(pb::GetCatalogueRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        catalogue.data_delay,
        Some(prost_types::Duration {
            seconds: 90 * 60,
            nanos: 0
        })
    );
    let mut p = c.provisioning.clone();
    p.create_account(pb::CreateAccountRequest {
        account_id: "acme".into(),
        product_line: "work".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.put_user(pb::PutUserRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    p.update_user_services(pb::UpdateUserServicesRequest {
        account_id: "acme".into(),
        user_id: "ada".into(),
        edition: Some("X8".into()),
        analytics_tier: Some(pb::AnalyticsTier::Supervisor as i32),
        ..Default::default()
    })
    .await
    .unwrap();
    let activated = p
        .get_account(pb::GetAccountRequest {
            account_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .analytics_activated_at
        .expect("the first tier activates the account");
    let check = c
        .access
        .clone()
        .check_analytics_access(pb::CheckAnalyticsAccessRequest {
            account_id: "acme".into(),
            user_id: "ada".into(),
            min_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(check.allowed, "{check:?}");
    assert_eq!(
        check.data_available_at,
        Some(prost_types::Timestamp {
            seconds: activated.seconds + 90 * 60,
            nanos: activated.nanos,
        }),
        "activated at {activated:?}"
    );
    // Activated just now, available in 90 minutes.
    assert!(!check.data_ready, "{check:?}");
}

/// Writes acknowledged before a SIGKILL are all there after a restart.
#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut provisioning = server.clients().await.provisioning;
    provisioning
        .create_account(pb::CreateAccountRequest {
            account_id: "work".into(),
            display_name: String::new(),
            product_line: "work".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // 16 writers run flat out; the process is killed while they are mid-call.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut writers = Vec::new();
    for w in 0..16 {
        let mut client = provisioning.clone();
        let acked = acked_tx.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let user = format!("w{w}-{i}");
                let put = client
                    .put_user(pb::PutUserRequest {
                        account_id: "work".into(),
                        user_id: user.clone(),
                        display_name: String::new(),
                        ..Default::default()
                    })
                    .await;
                if put.is_err() {
                    return;
                }
                let set = client
                    .update_user_services(pb::UpdateUserServicesRequest {
                        account_id: "work".into(),
                        user_id: user.clone(),
                        edition: Some("X4".into()),
                        analytics_tier: Some(pb::AnalyticsTier::Supervisor as i32),
                        expected_revision: None,
                        ..Default::default()
                    })
                    .await;
                if set.is_err() {
                    return;
                }
                let _ = acked.send(user);
            }
        }));
    }
    drop(acked_tx);
    let mut acked = Vec::new();
    common::within(common::CALL_TIMEOUT, "300 acknowledged writes", async {
        while acked.len() < 300 {
            acked.push(acked_rx.recv().await.expect("the writers stopped"));
        }
    })
    .await;
    server.kill();
    for w in writers {
        common::within(common::CALL_TIMEOUT, "a writer ending after the kill", w)
            .await
            .unwrap();
    }
    while let Ok(user) = acked_rx.try_recv() {
        acked.push(user);
    }

    let server = Server::start(dir.path(), &[]);
    let mut access = server.clients().await.access;
    for user in &acked {
        let answer = access
            .check_analytics_access(pb::CheckAnalyticsAccessRequest {
                account_id: "work".into(),
                user_id: user.clone(),
                min_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.tier,
            pb::AnalyticsTier::Supervisor as i32,
            "acknowledged {user} was lost"
        );
    }
}

#[test]
fn the_first_start_logs_the_token_file_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("operator.token"), "{log}");
    let secret_part = server.secret.split_once('.').unwrap().1.to_owned();
    assert!(!log.contains(&secret_part), "the log holds the secret");
    server.kill();
    // A later start says nothing of a token file.
    let server = Server::start(dir.path(), &[]);
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("operator.token"), "{log}");
}

#[test]
fn listening_beyond_loopback_without_tls_warns() {
    let dir = tempfile::tempdir().unwrap();
    let loopback = Server::start(dir.path(), &[]);
    assert!(
        !loopback
            .log
            .lock()
            .unwrap()
            .join("\n")
            .contains("without TLS")
    );
    loopback.kill();
    let open = Server::start(dir.path(), &["--listen", "0.0.0.0:0"]);
    let log = open.log.lock().unwrap().join("\n");
    assert!(
        log.contains("WARN") && log.contains("listening beyond loopback without TLS"),
        "{log}"
    );
}

#[test]
fn the_metrics_flag_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]);
    // Logged before "serving", so it is in the log by now.
    let addr = server
        .log
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.split("serving metrics on /metrics addr=").nth(1))
        .map(|a| a.trim().to_owned())
        .expect("the metrics address is logged");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(common::CALL_TIMEOUT)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    // The first start's operator token is the first write.
    assert!(answer.contains("\nentitled_store_revision 1\n"), "{answer}");
}
