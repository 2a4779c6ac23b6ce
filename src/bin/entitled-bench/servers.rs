//! The two servers, each in a child process of the bench (`serve`): the
//! baseline and `entitled`, and the handle the run holds on each.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

use entitled::{
    catalogue::Catalogue,
    client::Bearer,
    server::{Application, Config},
    service::OPERATOR_TOKEN_FILE,
};
use tonic::{
    Request, Response, Status,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    BoxError,
    cli::Kind,
    data::{account_name, services, user_name},
    proto::{
        self as bpb,
        baseline_service_server::{BaselineService, BaselineServiceServer},
    },
};

struct Baseline {
    /// account → user → the answer.
    map: HashMap<String, HashMap<String, bpb::LookupResponse>>,
}

#[tonic::async_trait]
impl BaselineService for Baseline {
    async fn lookup(
        &self,
        request: Request<bpb::LookupRequest>,
    ) -> Result<Response<bpb::LookupResponse>, Status> {
        let r = request.get_ref();
        let answer = self
            .map
            .get(&r.account_id)
            .and_then(|users| users.get(&r.user_id))
            .cloned()
            .unwrap_or_default();
        Ok(Response::new(answer))
    }
}

/// The `serve` child: serves until stdin closes.
pub fn serve(
    kind: Kind,
    dir: Option<PathBuf>,
    users: usize,
    per_account: usize,
) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        // Stops when the parent closes our stdin (or dies).
        let stop = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                let _ = std::io::stdin().read_line(&mut sink);
            })
            .await;
        };
        match kind {
            Kind::Entitled => {
                let dir = dir.ok_or("serve --kind entitled needs --dir")?;
                let config = Config::new("127.0.0.1:0".parse()?, dir, Catalogue::builtin()?);
                let app = Application::build(config).await?;
                announce(app.local_addr())?;
                app.run(stop).await?;
            }
            Kind::Baseline => {
                let mut map: HashMap<String, HashMap<String, bpb::LookupResponse>> = HashMap::new();
                for i in 0..users {
                    let (edition, tier) = services(i);
                    map.entry(account_name(i / per_account.max(1)))
                        .or_default()
                        .insert(
                            user_name(i),
                            bpb::LookupResponse {
                                allowed: tier.grants_access(),
                                edition: edition.to_owned(),
                                revision: 1,
                            },
                        );
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                announce(listener.local_addr()?)?;
                let (reporter, health) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status("", tonic_health::ServingStatus::Serving)
                    .await;
                Server::builder()
                    .add_service(health)
                    .add_service(BaselineServiceServer::new(Baseline { map }))
                    .serve_with_incoming_shutdown(
                        TcpIncoming::from(listener).with_nodelay(Some(true)),
                        stop,
                    )
                    .await?;
            }
        }
        Ok(())
    })
}

fn announce(addr: SocketAddr) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "addr {addr}")?;
    out.flush()?;
    Ok(())
}

/// The `serve` arguments of the baseline holding `users` users.
pub fn baseline_args(users: usize, per_account: usize) -> Vec<String> {
    vec![
        "--kind".into(),
        "baseline".into(),
        "--users".into(),
        users.to_string(),
        "--users-per-account".into(),
        per_account.to_string(),
    ]
}

/// The `serve` arguments of `entitled` on the store at `dir`.
pub fn entitled_args(dir: &Path) -> Vec<String> {
    vec![
        "--kind".into(),
        "entitled".into(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}

/// A server child process; stopped (gracefully) when dropped.
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pub addr: SocketAddr,
    /// From spawning the process to health answering SERVING.
    pub to_serving: Duration,
    /// For entitled: the operator token its first start wrote. Every call
    /// sends it, so the figures include authentication.
    pub bearer: Bearer,
}

impl ServerProcess {
    pub async fn start(pin: Option<usize>, args: &[String]) -> Result<Self, BoxError> {
        let started = Instant::now();
        let exe = std::env::current_exe()?;
        let mut command = match pin {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = command
            .arg("serve")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout from the server")?;
        let addr = tokio::task::spawn_blocking(move || -> Result<SocketAddr, BoxError> {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let addr = line
                .trim()
                .strip_prefix("addr ")
                .ok_or_else(|| format!("the server said `{}`, not its address", line.trim()))?;
            Ok(addr.parse()?)
        })
        .await??;
        let channel = connect(addr).await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        if status != ServingStatus::Serving as i32 {
            return Err(format!("the server is not SERVING (status {status})").into());
        }
        let to_serving = started.elapsed();
        let token = args
            .iter()
            .position(|a| a == "--dir")
            .and_then(|i| args.get(i + 1))
            .and_then(|dir| std::fs::read_to_string(Path::new(dir).join(OPERATOR_TOKEN_FILE)).ok());
        Ok(ServerProcess {
            child,
            stdin,
            addr,
            to_serving,
            bearer: Bearer::new(token.as_deref())?,
        })
    }

    /// The process id, for its CPU time.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory (VmRSS), in MiB.
    pub fn rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    }

    pub fn stop(mut self) -> Result<(), BoxError> {
        drop(self.stdin.take());
        let status = self.child.wait()?;
        if !status.success() {
            return Err(format!("server exited with {status}").into());
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // After a clean `stop` the child is already reaped; otherwise make
        // sure no server outlives the run.
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?)
}
