//! The `entitled` binary as an operator runs it: start-up errors, a second
//! process on the same directory, and acknowledged writes surviving SIGKILL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on any unexpected error"
)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use entitled::proto::v1::{
    self as pb, access_service_client::AccessServiceClient,
    catalogue_service_client::CatalogueServiceClient,
    provisioning_service_client::ProvisioningServiceClient,
};
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_entitled");

/// A running `entitled serve` and the address it reported.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Read the log until the server says where it listens; keep draining
        // afterwards so the pipe never fills.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("serving addr=").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not report its address");
        Server {
            child,
            addr: addr.parse().unwrap(),
        }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_to_exit(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
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
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("line 5: unknown tier `gold`"), "{stderr}");
    let (code, stderr) = run_to_exit(&["serve", "--analytics-data-delay", "soon"]);
    assert_eq!(code, 2, "a usage error: {stderr}");
    assert!(stderr.contains("--analytics-data-delay"), "{stderr}");
}

#[tokio::test]
async fn the_data_delay_flag_is_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--analytics-data-delay", "2s"]);
    let mut catalogue = CatalogueServiceClient::new(server.channel().await);
    let c = catalogue
        .get_catalogue(pb::GetCatalogueRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.data_delay,
        Some(prost_types::Duration {
            seconds: 2,
            nanos: 0
        })
    );
}

/// Writes acknowledged before a SIGKILL are all there after a restart.
#[tokio::test]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let channel = server.channel().await;
    let mut provisioning = ProvisioningServiceClient::new(channel.clone());
    provisioning
        .create_account(pb::CreateAccountRequest {
            account_id: "work".into(),
            display_name: String::new(),
            product_line: "work".into(),
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
    while acked.len() < 300 {
        acked.push(acked_rx.recv().await.unwrap());
    }
    server.kill();
    for w in writers {
        w.await.unwrap();
    }
    while let Ok(user) = acked_rx.try_recv() {
        acked.push(user);
    }

    let server = Server::start(dir.path(), &[]);
    let mut access = AccessServiceClient::new(server.channel().await);
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
