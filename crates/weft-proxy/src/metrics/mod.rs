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

mod http;

pub use http::{
    DstServiceLabels, ErrorLabels, HttpMetrics, LatencyLabels, ResponseLabels, RetryLabels,
    RetryMetrics, RouteLabel, RouteLabelValues, RouteLabels,
};

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
        http.mirrors.register(&mut registry);

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
        self.counter(http, allowed, labels).inc();
    }

    /// The counter of one kind of decision, to keep and count on later.
    pub fn counter(&self, http: bool, allowed: bool, labels: &AuthzLabels) -> Counter {
        let family = match (http, allowed) {
            (true, true) => &self.http_allow,
            (true, false) => &self.http_deny,
            (false, true) => &self.tcp_allow,
            (false, false) => &self.tcp_deny,
        };
        family.get_or_create(labels).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels of a route to the `books` service's endpoint `addr`.
    fn books(direction: Direction, addr: &str) -> RouteLabels {
        RouteLabels::new(RouteLabelValues {
            direction,
            authority: "books:80".into(),
            target_addr: addr.into(),
            tls: Tls::NoIdentity,
            dst_service: "books".into(),
            dst_zone: "".into(),
            client_id: "".into(),
            server_id: "".into(),
            route: RouteLabel::default(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn routes_idle_for_the_retain_time_leave_metrics_and_come_back_when_used() {
        let metrics = Metrics::new(&WorkloadLabels::default());
        let render = || metrics.encode(&crate::endpoints::ServiceIndex::default());
        let http = &metrics.http;
        let route = |addr| books(Direction::Outbound, addr);
        let (gone, kept) = (route("198.18.0.9:4143"), route("198.18.0.10:4143"));
        for r in [&gone, &kept] {
            http.requests(r.clone()).1.inc();
            http.response(r.clone(), 200, Classification::Success);
            http.latency(r, 200, 3.0);
        }
        let retain = Duration::from_secs(600);
        // A sweep notes the counts; idle time runs from the last sweep that saw one move.
        assert_eq!(http.evict_idle(tokio::time::Instant::now(), retain), 0);
        let generation = http.generation();

        // kept serves a request within the retain time, gone does not.
        tokio::time::advance(Duration::from_secs(300)).await;
        http.requests(kept.clone()).1.inc();
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
        http.requests(gone.clone()).1.inc();
        http.response(gone.clone(), 503, Classification::Failure);
        assert!(render().contains("198.18.0.9:4143"));
    }

    #[tokio::test]
    async fn connections_on_one_route_share_its_labels() {
        let metrics = Metrics::new(&WorkloadLabels::default());
        let http = &metrics.http;
        let route = |addr| books(Direction::Inbound, addr);
        // Two connections build equal labels: the second is given the first's.
        let first = route("198.18.0.9:80");
        let (kept, counter) = http.requests(first.clone());
        assert!(kept.is(&first));
        counter.inc();
        let (shared, counter) = http.requests(route("198.18.0.9:80"));
        assert!(shared.is(&first), "the route's first labels, not a copy");
        counter.inc();
        assert_eq!(counter.get(), 2, "one series for both");
        // Another route keeps its own.
        let other = route("198.18.0.10:80");
        assert!(http.requests(other.clone()).0.is(&other));
        assert!(!other.is(&first));
    }

    #[test]
    fn a_routes_last_series_never_counts_another_status_or_classification() {
        let metrics = Metrics::new(&WorkloadLabels::default());
        let http = &metrics.http;
        let route = RouteLabels::new(RouteLabelValues {
            direction: Direction::Inbound,
            authority: "books:80".into(),
            target_addr: "198.18.0.9:8080".into(),
            tls: Tls::NoIdentity,
            dst_service: "".into(),
            dst_zone: "".into(),
            client_id: "".into(),
            server_id: "".into(),
            route: RouteLabel::default(),
        });
        let answers = [
            (200, Classification::Success),
            (200, Classification::Success),
            (503, Classification::Failure),
            (200, Classification::Failure),
            (200, Classification::Success),
        ];
        for (status, classification) in answers {
            http.latency(&route, status, 2.5);
            http.response(route.clone(), status, classification);
        }
        let text = metrics.encode(&crate::endpoints::ServiceIndex::default());
        let value = |prefix: &str, labels: &[&str]| -> String {
            let line = text
                .lines()
                .find(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
                .unwrap_or_else(|| panic!("no {prefix} {labels:?} in {text}"));
            line.rsplit(' ').next().unwrap_or_default().to_owned()
        };
        let success = r#"classification="success""#;
        let failure = r#"classification="failure""#;
        assert_eq!(
            value("response_total{", &[success, r#"status_code="200""#]),
            "3"
        );
        assert_eq!(
            value("response_total{", &[failure, r#"status_code="200""#]),
            "1"
        );
        assert_eq!(
            value("response_total{", &[failure, r#"status_code="503""#]),
            "1"
        );
        assert_eq!(
            value("response_latency_ms_count{", &[r#"status_code="200""#]),
            "4"
        );
        assert_eq!(
            value("response_latency_ms_count{", &[r#"status_code="503""#]),
            "1"
        );
    }
}
