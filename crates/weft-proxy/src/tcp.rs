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
    match copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%endpoint, sent, received, "TCP connection closed"),
        Err(error) => tracing::debug!(%endpoint, %error, "TCP connection ended with an error"),
    }
}

/// Bytes a tunnel moves at a time, each way.
const COPY_BUF: usize = 8 * 1024;

/// `tokio::io::copy_bidirectional`, except that a direction holds its buffer only while
/// bytes are in flight: an idle tunnel holds none (tokio's keeps two 8 KiB buffers for
/// the connection's life, half of an idle tunnel's memory). The price is an allocation
/// each time a direction wakes up after waiting for bytes.
async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_to_b, mut b_to_a) = (Transfer::default(), Transfer::default());
    std::future::poll_fn(|cx| {
        let sent = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let received = b_to_a.poll(cx, &mut *b, &mut *a)?;
        let (Poll::Ready(sent), Poll::Ready(received)) = (sent, received) else {
            return Poll::Pending;
        };
        Poll::Ready(Ok((sent, received)))
    })
    .await
}

/// One direction of a tunnel: copying, then shutting the writer down once the reader
/// ended, then done.
#[derive(Default)]
struct Transfer {
    /// `None` while no bytes are waiting to be written.
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    copied: u64,
    read_done: bool,
    need_flush: bool,
    shut_down: bool,
}

impl Transfer {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.shut_down {
            return Poll::Ready(Ok(self.copied));
        }
        loop {
            if self.pos == self.cap && !self.read_done {
                let buf = self
                    .buf
                    .get_or_insert_with(|| vec![0; COPY_BUF].into_boxed_slice());
                let mut read = ReadBuf::new(buf);
                match Pin::new(&mut *r).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        let n = read.filled().len();
                        if n == 0 {
                            self.read_done = true;
                            self.buf = None;
                        } else {
                            (self.pos, self.cap) = (0, n);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to write: let the buffer go while waiting.
                        self.buf = None;
                        if self.need_flush {
                            std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let buf = self.buf.as_deref().expect("bytes in flight have a buffer");
                let n =
                    std::task::ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.copied += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                if self.need_flush {
                    std::task::ready!(Pin::new(&mut *w).poll_flush(cx))?;
                    self.need_flush = false;
                }
                std::task::ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.shut_down = true;
                return Poll::Ready(Ok(self.copied));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_through_small_pipes_and_passes_half_close() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let copy = tokio::spawn(async move { copy_bidirectional(&mut a, &mut b).await });
        let up: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let sent = up.clone();
        let client = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        // The server answers only once it has seen the client's end of stream.
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up);
        server.write_all(&down).await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), down);
        let (sent, received) = copy.await.unwrap().unwrap();
        assert_eq!((sent, received), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn a_direction_waiting_for_bytes_holds_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let mut transfer = Transfer::default();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(transfer.poll(&mut cx, &mut a, &mut b).is_pending());
        assert!(transfer.buf.is_none(), "an idle direction kept its buffer");

        // Bytes arrive: copied, and the buffer goes again once it waits anew.
        let (mut client, mut a) = tokio::io::duplex(64);
        client.write_all(b"hello").await.unwrap();
        assert!(transfer.poll(&mut cx, &mut a, &mut b).is_pending());
        assert!(transfer.buf.is_none());
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
