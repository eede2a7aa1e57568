//! Upstream connections: opened with a deadline, counted in `tcp_*` metrics, and pooled
//! per endpoint (HTTP/1: idle keep-alive connections; HTTP/2: one multiplexed
//! connection).
//!
//! Requests that find no HTTP/2 connection to their endpoint share one attempt to open
//! it (connect, mTLS, handshake), which no lock is held across: each waits on the
//! attempt's outcome, and a failed attempt fails them all at once and lets the next
//! request try again. A pool that has no request in flight and was not used for the
//! pool idle timeout is removed by [`HttpUpstreams::evict_idle`] (closing its idle
//! connections), so the pools follow the endpoints in use, not every endpoint ever met;
//! in the pools kept, the HTTP/1 connections idle for that long are closed then too.
//!
//! Each request's pool is looked up in a map of every endpoint's (a lock, the key
//! hashed, the endpoint's identity cloned); a client connection keeps the last pool its
//! requests used ([`PoolCache`], weakly: it keeps no pool from eviction), so requests
//! that go where the previous one went skip the map.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt as _, Shared};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use rustls::pki_types::ServerName;
use weft_core::identity::Identity;

use crate::identity::LocalIdentity;
use crate::io::CountingIo;
use crate::metrics::{Direction, Peer, Str, TcpLabels, TcpMetrics, Tls};
use crate::retry::RequestBody;
pub use crate::tls::UpstreamIo;

/// An HTTP/1 connection's request body, boxed: hyper's channel to the connection's
/// task allocates room for 32 requests when the connection opens, 14 KiB with the body
/// inline (`RequestBody`, a retry's replay state), 8 KiB with a pointer to it.
type H1Body = Box<RequestBody>;
type H1Sender = http1::SendRequest<H1Body>;

/// Idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Flow-control window of each stream on a shared HTTP/2 connection (upstream, and
/// served: a calling proxy's carries many callers' requests): enough for full speed on
/// a LAN, small enough that a stalled reader holds little.
pub(crate) const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// Flow-control window of a shared HTTP/2 connection: 64 stalled streams' worth. It is
/// also the most one connection buffers for readers that do not read.
pub(crate) const H2_CONNECTION_WINDOW: u32 = 64 * H2_STREAM_WINDOW;
/// The largest head (request or response) an HTTP/2 connection takes, either way:
/// what hyper's HTTP/1 takes (its read buffer's limit, 8 KiB + 100 × 4 KiB), so a
/// request carried between proxies over HTTP/2 is refused for no head HTTP/1 accepted
/// (hyper's HTTP/2 default, 16 KiB, answered a 40 KB cookie with 431).
pub(crate) const H2_MAX_HEADER_LIST_SIZE: u32 = 8192 + 100 * 4096;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection to {addr} timed out after {after:?}")]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("connection to {addr} refused")]
    ConnectRefused { addr: SocketAddr },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        /// Shared by the requests that waited on the same connection attempt.
        source: Arc<hyper::Error>,
    },
    #[error("mTLS handshake with {addr} (expecting {identity}) failed: {source}")]
    TlsHandshake {
        addr: SocketAddr,
        identity: String,
        source: std::io::Error,
    },
    #[error("upstream {addr} failed: {source}")]
    Http {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// The same error, for another request that waited on the same connection
    /// attempt (I/O errors keep their kind and message).
    fn duplicate(&self) -> UpstreamError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            UpstreamError::ConnectTimeout { addr, after } => UpstreamError::ConnectTimeout {
                addr: *addr,
                after: *after,
            },
            UpstreamError::ConnectRefused { addr } => UpstreamError::ConnectRefused { addr: *addr },
            UpstreamError::Connect { addr, source } => UpstreamError::Connect {
                addr: *addr,
                source: io(source),
            },
            UpstreamError::Handshake { addr, source } => UpstreamError::Handshake {
                addr: *addr,
                source: source.clone(),
            },
            UpstreamError::TlsHandshake {
                addr,
                identity,
                source,
            } => UpstreamError::TlsHandshake {
                addr: *addr,
                identity: identity.clone(),
                source: io(source),
            },
            // Not an outcome of a connection attempt; kept as a connect error.
            UpstreamError::Http { addr, source } => UpstreamError::Connect {
                addr: *addr,
                source: std::io::Error::other(source.to_string()),
            },
        }
    }
}

/// A request that could not be sent, and the request itself when none of it reached
/// the endpoint (connect and handshake failures, a connection closed before it took
/// the request): such a request can be sent elsewhere as it is.
#[derive(Debug)]
pub struct SendError {
    pub error: UpstreamError,
    pub unsent: Option<Request<RequestBody>>,
}

impl SendError {
    fn unsent(error: UpstreamError, req: Request<RequestBody>) -> Self {
        SendError {
            error,
            unsent: Some(req),
        }
    }
}

/// Opens TCP connections to endpoints, with a deadline and metrics; to meshed
/// endpoints (whose identity is known) over mTLS.
#[derive(Clone)]
pub struct Connector {
    direction: Direction,
    timeout: Duration,
    metrics: TcpMetrics,
    identity: Option<Arc<LocalIdentity>>,
    /// Transparent mode: a connection to this pod's own address is not redirected to
    /// its inbound proxy (the proxy's own traffic never is), so it reaches the
    /// application directly and must stay plaintext. It never leaves the pod.
    plaintext_to_self: bool,
}

impl Connector {
    pub fn new(
        direction: Direction,
        timeout: Duration,
        metrics: TcpMetrics,
        identity: Option<Arc<LocalIdentity>>,
    ) -> Self {
        Connector {
            direction,
            timeout,
            metrics,
            identity,
            plaintext_to_self: false,
        }
    }

    /// Connections to this host's own address skip mTLS (see [`Connector`]).
    pub fn with_plaintext_to_self(mut self) -> Self {
        self.plaintext_to_self = true;
        self
    }

    /// Connects to `addr`; with mTLS when `server` (the endpoint's identity) is known
    /// and this proxy has an identity of its own.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server: Option<&Identity>,
    ) -> Result<UpstreamIo, UpstreamError> {
        let tls = match (server, &self.identity) {
            (Some(server), Some(local)) => Some((server, local)),
            _ => None,
        };
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr,
                    after: self.timeout,
                })
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(UpstreamError::ConnectRefused { addr })
            }
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        let to_self = || stream.local_addr().is_ok_and(|l| l.ip() == addr.ip());
        let tls = tls.filter(|_| !(self.plaintext_to_self && to_self()));
        let counters = self.metrics.open(TcpLabels {
            direction: self.direction,
            peer: Peer::Dst,
            tls: if tls.is_some() {
                Tls::Yes
            } else {
                Tls::NoIdentity
            },
            client_id: Str::empty(),
        });
        let io = CountingIo::new(stream, counters);
        let Some((server, local)) = tls else {
            return Ok(UpstreamIo::Plain { io });
        };
        let name =
            ServerName::try_from(server.dns_name()).map_err(|e| UpstreamError::TlsHandshake {
                addr,
                identity: server.dns_name(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let connector = tokio_rustls::TlsConnector::from(local.client_config());
        match tokio::time::timeout(self.timeout, connector.connect(name, io)).await {
            // Boxed: plaintext connections (the enum's other variant) need not carry
            // the TLS state's size.
            Ok(Ok(io)) => Ok(UpstreamIo::Tls { io: Box::new(io) }),
            Ok(Err(source)) => Err(UpstreamError::TlsHandshake {
                addr,
                identity: server.dns_name(),
                source,
            }),
            Err(_) => Err(UpstreamError::ConnectTimeout {
                addr,
                after: self.timeout,
            }),
        }
    }
}

type PoolKey = (SocketAddr, HttpVersion, Option<Identity>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http1,
    Http2,
}

/// Pooled HTTP clients for every endpoint one direction talks to.
pub struct HttpUpstreams {
    connector: Connector,
    idle_timeout: Duration,
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

/// An HTTP/1 connection lent out for one request. Dropping it closes the connection;
/// [`Reusable::give_back`] returns it to the pool, for when the response was read whole.
pub struct Reusable {
    sender: H1Sender,
    pool: Arc<Pool>,
}

impl Reusable {
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        // The time it went idle is also the pool's last use ([`Pool::last_used`]).
        let now = Instant::now();
        let mut idle = self.pool.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((self.sender, now));
        }
    }
}

/// The pool a client connection's last request used, for its next one (see the
/// module's documentation). Held weakly: a pool evicted is looked up again.
#[derive(Default)]
pub struct PoolCache(Mutex<Option<CachedPool>>);

struct CachedPool {
    addr: SocketAddr,
    version: HttpVersion,
    pool: Weak<Pool>,
}

/// The outcome of one attempt to open an HTTP/2 connection, shared by every request
/// that waited on it.
type H2Result = Result<http2::SendRequest<RequestBody>, Arc<UpstreamError>>;
type H2Attempt = Shared<BoxFuture<'static, H2Result>>;

/// An endpoint's HTTP/2 connection.
#[derive(Default)]
enum H2Slot {
    #[default]
    None,
    /// Being opened: requests wait on the attempt together.
    Connecting(H2Attempt),
    Ready(http2::SendRequest<RequestBody>),
}

pub struct Pool {
    /// The endpoint's identity: its connections use mTLS when known.
    server: Option<Identity>,
    h1_idle: Mutex<Vec<(H1Sender, Instant)>>,
    /// Locked only to look at or replace the slot, never across an await.
    h2: Mutex<H2Slot>,
    /// When a request last took this pool (the runtime's clock, which tests may
    /// pause). A connection given back is stamped in `h1_idle`.
    last_used: Mutex<Instant>,
}

impl Pool {
    /// Marks the pool used now, and returns now.
    fn touch(&self) -> Instant {
        let now = Instant::now();
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = now;
        now
    }

    /// Closes the idle HTTP/1 connections that were idle for `timeout` at `now` (or
    /// closed already), and returns when the pool was last used: taken by a request or
    /// given a connection back.
    fn prune_idle(&self, now: Instant, timeout: Duration) -> Instant {
        let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        let mut idle = self.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        // Newest last: given back in order.
        let newest = idle.last().map_or(last, |(_, since)| last.max(*since));
        idle.retain(|(sender, since)| {
            !sender.is_closed() && now.saturating_duration_since(*since) < timeout
        });
        newest
    }
}

/// Where a request gets its HTTP/2 connection: at once, or from an attempt to wait on.
enum H2Sender {
    Ready(http2::SendRequest<RequestBody>),
    Wait(H2Attempt),
}

impl HttpUpstreams {
    pub fn new(connector: Connector, idle_timeout: Duration) -> Self {
        HttpUpstreams {
            connector,
            idle_timeout,
            pools: Mutex::new(HashMap::new()),
        }
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    /// How long an unused pool (and an idle connection) is kept.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The endpoint's pool, marked used, and the time it was.
    fn pool(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
        server: Option<&Identity>,
    ) -> (Arc<Pool>, Instant) {
        let pool = self
            .pools()
            .entry((addr, version, server.cloned()))
            .or_insert_with(|| {
                Arc::new(Pool {
                    server: server.cloned(),
                    h1_idle: Mutex::default(),
                    h2: Mutex::default(),
                    last_used: Mutex::new(Instant::now()),
                })
            })
            .clone();
        let now = pool.touch();
        (pool, now)
    }

    /// [`HttpUpstreams::pool`] by way of the connection's cache.
    fn cached_pool(
        &self,
        cache: &PoolCache,
        addr: SocketAddr,
        version: HttpVersion,
        server: Option<&Identity>,
    ) -> (Arc<Pool>, Instant) {
        let mut cached = cache.0.lock().unwrap_or_else(|e| e.into_inner());
        let hit = cached
            .as_ref()
            .filter(|c| c.addr == addr && c.version == version)
            .and_then(|c| c.pool.upgrade())
            .filter(|pool| pool.server.as_ref() == server);
        if let Some(pool) = hit {
            let now = pool.touch();
            return (pool, now);
        }
        let (pool, now) = self.pool(addr, version, server);
        *cached = Some(CachedPool {
            addr,
            version,
            pool: Arc::downgrade(&pool),
        });
        (pool, now)
    }

    /// Endpoint pools held now.
    pub fn pool_count(&self) -> usize {
        self.pools().len()
    }

    /// Removes the pools that no request holds (none in flight, no HTTP/1 connection
    /// lent out) and that were not used for the idle timeout before `now`: their idle
    /// connections close (an HTTP/2 connection once its last stream ends). In the pools
    /// kept, HTTP/1 connections idle for the timeout are closed: after a burst, a pool
    /// still in use would otherwise keep the burst's connections (each with hyper's
    /// buffers and request channel) until the server closed them. Returns how many
    /// pools were removed.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let mut pools = self.pools();
        let before = pools.len();
        pools.retain(|_, pool| {
            let last_used = pool.prune_idle(now, self.idle_timeout);
            // The map's reference is the only one (a connection's cache holds a weak
            // one): nothing is using the pool, and nothing can start to without taking
            // the map's lock, held here, or a strong reference, counted here.
            Arc::strong_count(pool) > 1
                || now.saturating_duration_since(last_used) < self.idle_timeout
        });
        before - pools.len()
    }

    /// Idle HTTP/1 connections held now, in all pools.
    pub fn idle_count(&self) -> usize {
        self.pools()
            .values()
            .map(|pool| pool.h1_idle.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Sends `req` to the endpoint at `addr` over a pooled connection. An HTTP/1
    /// connection comes back with the response, to be returned to the pool with
    /// [`Reusable::give_back`] once the response body has been read. A request that
    /// never reached the endpoint comes back with the error.
    pub async fn send(
        &self,
        addr: SocketAddr,
        version: HttpVersion,
        server: Option<&Identity>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Reusable>), SendError> {
        let (pool, now) = self.pool(addr, version, server);
        match version {
            HttpVersion::Http1 => self.send_h1(addr, pool, now, req).await,
            HttpVersion::Http2 => self.send_h2(addr, pool, req).await.map(|rsp| (rsp, None)),
        }
    }

    /// [`HttpUpstreams::send`] for a client connection's request, whose pool is looked
    /// for in the connection's `cache` first.
    pub async fn send_cached(
        &self,
        cache: &PoolCache,
        addr: SocketAddr,
        version: HttpVersion,
        server: Option<&Identity>,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Reusable>), SendError> {
        let (pool, now) = self.cached_pool(cache, addr, version, server);
        // The same as `send`'s, not a shared async helper: each await of a nested future
        // copies it into its caller's.
        match version {
            HttpVersion::Http1 => self.send_h1(addr, pool, now, req).await,
            HttpVersion::Http2 => self.send_h2(addr, pool, req).await.map(|rsp| (rsp, None)),
        }
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        pool: Arc<Pool>,
        now: Instant,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Reusable>), SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle(&pool, now) {
                Some(mut sender) => {
                    // A connection whose last response just ended becomes ready as
                    // soon as its task has run; this waits for that, not for I/O.
                    if sender.ready().await.is_err() {
                        continue;
                    }
                    (sender, true)
                }
                // Boxed: a new connection (connect, mTLS, handshake) is the rare case,
                // and every request's future would otherwise carry its size.
                None => match Box::pin(self.connect_h1(addr, pool.server.as_ref())).await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(SendError::unsent(error, req)),
                },
            };
            match sender.try_send_request(req.map(Box::new)).await {
                Ok(rsp) => return Ok((rsp, Some(Reusable { sender, pool }))),
                Err(mut e) => match e.take_message().map(|r| r.map(|body| *body)) {
                    // A pooled connection closed by the server before it took the
                    // request: nothing was sent, so another connection may try.
                    Some(unsent) if reused => req = unsent,
                    unsent => {
                        let error = UpstreamError::Http {
                            addr,
                            source: e.into_error(),
                        };
                        return Err(SendError { error, unsent });
                    }
                },
            }
        }
    }

    fn take_idle(&self, pool: &Pool, now: Instant) -> Option<H1Sender> {
        let mut idle = pool.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && now.saturating_duration_since(since) < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
        server: Option<&Identity>,
    ) -> Result<H1Sender, UpstreamError> {
        let io = self.connector.connect(addr, server).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        // Made before the task: the task's future then holds the connection once, not
        // also the moved-from value it was made of.
        let conn = conn.with_upgrades();
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%addr, %error, "upstream HTTP/1 connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn send_h2(
        &self,
        addr: SocketAddr,
        pool: Arc<Pool>,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = match self.h2_sender(addr, &pool) {
            H2Sender::Ready(sender) => sender,
            // Outside any lock: a slow attempt delays only the requests that need its
            // connection, and they all learn its outcome at once.
            H2Sender::Wait(attempt) => match attempt.await {
                Ok(sender) => sender,
                Err(error) => return Err(SendError::unsent(error.duplicate(), req)),
            },
        };
        if let Err(source) = sender.ready().await {
            return Err(SendError::unsent(UpstreamError::Http { addr, source }, req));
        }
        sender.try_send_request(req).await.map_err(|mut e| {
            let unsent = e.take_message();
            let error = UpstreamError::Http {
                addr,
                source: e.into_error(),
            };
            SendError { error, unsent }
        })
    }

    /// The pool's open HTTP/2 connection, or the attempt to open one: the one in
    /// progress, else a new one (when there is no connection, it closed, or the last
    /// attempt failed).
    fn h2_sender(&self, addr: SocketAddr, pool: &Pool) -> H2Sender {
        let mut slot = pool.h2.lock().unwrap_or_else(|e| e.into_inner());
        let open = match &*slot {
            H2Slot::Ready(sender) => Some(sender.clone()),
            H2Slot::Connecting(attempt) => match attempt.peek() {
                None => return H2Sender::Wait(attempt.clone()),
                Some(Ok(sender)) => Some(sender.clone()),
                Some(Err(_)) => None,
            },
            H2Slot::None => None,
        };
        if let Some(sender) = open.filter(|s| !s.is_closed()) {
            *slot = H2Slot::Ready(sender.clone());
            return H2Sender::Ready(sender);
        }
        let attempt = self.h2_connect(addr, pool.server.clone());
        *slot = H2Slot::Connecting(attempt.clone());
        H2Sender::Wait(attempt)
    }

    /// Starts opening an HTTP/2 connection to `addr`. The attempt runs as a task of
    /// its own: it completes (within the connect timeout) even if every request
    /// waiting on it goes away, and its connection then serves the next ones.
    fn h2_connect(&self, addr: SocketAddr, server: Option<Identity>) -> H2Attempt {
        let connector = self.connector.clone();
        let task = tokio::spawn(async move {
            let io = connector.connect(addr, server.as_ref()).await?;
            // Many callers share this connection: a caller that stops reading holds at
            // most one stream window of it, and it takes H2_CONNECTION_WINDOW /
            // H2_STREAM_WINDOW such callers to stall it (hyper's defaults, 5 MB / 2 MB,
            // stalled on the third).
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .max_header_list_size(H2_MAX_HEADER_LIST_SIZE)
                .keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .handshake(TokioIo::new(io))
                .await
                .map_err(|source| UpstreamError::Handshake {
                    addr,
                    source: Arc::new(source),
                })?;
            tokio::spawn(async move {
                if let Err(error) = conn.await {
                    tracing::debug!(%addr, %error, "upstream HTTP/2 connection ended with an error");
                }
            });
            Ok(sender)
        });
        async move {
            match task.await {
                Ok(result) => result.map_err(Arc::new),
                Err(error) => Err(Arc::new(UpstreamError::Connect {
                    addr,
                    source: std::io::Error::other(format!("connection attempt failed: {error}")),
                })),
            }
        }
        .boxed()
        .shared()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use weft_test::TestServer;

    use super::*;
    use crate::metrics::Metrics;

    fn upstreams() -> HttpUpstreams {
        let connector = Connector::new(
            Direction::Outbound,
            Duration::from_secs(5),
            Metrics::new(&Default::default()).tcp.clone(),
            None,
        );
        HttpUpstreams::new(connector, Duration::from_secs(60))
    }

    fn get() -> Request<RequestBody> {
        Request::get("http://test/")
            .body(RequestBody::Replay {
                data: Vec::new().into_iter(),
                trailers: None,
                remaining: 0,
            })
            .unwrap()
    }

    /// Sends a GET and reads its response; the connection comes back lent out.
    async fn send(upstreams: &HttpUpstreams, cache: &PoolCache, addr: SocketAddr) -> Reusable {
        let (rsp, reusable) = upstreams
            .send_cached(cache, addr, HttpVersion::Http1, None, get())
            .await
            .map_err(|e| e.error)
            .unwrap();
        rsp.into_body().collect().await.unwrap();
        reusable.expect("an HTTP/1 connection")
    }

    #[tokio::test]
    async fn connections_idle_for_the_timeout_close_in_a_pool_still_in_use() {
        let app = TestServer::loopback("app").await;
        let upstreams = upstreams();
        let cache = PoolCache::default();
        // A burst: three connections at once, given back.
        let burst = [
            send(&upstreams, &cache, app.addr()).await,
            send(&upstreams, &cache, app.addr()).await,
            send(&upstreams, &cache, app.addr()).await,
        ];
        burst.into_iter().for_each(Reusable::give_back);
        assert_eq!(upstreams.idle_count(), 3);
        // The pool stays in use (a request in flight): kept, but its connections idle
        // for the timeout close.
        let in_flight = send(&upstreams, &cache, app.addr()).await;
        let later = Instant::now() + upstreams.idle_timeout();
        assert_eq!(upstreams.evict_idle(later), 0, "the pool is in use");
        assert_eq!(upstreams.pool_count(), 1);
        assert_eq!(upstreams.idle_count(), 0, "the burst's connections closed");
        // Idle for less than the timeout: kept.
        in_flight.give_back();
        assert_eq!(upstreams.evict_idle(Instant::now()), 0);
        assert_eq!(upstreams.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connections_cached_pool_is_the_maps_and_keeps_none_from_eviction() {
        let app = TestServer::loopback("app").await;
        let upstreams = upstreams();
        let cache = PoolCache::default();
        send(&upstreams, &cache, app.addr()).await.give_back();
        // The next request takes the connection the first gave back, through the cache.
        send(&upstreams, &cache, app.addr()).await.give_back();
        assert_eq!(upstreams.pool_count(), 1);
        assert_eq!(upstreams.idle_count(), 1, "one connection, reused");
        // The cache holds the pool weakly: unused, it is evicted, and the next request
        // finds (makes) the map's pool again instead of the evicted one.
        let later = Instant::now() + upstreams.idle_timeout();
        assert_eq!(upstreams.evict_idle(later), 1);
        assert_eq!(upstreams.pool_count(), 0);
        send(&upstreams, &cache, app.addr()).await.give_back();
        assert_eq!(upstreams.pool_count(), 1);
        assert_eq!(upstreams.idle_count(), 1);
    }
}
