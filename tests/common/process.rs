//! The `entitled` binary run as a separate process, as an operator runs it.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use entitled::service::OPERATOR_TOKEN_FILE;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_entitled");

/// A running `entitled serve` and the address it reported.
pub struct Server {
    child: Child,
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
        let mut child = Command::new(BIN)
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(listen)
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
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("serving addr=").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("server did not report its address");
        let secret = std::fs::read_to_string(data_dir.join(OPERATOR_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_owned();
        Server {
            child,
            addr: addr.parse().unwrap(),
            secret,
            log,
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit status (at most
    /// [`super::STOP_TIMEOUT`]: a server that does not stop fails the test,
    /// and is killed).
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        match wait_within(&mut self.child, super::STOP_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "the server did not stop within {:?} of SIGTERM; its log:\n{}",
                super::STOP_TIMEOUT,
                self.log.lock().unwrap().join("\n")
            ),
        }
    }
}

/// The child's exit status, or None (the child killed) if it has not
/// exited within `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
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
    let status = wait_within(&mut child, COMMAND_TIMEOUT);
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

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
