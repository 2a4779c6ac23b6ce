//! The `entitled` binary run as a separate process, as an operator runs it.
//! Spawning, reading its address, stopping and killing it is `child.rs`,
//! which `entitled-bench` shares.

#[path = "child.rs"]
pub mod child;

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Output, Stdio},
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
        super::endpoint(format!("http://{}", self.addr))
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

    /// SIGTERM, then waits for the exit status (at most
    /// [`super::STOP_TIMEOUT`]: a server that does not stop fails the test,
    /// and is killed).
    pub fn terminate(self) -> std::process::ExitStatus {
        let log = Arc::clone(&self.log);
        match self.child.terminate_within(super::STOP_TIMEOUT).unwrap() {
            Some(status) => status,
            None => panic!(
                "the server did not stop within {:?} of SIGTERM; its log:\n{}",
                super::STOP_TIMEOUT,
                log.lock().unwrap().join("\n")
            ),
        }
    }
}

/// How long a command of the command line may run in a test (a backup, an
/// import, a restore: each takes well under a second here).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `command` to its end, as `Command::output` does, but fails the test
/// (after killing it) if it has not exited within [`COMMAND_TIMEOUT`].
/// Blocking: call it off the runtime's threads.
pub fn output(command: &mut Command) -> Output {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    // Drained on threads, so a command that writes a lot never blocks.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let status = child::wait_within(&mut child, COMMAND_TIMEOUT);
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "{command:?} did not exit within {COMMAND_TIMEOUT:?}; its stderr:\n{}",
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// `Command::output`, bounded: see [`output`].
pub trait OutputWithin {
    fn output_within(&mut self) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> Output {
        output(self)
    }
}
