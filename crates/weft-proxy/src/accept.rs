//! Accepting connections, and what both paths share once one is accepted: the accept
//! loop with its connection limit, the original destination, the source-side TCP
//! counters and the hand-off of a connection whose protocol is known to TCP or HTTP
//! forwarding. Where a connection goes from there is [`crate::inbound`]'s or
//! [`crate::outbound`]'s business.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::detect::Protocol;
use crate::drain::Watch;
use crate::http::ConnContext;
use crate::io::PrefixedIo;
use crate::metrics::{ConnCounters, Direction, Peer, Str, TcpLabels, TcpMetrics, Tls};
use crate::{http, tcp, Config, Destination, ListenerKind, ResolveError, Shared};

/// The connection limit derived from the open file limit: two descriptors per
/// proxied connection, and some left for upstream pools, discovery and the admin port.
pub(crate) fn connection_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let limit = soft.saturating_sub(256) / 2;
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .clamp(64, 1 << 20)
}

/// Accepts connections on one listener until drain, each served by its own task down
/// the listener's path.
pub(crate) async fn accept(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    mut watch: Watch,
) {
    let mut last_warned = None;
    loop {
        // Back-pressure at the connection limit: new connections wait in the listen
        // queue (the kernel's), not in the proxy, and the file table never fills.
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Once per minute at most: under a flood this is hit at every accept.
                if last_warned
                    .is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_secs(60))
                {
                    tracing::warn!(
                        limit = shared.max_connections,
                        "connection limit reached: new connections wait until one closes (--max-connections)"
                    );
                    last_warned = Some(tokio::time::Instant::now());
                }
                shared.metrics.connection_limit_reached();
                tokio::select! {
                    _ = watch.signaled() => break,
                    permit = shared.connections.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            _ = watch.signaled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((socket, client)) => {
                tokio::spawn(connection(
                    socket,
                    client,
                    kind.clone(),
                    shared.clone(),
                    watch.clone(),
                    permit,
                ));
            }
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What serves a connection for its life once its prelude (destination, protocol
/// detection, mTLS handshake, authorization) is done: HTTP request by request
/// ([`http::serve`]) or opaque TCP.
///
/// Boxed, and returned rather than awaited by the prelude: an async fn keeps its
/// arguments' slots and every layer's state for its whole life, so a connection's
/// task that awaited the serving future through those layers (connection → mTLS →
/// forward → dispatch → serve) held 2.9 KB per idle HTTP connection, most of it dead.
/// The task now holds a pointer to this, sized to hyper's connection state and the
/// drain watch (docs/reliability.md, "Memory per connection").
pub(crate) type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's first stage: what serves it, or `None` when it was closed (refused,
/// failed detection or handshake, not authorized).
type Prelude = Pin<Box<dyn Future<Output = Option<Serving>> + Send>>;

/// One accepted connection's task, in two stages, each boxed (see [`Serving`]): the
/// task holds the prelude while it runs, then only what serves the connection, and
/// the connection limit's slot until it is closed.
pub(crate) fn connection(
    socket: TcpStream,
    client: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Shared>,
    watch: Watch,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send {
    let _ = socket.set_nodelay(true);
    // Made before the task's future, which then captures only the box and the slot.
    let prelude: Prelude = match kind {
        ListenerKind::Inbound => {
            Box::pin(crate::inbound::connection(socket, client, shared, watch))
        }
        ListenerKind::Outbound => Box::pin(crate::outbound::connection(
            socket, client, None, shared, watch,
        )),
        ListenerKind::Service(service) => Box::pin(crate::outbound::connection(
            socket,
            client,
            Some(service),
            shared,
            watch,
        )),
    };
    async move {
        if let Some(serving) = prelude.await {
            serving.await;
        }
        drop(permit);
    }
}

/// Where the connection was going before iptables redirected it to the proxy
/// (`SO_ORIGINAL_DST`), and the address it arrived on. `None` for a connection made
/// straight to the listener.
pub(crate) fn original_dst(socket: &TcpStream) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let local = socket.local_addr().ok();
    let original = local.and_then(|local| {
        let sock = socket2::SockRef::from(socket);
        let orig = if local.is_ipv4() {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        };
        let orig = orig.ok().and_then(|a| a.as_socket())?;
        // Connections made straight to the listener were not redirected.
        (orig != local).then_some(orig)
    });
    (original, local)
}

/// Opens the source-side TCP counters of an accepted connection once its TLS state
/// (and the caller's identity) is known.
#[derive(Clone)]
pub(crate) struct SrcCounters {
    tcp: TcpMetrics,
    direction: Direction,
}

impl SrcCounters {
    pub(crate) fn new(shared: &Shared, direction: Direction) -> Self {
        SrcCounters {
            tcp: shared.metrics.tcp.clone(),
            direction,
        }
    }

    pub(crate) fn of(
        &self,
        tls: Tls,
        client_id: Str,
    ) -> impl FnOnce() -> ConnCounters + Send + 'static {
        let (tcp, direction) = (self.tcp.clone(), self.direction);
        move || {
            tcp.open(TcpLabels {
                direction,
                peer: Peer::Src,
                tls,
                client_id,
            })
        }
    }

    /// A connection without a caller identity (plaintext, or TLS not for the proxy).
    pub(crate) fn plain(&self) -> impl FnOnce() -> ConnCounters + Send + 'static {
        self.of(Tls::NoIdentity, Str::empty())
    }
}

/// Who is on the other end of an accepted connection, and where it goes.
pub(crate) struct Accepted {
    pub(crate) client: SocketAddr,
    pub(crate) direction: Direction,
    pub(crate) destination: Destination,
    pub(crate) tls: Tls,
    pub(crate) client_id: Option<weft_core::identity::Identity>,
}

impl Accepted {
    /// Whether the destination's port is opaque: forwarded as TCP, never detected.
    pub(crate) fn is_opaque(&self, config: &Config) -> bool {
        match &self.destination {
            Destination::Service(s) => {
                s.is_opaque()
                    || s.address
                        .is_some_and(|a| config.opaque_ports.contains(&a.port()))
            }
            Destination::Addr(a) | Destination::Unavailable(a) => {
                config.opaque_ports.contains(&a.port())
            }
            Destination::ByAuthority => false,
        }
    }
}

/// What forwards a connection whose protocol is known: opaque TCP to one endpoint, or
/// HTTP served request by request down the connection's path.
pub(crate) fn dispatch<I>(
    io: I,
    protocol: Protocol,
    prefix: bytes::Bytes,
    peer: Accepted,
    shared: Arc<Shared>,
    watch: Watch,
) -> Serving
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(client = %peer.client, direction = peer.direction.as_str(), ?protocol, destination = ?peer.destination, "connection accepted");
    match protocol {
        Protocol::Opaque => Box::pin(forward_opaque(io, prefix, peer, shared, watch)),
        Protocol::Http1 | Protocol::Http2 => {
            let ctx = Arc::new(ConnContext {
                direction: peer.direction,
                client: peer.client,
                destination: peer.destination,
                tls: peer.tls,
                client_id: Str(peer
                    .client_id
                    .map(|id| id.dns_name())
                    .unwrap_or_default()
                    .into()),
                shared,
                route_cache: Default::default(),
                authz_cache: Default::default(),
                pool_cache: Default::default(),
            });
            http::serve(PrefixedIo::new(prefix, io), protocol, ctx, watch)
        }
    }
}

/// Forwards an opaque connection as TCP to its destination's endpoint, until either
/// side closes it. The drain watch is only held: drain waits for the connection (up to
/// `--drain-grace`) but does not cut it.
async fn forward_opaque<I>(
    io: I,
    prefix: bytes::Bytes,
    peer: Accepted,
    shared: Arc<Shared>,
    _watch: Watch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let resolved = match shared.resolve_or_wait(&peer.destination, "").await {
        Ok(resolved) => resolved,
        Err(error) => {
            if let ResolveError::DiscoveryUnavailable(_) = error {
                shared
                    .metrics
                    .refused(peer.direction, "discovery_unavailable");
            }
            tracing::info!(client = %peer.client, %error, "opaque TCP connection closed: no destination");
            return;
        }
    };
    let upstreams = match peer.direction {
        Direction::Inbound => &shared.inbound,
        Direction::Outbound => &shared.outbound,
    };
    tcp::forward(
        io,
        prefix,
        resolved,
        upstreams.connector(),
        shared.config.tcp_idle_timeout,
    )
    .await;
}
