//! Opaque TCP forwarding: bytes both ways, half-close honoured, one endpoint per
//! connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::balance::Outcome;
use crate::io::PrefixedIo;
use crate::upstream::Connector;
use crate::Resolved;

/// Forwards `client` (whose first bytes, `prefix`, were read during detection) to the
/// resolved endpoint until both sides have closed. The connection counts as pending on
/// the endpoint until it ends, and uses mTLS when the endpoint has an identity.
pub async fn forward<I>(
    client: I,
    prefix: Bytes,
    resolved: Resolved,
    connector: &Connector,
    idle_timeout: Option<Duration>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let endpoint = resolved.addr;
    let mut picked = resolved.picked;
    let server = picked.as_ref().and_then(|p| p.identity());
    let connected = connector.connect(endpoint, server).await;
    if let Some(p) = picked.as_mut() {
        p.report(if connected.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
    }
    let upstream = match connected {
        Ok(io) => io,
        Err(error) => {
            // Closing the client connection is all a TCP proxy can say.
            tracing::info!(%endpoint, %error, "TCP connection refused upstream");
            return;
        }
    };
    let client = PrefixedIo::new(prefix, client);
    let Some(idle_timeout) = idle_timeout else {
        copy(client, upstream, endpoint).await;
        drop(picked);
        return;
    };
    // Idle: no byte read from either side for `idle_timeout`.
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let client = Activity::new(client, start, last.clone());
    let upstream = Activity::new(upstream, start, last.clone());
    let copied = copy(client, upstream, endpoint);
    tokio::pin!(copied);
    let mut check = start + idle_timeout;
    loop {
        tokio::select! {
            () = &mut copied => break,
            () = tokio::time::sleep_until(check) => {
                let seen = start + Duration::from_millis(last.load(Ordering::Relaxed));
                if seen + idle_timeout <= Instant::now() {
                    tracing::debug!(%endpoint, idle = ?idle_timeout, "TCP connection idle: closed");
                    break;
                }
                check = seen + idle_timeout;
            }
        }
    }
    drop(picked);
}

async fn copy<C, U>(mut client: C, mut upstream: U, endpoint: std::net::SocketAddr)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%endpoint, sent, received, "TCP connection closed"),
        Err(error) => tracing::debug!(%endpoint, %error, "TCP connection ended with an error"),
    }
}

/// Notes when bytes were last read through it (milliseconds since `start`).
struct Activity<I> {
    io: I,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<I> Activity<I> {
    fn new(io: I, start: Instant, last: Arc<AtomicU64>) -> Self {
        Activity { io, start, last }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Activity<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(ms, Ordering::Relaxed);
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Activity<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
