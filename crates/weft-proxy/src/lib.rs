//! weft's sidecar proxy.
//!
//! Three listeners: outbound (traffic from the local workload), inbound (traffic to
//! it) and admin (`/metrics`, `/ready`, `/live`, `POST /shutdown`). Each accepted
//! connection learns its destination (transparent: `SO_ORIGINAL_DST`; explicit: the
//! endpoints file), detects its protocol and is forwarded as HTTP (per-request
//! balancing, golden metrics) or opaque TCP.

pub mod admin;
pub mod backoff;
pub mod balance;
pub mod certify;
pub mod config;
pub mod destination;
pub mod detect;
pub mod drain;
pub mod endpoints;
pub mod http;
pub mod identity;
pub mod io;
pub mod metrics;
pub mod retry;
pub mod tcp;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::balance::Picked;
pub use crate::config::{Args, Config, Mode};
use crate::destination::Destinations;
use crate::detect::Protocol;
use crate::drain::{Drain, Watch};
use crate::endpoints::{Service, ServiceIndex};
use crate::http::ConnContext;
use crate::identity::LocalIdentity;
use crate::io::CountingIo;
use crate::metrics::{Direction, Metrics, Peer, TcpLabels, Tls};
use crate::upstream::{Connector, HttpUpstreams};

/// How often the endpoints file is checked for changes.
const ENDPOINTS_POLL: Duration = Duration::from_millis(200);

/// State every connection shares.
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub inbound: HttpUpstreams,
    pub outbound: HttpUpstreams,
    /// The proxy's own listening addresses, to refuse traffic that would loop.
    listening: Vec<SocketAddr>,
    /// This proxy's identity, when mTLS is configured.
    pub identity: Option<Arc<LocalIdentity>>,
    /// The controller's destination service, when configured.
    pub destinations: Option<Arc<Destinations>>,
    /// One permit per connection served (inbound and outbound): at the limit, the
    /// listeners stop accepting until a connection closes.
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
}

impl Shared {
    /// The endpoint for the next request (or connection) to `destination`, and its
    /// service name if it has one.
    pub fn resolve<'a>(
        &'a self,
        destination: &'a Destination,
        authority: &str,
    ) -> Result<Resolved, ResolveError> {
        let discovered = match (destination, &self.destinations) {
            (Destination::ByAuthority, Some(d))
                if self.config.services.by_authority(authority).is_none() =>
            {
                d.cached_authority(authority).map(Destination::Service)
            }
            _ => None,
        };
        // Explicit mode's fail-closed rule: an address literal in the mesh's pod
        // network that the controller has not answered for is refused, as in
        // `connection` for transparent destinations.
        if let (Destination::ByAuthority, None, Some(d), Some(config)) = (
            destination,
            &discovered,
            &self.destinations,
            &self.config.destination,
        ) {
            if let Ok(addr) = authority.parse::<SocketAddr>() {
                if config.in_mesh_network(addr.ip())
                    && self.config.services.by_authority(authority).is_none()
                    && !d.known_outside(authority)
                {
                    return Err(ResolveError::DiscoveryUnavailable(addr));
                }
            }
        }
        let resolved = discovered
            .as_ref()
            .unwrap_or(destination)
            .resolve(&self.config.services, authority)?;
        if self.is_own_listener(resolved.addr) {
            return Err(ResolveError::Loop(resolved.addr));
        }
        Ok(resolved)
    }

    /// [`Shared::resolve`], but a service with no endpoint to pick is waited for, within
    /// the failfast timeout ([`Service::pick_or_wait`]).
    pub async fn resolve_or_wait(
        &self,
        destination: &Destination,
        authority: &str,
    ) -> Result<Resolved, ResolveError> {
        match self.resolve(destination, authority) {
            Err(ResolveError::NoEndpoints(service)) => {
                match service.pick_or_wait(self.config.failfast_timeout).await {
                    Some(picked) if self.is_own_listener(picked.addr()) => {
                        Err(ResolveError::Loop(picked.addr()))
                    }
                    Some(picked) => Ok(Resolved {
                        addr: picked.addr(),
                        service: Some(service),
                        picked: Some(picked),
                    }),
                    None => Err(ResolveError::NoEndpoints(service)),
                }
            }
            other => other,
        }
    }

    /// Explicit mode: looks an authority the endpoints file does not know up in the
    /// destination service (waiting for its first answer, within bounds), so that
    /// [`Shared::resolve`] finds it. Does nothing otherwise.
    pub async fn discover(&self, destination: &Destination, authority: &str) {
        if let (Destination::ByAuthority, Some(d)) = (destination, &self.destinations) {
            if self.config.services.by_authority(authority).is_none()
                && d.cached_authority(authority).is_none()
            {
                d.resolve_authority(authority).await;
            }
        }
    }

    fn is_own_listener(&self, addr: SocketAddr) -> bool {
        self.listening.iter().any(|l| {
            l.port() == addr.port()
                && (l.ip() == addr.ip() || (l.ip().is_unspecified() && addr.ip().is_loopback()))
        })
    }
}

/// Where a connection or request is going.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A known service: balanced over its endpoints.
    Service(Arc<Service>),
    /// A single address (the original destination, or the local workload).
    Addr(SocketAddr),
    /// Unknown until an HTTP request names it (explicit outbound listener).
    ByAuthority,
    /// An address in the mesh's pod network the destination service has not answered
    /// for: refused rather than reached without mTLS.
    Unavailable(SocketAddr),
}

/// Where one request (or connection) goes.
#[derive(Debug)]
pub struct Resolved {
    pub addr: SocketAddr,
    pub service: Option<Arc<Service>>,
    /// The balancer's pick, to report the outcome on (none for a single address).
    pub picked: Option<Picked>,
}

impl Resolved {
    pub fn zone(&self) -> Option<&Arc<str>> {
        self.picked.as_ref().and_then(|p| p.zone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("service {} has no endpoints", .0.name())]
    NoEndpoints(Arc<Service>),
    #[error("no service is known for authority {0:?}")]
    UnknownAuthority(String),
    #[error("{0} is this proxy's own listener: the request would loop")]
    Loop(SocketAddr),
    #[error("{0} is in the mesh's pod network but the destination service has not said how to reach it (is the controller up?): refused rather than sent without mTLS")]
    DiscoveryUnavailable(SocketAddr),
}

impl Destination {
    /// The endpoint for the next request (or connection), and the service name if the
    /// destination is a service.
    pub fn resolve<'a>(
        &'a self,
        services: &'a ServiceIndex,
        authority: &str,
    ) -> Result<Resolved, ResolveError> {
        let single = |addr| Resolved {
            addr,
            service: None,
            picked: None,
        };
        let service = match self {
            Destination::Addr(addr) => return Ok(single(*addr)),
            Destination::Unavailable(addr) => {
                return Err(ResolveError::DiscoveryUnavailable(*addr))
            }
            Destination::Service(service) => service.clone(),
            Destination::ByAuthority => match services.by_authority(authority) {
                Some(service) => service,
                None => {
                    return authority
                        .parse::<SocketAddr>()
                        .map(single)
                        .map_err(|_| ResolveError::UnknownAuthority(authority.to_owned()))
                }
            },
        };
        match service.pick() {
            Some(picked) => Ok(Resolved {
                addr: picked.addr(),
                service: Some(service),
                picked: Some(picked),
            }),
            None => Err(ResolveError::NoEndpoints(service)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Destination(#[from] destination::DestinationError),
}

/// Which listener accepted a connection.
#[derive(Clone)]
enum ListenerKind {
    Inbound,
    Outbound,
    /// Explicit mode: a local port standing for one service.
    Service(Arc<Service>),
}

/// A running proxy.
pub struct Proxy {
    inbound_addr: SocketAddr,
    outbound_addr: SocketAddr,
    admin_addr: SocketAddr,
    service_addrs: Vec<(Arc<str>, SocketAddr)>,
    control: Arc<Control>,
    metrics: Arc<Metrics>,
}

/// Shutdown state shared by the proxy handle and the admin server.
pub(crate) struct Control {
    drain: Drain,
    grace: Duration,
    done: watch::Sender<bool>,
}

impl Control {
    /// Stops accepting, lets in-flight work finish within the grace period. Idempotent.
    pub(crate) fn shutdown(self: &Arc<Self>) {
        if self.drain.is_signaled() {
            return;
        }
        tracing::info!(grace = ?self.grace, "draining");
        self.drain.signal();
        let control = self.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(control.grace, control.drain.drained())
                .await
                .is_err()
            {
                tracing::warn!(grace = ?control.grace, "grace period over; closing connections still open");
            } else {
                tracing::info!("drained");
            }
            control.done.send_replace(true);
        });
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.drain.is_signaled()
    }
}

/// Accept queue length asked of the kernel (capped by `net.core.somaxconn`). Tokio's
/// `TcpListener::bind` asks for 128, which a burst of connections (a client opening
/// hundreds at once) overflows: the kernel then drops SYNs, and each dropped one costs
/// the caller a 1 s retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Proxy {
    /// Binds every listener and starts serving.
    pub async fn start(config: Config) -> Result<Proxy, StartError> {
        let bind = |what, addr| async move {
            listen(addr).map_err(|source| StartError::Bind { what, addr, source })
        };
        let inbound = bind("inbound", config.inbound_listen).await?;
        let outbound = bind("outbound", config.outbound_listen).await?;
        let admin = bind("admin", config.admin_listen).await?;
        let mut service_listeners = Vec::new();
        if config.mode == Mode::Explicit {
            for service in config.services.listeners() {
                let addr = service.listen.expect("listeners have a listen address");
                service_listeners.push((service.clone(), bind("service", addr).await?));
            }
        }
        let local = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        // Not the inbound listener: a request sent to it from the outbound side goes on
        // to the local workload (a pod calling its own Service in explicit mode, where
        // endpoints are inbound proxies), and config refuses an inbound forward to it.
        let mut listening = vec![local(&outbound), local(&admin)];
        listening.extend(service_listeners.iter().map(|(_, l)| local(l)));

        let metrics = Metrics::new(&config.labels);
        let identity = config.identity.as_ref().map(|i| i.local.clone());
        let destinations = match &config.destination {
            Some(d) => Some(Arc::new(
                Destinations::new(
                    d,
                    identity.clone(),
                    config.balance.clone(),
                    config.services.clone(),
                    metrics.destination.clone(),
                )?
                .with_max_followed(config.max_destinations),
            )),
            None => None,
        };
        let connector = |direction| {
            let connector = Connector::new(
                direction,
                config.connect_timeout,
                metrics.tcp.clone(),
                identity.clone(),
            );
            match config.mode {
                Mode::Transparent => connector.with_plaintext_to_self(),
                Mode::Explicit => connector,
            }
        };
        let max_connections = config.max_connections.unwrap_or_else(connection_limit);
        let shared = Arc::new(Shared {
            connections: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            max_connections,
            inbound: HttpUpstreams::new(connector(Direction::Inbound), config.pool_idle_timeout),
            outbound: HttpUpstreams::new(connector(Direction::Outbound), config.pool_idle_timeout),
            metrics: metrics.clone(),
            listening,
            identity: identity.clone(),
            destinations,
            config,
        });
        let config = &shared.config;
        let (drain, watch) = drain::channel();
        let control = Arc::new(Control {
            drain,
            grace: config.drain_grace,
            done: watch::channel(false).0,
        });

        let proxy = Proxy {
            inbound_addr: local(&inbound),
            outbound_addr: local(&outbound),
            admin_addr: local(&admin),
            service_addrs: service_listeners
                .iter()
                .map(|(s, l)| (s.name(), local(l)))
                .collect(),
            control: control.clone(),
            metrics: metrics.clone(),
        };
        tracing::info!(
            mode = ?config.mode,
            inbound = %proxy.inbound_addr,
            outbound = %proxy.outbound_addr,
            admin = %proxy.admin_addr,
            services = proxy.service_addrs.len(),
            "proxy listening"
        );

        tokio::spawn(accept(
            inbound,
            ListenerKind::Inbound,
            shared.clone(),
            watch.clone(),
        ));
        tokio::spawn(accept(
            outbound,
            ListenerKind::Outbound,
            shared.clone(),
            watch.clone(),
        ));
        for (service, listener) in service_listeners {
            tokio::spawn(accept(
                listener,
                ListenerKind::Service(service),
                shared.clone(),
                watch.clone(),
            ));
        }
        drop(watch);
        let admin_control = control.clone();
        let mut done = control.done.subscribe();
        let admin_task = tokio::spawn(admin::serve(
            admin,
            metrics.clone(),
            admin_control,
            identity.clone(),
            config.services.clone(),
            config.admin_metrics_from.clone().into(),
        ));
        let certify_task = config.identity.as_ref().and_then(|i| {
            let certify = i.certify.clone()?;
            Some(tokio::spawn(certify::run(
                i.local.clone(),
                certify,
                metrics.identity.clone(),
            )))
        });
        // An endpoints file is watched and reloaded when it changes.
        let reload_task = tokio::spawn(config.services.clone().watch(ENDPOINTS_POLL));
        let evict_task = tokio::spawn(evict_idle(Arc::downgrade(&shared)));
        let destinations = shared.destinations.clone();
        tokio::spawn(async move {
            let _ = done.wait_for(|d| *d).await;
            if let Some(d) = destinations {
                d.stop();
            }
            evict_task.abort();
            reload_task.abort();
            admin_task.abort();
            if let Some(task) = certify_task {
                task.abort();
            }
        });
        Ok(proxy)
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The local address of an explicit-mode service listener, by service name.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.service_addrs
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| *a)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts a graceful shutdown (as SIGTERM does).
    pub fn shutdown(&self) {
        self.control.shutdown();
    }

    /// Resolves when the proxy has shut down (drained, or the grace period ran out),
    /// whoever asked for it (this handle or `POST /shutdown`).
    pub async fn closed(&self) {
        let mut done = self.control.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
    }
}

/// How often idle pools and destinations are looked for: a fraction of the shorter
/// idle timeout, within bounds (so an entry lives at most a quarter longer).
fn eviction_interval(config: &Config) -> Duration {
    let shortest = config
        .pool_idle_timeout
        .min(config.destination_idle_timeout);
    (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
}

/// Drops what nothing used for its idle timeout: endpoint pools (both directions) and
/// destinations followed through the destination service. Runs until the proxy stops.
async fn evict_idle(shared: std::sync::Weak<Shared>) {
    let Some(every) = shared.upgrade().map(|s| eviction_interval(&s.config)) else {
        return;
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let pools = shared.inbound.evict_idle(now) + shared.outbound.evict_idle(now);
        let destinations = shared.destinations.as_ref().map_or(0, |d| {
            d.evict_idle(now, shared.config.destination_idle_timeout)
        });
        let routes = shared
            .config
            .metrics_retain_idle
            .map_or(0, |retain| shared.metrics.http.evict_idle(now, retain));
        if pools + destinations + routes > 0 {
            tracing::debug!(
                pools,
                destinations,
                routes,
                "idle upstream pools, destinations and route metrics dropped"
            );
        }
    }
}

/// The connection limit derived from the open file limit: two descriptors per
/// proxied connection, and some left for upstream pools, discovery and the admin port.
fn connection_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    let limit = soft.saturating_sub(256) / 2;
    usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .clamp(64, 1 << 20)
}

async fn accept(listener: TcpListener, kind: ListenerKind, shared: Arc<Shared>, mut watch: Watch) {
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
                let (kind, shared, watch) = (kind.clone(), shared.clone(), watch.clone());
                tokio::spawn(async move {
                    connection(socket, client, kind, shared, watch).await;
                    drop(permit);
                });
            }
            Err(error) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(
    socket: TcpStream,
    client: SocketAddr,
    kind: ListenerKind,
    shared: Arc<Shared>,
    watch: Watch,
) {
    let _ = socket.set_nodelay(true);
    let config = &shared.config;
    let (direction, destination) = match destination(&socket, &kind, config) {
        Ok(d) => d,
        Err(refused) => {
            let direction = match kind {
                ListenerKind::Inbound => Direction::Inbound,
                _ => Direction::Outbound,
            };
            shared.metrics.refused(direction, refused.reason());
            tracing::warn!(%client, reason = %refused, "connection refused");
            return;
        }
    };
    // An original destination the endpoints file does not know: the destination
    // service may (a Service VIP, a pod).
    // Fail closed: an address in the mesh's pod network is never reached in plaintext
    // because the destination service could not say whether (and as whom) it is meshed.
    let destination = match (&destination, &shared.destinations) {
        (Destination::Addr(addr), Some(d)) if direction == Direction::Outbound => {
            match d.resolve_addr(*addr).await {
                destination::Lookup::Service(service) => Destination::Service(service),
                destination::Lookup::Unanswered
                    if config
                        .destination
                        .as_ref()
                        .is_some_and(|c| c.in_mesh_network(addr.ip())) =>
                {
                    Destination::Unavailable(*addr)
                }
                destination::Lookup::Unanswered | destination::Lookup::Unknown => destination,
            }
        }
        _ => destination,
    };
    // Labelled once it is known whether the connection is mTLS.
    let mut io = CountingIo::unlabelled(socket);
    let tcp = shared.metrics.tcp.clone();
    let src_counters_of = move |tls, client_id: metrics::Str| {
        let tcp = tcp.clone();
        move || {
            tcp.open(TcpLabels {
                direction,
                peer: Peer::Src,
                tls,
                client_id,
            })
        }
    };
    let src_counters = {
        let of = src_counters_of.clone();
        move |tls| of(tls, metrics::Str::empty())
    };
    let peer = Accepted {
        client,
        direction,
        destination,
        tls: Tls::NoIdentity,
        client_id: None,
    };

    // Opaque ports skip protocol detection, except that an inbound proxy with an
    // identity still looks for mTLS from meshed callers (who speak first). A silent
    // plaintext caller then waits --detect-timeout, as with Linkerd; server-speaks-first
    // ports used by unmeshed callers belong in the iptables skip ports.
    let local = shared
        .identity
        .as_ref()
        .filter(|_| direction == Direction::Inbound);
    let opaque = peer.is_opaque(config);
    if opaque && local.is_none() {
        io.label(src_counters(Tls::NoIdentity));
        return dispatch(
            io,
            Protocol::Opaque,
            bytes::Bytes::new(),
            peer,
            shared,
            watch,
        )
        .await;
    }
    let deadline = tokio::time::Instant::now() + config.detect_timeout;
    let detected = match detect::detect(&mut io, config.detect_timeout).await {
        Ok(d) if !d.closed => d,
        closed_or_failed => {
            // Still a connection that was opened: count it.
            io.label(src_counters(Tls::NoIdentity));
            if let Err(error) = closed_or_failed {
                tracing::debug!(%client, %error, "connection failed during protocol detection");
            }
            return;
        }
    };
    let (protocol, prefix) = (detected.protocol, detected.prefix);

    // mTLS from a meshed client, addressed to this proxy's identity: terminate it, then
    // detect again what it carries.
    if let Some(local) =
        local.filter(|_| protocol == Protocol::Opaque && tls::looks_like_tls(&prefix))
    {
        let hello = match tls::read_client_hello(&mut io, prefix, deadline).await {
            Ok(hello) => hello,
            Err(error) => {
                io.label(src_counters(Tls::NoIdentity));
                tracing::debug!(%client, %error, "connection failed while reading a ClientHello");
                return;
            }
        };
        let ours = hello.server_name.as_deref() == Some(local.name().dns_name().as_str());
        if ours {
            // Labelled with the caller's identity once the handshake proved it; a
            // handshake that fails still counts, without one.
            io.label_on_drop(src_counters(Tls::Yes));
        } else {
            io.label(src_counters(Tls::NoIdentity));
        }
        if !ours {
            // TLS for someone else (the application's own): passed through untouched.
            return dispatch(io, Protocol::Opaque, hello.prefix, peer, shared, watch).await;
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(local.server_config());
        let handshake = acceptor.accept(io::PrefixedIo::new(hello.prefix, io));
        let stream = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                shared.metrics.tls_handshake_error(direction);
                tracing::info!(%client, %error, "mTLS handshake refused");
                return;
            }
            Err(_) => {
                shared.metrics.tls_handshake_error(direction);
                tracing::info!(%client, "mTLS handshake timed out");
                return;
            }
        };
        let client_id = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(identity::peer_identity);
        // The anchor signed it, but it must also name a workload of this mesh: a
        // certificate the CA issued for something else proves no caller identity.
        let trust_domain = local.name().trust_domain();
        let Some(client_id) = client_id.filter(|id| id.trust_domain() == trust_domain) else {
            shared.metrics.tls_handshake_error(direction);
            tracing::info!(%client, %trust_domain, "mTLS refused: the client certificate names no identity of this trust domain");
            return;
        };
        let mut stream = stream;
        stream.get_mut().0.get_mut().label(src_counters_of(
            Tls::Yes,
            metrics::Str(client_id.dns_name().into()),
        ));
        let peer = Accepted {
            tls: Tls::Yes,
            client_id: Some(client_id),
            ..peer
        };
        return detect_and_dispatch(stream, peer, shared, watch).await;
    }
    let protocol = if opaque { Protocol::Opaque } else { protocol };
    io.label(src_counters(Tls::NoIdentity));
    dispatch(io, protocol, prefix, peer, shared, watch).await
}

/// Who is on the other end of an accepted connection, and where it goes.
pub(crate) struct Accepted {
    client: SocketAddr,
    direction: Direction,
    destination: Destination,
    tls: Tls,
    client_id: Option<weft_core::identity::Identity>,
}

impl Accepted {
    fn is_opaque(&self, config: &Config) -> bool {
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

async fn detect_and_dispatch<I>(mut io: I, peer: Accepted, shared: Arc<Shared>, watch: Watch)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (protocol, prefix) = if peer.is_opaque(&shared.config) {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        match detect::detect(&mut io, shared.config.detect_timeout).await {
            Ok(d) if d.closed => return,
            Ok(d) => (d.protocol, d.prefix),
            Err(error) => {
                tracing::debug!(client = %peer.client, %error, "connection failed during protocol detection");
                return;
            }
        }
    };
    dispatch(io, protocol, prefix, peer, shared, watch).await
}

/// Forwards a connection whose protocol is known.
async fn dispatch<I>(
    io: I,
    protocol: Protocol,
    prefix: bytes::Bytes,
    peer: Accepted,
    shared: Arc<Shared>,
    watch: Watch,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!(client = %peer.client, direction = peer.direction.as_str(), ?protocol, destination = ?peer.destination, "connection accepted");
    let upstreams = match peer.direction {
        Direction::Inbound => &shared.inbound,
        Direction::Outbound => &shared.outbound,
    };
    match protocol {
        Protocol::Opaque => {
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
            tcp::forward(
                io,
                prefix,
                resolved,
                upstreams.connector(),
                shared.config.tcp_idle_timeout,
            )
            .await;
        }
        Protocol::Http1 | Protocol::Http2 => {
            let ctx = Arc::new(ConnContext {
                direction: peer.direction,
                client: peer.client,
                destination: peer.destination,
                tls: peer.tls,
                client_id: metrics::Str(
                    peer.client_id
                        .map(|id| id.dns_name())
                        .unwrap_or_default()
                        .into(),
                ),
                shared: shared.clone(),
                route_cache: Default::default(),
            });
            http::serve(io::PrefixedIo::new(prefix, io), protocol, ctx, watch).await;
        }
    }
}

/// Why an accepted connection is closed without being forwarded.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("inbound connection has no original destination and no --inbound-forward is set")]
    NoDestination,
    /// The inbound proxy forwards only to its own pod: anything else would make it an
    /// open relay (a caller reaching another pod as if it were this one).
    #[error("inbound connection for {0}, which is not an address of this pod: not relayed")]
    NotLocal(SocketAddr),
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Refused::NoDestination => "no_destination",
            Refused::NotLocal(_) => "not_local",
        }
    }
}

/// Whether `ip` is one of this host's (this pod's) own addresses: the kernel lets a
/// socket bind only to those (anything else is `EADDRNOTAVAIL`).
fn is_local_address(ip: std::net::IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Decides where an accepted connection goes.
fn destination(
    socket: &TcpStream,
    kind: &ListenerKind,
    config: &Config,
) -> Result<(Direction, Destination), Refused> {
    let local = socket.local_addr().ok();
    let original = || -> Option<SocketAddr> {
        let local = local?;
        let sock = socket2::SockRef::from(socket);
        let orig = if local.is_ipv4() {
            sock.original_dst_v4()
        } else {
            sock.original_dst_v6()
        };
        let orig = orig.ok().and_then(|a| a.as_socket())?;
        // Connections made straight to the listener were not redirected.
        (orig != local).then_some(orig)
    };
    match kind {
        ListenerKind::Service(service) => {
            Ok((Direction::Outbound, Destination::Service(service.clone())))
        }
        ListenerKind::Inbound => {
            let target = match config.mode {
                Mode::Transparent => match original() {
                    // Redirected to the address it arrived on (the usual case), or to
                    // another of the pod's own addresses.
                    Some(orig)
                        if local.is_some_and(|l| l.ip() == orig.ip())
                            || is_local_address(orig.ip()) =>
                    {
                        Some(orig)
                    }
                    Some(orig) => return Err(Refused::NotLocal(orig)),
                    None => config.inbound_forward,
                },
                Mode::Explicit => config.inbound_forward,
            };
            target
                .map(|t| (Direction::Inbound, Destination::Addr(t)))
                .ok_or(Refused::NoDestination)
        }
        ListenerKind::Outbound => {
            let target = match config.mode {
                Mode::Transparent => original(),
                Mode::Explicit => None,
            };
            let destination = match target {
                Some(addr) => match config.services.by_address(addr) {
                    Some(service) => Destination::Service(service),
                    None => Destination::Addr(addr),
                },
                None => Destination::ByAuthority,
            };
            Ok((Direction::Outbound, destination))
        }
    }
}
