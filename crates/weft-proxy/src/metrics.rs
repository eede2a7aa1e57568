//! Golden metrics with Linkerd-compatible names, so existing dashboards and rollout
//! tools read them unchanged: `request_total`, `response_total`, `response_latency_ms`,
//! `tcp_*`, each labelled by direction, authority, TLS state and the workload.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels that identify the workload this proxy serves; added to every metric.
#[derive(Clone, Debug, Default)]
pub struct WorkloadLabels {
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
    pub zone: String,
}

/// Latency buckets in milliseconds, the ones Linkerd's dashboards expect.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

/// A cheaply cloned label value.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Str(pub Arc<str>);

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str(s.into())
    }
}

impl Str {
    /// The empty label value, shared (no allocation per use).
    pub fn empty() -> Str {
        static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "".into());
        Str(EMPTY.clone())
    }
}

impl EncodeLabelValue for Str {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Whether a connection's peer was authenticated with mTLS (`true`) or not; plaintext
/// is `no_identity`, as Linkerd reports it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Tls {
    Yes,
    NoIdentity,
}

impl EncodeLabelValue for Tls {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Tls::Yes => "true",
            Tls::NoIdentity => "no_identity",
        })
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Classification {
    Success,
    Failure,
}

impl EncodeLabelValue for Classification {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Classification::Success => "success",
            Classification::Failure => "failure",
        })
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Peer {
    /// The side that opened the connection to the proxy.
    Src,
    /// The upstream side the proxy connected to.
    Dst,
}

impl EncodeLabelValue for Peer {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Peer::Src => "src",
            Peer::Dst => "dst",
        })
    }
}

/// The labels of one HTTP route through the proxy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub authority: Str,
    pub target_addr: Str,
    pub tls: Tls,
    pub dst_service: Str,
    /// The zone of the endpoint the request went to (empty when unknown).
    pub dst_zone: Str,
    /// The caller's identity (inbound mTLS), empty otherwise.
    pub client_id: Str,
    /// The endpoint's identity (outbound mTLS), empty otherwise.
    pub server_id: Str,
    /// The route that chose the backend (outbound, when the Service has routes):
    /// `route_kind` (`HTTPRoute`, `GRPCRoute` or `default`), `route_name`,
    /// `route_namespace`; empty otherwise.
    #[prometheus(flatten)]
    pub route: RouteLabel,
}

/// The labels of the route a request took, as one field: a request without a route
/// (most) costs nothing to clone, hash or compare.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub Option<Arc<crate::routes::RouteMeta>>);

impl EncodeLabelSet for RouteLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (kind, name, namespace) = match &self.0 {
            Some(r) => (r.kind.as_str(), &*r.name, &*r.namespace),
            None => ("", "", ""),
        };
        [
            ("route_kind", kind),
            ("route_name", name),
            ("route_namespace", namespace),
        ]
        .encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
    pub classification: Classification,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: Direction,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    /// The service retried (empty for a destination that is not a service).
    pub dst_service: Str,
    /// `connect-failure`, `status`, `timeout` or `reset`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DstServiceLabels {
    pub dst_service: Str,
}

/// Retries, named as Linkerd's `outbound_http_route_retry_*`.
#[derive(Clone, Default)]
pub struct RetryMetrics {
    requests: Family<RetryLabels, Counter>,
    successes: Family<DstServiceLabels, Counter>,
    limit_exceeded: Family<DstServiceLabels, Counter>,
    overflow: Family<DstServiceLabels, Counter>,
}

impl RetryMetrics {
    /// A retry was sent.
    pub fn retried(&self, dst_service: &Str, reason: &'static str) {
        self.requests
            .get_or_create(&RetryLabels {
                dst_service: dst_service.clone(),
                reason,
            })
            .inc();
    }

    /// A retried request ended with a success.
    pub fn succeeded(&self, dst_service: &Str) {
        self.service_counter(&self.successes, dst_service);
    }

    /// A request that would have been retried had used up its retries.
    pub fn limit_exceeded(&self, dst_service: &Str) {
        self.service_counter(&self.limit_exceeded, dst_service);
    }

    /// A request that would have been retried found the retry budget spent.
    pub fn overflow(&self, dst_service: &Str) {
        self.service_counter(&self.overflow, dst_service);
    }

    fn service_counter(&self, family: &Family<DstServiceLabels, Counter>, dst_service: &Str) {
        family
            .get_or_create(&DstServiceLabels {
                dst_service: dst_service.clone(),
            })
            .inc();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "retry_requests",
            "Retries sent, by destination service and reason (connect-failure, status, timeout, reset)",
            self.requests.clone(),
        );
        registry.register(
            "retry_successes",
            "Retried requests that ended in a success",
            self.successes.clone(),
        );
        registry.register(
            "retry_limit_exceeded",
            "Requests that failed in a retryable way after using all their retries",
            self.limit_exceeded.clone(),
        );
        registry.register(
            "retry_overflow",
            "Retries not made because the destination's retry budget was spent",
            self.overflow.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub peer: Peer,
    pub tls: Tls,
    /// The caller's identity on an inbound mTLS connection (`peer="src"`), empty
    /// otherwise. Bounded: only a certificate the mesh's trust anchor signed for an
    /// identity of its trust domain gets here (one value per service account).
    pub client_id: Str,
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS_MS)
    }
}

#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RouteLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, LatencyHistogram>,
    errors: Family<ErrorLabels, Counter>,
    pub retries: RetryMetrics,
    /// Every route with series, and since when its request count has not moved
    /// ([`HttpMetrics::evict_idle`]).
    routes: Arc<std::sync::Mutex<std::collections::HashMap<RouteLabels, RouteUse>>>,
    /// Status codes answered (a bit each): which response and latency series a route
    /// can have.
    statuses: Arc<[AtomicU64; STATUS_WORDS]>,
    /// Bumped by each eviction: a route's counter kept from before may be gone from
    /// the registry ([`HttpMetrics::generation`]).
    generation: Arc<AtomicU64>,
}

const STATUS_WORDS: usize = 1024 / 64;

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(LatencyHistogram),
            errors: Family::default(),
            retries: RetryMetrics::default(),
            routes: Arc::default(),
            statuses: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
            generation: Arc::default(),
        }
    }
}

/// A route's request count at the last sweep, and since when it has stayed there.
#[derive(Debug)]
struct RouteUse {
    total: u64,
    since: tokio::time::Instant,
}

impl HttpMetrics {
    /// The `request_total` counter of a route (keep it to count many requests, with
    /// [`HttpMetrics::generation`] to know when to fetch it again).
    pub fn requests(&self, route: &RouteLabels) -> Counter {
        let counter = self.requests.get_or_create(route).clone();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        // Known routes (most calls: a connection's cache misses when the balancer picks
        // another endpoint) cost a lookup, not a copy of their labels.
        if !routes.contains_key(route) {
            routes.insert(
                route.clone(),
                RouteUse {
                    total: counter.get(),
                    since: tokio::time::Instant::now(),
                },
            );
        }
        drop(routes);
        counter
    }

    /// Changes when idle series are dropped: a counter from [`HttpMetrics::requests`]
    /// fetched under another generation must be fetched again.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Drops the series of routes that served no request for `retain` (as
    /// linkerd2-proxy's retain-idle does): callers' Host headers and endpoints that
    /// come and go (pods replaced) would otherwise add series for the life of the
    /// proxy. A route used again gets fresh series. Returns how many routes went.
    pub fn evict_idle(&self, now: tokio::time::Instant, retain: Duration) -> usize {
        let idle: Vec<RouteLabels> = {
            let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
            let mut idle = Vec::new();
            routes.retain(|route, used| {
                let total = self.requests.get(route).map_or(used.total, |c| c.get());
                if total != used.total {
                    *used = RouteUse { total, since: now };
                    true
                } else if now.saturating_duration_since(used.since) >= retain {
                    idle.push(route.clone());
                    false
                } else {
                    true
                }
            });
            idle
        };
        if idle.is_empty() {
            return 0;
        }
        self.generation.fetch_add(1, Ordering::Relaxed);
        let statuses: Vec<u16> = (0..STATUS_WORDS * 64)
            .filter(|&code| {
                self.statuses[code / 64].load(Ordering::Relaxed) & (1 << (code % 64)) != 0
            })
            .map(|code| code as u16)
            .collect();
        for route in &idle {
            self.requests.remove(route);
            for &status_code in &statuses {
                for classification in [Classification::Success, Classification::Failure] {
                    self.responses.remove(&ResponseLabels {
                        route: route.clone(),
                        status_code,
                        classification,
                    });
                }
                self.latency.remove(&LatencyLabels {
                    route: route.clone(),
                    status_code,
                });
            }
        }
        idle.len()
    }

    pub fn latency(&self, route: &RouteLabels, status_code: u16, ms: f64) {
        self.latency
            .get_or_create(&LatencyLabels {
                route: route.clone(),
                status_code,
            })
            .observe(ms);
    }

    pub fn response(&self, route: RouteLabels, status_code: u16, classification: Classification) {
        let code = usize::from(status_code) % (STATUS_WORDS * 64);
        let bit = 1 << (code % 64);
        if self.statuses[code / 64].load(Ordering::Relaxed) & bit == 0 {
            self.statuses[code / 64].fetch_or(bit, Ordering::Relaxed);
        }
        self.responses
            .get_or_create(&ResponseLabels {
                route,
                status_code,
                classification,
            })
            .inc();
    }

    /// Counts a response the proxy generated itself, by cause.
    pub fn error(&self, direction: Direction, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { direction, error })
            .inc();
    }
}

/// Counters for one side of one TCP connection, fetched once when it opens.
#[derive(Clone, Debug)]
pub struct ConnCounters {
    pub read: Counter,
    pub write: Counter,
    open: Gauge,
    closes: Counter,
}

impl Drop for ConnCounters {
    fn drop(&mut self) {
        self.open.dec();
        self.closes.inc();
    }
}

#[derive(Clone)]
pub struct TcpMetrics {
    open_total: Family<TcpLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    close_total: Family<TcpLabels, Counter>,
    read_bytes: Family<TcpLabels, Counter>,
    write_bytes: Family<TcpLabels, Counter>,
}

impl TcpMetrics {
    /// Records a connection opening; the returned counters record bytes and the close.
    pub fn open(&self, labels: TcpLabels) -> ConnCounters {
        self.open_total.get_or_create(&labels).inc();
        let open = self.open_connections.get_or_create(&labels).clone();
        open.inc();
        ConnCounters {
            read: self.read_bytes.get_or_create(&labels).clone(),
            write: self.write_bytes.get_or_create(&labels).clone(),
            closes: self.close_total.get_or_create(&labels).clone(),
            open,
        }
    }
}

#[derive(Clone)]
struct ProcessMetrics {
    resident_memory: Gauge,
    open_fds: Gauge,
    start_time: Gauge,
    log_dropped: Gauge,
}

impl ProcessMetrics {
    fn refresh(&self) {
        // Linux only; elsewhere the gauges stay at zero.
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<i64>().ok())
            {
                self.resident_memory.set(pages * 4096);
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
        self.log_dropped
            .set(i64::try_from(weft_core::log::dropped_lines()).unwrap_or(i64::MAX));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub result: &'static str,
}

/// The proxy's certificate: when it expires and how renewals went.
#[derive(Clone, Default)]
pub struct IdentityMetrics {
    pub expiration: Gauge,
    pub refreshes: Family<RefreshLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BalancerLabels {
    pub dst_service: Str,
    pub dst_zone: Str,
}

/// Distinct `authority` label values a proxy records before it folds new ones into
/// [`OVERFLOW_AUTHORITY`].
pub const MAX_AUTHORITIES: usize = 500;
/// The `authority` label of requests past [`MAX_AUTHORITIES`].
pub const OVERFLOW_AUTHORITY: &str = "_overflow";

/// All of a proxy's metrics and the registry that exposes them.
pub struct Metrics {
    balancer_endpoints: Family<BalancerLabels, Gauge>,
    registry: Registry,
    pub http: HttpMetrics,
    pub tcp: TcpMetrics,
    pub identity: IdentityMetrics,
    tls_errors: Family<DirectionLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    limit_reached: Counter,
    /// The `authority` label values in use: callers choose them (the Host header), so
    /// they are capped.
    authorities: std::sync::Mutex<std::collections::HashSet<Arc<str>>>,
    process: ProcessMetrics,
    pub destination: crate::destination::DestinationMetrics,
    pub authz: AuthzMetrics,
}

impl Metrics {
    pub fn new(workload: &WorkloadLabels) -> Arc<Self> {
        let constant = [
            ("namespace", &workload.namespace),
            ("deployment", &workload.deployment),
            ("pod", &workload.pod),
            ("zone", &workload.zone),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v.clone())));
        let mut registry = Registry::with_labels(constant);

        let http = HttpMetrics::default();
        registry.register("request", "HTTP requests received", http.requests.clone());
        registry.register(
            "response",
            "HTTP responses, by status code and success or failure (5xx, gRPC errors, broken streams)",
            http.responses.clone(),
        );
        registry.register(
            "response_latency_ms",
            "Time from receiving a request's headers to receiving its response's headers, in milliseconds",
            http.latency.clone(),
        );
        registry.register(
            "http_errors",
            "HTTP responses generated by the proxy itself, by cause",
            http.errors.clone(),
        );
        http.retries.register(&mut registry);

        let tcp = TcpMetrics {
            open_total: Family::default(),
            open_connections: Family::default(),
            close_total: Family::default(),
            read_bytes: Family::default(),
            write_bytes: Family::default(),
        };
        registry.register("tcp_open", "TCP connections opened", tcp.open_total.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections currently open",
            tcp.open_connections.clone(),
        );
        registry.register(
            "tcp_close",
            "TCP connections closed",
            tcp.close_total.clone(),
        );
        registry.register(
            "tcp_read_bytes",
            "Bytes read from peers",
            tcp.read_bytes.clone(),
        );
        registry.register(
            "tcp_write_bytes",
            "Bytes written to peers",
            tcp.write_bytes.clone(),
        );

        let identity = IdentityMetrics::default();
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's current certificate expires, in seconds since the Unix epoch",
            identity.expiration.clone(),
        );
        registry.register(
            "identity_cert_refresh",
            "Certificate requests to the identity service, by result",
            identity.refreshes.clone(),
        );
        let tls_errors = Family::default();
        registry.register(
            "tls_handshake_errors",
            "mTLS handshakes that failed (bad, expired or untrusted peer certificates, wrong identity)",
            tls_errors.clone(),
        );

        let refused = Family::default();
        registry.register(
            "tcp_refused",
            "Connections the proxy closed without forwarding them, by reason (not_local: an inbound connection for an address that is not this pod's; discovery_unavailable: a mesh address met while the destination service could not say how to reach it)",
            refused.clone(),
        );

        let limit_reached = Counter::default();
        registry.register(
            "tcp_connection_limit_reached",
            "Times the proxy reached --max-connections and stopped accepting until a connection closed",
            limit_reached.clone(),
        );

        let process = ProcessMetrics {
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            start_time: Gauge::default(),
            log_dropped: Gauge::default(),
        };
        if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            process.start_time.set(now.as_secs() as i64);
        }
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            process.resident_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            process.open_fds.clone(),
        );
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because standard error could not take them (a full disk, a closed pipe)",
            process.log_dropped.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            process.start_time.clone(),
        );

        let balancer_endpoints = Family::default();
        registry.register(
            "balancer_endpoints",
            "Endpoints each service's balancer is using, per zone (zone-aware balancing narrows them to the proxy's zone)",
            balancer_endpoints.clone(),
        );

        let destination = crate::destination::DestinationMetrics::default();
        destination.register(&mut registry);
        let authz = AuthzMetrics::default();
        authz.register(&mut registry);

        Arc::new(Metrics {
            destination,
            authz,
            balancer_endpoints,
            registry,
            http,
            tcp,
            identity,
            tls_errors,
            refused,
            limit_reached,
            authorities: Default::default(),
            process,
        })
    }

    pub fn tls_handshake_error(&self, direction: Direction) {
        self.tls_errors
            .get_or_create(&DirectionLabels { direction })
            .inc();
    }

    /// The `authority` label for `authority`: itself while fewer than
    /// [`MAX_AUTHORITIES`] distinct ones have been seen, then [`OVERFLOW_AUTHORITY`]
    /// for new ones, so that a caller sending random Host headers cannot grow the
    /// metrics without bound.
    pub fn authority_label(&self, authority: &str) -> Str {
        let mut seen = self.authorities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = seen.get(authority) {
            return Str(known.clone());
        }
        if seen.len() >= MAX_AUTHORITIES {
            return Str(Arc::from(OVERFLOW_AUTHORITY));
        }
        let label: Arc<str> = authority.into();
        seen.insert(label.clone());
        Str(label)
    }

    /// Counts a stop of accepting at the connection limit.
    pub fn connection_limit_reached(&self) {
        self.limit_reached.inc();
    }

    /// Counts a connection closed without forwarding it.
    pub fn refused(&self, direction: Direction, reason: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels { direction, reason })
            .inc();
    }

    /// The Prometheus text exposition of every metric, with the balancers' endpoint
    /// counts read from `services` now.
    pub fn encode(&self, services: &crate::endpoints::ServiceIndex) -> String {
        self.process.refresh();
        self.balancer_endpoints.clear();
        for service in services.services() {
            for (zone, count) in service.balancer().in_use_by_zone() {
                let labels = BalancerLabels {
                    dst_service: Str(service.name()),
                    dst_zone: zone.map(Str).unwrap_or_else(|| "".into()),
                };
                self.balancer_endpoints
                    .get_or_create(&labels)
                    .set(count as i64);
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Encoding into a String cannot fail; say so rather than panic.
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }
}

/// The inbound path's authorization decisions, with Linkerd's names: per request
/// (`inbound_http_authz_*`) and per opaque TCP connection (`inbound_tcp_authz_*`),
/// labelled by the Server (`srv_kind` `server` and its name, or `default` and the
/// default policy's name), the authorization that allowed (`authz_kind`
/// `authorizationpolicy` or `default`, `authz_name`; empty on a deny) and the
/// application's port.
#[derive(Clone, Debug, Default)]
pub struct AuthzMetrics {
    http_allow: Family<AuthzLabels, Counter>,
    http_deny: Family<AuthzLabels, Counter>,
    tcp_allow: Family<AuthzLabels, Counter>,
    tcp_deny: Family<AuthzLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub srv_kind: Str,
    pub srv_name: Str,
    pub authz_kind: Str,
    pub authz_name: Str,
    pub target_port: u16,
}

impl AuthzMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "inbound_http_authz_allow",
            "Inbound HTTP requests an authorization allowed",
            self.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "Inbound HTTP requests no authorization allowed (answered 403, gRPC PERMISSION_DENIED)",
            self.http_deny.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "Inbound opaque TCP connections an authorization allowed",
            self.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Inbound opaque TCP connections no authorization allowed (closed)",
            self.tcp_deny.clone(),
        );
    }

    /// Counts a decision: `http` (a request) or not (a TCP connection), allowed or not.
    pub fn count(&self, http: bool, allowed: bool, labels: &AuthzLabels) {
        let family = match (http, allowed) {
            (true, true) => &self.http_allow,
            (true, false) => &self.http_deny,
            (false, true) => &self.tcp_allow,
            (false, false) => &self.tcp_deny,
        };
        family.get_or_create(labels).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn routes_idle_for_the_retain_time_leave_metrics_and_come_back_when_used() {
        let metrics = Metrics::new(&WorkloadLabels::default());
        let render = || metrics.encode(&crate::endpoints::ServiceIndex::default());
        let http = &metrics.http;
        let route = |addr: &str| RouteLabels {
            direction: Direction::Outbound,
            authority: "books:80".into(),
            target_addr: addr.into(),
            tls: Tls::NoIdentity,
            dst_service: "books".into(),
            dst_zone: "".into(),
            client_id: "".into(),
            server_id: "".into(),
            route: RouteLabel::default(),
        };
        let (gone, kept) = (route("198.18.0.9:4143"), route("198.18.0.10:4143"));
        for r in [&gone, &kept] {
            http.requests(r).inc();
            http.response(r.clone(), 200, Classification::Success);
            http.latency(r, 200, 3.0);
        }
        let retain = Duration::from_secs(600);
        // A sweep notes the counts; idle time runs from the last sweep that saw one move.
        assert_eq!(http.evict_idle(tokio::time::Instant::now(), retain), 0);
        let generation = http.generation();

        // kept serves a request within the retain time, gone does not.
        tokio::time::advance(Duration::from_secs(300)).await;
        http.requests(&kept).inc();
        assert_eq!(http.evict_idle(tokio::time::Instant::now(), retain), 0);
        tokio::time::advance(Duration::from_secs(300)).await;
        assert_eq!(http.evict_idle(tokio::time::Instant::now(), retain), 1);
        let text = render();
        assert!(!text.contains("198.18.0.9:4143"), "{text}");
        assert!(text.contains("198.18.0.10:4143"), "{text}");
        assert_ne!(
            http.generation(),
            generation,
            "counters kept from before are stale"
        );

        // Used again: fresh series.
        http.requests(&gone).inc();
        http.response(gone.clone(), 503, Classification::Failure);
        assert!(render().contains("198.18.0.9:4143"));
    }
}
