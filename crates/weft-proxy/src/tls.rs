//! mTLS on the wire: reading a ClientHello's server name during detection, terminating
//! mTLS addressed to this proxy's identity, and the plaintext-or-TLS upstream stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::io::CountingIo;

/// The longest ClientHello we wait for.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;

/// Whether the first bytes are a TLS handshake record.
pub fn looks_like_tls(prefix: &[u8]) -> bool {
    prefix.len() >= 3 && prefix[0] == 0x16 && prefix[1] == 0x03 && prefix[2] <= 0x04
}

/// What the start of a TLS connection says.
pub struct ClientHelloInfo {
    /// The SNI, if the ClientHello is complete and carries one.
    pub server_name: Option<String>,
    /// Every byte read so far (to replay to whoever handles the connection).
    pub prefix: Bytes,
}

/// Reads until the ClientHello is complete (or not TLS after all, or the deadline).
pub async fn read_client_hello<I: AsyncRead + Unpin>(
    io: &mut I,
    prefix: Bytes,
    deadline: tokio::time::Instant,
) -> io::Result<ClientHelloInfo> {
    let mut acceptor = Acceptor::default();
    let mut buf = BytesMut::from(&prefix[..]);
    let mut fed = 0;
    loop {
        let mut unfed = &buf[fed..];
        while !unfed.is_empty() {
            match acceptor.read_tls(&mut unfed) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        fed = buf.len() - unfed.len();
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().map(str::to_owned);
                return Ok(ClientHelloInfo {
                    server_name,
                    prefix: buf.freeze(),
                });
            }
            Ok(None) if buf.len() < MAX_CLIENT_HELLO => {}
            // Not a ClientHello we understand: the bytes go on as they came.
            _ => {
                return Ok(ClientHelloInfo {
                    server_name: None,
                    prefix: buf.freeze(),
                })
            }
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => {
                return Ok(ClientHelloInfo {
                    server_name: None,
                    prefix: buf.freeze(),
                })
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection to an upstream endpoint: plaintext, or mTLS to a meshed proxy.
    #[project = UpstreamIoProj]
    pub enum UpstreamIo {
        Plain { #[pin] io: CountingIo<TcpStream> },
        Tls { #[pin] io: Box<tokio_rustls::client::TlsStream<CountingIo<TcpStream>>> },
    }
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.project() {
            UpstreamIoProj::Plain { io } => io.poll_read(cx, buf),
            UpstreamIoProj::Tls { io } => io.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.project() {
            UpstreamIoProj::Plain { io } => io.poll_write(cx, buf),
            UpstreamIoProj::Tls { io } => io.poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.project() {
            UpstreamIoProj::Plain { io } => io.poll_write_vectored(cx, bufs),
            UpstreamIoProj::Tls { io } => io.poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain { io } => io.is_write_vectored(),
            UpstreamIo::Tls { io } => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            UpstreamIoProj::Plain { io } => io.poll_flush(cx),
            UpstreamIoProj::Tls { io } => io.poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.project() {
            UpstreamIoProj::Plain { io } => io.poll_shutdown(cx),
            UpstreamIoProj::Tls { io } => io.poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_tls_records() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!looks_like_tls(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_tls(&[0x16, 0x03]));
    }
}
