//! A server run as a child process: spawned, its address read from its log,
//! its memory read, stopped or killed. Shared by the tests (`process.rs`
//! runs the `entitled` binary with it) and `entitled-bench` (its `serve`
//! children; `src/bin/entitled-bench/main.rs` includes this file with
//! `#[path]`), so both handle a server process one way. It never panics:
//! each caller decides what a failure means.

use std::{
    io::{self, BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError, mpsc},
    time::Duration,
};

use entitled::service::OPERATOR_TOKEN_FILE;

/// What a server logs on stderr once it listens, followed by the address:
/// `entitled serve` logs it, and so does the bench's `serve`.
pub const SERVING: &str = "serving addr=";

/// A running server process and the address it reported. Killed when
/// dropped, so that no server outlives its test or run.
pub struct ServerChild {
    child: Child,
    pub addr: SocketAddr,
    /// Every line the server has logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl ServerChild {
    /// Spawns `command` with its stderr piped and waits, at most `wait`, for
    /// the line that says where it listens. Its log is read on a thread of
    /// its own until it ends, so the pipe never fills. Fails, with the exit
    /// status and the log, if the server exits or stays silent.
    pub fn spawn(command: &mut Command, wait: Duration) -> io::Result<ServerChild> {
        let mut child = command.stderr(Stdio::piped()).spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("the server's stderr is not a pipe"))?;
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(SERVING).nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                lock(&lines).push(line);
            }
        });
        let failed = match rx.recv_timeout(wait) {
            Ok(addr) => match addr.parse() {
                Ok(addr) => return Ok(ServerChild { child, addr, log }),
                Err(_) => format!("the server reported `{addr}`, not an address"),
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The log ended: the server has exited (the kill is then a
                // no-op) or closed its stderr (the kill keeps the wait short).
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => {
                        format!("the server exited ({status}) before it reported its address")
                    }
                    Err(e) => format!("the server ended its log before its address ({e})"),
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                format!("the server did not report its address within {wait:?}")
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let log = lock(&log).join("\n");
        Err(io::Error::other(format!("{failed}; its log:\n{log}")))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server has logged so far, one line each.
    pub fn log_text(&self) -> String {
        lock(&self.log).join("\n")
    }

    /// The server's resident memory (VmRSS), in KiB; none once it has
    /// exited, or without `/proc`.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL, then reaps it.
    pub fn kill(mut self) -> io::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM (a graceful stop), then waits for the exit status.
    pub fn terminate(mut self) -> io::Result<ExitStatus> {
        self.send_term()?;
        self.child.wait()
    }

    /// SIGTERM, then waits at most `limit` for the exit status; `None` (and
    /// the child killed) if it has not exited by then.
    pub fn terminate_within(mut self, limit: Duration) -> io::Result<Option<ExitStatus>> {
        self.send_term()?;
        Ok(wait_within(&mut self.child, limit))
    }

    fn send_term(&self) -> io::Result<()> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()?;
        if !sent.success() {
            return Err(io::Error::other(format!(
                "`kill -TERM {}` failed ({sent})",
                self.id()
            )));
        }
        Ok(())
    }
}

/// The child's exit status, or None (the child killed) if it has not exited
/// within `limit`.
pub fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        // A no-op for a child already reaped by `kill` or `terminate`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator token a server's first start wrote into `data_dir`.
pub fn operator_token(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(OPERATOR_TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|token| token.trim().to_owned())
        .map_err(|e| io::Error::new(e.kind(), format!("`{}`: {e}", path.display())))
}

/// The log, even if a thread panicked while holding it.
fn lock(log: &Mutex<Vec<String>>) -> std::sync::MutexGuard<'_, Vec<String>> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}
