//! I/O adapters: replaying bytes read during protocol detection, and counting bytes
//! for the `tcp_*` metrics.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::ConnCounters;

pin_project_lite::pin_project! {
    /// A stream whose first bytes were already read (during protocol detection) and
    /// are handed out again before the rest of the stream.
    pub struct PrefixedIo<I> {
        prefix: Bytes,
        #[pin]
        io: I,
    }
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        PrefixedIo { prefix, io }
    }

    /// The stream underneath.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.io
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release the detection buffer instead of holding it for the
                // connection's lifetime.
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// Counts bytes read and written on a connection into its `tcp_*` counters; the
    /// connection counts as closed when this is dropped. Until its labels are known
    /// (e.g. whether it is mTLS), bytes are tallied aside and handed over later.
    pub struct CountingIo<I> {
        #[pin]
        io: I,
        counters: Tally,
    }
}

impl<I> CountingIo<I> {
    pub fn new(io: I, counters: ConnCounters) -> Self {
        CountingIo {
            io,
            counters: Tally::Labelled(counters),
        }
    }

    /// Counts into a tally until [`CountingIo::label`] says where the bytes belong.
    pub fn unlabelled(io: I) -> Self {
        CountingIo {
            io,
            counters: Tally::Pending {
                read: 0,
                write: 0,
                fallback: None,
            },
        }
    }

    /// Opens the connection's counters (now that its labels are known) and adds the
    /// bytes seen so far. A second call is ignored.
    pub fn label(&mut self, open: impl FnOnce() -> ConnCounters) {
        if let Tally::Pending {
            read,
            write,
            fallback,
        } = &mut self.counters
        {
            // Labelled now: the fallback is not needed.
            fallback.take();
            let counters = open();
            counters.read.inc_by(*read);
            counters.write.inc_by(*write);
            self.counters = Tally::Labelled(counters);
        }
    }

    /// The labels the connection is counted under if it ends before
    /// [`CountingIo::label`] is called (an mTLS handshake that fails or times out: the
    /// caller's identity, a label, is known only after it).
    pub fn label_on_drop(&mut self, open: impl FnOnce() -> ConnCounters + Send + 'static) {
        if let Tally::Pending { fallback, .. } = &mut self.counters {
            *fallback = Some(Box::new(open));
        }
    }
}

type Fallback = Box<dyn FnOnce() -> ConnCounters + Send>;

enum Tally {
    Pending {
        read: u64,
        write: u64,
        fallback: Option<Fallback>,
    },
    Labelled(ConnCounters),
}

impl Drop for Tally {
    fn drop(&mut self) {
        if let Tally::Pending {
            read,
            write,
            fallback,
        } = self
        {
            if let Some(open) = fallback.take() {
                // Opened, counted and closed at once.
                let counters = open();
                counters.read.inc_by(*read);
                counters.write.inc_by(*write);
            }
        }
    }
}

impl Tally {
    fn read(&mut self, n: usize) {
        match self {
            Tally::Pending { read, .. } => *read += n as u64,
            Tally::Labelled(c) => {
                c.read.inc_by(n as u64);
            }
        }
    }

    fn write(&mut self, n: usize) {
        match self {
            Tally::Pending { write, .. } => *write += n as u64,
            Tally::Labelled(c) => {
                c.write.inc_by(n as u64);
            }
        }
    }
}

impl<I: AsyncRead> AsyncRead for CountingIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.counters.read(n);
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for CountingIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = res {
            this.counters.write(n);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            this.counters.write(n);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, Metrics, Peer, Str, TcpLabels, Tls};
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_connection_ended_before_its_labels_are_known_counts_under_its_fallback() {
        let metrics = Metrics::new(&Default::default());
        let services =
            crate::endpoints::ServiceIndex::parse(std::path::Path::new("e.yaml"), "services: []\n")
                .unwrap();
        let labels = |client_id: &str| TcpLabels {
            direction: Direction::Inbound,
            peer: Peer::Src,
            tls: Tls::Yes,
            client_id: client_id.into(),
        };
        let open = |client_id: &'static str| {
            let tcp = metrics.tcp.clone();
            move || tcp.open(labels(client_id))
        };
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"hello")
            .await
            .unwrap();
        // A handshake that never finished: counted (5 bytes) without an identity.
        let mut io = CountingIo::unlabelled(b);
        io.label_on_drop(open(""));
        let mut buf = [0u8; 5];
        io.read_exact(&mut buf).await.unwrap();
        drop(io);
        // One that did: under the identity only.
        let (_c, d) = tokio::io::duplex(64);
        let mut io = CountingIo::unlabelled(d);
        io.label_on_drop(open(""));
        io.label(open(
            "web.default.serviceaccount.identity.weft.cluster.local",
        ));
        drop(io);
        let text = metrics.encode(&services);
        let line = |name: &str, id: &str| {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains(&format!("client_id=\"{id}\"")))
                .map(|l| l.rsplit(' ').next().unwrap().to_owned())
        };
        assert_eq!(line("tcp_open_total", "").as_deref(), Some("1"), "{text}");
        assert_eq!(line("tcp_close_total", "").as_deref(), Some("1"), "{text}");
        assert_eq!(
            line("tcp_read_bytes_total", "").as_deref(),
            Some("5"),
            "{text}"
        );
        let web = "web.default.serviceaccount.identity.weft.cluster.local";
        assert_eq!(line("tcp_open_total", web).as_deref(), Some("1"), "{text}");
        assert_eq!(
            line("tcp_open_connections", web).as_deref(),
            Some("0"),
            "{text}"
        );
        assert_eq!(Str::empty(), Str::from(""));
    }

    #[tokio::test]
    async fn prefix_is_read_before_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world")
            .await
            .unwrap();
        drop(a);
        let mut io = PrefixedIo::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        io.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
