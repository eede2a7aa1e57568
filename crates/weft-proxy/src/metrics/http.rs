//! The HTTP golden metrics: requests, responses (with their classification) and latency
//! per route through the proxy, retries, and the idle-route sweep that bounds them.

use super::*;

/// The labels of one HTTP route through the proxy, shared and hashed once when made:
/// each request finds its series by them a few times, and hashing the label values
/// every time cost about 800 instructions a lookup (bench/instructions). A clone is a
/// reference count; the values read through [`RouteLabelValues`].
#[derive(Clone, Debug)]
pub struct RouteLabels(Arc<HashedRoute>);

#[derive(Debug)]
struct HashedRoute {
    values: RouteLabelValues,
    hash: u64,
    /// The series this route's last response went to: a connection's requests mostly
    /// share their labels and status, and a family lookup costs a lock and a hash
    /// table probe (~230 instructions, twice per request).
    last: std::sync::Mutex<LastSeries>,
}

/// The `response_total` counter and latency histogram last used with a route, and the
/// metrics' generation they were fetched under (an eviction drops series: stale).
#[derive(Debug, Default)]
struct LastSeries {
    generation: u64,
    response: Option<(u16, Classification, Counter)>,
    latency: Option<(u16, Histogram)>,
}

impl RouteLabels {
    pub fn new(values: RouteLabelValues) -> Self {
        // Keyed per process, as a HashMap's own hasher is: label values come from
        // callers (authorities), so their hashes must not be predictable.
        static KEYS: std::sync::LazyLock<std::hash::RandomState> =
            std::sync::LazyLock::new(std::hash::RandomState::new);
        let hash = std::hash::BuildHasher::hash_one(&*KEYS, &values);
        RouteLabels(Arc::new(HashedRoute {
            values,
            hash,
            last: Default::default(),
        }))
    }
}

#[cfg(test)]
impl RouteLabels {
    /// Whether both are the same copy (not only equal).
    pub(crate) fn is(&self, other: &RouteLabels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::ops::Deref for RouteLabels {
    type Target = RouteLabelValues;

    fn deref(&self) -> &RouteLabelValues {
        &self.0.values
    }
}

impl std::hash::Hash for RouteLabels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl PartialEq for RouteLabels {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.values == other.0.values)
    }
}

impl Eq for RouteLabels {}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.0.values.encode(encoder)
    }
}

/// The values of [`RouteLabels`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabelValues {
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

    pub(super) fn register(&self, registry: &mut Registry) {
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

#[derive(Clone)]
pub(super) struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS_MS)
    }
}

#[derive(Clone)]
pub struct HttpMetrics {
    pub(super) requests: Family<RouteLabels, Counter>,
    pub(super) responses: Family<ResponseLabels, Counter>,
    pub(super) latency: Family<LatencyLabels, Histogram, LatencyHistogram>,
    pub(super) errors: Family<ErrorLabels, Counter>,
    pub retries: RetryMetrics,
    pub mirrors: crate::outbound::mirror::MirrorMetrics,
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
            mirrors: Default::default(),
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
    /// [`HttpMetrics::generation`] to know when to fetch it again), and the labels to
    /// keep with it: those of the route's first caller, equal to `route`. Connections
    /// that keep labels for their next requests then share one copy per route (and
    /// its last series) instead of holding one each: 184 bytes per idle connection.
    pub fn requests(&self, route: RouteLabels) -> (RouteLabels, Counter) {
        let counter = self.requests.get_or_create(&route).clone();
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        // Known routes (most calls: a connection's cache misses when the balancer picks
        // another endpoint) cost a lookup, not a copy of their labels.
        let route = match routes.get_key_value(&route) {
            Some((known, _)) => known.clone(),
            None => {
                routes.insert(
                    route.clone(),
                    RouteUse {
                        total: counter.get(),
                        since: tokio::time::Instant::now(),
                    },
                );
                route
            }
        };
        drop(routes);
        (route, counter)
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

    /// The series `route` last used, cleared when idle series were dropped since.
    fn last<'a>(&self, route: &'a RouteLabels) -> std::sync::MutexGuard<'a, LastSeries> {
        let mut last = route.0.last.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation();
        if last.generation != generation {
            *last = LastSeries {
                generation,
                ..LastSeries::default()
            };
        }
        last
    }

    pub fn latency(&self, route: &RouteLabels, status_code: u16, ms: f64) {
        let mut last = self.last(route);
        match &last.latency {
            Some((code, histogram)) if *code == status_code => histogram.observe(ms),
            _ => {
                let histogram = self
                    .latency
                    .get_or_create(&LatencyLabels {
                        route: route.clone(),
                        status_code,
                    })
                    .clone();
                histogram.observe(ms);
                last.latency = Some((status_code, histogram));
            }
        }
    }

    pub fn response(&self, route: RouteLabels, status_code: u16, classification: Classification) {
        let mut last = self.last(&route);
        if let Some((code, class, counter)) = &last.response {
            if *code == status_code && *class == classification {
                counter.inc();
                return;
            }
        }
        let code = usize::from(status_code) % (STATUS_WORDS * 64);
        let bit = 1 << (code % 64);
        if self.statuses[code / 64].load(Ordering::Relaxed) & bit == 0 {
            self.statuses[code / 64].fetch_or(bit, Ordering::Relaxed);
        }
        let counter = self
            .responses
            .get_or_create(&ResponseLabels {
                route: route.clone(),
                status_code,
                classification,
            })
            .clone();
        counter.inc();
        last.response = Some((status_code, classification, counter));
    }

    /// Counts a response the proxy generated itself, by cause.
    pub fn error(&self, direction: Direction, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { direction, error })
            .inc();
    }
}
