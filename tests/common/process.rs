//! The `entitled` binary run as a separate process, as an operator runs it.
//! Spawning, reading its address, stopping and killing it is `child.rs`,
//! which `entitled-bench` shares.

#[path = "child.rs"]
pub mod child;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use child::{ServerChild, operator_token};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_entitled");

/// A running `entitled serve` and the address it reported.
pub struct Server {
    child: ServerChild,
    pub addr: SocketAddr,
    /// The operator token the first start wrote.
    pub secret: String,
    /// Every line the server has logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(listen)
            .args(extra)
            .env("RUST_LOG", "info")
            // The console's default port would be shared by every test.
            .env("ENTITLED_CONSOLE_LISTEN", "off")
            .stdout(Stdio::null());
        let child = ServerChild::spawn(&mut command, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        Server {
            addr: child.addr,
            log: Arc::clone(&child.log),
            secret: operator_token(data_dir).unwrap(),
            child,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn clients(&self) -> super::Clients {
        super::clients(&self.channel().await, Some(&self.secret))
    }

    /// The server's resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.child.rss_kib().unwrap()
    }

    /// SIGKILL.
    pub fn kill(self) {
        self.child.kill().unwrap();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(self) -> std::process::ExitStatus {
        self.child.terminate().unwrap()
    }
}
