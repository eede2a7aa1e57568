//! Upstream connections: opened with a deadline, counted in `tcp_*` metrics, and pooled
//! per endpoint (HTTP/1: idle keep-alive connections; HTTP/2: one multiplexed
//! connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use rustls::pki_types::ServerName;
use weft_core::identity::Identity;

use crate::identity::LocalIdentity;
use crate::io::CountingIo;
use crate::metrics::{Direction, Peer, TcpLabels, TcpMetrics, Tls};
use crate::retry::RequestBody;
pub use crate::tls::UpstreamIo;

/// Idle HTTP/1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Flow-control window of each stream on a shared upstream HTTP/2 connection: enough
/// for full speed on a LAN, small enough that a stalled caller holds little.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// Flow-control window of a shared upstream HTTP/2 connection: 64 stalled streams'
/// worth. It is also the most one connection buffers for callers that do not read.
const H2_CONNECTION_WINDOW: u32 = 64 * H2_STREAM_WINDOW;

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
        source: hyper::Error,
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
            Ok(Ok(io)) => Ok(UpstreamIo::Tls { io }),
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
    sender: http1::SendRequest<RequestBody>,
    pool: Arc<Pool>,
}

impl Reusable {
    pub fn give_back(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((self.sender, Instant::now()));
        }
    }
}

pub struct Pool {
    /// The endpoint's identity: its connections use mTLS when known.
    server: Option<Identity>,
    h1_idle: Mutex<Vec<(http1::SendRequest<RequestBody>, Instant)>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<RequestBody>>>,
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

    fn pool(&self, addr: SocketAddr, version: HttpVersion, server: Option<&Identity>) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry((addr, version, server.cloned()))
            .or_insert_with(|| {
                Arc::new(Pool {
                    server: server.cloned(),
                    h1_idle: Mutex::default(),
                    h2: tokio::sync::Mutex::default(),
                })
            })
            .clone()
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
        let pool = self.pool(addr, version, server);
        match version {
            HttpVersion::Http1 => self.send_h1(addr, pool, req).await,
            HttpVersion::Http2 => self.send_h2(addr, pool, req).await.map(|rsp| (rsp, None)),
        }
    }

    async fn send_h1(
        &self,
        addr: SocketAddr,
        pool: Arc<Pool>,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<Reusable>), SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle(&pool) {
                Some(mut sender) => {
                    // A connection whose last response just ended becomes ready as
                    // soon as its task has run; this waits for that, not for I/O.
                    if sender.ready().await.is_err() {
                        continue;
                    }
                    (sender, true)
                }
                None => match self.connect_h1(addr, pool.server.as_ref()).await {
                    Ok(sender) => (sender, false),
                    Err(error) => return Err(SendError::unsent(error, req)),
                },
            };
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok((rsp, Some(Reusable { sender, pool }))),
                Err(mut e) => match e.take_message() {
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

    fn take_idle(&self, pool: &Pool) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = pool.h1_idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
        server: Option<&Identity>,
    ) -> Result<http1::SendRequest<RequestBody>, UpstreamError> {
        let io = self.connector.connect(addr, server).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
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
        let mut sender = {
            let mut slot = pool.h2.lock().await;
            match slot.as_ref() {
                Some(s) if !s.is_closed() => s.clone(),
                _ => {
                    let io = match self.connector.connect(addr, pool.server.as_ref()).await {
                        Ok(io) => io,
                        Err(error) => return Err(SendError::unsent(error, req)),
                    };
                    // Many callers share this connection: a caller that stops reading
                    // holds at most one stream window of it, and it takes
                    // H2_CONNECTION_WINDOW / H2_STREAM_WINDOW such callers to stall it
                    // (hyper's defaults, 5 MB / 2 MB, stalled on the third).
                    let handshake = http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .initial_stream_window_size(H2_STREAM_WINDOW)
                        .initial_connection_window_size(H2_CONNECTION_WINDOW)
                        .keep_alive_interval(Duration::from_secs(10))
                        .keep_alive_timeout(Duration::from_secs(5))
                        .handshake(TokioIo::new(io))
                        .await;
                    let (sender, conn) = match handshake {
                        Ok(h) => h,
                        Err(source) => {
                            let error = UpstreamError::Handshake { addr, source };
                            return Err(SendError::unsent(error, req));
                        }
                    };
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(%addr, %error, "upstream HTTP/2 connection ended with an error");
                        }
                    });
                    *slot = Some(sender.clone());
                    sender
                }
            }
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
}
