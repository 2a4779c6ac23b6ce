//! `Unvectored`: a connection that tells HTTP/2 it has no vectored writes,
//! so that an answer of up to 1 KiB goes out in one write with its headers
//! and trailers.
//!
//! Why: h2 copies a DATA frame into its write buffer only when it is
//! shorter than its "chain threshold" (256 bytes on a connection with
//! vectored writes, 1,024 without); a longer one is chained, and h2 must
//! write it out before it can buffer the next frame. A check's full answer
//! is about 590 bytes, so with vectored writes every check cost two
//! `writev`s (the headers and the answer, then the trailers) where a small
//! answer costs one (strace: 99,998 against 50,004 for 50,000 checks),
//! and the second write, with its TCP segment and its wake-up of the
//! reader, was most of what a check cost above the empty handler (h2load:
//! 15 µs of server CPU a check against 10). Without vectored writes the
//! answer is copied (under 1 KiB, a few hundred instructions) and sent in
//! one write. Larger frames (listings, backups) are still chained.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

pub struct Unvectored(pub TcpStream);

impl AsyncRead for Unvectored {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Unvectored {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for Unvectored {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}
