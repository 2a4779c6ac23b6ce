//! A TCP proxy between replicas and PostgreSQL, to make the database's
//! faults without touching the server that other tests share: `cut` closes
//! every connection and refuses new ones (the database stopped), `restore`
//! lets them through again (it is back), and `arm` loses the connection
//! during the next COMMIT (its outcome unknown to the replica), or at a
//! statement of the test's choice.
//!
//! It reads the client's side as PostgreSQL's frontend protocol (a length
//! first, then messages of a type byte and a length) and the server's as
//! the backend protocol, so it can tell a COMMIT and its answer; bytes are
//! passed on unchanged.

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{oneshot, watch},
};

/// What the armed proxy does with the next COMMIT it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// Passes it on, waits until PostgreSQL answers that it committed, and
    /// closes both sides instead of passing the answer on: the write is
    /// committed, but the replica cannot know.
    LoseTheAnswer,
    /// Closes both sides instead of passing it on: PostgreSQL rolls the
    /// transaction back, and the replica cannot know that either.
    LoseTheCommit,
    /// Not about a COMMIT: closes both sides instead of passing on the
    /// next query, or statement to prepare, whose text holds this.
    CutAt(&'static str),
}

/// What became of a sprung trap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sprung {
    /// PostgreSQL answered the COMMIT with this command tag (`COMMIT`, or
    /// `ROLLBACK` for a transaction that had failed); the answer was lost.
    Answered(String),
    /// PostgreSQL answered with an error; lost too.
    Failed,
    /// The COMMIT (or the statement `Trap::CutAt` waited for) never
    /// reached PostgreSQL.
    NotSent,
}

struct Armed {
    trap: Trap,
    sprung: oneshot::Sender<Sprung>,
}

struct Shared {
    upstream: SocketAddr,
    /// Open (true) or cut; each cut also moves `cuts` on.
    open: watch::Sender<bool>,
    cuts: watch::Sender<u64>,
    armed: Mutex<Option<Armed>>,
}

/// A running proxy on 127.0.0.1; stopped when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        // Connections end with the cut; the listener with the task.
        self.shared.cuts.send_modify(|n| *n += 1);
    }
}

impl Proxy {
    /// A proxy to the PostgreSQL server of `url`, listening on a port of
    /// its own.
    pub async fn to(url: &str) -> Proxy {
        let config = tokio_postgres::Config::from_str(url).unwrap();
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream,
            open: watch::channel(true).0,
            cuts: watch::channel(0).0,
            armed: Mutex::new(None),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Proxy { addr, shared, task }
    }

    /// `url` (`postgres://USER@HOST:PORT/DB`) through this proxy.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.rsplit_once('@').unwrap();
        let (_, db) = rest.split_once('/').unwrap();
        format!("{scheme_user}@{}/{db}", self.addr)
    }

    /// The database stops: every connection through the proxy is closed,
    /// and new ones are closed as soon as they are made.
    pub fn cut(&self) {
        self.shared.open.send_replace(false);
        self.shared.cuts.send_modify(|n| *n += 1);
    }

    /// The database is back: new connections go through again.
    pub fn restore(&self) {
        self.shared.open.send_replace(true);
    }

    /// Springs `trap` on the next COMMIT (or statement) any connection
    /// sends; the answer says what became of it.
    pub fn arm(&self, trap: Trap) -> oneshot::Receiver<Sprung> {
        let (tx, rx) = oneshot::channel();
        *self.shared.armed.lock().unwrap() = Some(Armed { trap, sprung: tx });
        rx
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        // Subscribed before the look at `open`: a cut between the two
        // still ends this connection.
        let mut cuts = shared.cuts.subscribe();
        if !*shared.open.borrow() {
            drop(client);
            continue;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(shared.upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            tokio::select! {
                _ = relay(client, server, &shared) => {}
                _ = cuts.changed() => {}
            }
            // Both sockets are dropped here: closed.
        });
    }
}

/// Passes one connection's bytes both ways until either side closes, or a
/// trap closes both.
async fn relay(client: TcpStream, server: TcpStream, shared: &Shared) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    if startup(&mut from_client, &mut to_client, &mut to_server)
        .await
        .is_err()
    {
        return;
    }
    // Holds the trap's report while the answer to a trapped COMMIT is to
    // be caught rather than passed on.
    let catching: Mutex<Option<oneshot::Sender<Sprung>>> = Mutex::new(None);
    let frontend = async {
        loop {
            let Ok((kind, body)) = message(&mut from_client).await else {
                return;
            };
            let commit = kind == b'Q' && command(&body).eq_ignore_ascii_case("COMMIT");
            let springing = {
                let mut armed = shared.armed.lock().unwrap();
                let springs = match armed.as_ref().map(|a| a.trap) {
                    Some(Trap::LoseTheAnswer | Trap::LoseTheCommit) => commit,
                    Some(Trap::CutAt(text)) => matches!(kind, b'Q' | b'P') && contains(&body, text),
                    None => false,
                };
                if springs { armed.take() } else { None }
            };
            if let Some(Armed { trap, sprung }) = springing {
                if trap == Trap::LoseTheAnswer {
                    *catching.lock().unwrap() = Some(sprung);
                } else {
                    let _ = sprung.send(Sprung::NotSent);
                    return;
                }
            }
            if send(&mut to_server, kind, &body).await.is_err() {
                return;
            }
        }
    };
    let backend = async {
        loop {
            let Ok((kind, body)) = message(&mut from_server).await else {
                return;
            };
            // The trapped COMMIT's answer: its command tag, or an error
            // (earlier answers, were any still on their way, pass). The
            // connection ends here, before the replica hears of it.
            let outcome = match kind {
                b'C' => match command(&body) {
                    tag @ ("COMMIT" | "ROLLBACK") => Some(Sprung::Answered(tag.to_owned())),
                    _ => None,
                },
                b'E' => Some(Sprung::Failed),
                _ => None,
            };
            if let Some(outcome) = outcome
                && let Some(sprung) = catching.lock().unwrap().take()
            {
                let _ = sprung.send(outcome);
                return;
            }
            if send(&mut to_client, kind, &body).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = frontend => {}
        _ = backend => {}
    }
}

fn contains(body: &[u8], text: &str) -> bool {
    body.windows(text.len()).any(|w| w == text.as_bytes())
}

/// A query's or a command tag's text: up to its NUL, trimmed.
fn command(body: &[u8]) -> &str {
    let text = body.split(|b| *b == 0).next().unwrap_or(&[]);
    std::str::from_utf8(text)
        .unwrap_or("")
        .trim()
        .trim_end_matches(';')
}

/// The untyped start of a connection: the client's startup message, after
/// any requests for encryption, which the proxy declines itself (`N`), so
/// that everything after is plain messages both ways.
async fn startup(
    from_client: &mut OwnedReadHalf,
    to_client: &mut OwnedWriteHalf,
    to_server: &mut OwnedWriteHalf,
) -> std::io::Result<()> {
    const SSL_REQUEST: u32 = 80_877_103;
    const GSSENC_REQUEST: u32 = 80_877_104;
    loop {
        let len = from_client.read_u32().await?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        from_client.read_exact(&mut body).await?;
        let code = body
            .get(..4)
            .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            to_client.write_all(b"N").await?;
            continue;
        }
        to_server.write_u32(len).await?;
        to_server.write_all(&body).await?;
        return Ok(());
    }
}

/// One typed message: its type byte and its body.
async fn message(from: &mut OwnedReadHalf) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = from.read_u8().await?;
    let len = from.read_u32().await?;
    let mut body = vec![0; (len as usize).saturating_sub(4)];
    from.read_exact(&mut body).await?;
    Ok((kind, body))
}

async fn send(to: &mut OwnedWriteHalf, kind: u8, body: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(body.len() + 5);
    bytes.push(kind);
    bytes.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    bytes.extend_from_slice(body);
    to.write_all(&bytes).await
}
