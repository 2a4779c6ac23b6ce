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
/// the stream or closed the connection), not a gRPC status.
pub async fn call(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, h2::Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let (response, mut send) = client.send_request(request(addr, path, headers), false)?;
    send.send_data(Bytes::from(body), true)?;
    answer(response).await
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
