//! A raw HTTP/2 client: gRPC calls with exactly the headers and body bytes a
//! test chooses (tonic's client would check, limit or enforce them itself).

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::{net::TcpStream, sync::mpsc};

/// What the server answered: `grpc-status` (from the headers of a
/// trailers-only answer, or from the trailers) and its message.
#[derive(Debug)]
pub struct Answer {
    pub grpc_status: Option<i32>,
    pub message: String,
    pub body: Vec<u8>,
}

/// A gRPC message frame: no compression, `len` as the declared length.
pub fn frame(declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One call to `path` with `headers` (besides the gRPC ones) and `body` as
/// the whole request body. An error is a transport failure (the server reset
/// the stream or closed the connection), not a gRPC status. A call not
/// answered within [`super::CALL_TIMEOUT`] fails the test.
pub async fn call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, h2::Error> {
    let what = format!("an answer to {path}");
    super::within(super::CALL_TIMEOUT, &what, async {
        let mut client = connect(addr).await?;
        let (response, mut send) = client.send_request(request(addr, path, headers), false)?;
        send.send_data(Bytes::from(body), true)?;
        answer(response).await
    })
    .await
}

/// A new HTTP/2 connection to `addr`, ready for a request.
async fn connect(addr: SocketAddr) -> Result<h2::client::SendRequest<Bytes>, h2::Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client.ready().await
}

fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

/// What the server answered to one call, read to its end.
async fn answer(response: h2::client::ResponseFuture) -> Result<Answer, h2::Error> {
    let response = response.await?;
    let mut answer = Answer {
        grpc_status: None,
        message: String::new(),
        body: Vec::new(),
    };
    let read = |answer: &mut Answer, headers: &http::HeaderMap| {
        if let Some(status) = headers.get("grpc-status") {
            answer.grpc_status = status.to_str().ok().and_then(|s| s.parse().ok());
        }
        if let Some(message) = headers.get("grpc-message") {
            answer.message = message.to_str().unwrap_or_default().to_owned();
        }
    };
    read(&mut answer, response.headers());
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.body.extend_from_slice(&chunk);
    }
    if let Some(trailers) = body.trailers().await? {
        read(&mut answer, &trailers);
    }
    Ok(answer)
}

/// `n` calls to `path` on one new connection that send their headers, then
/// `partial` (nothing if empty), and then nothing more, never ending their
/// stream: a caller that stalls. Each call's answer, when the server gives
/// one, arrives on the channel with the call's index (0 to n-1). A
/// connection carries at most as many calls as the server allows streams
/// (200 by default).
pub async fn stalled_calls(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    partial: &[u8],
    n: usize,
) -> mpsc::UnboundedReceiver<(usize, Result<Answer, h2::Error>)> {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let (tx, rx) = mpsc::unbounded_channel();
    for i in 0..n {
        client = client.ready().await.unwrap();
        let (response, mut send) = client
            .send_request(request(addr, path, headers), false)
            .unwrap();
        if !partial.is_empty() {
            send.send_data(Bytes::copy_from_slice(partial), false)
                .unwrap();
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let answer = answer(response).await;
            // Held until the answer: dropping it could end the stream.
            drop(send);
            let _ = tx.send((i, answer));
        });
    }
    rx
}

/// A call that has sent its headers and holds its request message back
/// until the test releases it. On the server it has begun (it holds a slot
/// of the concurrency limit, and its deadline runs) and waits for its
/// message: a call that lasts exactly as long as the test wants, so a test
/// can assert on the order of events instead of on how long they took.
/// (The server ends it after `--request-message-timeout`: raise that.)
pub struct Held {
    _client: h2::client::SendRequest<Bytes>,
    send: h2::SendStream<Bytes>,
    message: Vec<u8>,
    answer: tokio::task::JoinHandle<Result<Answer, h2::Error>>,
}

impl Held {
    /// Opens the call on a new connection; `message` is the body it sends
    /// when released.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        message: Vec<u8>,
    ) -> Held {
        let mut client = connect(addr).await.unwrap();
        let (response, send) = client
            .send_request(request(addr, path, headers), false)
            .unwrap();
        Held {
            _client: client,
            send,
            message,
            answer: tokio::spawn(answer(response)),
        }
    }

    /// Whether the server has answered the call (without its message).
    pub fn answered(&self) -> bool {
        self.answer.is_finished()
    }

    /// Sends the message, ends the request, and returns the answer.
    pub async fn release(mut self) -> Result<Answer, h2::Error> {
        let message = std::mem::take(&mut self.message);
        self.send.send_data(Bytes::from(message), true)?;
        self.answer_without_message().await
    }

    /// The answer, without sending the message (only the server's deadline
    /// or its message bound can end the call then).
    pub async fn answer_without_message(self) -> Result<Answer, h2::Error> {
        // Held until the answer: dropping it could end the stream.
        let _send = self.send;
        super::within(super::CALL_TIMEOUT, "an answer to a held call", self.answer)
            .await
            .unwrap()
    }
}
