//! weft's sidecar proxy.
//!
//! Three listeners: outbound (traffic from the local workload), inbound (traffic to
//! it) and admin (`/metrics`, `/ready`, `/live`, `POST /shutdown`). Each accepted
//! connection learns its destination (transparent: `SO_ORIGINAL_DST`; explicit: the
//! endpoints file), detects its protocol and is forwarded as HTTP (per-request
//! balancing, golden metrics) or opaque TCP.

mod accept;
pub mod admin;
pub mod app_probe;
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
mod inbound;
pub mod init;
pub mod io;
pub mod metrics;
mod outbound;
mod resolve;
pub mod retry;
pub mod routes;
pub mod tcp;
pub mod tls;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::config::{Args, Config, Mode};
use crate::destination::Destinations;
use crate::drain::Drain;
use crate::endpoints::Service;
use crate::identity::LocalIdentity;
pub use crate::inbound::authorize::DefaultPolicy as DefaultInboundPolicy;
use crate::metrics::{Direction, Metrics};
pub use crate::resolve::{Destination, ResolveError, Resolved};
use crate::upstream::{Connector, HttpUpstreams};

/// How often the endpoints file is checked for changes when inotify cannot be used
/// (`weft_core::watch` falls back to polling).
const ENDPOINTS_POLL_FALLBACK: Duration = Duration::from_millis(200);

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
    /// Who may call the application's ports (the inbound path's authorize step).
    pub(crate) inbound_policy: inbound::policy::InboundPolicies,
    /// One permit per connection served (inbound and outbound): at the limit, the
    /// listeners stop accepting until a connection closes.
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
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
        let max_connections = config
            .max_connections
            .unwrap_or_else(accept::connection_limit);
        let labels = &config.labels;
        let inbound_policy = inbound::policy::InboundPolicies::new(
            destinations.as_ref().map(|d| d.channel()),
            {
                let name = config
                    .policy_workload
                    .as_deref()
                    .unwrap_or(&labels.deployment);
                (!labels.namespace.is_empty() && !name.is_empty())
                    .then(|| format!("{}:{name}", labels.namespace))
            },
            config.default_inbound_policy,
            config
                .destination
                .as_ref()
                .map_or(Duration::from_secs(1), |d| d.first_update),
        );
        let shared = Arc::new(Shared {
            inbound_policy,
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

        tokio::spawn(accept::accept(
            inbound,
            ListenerKind::Inbound,
            shared.clone(),
            watch.clone(),
        ));
        tokio::spawn(accept::accept(
            outbound,
            ListenerKind::Outbound,
            shared.clone(),
            watch.clone(),
        ));
        for (service, listener) in service_listeners {
            tokio::spawn(accept::accept(
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
            config.app_probes.clone(),
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
        let reload_task = tokio::spawn(config.services.clone().watch(ENDPOINTS_POLL_FALLBACK));
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
