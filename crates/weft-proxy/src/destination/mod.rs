//! Endpoints from the controller's destination service (`Destination.Get` of the
//! linkerd2-proxy-api protocol, gRPC over TLS).
//!
//! A destination the proxy meets for the first time (transparent mode: the original
//! `ip:port` of an outbound connection; explicit mode: an HTTP authority not in the
//! endpoints file) is looked up once and then followed by a background stream: `Add`
//! and `Remove` change the [`Service`]'s endpoints in place (its balancer, and what it
//! learnt of the endpoints that stay, survive), `NoEndpoints { exists: false }` makes
//! it unknown (connections go to their original destination). The first connection
//! waits for the first answer at most `first_update` (1 s by default), then goes to
//! its original destination.
//!
//! When the stream fails (the controller is down or restarting), the proxy keeps the
//! endpoints it has and reconnects with backoff; the new stream's first message
//! replaces them, as the protocol says.
//!
//! A destination is followed while it is used: one not looked up for the idle timeout
//! (`--destination-idle-timeout`, 10 minutes) whose service no connection holds is
//! forgotten by [`Destinations::evict_idle`] (its stream closed, its service unlisted);
//! the next connection to it looks it up again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use linkerd2_proxy_api::destination as api;
use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use linkerd2_proxy_api::destination::update::Update as Kind;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use weft_core::identity::Identity;

use crate::backoff::Backoff;
use crate::balance::{BalanceConfig, EndpointMeta};
use crate::endpoints::{Service, ServiceIndex};
use crate::identity::LocalIdentity;

mod connector;
mod metrics;

use connector::ControllerConnector;
pub use metrics::{DestinationMetrics, LookupLabels, UpdateLabels};

/// Backoff between attempts to reopen a failed stream.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Retry pace when the controller serves no destination service at all.
const UNSERVED_BACKOFF: Duration = Duration::from_secs(30);

/// Where and how to reach the destination service.
#[derive(Clone, Debug)]
pub struct DestinationConfig {
    /// The controller's gRPC address, `host:port`.
    pub controller: String,
    /// The controller's identity (its TLS server name).
    pub controller_name: String,
    /// The trust anchors (PEM) the controller's certificate must chain to.
    pub anchors_pem: Vec<u8>,
    /// How long a connection to a destination met for the first time waits for the
    /// controller's first answer.
    pub first_update: Duration,
    /// The mesh's pod networks: a destination in them whose lookup is unanswered is
    /// refused (fail closed) instead of being reached in plaintext.
    pub mesh_networks: Vec<ipnet::IpNet>,
}

impl DestinationConfig {
    /// The networks Kubernetes clusters usually give pods and Services (private and
    /// carrier-grade NAT ranges, IPv6 unique local) plus weft's local mesh
    /// (198.18.0.0/15), as Linkerd's default `clusterNetworks`.
    pub const DEFAULT_MESH_NETWORKS: &'static str =
        "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,198.18.0.0/15,fd00::/8";

    /// [`Self::DEFAULT_MESH_NETWORKS`], parsed.
    pub fn default_mesh_networks() -> Vec<ipnet::IpNet> {
        Self::DEFAULT_MESH_NETWORKS
            .split(',')
            .filter_map(|n| n.parse().ok())
            .collect()
    }

    /// Whether `ip` is in the mesh's pod networks.
    pub fn in_mesh_network(&self, ip: std::net::IpAddr) -> bool {
        self.mesh_networks.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error("invalid controller address {0:?} for --destination: {1}")]
    Address(String, tonic::transport::Error),
    #[error("invalid controller name {0:?} (--controller-name): {1}")]
    ControllerName(String, String),
    #[error("the destination service's trust anchors: {0}")]
    Anchors(String),
}

/// What is known of one destination.
#[derive(Clone, Debug)]
pub(crate) enum Known {
    /// No answer yet.
    Pending,
    /// The controller does not know it (or cannot resolve such names): connections go
    /// to their original destination.
    Unknown,
    Service(Arc<Service>),
}

/// One destination followed by a stream.
struct Entry {
    created: Instant,
    /// When it was last looked up (the runtime's clock, which tests may pause).
    last_used: Mutex<tokio::time::Instant>,
    state: watch::Receiver<Known>,
    task: tokio::task::JoinHandle<()>,
    /// Follows its routes (`OutboundPolicies.Watch`).
    routes_task: tokio::task::JoinHandle<()>,
}

impl Entry {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }

    /// Whether it can be forgotten at `now`: unused for `idle`, and its service (if
    /// any) held by nothing but the cache (the state and the index's list), so no
    /// connection loses the endpoint updates it balances over.
    fn is_idle(&self, now: tokio::time::Instant, idle: Duration) -> bool {
        let last_used = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(last_used) < idle {
            return false;
        }
        match &*self.state.borrow() {
            Known::Service(s) => Arc::strong_count(s) <= 2,
            Known::Pending | Known::Unknown => true,
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
        self.routes_task.abort();
    }
}

/// The destinations this proxy has met, each followed by its own stream.
pub struct Destinations {
    client: DestinationClient<Channel>,
    /// The connection itself, for the `OutboundPolicies` (routes) and inbound policy
    /// clients.
    channel: Channel,
    balance: Arc<BalanceConfig>,
    /// Discovered services are listed there too (for `balancer_endpoints`).
    services: ServiceIndex,
    first_update: Duration,
    metrics: DestinationMetrics,
    cache: Mutex<HashMap<String, Arc<Entry>>>,
    /// Most destinations followed at once ([`Destinations::with_max_followed`]).
    max_followed: usize,
}

/// `--max-destinations`' default.
pub const DEFAULT_MAX_FOLLOWED: usize = 10_000;

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations").finish_non_exhaustive()
    }
}

impl Destinations {
    /// A client of the destination service (connecting lazily, on the first lookup).
    /// The controller serves only mesh workloads: connections present `identity`'s
    /// current certificate, so discovery works once the proxy has its first one.
    pub fn new(
        config: &DestinationConfig,
        identity: Option<Arc<LocalIdentity>>,
        balance: Arc<BalanceConfig>,
        services: ServiceIndex,
        metrics: DestinationMetrics,
    ) -> Result<Destinations, DestinationError> {
        let connector = ControllerConnector::new(config, identity)?;
        // TLS is the connector's: the URI only carries the address.
        let channel = Endpoint::from_shared(format!("http://{}", config.controller))
            .map_err(|e| DestinationError::Address(config.controller.clone(), e))?
            .connect_timeout(Duration::from_secs(2))
            // A dead controller is noticed within seconds even when nothing changes.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_with_connector_lazy(connector);
        Ok(Destinations {
            client: DestinationClient::new(channel.clone()),
            channel,
            balance,
            services,
            first_update: config.first_update,
            metrics,
            cache: Mutex::new(HashMap::new()),
            max_followed: DEFAULT_MAX_FOLLOWED,
        })
    }

    /// Follows at most `max` destinations at once (each is a stream to the controller
    /// and a task). At the limit, a new destination takes the place of the one unused
    /// the longest that no connection holds; when every one is in use, the new one is
    /// not followed and its connection is treated as unanswered (a mesh address is
    /// refused, anything else goes to its original destination).
    pub fn with_max_followed(mut self, max: usize) -> Self {
        self.max_followed = max.max(1);
        self
    }

    /// The connection to the controller (lazy, with this proxy's certificate), for the
    /// other services it serves (the inbound policy).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// What the destination service says of `addr` (transparent mode: a connection's
    /// original destination).
    pub async fn resolve_addr(&self, addr: SocketAddr) -> Lookup {
        self.lookup(&addr.to_string(), Some(addr)).await
    }

    /// The service an HTTP authority names (explicit mode), or `None` if the controller
    /// does not know it (or has not answered).
    pub async fn resolve_authority(&self, authority: &str) -> Option<Arc<Service>> {
        match self.lookup(&authority.to_ascii_lowercase(), None).await {
            Lookup::Service(s) => Some(s),
            Lookup::Unknown | Lookup::Unanswered => None,
        }
    }

    /// What is known of `authority` now, without waiting or starting a lookup.
    pub fn cached_authority(&self, authority: &str) -> Option<Arc<Service>> {
        let entry = self.entries().get(&authority.to_ascii_lowercase())?.clone();
        entry.touch();
        let known = entry.state.borrow().clone();
        match known {
            Known::Service(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the controller has answered that it does not know `authority` (so it
    /// is outside the mesh), as opposed to not having answered at all.
    pub fn known_outside(&self, authority: &str) -> bool {
        self.entries()
            .get(&authority.to_ascii_lowercase())
            .is_some_and(|e| matches!(*e.state.borrow(), Known::Unknown))
    }

    /// Stops following every destination (the proxy is shutting down); services in
    /// use keep their endpoints.
    pub fn stop(&self) {
        let entries: Vec<Arc<Entry>> = self.entries().drain().map(|(_, e)| e).collect();
        for entry in entries {
            entry.task.abort();
        }
    }

    /// Destinations followed now.
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops following the destinations not looked up for `idle` before `now` whose
    /// service no connection holds: their streams close, their services leave the
    /// index. Connections still open keep what they have; the next lookup of such a
    /// destination starts over. Returns how many were forgotten.
    pub fn evict_idle(&self, now: tokio::time::Instant, idle: Duration) -> usize {
        // Never while a lookup may still wait for the first answer.
        let idle = idle.max(self.first_update);
        let evicted: Vec<(String, Arc<Entry>)> = {
            let mut cache = self.entries();
            let idle: Vec<String> = cache
                .iter()
                .filter(|(_, e)| e.is_idle(now, idle))
                .map(|(path, _)| path.clone())
                .collect();
            idle.into_iter()
                .filter_map(|path| cache.remove_entry(&path))
                .collect()
        };
        for (path, entry) in &evicted {
            self.forget(path, entry);
        }
        evicted.len()
    }

    /// Stops following an entry taken out of the cache.
    fn forget(&self, path: &str, entry: &Entry) {
        entry.task.abort();
        if let Known::Service(s) = &*entry.state.borrow() {
            self.services.remove_discovered(s);
        }
        tracing::debug!(destination = %path, "destination unused: no longer followed");
    }

    /// At the limit: takes out of `cache` the entry unused the longest that can be
    /// forgotten (past its first answer's wait, its service held by no connection).
    fn make_room(&self, cache: &mut HashMap<String, Arc<Entry>>) -> Option<(String, Arc<Entry>)> {
        let now = tokio::time::Instant::now();
        let oldest = cache
            .iter()
            .filter(|(_, e)| e.is_idle(now, self.first_update))
            .min_by_key(|(_, e)| *e.last_used.lock().unwrap_or_else(|p| p.into_inner()))
            .map(|(path, _)| path.clone())?;
        cache.remove_entry(&oldest)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn lookup(&self, path: &str, address: Option<SocketAddr>) -> Lookup {
        let mut replaced = None;
        let entry = {
            let mut cache = self.entries();
            let known = cache.get(path).cloned();
            if known.is_none() && cache.len() >= self.max_followed {
                replaced = self.make_room(&mut cache);
            }
            match known {
                Some(e) => {
                    e.touch();
                    e
                }
                None if cache.len() >= self.max_followed => {
                    drop(cache);
                    self.metrics.lookup("over_limit");
                    tracing::warn!(
                        destination = path,
                        limit = self.max_followed,
                        "every followed destination is in use: not following another"
                    );
                    return Lookup::Unanswered;
                }
                None => {
                    let (tx, rx) = watch::channel(Known::Pending);
                    let follower = Follower {
                        path: path.to_owned(),
                        address,
                        client: self.client.clone(),
                        balance: self.balance.clone(),
                        services: self.services.clone(),
                        metrics: self.metrics.clone(),
                        state: tx,
                        endpoints: HashMap::new(),
                    };
                    let routes = crate::routes::follow::follow(
                        self.channel.clone(),
                        path.to_owned(),
                        rx.clone(),
                    );
                    let entry = Arc::new(Entry {
                        created: Instant::now(),
                        last_used: Mutex::new(tokio::time::Instant::now()),
                        state: rx,
                        task: tokio::spawn(follower.run()),
                        routes_task: tokio::spawn(routes),
                    });
                    cache.insert(path.to_owned(), entry.clone());
                    entry
                }
            }
        };
        if let Some((old, entry)) = replaced {
            self.forget(&old, &entry);
        }
        let mut state = entry.state.clone();
        // Only the first second of a destination's life is waited for: later
        // connections to a destination the controller never answered for go straight
        // to their original destination.
        let deadline = tokio::time::Instant::from_std(entry.created + self.first_update);
        let known =
            tokio::time::timeout_at(deadline, state.wait_for(|k| !matches!(k, Known::Pending)))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|k| k.clone());
        match known {
            Some(Known::Service(s)) => {
                self.metrics.lookup("service");
                Lookup::Service(s)
            }
            Some(_) => {
                self.metrics.lookup("unknown");
                Lookup::Unknown
            }
            None => {
                self.metrics.lookup("timeout");
                tracing::info!(
                    destination = path,
                    waited = ?self.first_update,
                    "the destination service has not answered"
                );
                Lookup::Unanswered
            }
        }
    }
}

/// What the destination service says of a destination.
#[derive(Debug)]
pub enum Lookup {
    /// A service (or a pod) it knows: balanced over the endpoints it streams.
    Service(Arc<Service>),
    /// It answered that it does not know the destination (outside the mesh): the
    /// original destination, as it is.
    Unknown,
    /// It has not answered (unreachable, or slower than the first-contact wait).
    Unanswered,
}

/// Follows one destination's stream, reopening it when it fails.
struct Follower {
    path: String,
    address: Option<SocketAddr>,
    client: DestinationClient<Channel>,
    balance: Arc<BalanceConfig>,
    services: ServiceIndex,
    metrics: DestinationMetrics,
    state: watch::Sender<Known>,
    /// The endpoints in use, and whether each is an opaque port.
    endpoints: HashMap<SocketAddr, (EndpointMeta, bool)>,
}

/// A follower stopped (evicted, or the proxy is stopping) no longer lists its service.
impl Drop for Follower {
    fn drop(&mut self) {
        if let Known::Service(s) = &*self.state.borrow() {
            self.services.remove_discovered(s);
        }
    }
}

/// Counts an open stream while it lives.
struct StreamGauge(Gauge);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Follower {
    async fn run(mut self) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        loop {
            let request = api::GetDestination {
                scheme: "k8s".into(),
                path: self.path.clone(),
                context_token: String::new(),
            };
            let wait = match self.client.get(request).await {
                Ok(rsp) => {
                    let mut stream = rsp.into_inner();
                    self.metrics.streams.inc();
                    let _open = StreamGauge(self.metrics.streams.clone());
                    let mut first = true;
                    let ended = loop {
                        match stream.message().await {
                            Ok(Some(update)) => {
                                self.apply(update, first);
                                first = false;
                                backoff.reset();
                            }
                            Ok(None) => break "the controller ended the stream".to_owned(),
                            Err(status) => break status.to_string(),
                        }
                    };
                    self.metrics.errors.inc();
                    let wait = backoff.next_wait();
                    tracing::warn!(destination = %self.path, error = %ended, retry_in = ?wait, "destination stream lost; keeping the endpoints in use");
                    wait
                }
                Err(status) => {
                    self.metrics.errors.inc();
                    match status.code() {
                        // This destination cannot be resolved by name (an external host,
                        // a malformed authority): the original destination it is.
                        tonic::Code::InvalidArgument => {
                            tracing::debug!(destination = %self.path, error = %status, "not resolvable by the destination service");
                            self.forget(false);
                            return;
                        }
                        // The controller runs without a destination service.
                        tonic::Code::Unimplemented => {
                            tracing::warn!(destination = %self.path, error = %status, "the controller serves no destinations; using original destinations");
                            self.forget(false);
                            UNSERVED_BACKOFF
                        }
                        _ => {
                            let wait = backoff.next_wait();
                            tracing::warn!(destination = %self.path, error = %status, retry_in = ?wait, "cannot reach the destination service; keeping the endpoints in use");
                            wait
                        }
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Applies one update; the first of a stream replaces what an earlier stream said.
    fn apply(&mut self, update: api::Update, first: bool) {
        let kind = match update.update {
            Some(Kind::Add(set)) => {
                if first {
                    self.endpoints.clear();
                }
                let name = set.metric_labels.get("service").cloned();
                for addr in set.addrs {
                    match endpoint(addr) {
                        Ok((meta, opaque)) => {
                            self.endpoints.insert(meta.addr, (meta, opaque));
                        }
                        Err(problem) => {
                            tracing::warn!(destination = %self.path, problem, "endpoint ignored")
                        }
                    }
                }
                self.publish(name.as_deref());
                "add"
            }
            Some(Kind::Remove(set)) => {
                for addr in set.addrs {
                    if let Ok(addr) = SocketAddr::try_from(addr) {
                        self.endpoints.remove(&addr);
                    }
                }
                self.publish(None);
                "remove"
            }
            Some(Kind::NoEndpoints(n)) => {
                if n.exists {
                    self.endpoints.clear();
                    self.publish(None);
                } else {
                    self.forget(true);
                }
                "no_endpoints"
            }
            None => return,
        };
        self.metrics
            .updates
            .get_or_create(&UpdateLabels { kind })
            .inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.metrics.last_update.set(now);
        tracing::debug!(destination = %self.path, kind, endpoints = self.endpoints.len(), "destination update applied");
    }

    /// Gives the service its current endpoints, making it first if need be.
    fn publish(&mut self, name: Option<&str>) {
        let endpoints: Vec<EndpointMeta> =
            self.endpoints.values().map(|(m, _)| m.clone()).collect();
        let opaque = self.endpoints.values().any(|(_, o)| *o);
        let current = match &*self.state.borrow() {
            Known::Service(s) => Some(s.clone()),
            _ => None,
        };
        let service = match current {
            Some(s) => {
                // A service first seen without endpoints had no name yet: the first Add
                // that says it names it, in place, as connections waiting for its
                // endpoints hold it.
                if let Some(n) = name {
                    if *s.name() != *n && s.endpoints().is_empty() {
                        s.rename(n);
                    }
                }
                s
            }
            None => {
                let s = Arc::new(Service::discovered(
                    name.unwrap_or_default(),
                    self.address,
                    self.balance.clone(),
                ));
                self.services.add_discovered(s.clone());
                self.state.send_replace(Known::Service(s.clone()));
                s
            }
        };
        service.set_opaque(opaque);
        service.set_endpoints(endpoints);
    }

    /// The destination is not (or no longer) known to the controller: new connections
    /// go to their original destination; a service in use loses its endpoints (the
    /// protocol says the destination does not exist) only when `clear` is set.
    fn forget(&mut self, clear: bool) {
        let previous = self.state.send_replace(Known::Unknown);
        if let Known::Service(s) = previous {
            self.services.remove_discovered(&s);
            if clear {
                s.set_endpoints(Vec::new());
            }
        }
        self.endpoints.clear();
    }
}

/// An endpoint of an `Add`, and whether its port is opaque.
fn endpoint(addr: api::WeightedAddr) -> Result<(EndpointMeta, bool), String> {
    let tcp = addr.addr.ok_or("no address")?;
    if tcp.port == 0 || tcp.port > u32::from(u16::MAX) {
        return Err(format!("port {} is not a port number", tcp.port));
    }
    let socket = SocketAddr::try_from(tcp).map_err(|e| e.to_string())?;
    let identity = match addr.tls_identity {
        None => None,
        Some(tls) => {
            let name = match (tls.server_name, tls.strategy) {
                (Some(server_name), _) => server_name.name,
                (None, Some(api::tls_identity::Strategy::DnsLikeIdentity(d))) => d.name,
                (None, _) => {
                    return Err(format!("{socket}: a TLS identity without a DNS-like name"))
                }
            };
            Some(
                name.parse::<Identity>()
                    .map_err(|e| format!("{socket}: identity: {e}"))?,
            )
        }
    };
    let zone = addr
        .metric_labels
        .get("zone")
        .filter(|z| !z.is_empty())
        .map(|z| Arc::from(z.as_str()));
    let opaque = matches!(
        addr.protocol_hint.and_then(|h| h.protocol),
        Some(api::protocol_hint::Protocol::Opaque(_))
    );
    Ok((
        EndpointMeta {
            addr: socket,
            zone,
            // The protocol's weights are relative; 0 would take no traffic at all.
            weight: addr.weight.max(1),
            identity,
        },
        opaque,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Destinations whose client never connects (the channel is lazy), for tests that
    /// put entries in the cache themselves.
    fn destinations(services: ServiceIndex) -> Destinations {
        let channel = Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Destinations {
            client: DestinationClient::new(channel.clone()),
            channel,
            balance: Arc::default(),
            services,
            first_update: Duration::from_secs(1),
            metrics: DestinationMetrics::default(),
            cache: Mutex::new(HashMap::new()),
            max_followed: DEFAULT_MAX_FOLLOWED,
        }
    }

    /// Follows `path` as if the controller had named `service` for it: the state
    /// holds the service and the index lists it; the stream is a task that never ends.
    fn follow(d: &Destinations, path: &str, service: Option<Arc<Service>>) {
        let known = match &service {
            Some(s) => {
                d.services.add_discovered(s.clone());
                Known::Service(s.clone())
            }
            None => Known::Unknown,
        };
        let (tx, rx) = watch::channel(known);
        let task = tokio::spawn(async move {
            let _state = tx;
            std::future::pending::<()>().await
        });
        let entry = Entry {
            created: Instant::now(),
            last_used: Mutex::new(tokio::time::Instant::now()),
            state: rx,
            task,
            routes_task: tokio::spawn(std::future::pending()),
        };
        d.entries().insert(path.to_owned(), Arc::new(entry));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_a_new_destination_replaces_the_longest_unused_or_is_not_followed() {
        let index = ServiceIndex::default();
        let d = destinations(index.clone()).with_max_followed(2);
        let held = Arc::new(Service::discovered("books", None, Arc::default()));
        follow(&d, "books.default.svc.cluster.local:80", Some(held.clone()));
        follow(&d, "example.com:80", None);
        tokio::time::advance(Duration::from_secs(5)).await;

        // Full: example.com (unused, held by nothing) makes room; books is in use.
        let _ =
            tokio::time::timeout(Duration::from_millis(10), d.lookup("new.example:80", None)).await;
        assert_eq!(d.len(), 2);
        assert!(d.entries().contains_key("new.example:80"));
        assert!(!d.entries().contains_key("example.com:80"));
        assert!(d
            .entries()
            .contains_key("books.default.svc.cluster.local:80"));

        // Full, and the newcomer is still within its first answer's wait: nothing can
        // go, so the next one is not followed, at once.
        let started = tokio::time::Instant::now();
        assert!(matches!(
            d.lookup("third.example:80", None).await,
            Lookup::Unanswered
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(d.len(), 2);
        assert!(!d.entries().contains_key("third.example:80"));
    }

    #[tokio::test(start_paused = true)]
    async fn destinations_unused_for_the_idle_timeout_are_forgotten() {
        const IDLE: Duration = Duration::from_secs(600);
        let index = ServiceIndex::default();
        let d = destinations(index.clone());
        let books = Arc::new(Service::discovered("books", None, Arc::default()));
        follow(
            &d,
            "books.default.svc.cluster.local:80",
            Some(books.clone()),
        );
        follow(&d, "example.com:80", None);
        assert_eq!((d.len(), index.services().len()), (2, 1));
        let stream = d
            .entries()
            .get("books.default.svc.cluster.local:80")
            .unwrap()
            .task
            .abort_handle();

        // Never sooner than the first answer is waited for, whatever the timeout.
        assert_eq!(d.evict_idle(tokio::time::Instant::now(), Duration::ZERO), 0);

        // Looked up within the idle timeout: kept.
        tokio::time::advance(IDLE / 2).await;
        assert!(d
            .cached_authority("books.default.svc.cluster.local:80")
            .is_some());
        tokio::time::advance(IDLE / 2).await;
        assert_eq!(d.evict_idle(tokio::time::Instant::now(), IDLE), 1);
        assert!(!d.known_outside("example.com:80"), "the unused one is gone");
        assert_eq!(d.len(), 1);

        // Unused for longer, but a connection holds its service: kept, so the
        // connection keeps getting endpoint updates.
        tokio::time::advance(IDLE).await;
        let held = books.clone();
        drop(books);
        assert_eq!(d.evict_idle(tokio::time::Instant::now(), IDLE), 0);
        assert_eq!(d.len(), 1);

        // The connection closed: forgotten, its stream stopped, its service unlisted.
        drop(held);
        assert_eq!(d.evict_idle(tokio::time::Instant::now(), IDLE), 1);
        assert!(d.is_empty());
        assert!(index.services().is_empty());
        tokio::task::yield_now().await;
        assert!(stream.is_finished(), "the stream's task was stopped");
    }

    const BOOKS: &str = "books.default.serviceaccount.identity.weft.cluster.local";

    fn weighted(addr: &str, zone: &str, identity: Option<&str>, opaque: bool) -> api::WeightedAddr {
        let addr: SocketAddr = addr.parse().unwrap();
        api::WeightedAddr {
            addr: Some(addr.into()),
            weight: 10_000,
            metric_labels: HashMap::from([("zone".to_owned(), zone.to_owned())]),
            tls_identity: identity.map(|n| api::TlsIdentity {
                strategy: Some(api::tls_identity::Strategy::DnsLikeIdentity(
                    api::tls_identity::DnsLikeIdentity { name: n.into() },
                )),
                server_name: None,
            }),
            protocol_hint: Some(api::ProtocolHint {
                protocol: Some(if opaque {
                    api::protocol_hint::Protocol::Opaque(api::protocol_hint::Opaque {})
                } else {
                    api::protocol_hint::Protocol::H2(api::protocol_hint::H2 {})
                }),
                opaque_transport: None,
            }),
            authority_override: None,
            http2: None,
            resource_ref: None,
        }
    }

    #[test]
    fn endpoints_carry_zone_weight_identity_and_opacity() {
        let (meta, opaque) =
            endpoint(weighted("198.18.0.3:8080", "zone-b", Some(BOOKS), false)).unwrap();
        assert_eq!(meta.addr, "198.18.0.3:8080".parse().unwrap());
        assert_eq!(meta.zone.as_deref(), Some("zone-b"));
        assert_eq!(meta.weight, 10_000);
        assert_eq!(meta.identity.unwrap().dns_name(), BOOKS);
        assert!(!opaque);
        let (meta, opaque) = endpoint(weighted("198.18.0.3:9000", "", None, true)).unwrap();
        assert_eq!((meta.zone, meta.identity), (None, None));
        assert!(opaque);
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_reason() {
        let mut bad = weighted("198.18.0.3:8080", "", Some("not-an-identity"), false);
        assert!(endpoint(bad.clone())
            .unwrap_err()
            .contains("198.18.0.3:8080: identity"));
        bad.addr = None;
        assert_eq!(endpoint(bad).unwrap_err(), "no address");
        let mut big = weighted("198.18.0.3:8080", "", None, false);
        big.addr.as_mut().unwrap().port = 70_000;
        assert_eq!(
            endpoint(big).unwrap_err(),
            "port 70000 is not a port number"
        );
    }
}
