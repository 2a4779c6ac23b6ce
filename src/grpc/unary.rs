//! A unary gRPC call on the HTTP level, for the one method hot enough to
//! need it: CheckAnalyticsAccess (`check_path.rs`).
//!
//! Why not tonic's `Grpc::unary`: it is built for every kind of call
//! (streams, compression, interceptors' metadata), and for a message of a
//! few dozen bytes its decoder, metadata conversion and encoder were most of
//! a check's cost above the empty handler's (callgrind: about 8,200
//! instructions of the check's 72,300, of which about 1,900 were its
//! futures being moved). Here a request is read from its body frames into
//! one buffer, decoded with prost, and the answer written as one data frame
//! and the trailers. What the protocol asks of a server is kept, with
//! tonic's codes and words:
//!
//! - a declared message longer than the limit is refused from its prefix
//!   (`OUT_OF_RANGE`), before the rest is read;
//! - a compressed message (no compression is enabled) is `UNIMPLEMENTED`
//!   when its `grpc-encoding` is named, `INTERNAL` when it is not;
//! - a missing or cut message is `INTERNAL`, as is a second message;
//! - errors go back trailers-only (`Status::into_http`), so `grpc/metrics.rs`
//!   sees their code in the headers as for every other call.
//!
//! Everything around the call (the `grpc-timeout` deadline, metrics, load
//! shedding, authentication) is as for every other method.

use std::{
    pin::{Pin, pin},
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderValue, header::CONTENT_TYPE};
use http_body::{Body as HttpBody, Frame, SizeHint};
use prost::{
    Message,
    bytes::{Buf, BufMut, Bytes, BytesMut},
};
use tonic::{Status, body::Body, codegen::StdError};

/// The gRPC message prefix: the compressed flag and the length.
const PREFIX: usize = 5;

const ENCODING: &str = "grpc-encoding";

/// The one request message of a unary call, decoded; at most `max` bytes.
pub async fn read_request<M, B>(request: http::Request<B>, max: usize) -> Result<M, Status>
where
    M: Message + Default,
    B: HttpBody,
    B::Error: Into<StdError>,
{
    if let Some(encoding) = request.headers().get(ENCODING)
        && encoding.as_bytes() != b"identity"
    {
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        ));
        status.metadata_mut().insert(
            "grpc-accept-encoding",
            tonic::metadata::MetadataValue::from_static("identity"),
        );
        return Err(status);
    }
    let mut body = pin!(request.into_body());
    // The message, with its prefix; its length once the prefix is here.
    let mut buf = BytesMut::new();
    let mut declared: Option<usize> = None;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                let status = Status::from_error(e.into());
                // A request the client cancelled has ended; as tonic does.
                if status.code() == tonic::Code::Cancelled {
                    break;
                }
                return Err(status);
            }
        };
        // Trailers on a request carry nothing a check reads.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if let Some(len) = declared
            && buf.len() >= PREFIX + len
            && data.has_remaining()
        {
            return Err(second_message());
        }
        buf.reserve(data.remaining());
        while data.has_remaining() {
            let chunk = data.chunk();
            buf.put_slice(chunk);
            let n = chunk.len();
            data.advance(n);
        }
        if declared.is_none() && buf.len() >= PREFIX {
            declared = Some(prefix(&buf, max)?);
        }
        if let Some(len) = declared
            && buf.len() > PREFIX + len
        {
            return Err(second_message());
        }
    }
    let Some(len) = declared else {
        return Err(if buf.is_empty() {
            Status::internal("Missing request message.")
        } else {
            Status::internal("Unexpected EOF decoding stream.")
        });
    };
    if buf.len() < PREFIX + len {
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    M::decode(&buf[PREFIX..PREFIX + len])
        .map_err(|e| Status::internal(format!("failed to decode Protobuf message: {e}")))
}

/// The message length a prefix declares, if the message may be read.
fn prefix(buf: &[u8], max: usize) -> Result<usize, Status> {
    match buf[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        f => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1), while sending request"
            )));
        }
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(Status::out_of_range(format!(
            "Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes"
        )));
    }
    Ok(len)
}

fn second_message() -> Status {
    Status::internal("a unary call carries one request message; this one carried more")
}

/// The answer of a unary call: its message, or its error trailers-only.
pub fn respond(answer: Result<impl Message, Status>) -> http::Response<Body> {
    let message = match answer {
        Ok(message) => message,
        Err(status) => return status.into_http(),
    };
    let len = message.encoded_len();
    let mut buf = Vec::with_capacity(PREFIX + len);
    buf.push(0);
    // A check's answer is a few hundred bytes; `u32` holds any message.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message.encode_raw(&mut buf);
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(OneMessage {
        data: Some(Bytes::from(buf)),
        trailers: Some(trailers),
    }));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// A response body of one data frame, then the trailers.
struct OneMessage {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl HttpBody for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
