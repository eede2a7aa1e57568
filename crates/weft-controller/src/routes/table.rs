//! Every route at one moment, built from the mesh directory and the table before it:
//!
//! - a route that is valid serves; one that became invalid (does not parse, an
//!   `UnsupportedValue`, an unresolved backendRef) keeps serving its last valid
//!   version, and says so in its status. A route invalid since it appeared serves
//!   nothing, except for unresolved backends: then its valid backends serve and the
//!   invalid ones' share of requests fails (500), as the Gateway API says;
//! - an HTTPRoute sharing a parent with a GRPCRoute of its namespace is `Conflicted`
//!   (GEP-1426: the GRPCRoute wins);
//! - a condition's `lastTransitionTime` changes only when its status or reason does;
//!   `observedGeneration` is `metadata.generation` when given, else counted (1, then
//!   one more at each change of the spec);
//! - the [`OutboundPolicy`] of a Service port for a caller: consumer routes (in the
//!   caller's namespace) replace the producer routes (in the Service's) for that
//!   caller; routes in precedence order (oldest `creationTimestamp` first, routes
//!   without one after those with one, then `namespace/name`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound::{self, proxy_protocol};
use weft_core::mesh::{Mesh, Service};

use super::check::{self, Attachment, Checked, Cond, Context};
use super::messages;
use super::parse::{self, ParsedRoute, Unparsed};
use super::{ParentRef, RouteKey, RouteKind};

/// How long a proxy may take to detect HTTP on a connection to a Service with routes.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A condition with the time it last changed status or reason.
#[derive(Clone, Debug, PartialEq)]
pub struct TimedCond {
    pub cond: Cond,
    pub since: Time,
}

/// A route's status for one Service parent.
#[derive(Clone, Debug, PartialEq)]
pub struct ParentReport {
    pub parent: ParentRef,
    pub accepted: TimedCond,
    pub resolved: TimedCond,
}

/// What `weft get routes` shows of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteReport {
    pub key: RouteKey,
    pub file: String,
    pub generation: i64,
    pub hostnames: Vec<String>,
    /// Its backends (of the version written, when it parses).
    pub backends: Vec<check::Backend>,
    pub parents: Vec<ParentReport>,
    /// The generation still serving when the one written is not valid.
    pub kept: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
enum Current {
    Parsed(Box<Checked>),
    Unparsed(Unparsed),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    current: Current,
    generation: i64,
    /// The version proxies get, with its generation.
    serving: Option<(Box<Checked>, i64)>,
    report: RouteReport,
}

/// A line for the controller's log: a condition that changed.
#[derive(Clone, Debug, PartialEq)]
pub struct TableUpdate {
    pub route: RouteKey,
    pub file: String,
    pub parent: String,
    pub condition: &'static str,
    pub cond: Cond,
    /// The generation that keeps serving, when the route's new one does not.
    pub kept: Option<i64>,
}

/// The routes of a mesh at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteTable {
    cluster_domain: String,
    services: Vec<Service>,
    entries: BTreeMap<RouteKey, Entry>,
    /// Objects without a name (`file: location: message`: nothing can refer to them)
    /// and routes defined twice (the first one counts).
    nameless: Vec<String>,
    /// ReferenceGrants that do not parse (they grant nothing).
    bad_grants: Vec<String>,
}

impl RouteTable {
    /// No routes, no Services.
    pub fn empty(cluster_domain: &str) -> RouteTable {
        RouteTable {
            cluster_domain: cluster_domain.to_owned(),
            services: Vec::new(),
            entries: BTreeMap::new(),
            nameless: Vec::new(),
            bad_grants: Vec::new(),
        }
    }

    /// The table of `mesh`'s routes, following `previous` (for the last valid versions,
    /// generations and transition times); `now` stamps the conditions that changed.
    /// Also returns the conditions that changed, for the log.
    pub fn build(
        previous: &RouteTable,
        mesh: &Mesh,
        cluster_domain: &str,
        now: SystemTime,
    ) -> (RouteTable, Vec<TableUpdate>) {
        let now = Time(k8s_openapi::jiff::Timestamp::try_from(now).unwrap_or_default());
        let parsed = parse::parse(&mesh.gateway);
        let cx = Context {
            services: &mesh.services,
            grants: &parsed.grants,
            cluster_domain,
        };
        let mut entries = BTreeMap::new();
        let mut nameless = Vec::new();
        for route in &parsed.routes {
            if let Some(first) = entries.get(&route.key) {
                nameless.push(twice(&route.key, &route.file, first));
                continue;
            }
            let prev = previous.entries.get(&route.key);
            let generation = route.generation.unwrap_or_else(|| match prev {
                Some(p) => match &p.current {
                    Current::Parsed(c) if c.route.spec == route.spec => p.generation,
                    _ => p.generation + 1,
                },
                None => 1,
            });
            let checked = check::check(route, cx);
            let serving = if checked.valid() {
                Some((Box::new(checked.clone()), generation))
            } else {
                kept(prev, cx).or_else(|| {
                    // Never valid: what can serve does (unresolved backends fail their share).
                    (checked.invalid.is_none()).then(|| (Box::new(checked.clone()), generation))
                })
            };
            entries.insert(
                route.key.clone(),
                Entry {
                    current: Current::Parsed(Box::new(checked)),
                    generation,
                    serving,
                    report: placeholder(route),
                },
            );
        }
        for u in &parsed.unparsed {
            let Some(key) = &u.key else {
                nameless.push(format!("{}: {}: {}", u.file, u.location, u.message));
                continue;
            };
            if let Some(first) = entries.get(key) {
                nameless.push(twice(key, &u.file, first));
                continue;
            }
            let prev = previous.entries.get(key);
            let generation = u.generation.unwrap_or_else(|| match prev {
                Some(p) if p.current == Current::Unparsed(u.clone()) => p.generation,
                Some(p) => p.generation + 1,
                None => 1,
            });
            entries.insert(
                key.clone(),
                Entry {
                    current: Current::Unparsed(u.clone()),
                    generation,
                    serving: kept(prev, cx),
                    report: RouteReport {
                        key: key.clone(),
                        file: u.file.clone(),
                        generation,
                        hostnames: Vec::new(),
                        backends: Vec::new(),
                        parents: Vec::new(),
                        kept: None,
                    },
                },
            );
        }
        let mut table = RouteTable {
            cluster_domain: cluster_domain.to_owned(),
            services: mesh.services.clone(),
            entries,
            nameless,
            bad_grants: parsed.bad_grants,
        };
        let updates = table.report(previous, &now);
        (table, updates)
    }

    /// Fills every entry's report (conditions with their times) and returns the
    /// conditions that changed since `previous`.
    fn report(&mut self, previous: &RouteTable, now: &Time) -> Vec<TableUpdate> {
        let grpc = self.grpc_attachments();
        let mut updates = Vec::new();
        for (key, entry) in &mut self.entries {
            let kept = match (&entry.current, &entry.serving) {
                (Current::Parsed(c), Some((_, g))) if !c.valid() && *g != entry.generation => {
                    Some(*g)
                }
                (Current::Unparsed(_), Some((_, g))) => Some(*g),
                _ => None,
            };
            let keeping = kept
                .map(|g| format!("; the last valid version (generation {g}) keeps serving"))
                .unwrap_or_default();
            let parents: Vec<(ParentRef, Cond, Cond)> = match &entry.current {
                Current::Parsed(c) => c
                    .parents
                    .iter()
                    .map(|p| {
                        let mut accepted = p.accepted.clone();
                        let conflicted = key.kind == RouteKind::Http
                            && accepted.ok
                            && p.attachment.as_ref().is_some_and(|a| {
                                grpc.iter().any(|(ns, g)| *ns == key.namespace && g.overlaps(a))
                            });
                        if conflicted {
                            accepted = Cond::fail(
                                "Conflicted",
                                "a GRPCRoute of this namespace has the same parent; it takes precedence (GEP-1426)",
                            );
                        }
                        let mut resolved = p.resolved.clone();
                        for c in [&mut accepted, &mut resolved] {
                            if !c.ok {
                                c.message.push_str(&keeping);
                            }
                        }
                        (p.parent.clone(), accepted, resolved)
                    })
                    .collect(),
                Current::Unparsed(u) => u
                    .parent_refs
                    .iter()
                    .filter(|p| p.is_service())
                    .map(|p| {
                        (
                            p.clone(),
                            Cond::fail(
                                "UnsupportedValue",
                                format!("{}: {}: {}{keeping}", u.file, u.location, u.message),
                            ),
                            Cond::ok("ResolvedRefs", "Resolved all the Object references for the Route"),
                        )
                    })
                    .collect(),
            };
            let before = previous.entries.get(key).map(|e| &e.report);
            let timed =
                |parent: &ParentRef, which: fn(&ParentReport) -> &TimedCond, cond: &Cond| {
                    let since = before
                        .and_then(|r| r.parents.iter().find(|p| p.parent == *parent))
                        .map(which)
                        .filter(|t| t.cond.ok == cond.ok && t.cond.reason == cond.reason)
                        .map_or_else(|| now.clone(), |t| t.since.clone());
                    TimedCond {
                        cond: cond.clone(),
                        since,
                    }
                };
            let reports: Vec<ParentReport> = parents
                .iter()
                .map(|(parent, accepted, resolved)| ParentReport {
                    parent: parent.clone(),
                    accepted: timed(parent, |p| &p.accepted, accepted),
                    resolved: timed(parent, |p| &p.resolved, resolved),
                })
                .collect();
            for r in &reports {
                for (condition, now_cond, which) in [
                    (
                        "Accepted",
                        &r.accepted.cond,
                        (|p: &ParentReport| &p.accepted) as fn(&ParentReport) -> &TimedCond,
                    ),
                    ("ResolvedRefs", &r.resolved.cond, |p: &ParentReport| {
                        &p.resolved
                    }),
                ] {
                    let was = before
                        .and_then(|b| b.parents.iter().find(|p| p.parent == r.parent))
                        .map(|p| &which(p).cond);
                    let changed = match was {
                        Some(w) => w != now_cond,
                        None => !now_cond.ok,
                    };
                    if changed {
                        updates.push(TableUpdate {
                            route: key.clone(),
                            file: entry.report.file.clone(),
                            parent: r.parent.to_string(),
                            condition,
                            cond: now_cond.clone(),
                            kept,
                        });
                    }
                }
            }
            entry.report.generation = entry.generation;
            entry.report.parents = reports;
            entry.report.kept = kept;
            if let Current::Parsed(c) = &entry.current {
                entry.report.file = c.route.file.clone();
                entry.report.hostnames = c.route.hostnames().to_vec();
                entry.report.backends = c.backends.clone();
            }
        }
        updates
    }

    /// Every route's status, by kind, namespace and name.
    pub fn reports(&self) -> impl Iterator<Item = &RouteReport> {
        self.entries.values().map(|e| &e.report)
    }

    /// Objects that have no name, routes defined twice, and ReferenceGrants that do
    /// not parse.
    pub fn problems(&self) -> impl Iterator<Item = &String> {
        self.nameless.iter().chain(&self.bad_grants)
    }

    /// How many routes, and how many of them serve.
    pub fn counts(&self) -> (usize, usize) {
        let serving = self
            .entries
            .values()
            .filter(|e| e.serving.is_some())
            .count();
        (self.entries.len(), serving)
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The routes serving Service port `namespace/name:port` for callers in
    /// `caller_namespace`, in precedence order.
    /// The Service ports GRPCRoutes serve, with the GRPCRoutes' namespace: an
    /// HTTPRoute of that namespace on an overlapping parent is `Conflicted` (GEP-1426).
    fn grpc_attachments(&self) -> Vec<(String, Attachment)> {
        self.entries
            .iter()
            .filter(|(k, _)| k.kind == RouteKind::Grpc)
            .filter_map(|(k, e)| Some((k, e.serving.as_ref()?)))
            .flat_map(|(k, (c, _))| {
                c.parents
                    .iter()
                    .filter_map(|p| p.attachment.clone())
                    .map(|a| (k.namespace.clone(), a))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn routes_for(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        caller_namespace: &str,
    ) -> Vec<&Checked> {
        let grpc = self.grpc_attachments();
        let conflicted = |c: &Checked, a: &Attachment| {
            c.route.key.kind == RouteKind::Http
                && grpc
                    .iter()
                    .any(|(ns, g)| *ns == c.route.key.namespace && g.overlaps(a))
        };
        let attached = |route_ns: &str| -> Vec<&Checked> {
            let mut routes: Vec<&Checked> = self
                .entries
                .iter()
                .filter(|(k, _)| k.namespace == route_ns)
                .filter_map(|(_, e)| e.serving.as_ref().map(|(c, _)| &**c))
                .filter(|c| {
                    c.parents.iter().any(|p| {
                        p.attachment
                            .as_ref()
                            .is_some_and(|a| a.covers(namespace, name, port) && !conflicted(c, a))
                    })
                })
                .collect();
            routes.sort_by(|a, b| precedence(&a.route, &b.route));
            routes
        };
        if caller_namespace != namespace {
            let consumer = attached(caller_namespace);
            if !consumer.is_empty() {
                return consumer;
            }
        }
        attached(namespace)
    }

    /// The policy of Service port `namespace/name:port` for callers in
    /// `caller_namespace`; `None` when there is no such Service port.
    pub fn policy(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        caller_namespace: &str,
    ) -> Option<outbound::OutboundPolicy> {
        let svc = self.service(namespace, name)?;
        let svc_port = svc.ports.iter().find(|p| p.port == port)?;
        let parent = (namespace, name, port);
        let metadata = Some(messages::service_metadata(namespace, name, port));
        let cd = &self.cluster_domain;
        if svc_port.is_opaque() {
            let backend = messages::service_backend(namespace, name, port, cd);
            use outbound::opaque_route::{
                distribution, Distribution, RouteBackend, Rule, WeightedRouteBackend,
            };
            let route = outbound::OpaqueRoute {
                metadata: Some(default_metadata("opaque")),
                rules: vec![Rule {
                    backends: Some(Distribution {
                        kind: Some(distribution::Kind::RandomAvailable(
                            distribution::RandomAvailable {
                                backends: vec![WeightedRouteBackend {
                                    backend: Some(RouteBackend {
                                        backend: Some(backend),
                                        filters: Vec::new(),
                                    }),
                                    weight: 1,
                                }],
                            },
                        )),
                    }),
                    filters: Vec::new(),
                }],
            };
            return Some(outbound::OutboundPolicy {
                protocol: Some(outbound::ProxyProtocol {
                    kind: Some(proxy_protocol::Kind::Opaque(proxy_protocol::Opaque {
                        routes: vec![route],
                    })),
                }),
                metadata,
            });
        }
        let routes = self.routes_for(namespace, name, port, caller_namespace);
        let kind = if routes.iter().any(|c| c.route.key.kind == RouteKind::Grpc) {
            proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                routes: routes
                    .iter()
                    .filter(|c| c.route.key.kind == RouteKind::Grpc)
                    .map(|c| messages::grpc_route(c, parent, cd))
                    .collect(),
                failure_accrual: None,
            })
        } else {
            let mut http: Vec<outbound::HttpRoute> = routes
                .iter()
                .map(|c| messages::http_route(c, parent, cd))
                .collect();
            if http.is_empty() {
                http.push(default_http_route(namespace, name, port, cd));
            }
            proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: prost_types::Duration::try_from(DETECT_TIMEOUT).ok(),
                opaque: None,
                http1: Some(proxy_protocol::Http1 {
                    routes: http.clone(),
                    failure_accrual: None,
                }),
                http2: Some(proxy_protocol::Http2 {
                    routes: http,
                    failure_accrual: None,
                }),
            })
        };
        Some(outbound::OutboundPolicy {
            protocol: Some(outbound::ProxyProtocol { kind: Some(kind) }),
            metadata,
        })
    }
}

impl RouteTable {
    /// [`Self::policy`] with weft's extension: the `URLRewrite` and `RequestMirror`
    /// filters of the routes it carries (what `OutboundPolicies` serves).
    pub fn policy_ext(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        caller_namespace: &str,
    ) -> Option<weft_core::outbound_ext::OutboundPolicyExt> {
        let policy = self.policy(namespace, name, port, caller_namespace)?;
        let opaque = matches!(
            policy.protocol.as_ref().and_then(|p| p.kind.as_ref()),
            Some(proxy_protocol::Kind::Opaque(_))
        );
        let mut extensions = Vec::new();
        if !opaque {
            let routes = self.routes_for(namespace, name, port, caller_namespace);
            // As `policy`: a GRPCRoute on the port leaves the HTTPRoutes out.
            let grpc = routes.iter().any(|c| c.route.key.kind == RouteKind::Grpc);
            for c in routes
                .iter()
                .filter(|c| !grpc || c.route.key.kind == RouteKind::Grpc)
            {
                extensions.extend(messages::extensions(c, &self.cluster_domain));
            }
        }
        Some(weft_core::outbound_ext::OutboundPolicyExt::new(
            policy, extensions,
        ))
    }
}

fn twice(key: &RouteKey, file: &str, first: &Entry) -> String {
    format!(
        "{file}: {key} is defined twice (first in {}); this one is ignored",
        first.report.file
    )
}

/// The last valid version of a route, checked again against what exists now.
fn kept(prev: Option<&Entry>, cx: Context<'_>) -> Option<(Box<Checked>, i64)> {
    let (c, g) = prev?.serving.as_ref()?;
    Some((Box::new(check::check(&c.route, cx)), *g))
}

fn placeholder(route: &ParsedRoute) -> RouteReport {
    RouteReport {
        key: route.key.clone(),
        file: route.file.clone(),
        generation: 0,
        hostnames: Vec::new(),
        backends: Vec::new(),
        parents: Vec::new(),
        kept: None,
    }
}

/// Gateway API precedence between routes: the oldest first (routes without a
/// creationTimestamp after those with one), then by `namespace/name`.
pub fn precedence(a: &ParsedRoute, b: &ParsedRoute) -> std::cmp::Ordering {
    let created = |r: &ParsedRoute| (r.created.is_none(), r.created.clone());
    created(a)
        .cmp(&created(b))
        .then_with(|| (&a.key.namespace, &a.key.name).cmp(&(&b.key.namespace, &b.key.name)))
}

fn default_metadata(name: &str) -> meta::Metadata {
    meta::Metadata {
        kind: Some(meta::metadata::Kind::Default(name.to_owned())),
    }
}

/// A Service without routes: every request to the Service itself (as Linkerd's
/// policy controller answers).
fn default_http_route(
    namespace: &str,
    name: &str,
    port: u16,
    cluster_domain: &str,
) -> outbound::HttpRoute {
    use outbound::http_route::{
        distribution, Distribution, RouteBackend, Rule, WeightedRouteBackend,
    };
    #[allow(deprecated)]
    let rule = Rule {
        matches: vec![linkerd2_proxy_api::http_route::HttpRouteMatch {
            path: Some(linkerd2_proxy_api::http_route::PathMatch {
                kind: Some(linkerd2_proxy_api::http_route::path_match::Kind::Prefix(
                    "/".into(),
                )),
            }),
            ..Default::default()
        }],
        filters: Vec::new(),
        backends: Some(Distribution {
            kind: Some(distribution::Kind::RandomAvailable(
                distribution::RandomAvailable {
                    backends: vec![WeightedRouteBackend {
                        backend: Some(RouteBackend {
                            backend: Some(messages::service_backend(
                                namespace,
                                name,
                                port,
                                cluster_domain,
                            )),
                            filters: Vec::new(),
                            request_timeout: None,
                        }),
                        weight: 1,
                    }],
                },
            )),
        }),
        request_timeout: None,
        timeouts: None,
        retry: None,
        allow_l5d_request_headers: false,
    };
    outbound::HttpRoute {
        metadata: Some(default_metadata("http")),
        hosts: Vec::new(),
        rules: vec![rule],
    }
}
