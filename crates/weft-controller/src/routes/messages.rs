//! A checked route as the OutboundPolicies protocol carries it, for one parent
//! Service port: matches, filters, weighted backends (each a balancer over a
//! Service port's endpoints, found with `Destination.Get`), timeouts and retries.
//! What the proxy must read is listed in docs/routes.md.
//!
//! `URLRewrite` and `RequestMirror`, which the protocol has no message for, are
//! carried as weft's extension ([`extensions`], `weft_core::outbound_ext`) beside the
//! policy.

use std::time::Duration;

use gateway_api::experimental::grpcroutes as grpc;
use gateway_api::experimental::httproutes as http;
use linkerd2_proxy_api::grpc_route as api_grpc;
use linkerd2_proxy_api::http_route as api_http;
use linkerd2_proxy_api::http_types;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound;

use weft_core::outbound_ext::{
    filter_extension, BackendFilterExtension, FilterExtension, RequestMirror, RouteExtension,
    UrlRewrite,
};

use super::check::{duration, Backend, Checked};
use super::parse::RouteSpec;
use super::{RouteKey, GATEWAY_GROUP};

/// The request body a proxy may buffer to retry a request (Linkerd's default).
pub const RETRY_MAX_REQUEST_BYTES: u32 = 64 * 1024;
/// Retries of a `retry` block without `attempts`.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 1;
/// Status codes retried by a `retry` block without `codes`.
pub const DEFAULT_RETRY_CODES: [u32; 4] = [500, 502, 503, 504];

/// Balancer settings of every backend (the proxies' own defaults).
const DEFAULT_RTT: Duration = Duration::from_millis(30);
const EWMA_DECAY: Duration = Duration::from_secs(10);
const QUEUE_CAPACITY: u32 = 100;
const FAILFAST: Duration = Duration::from_secs(3);

fn pb(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

/// Metadata naming a route (or the default route, `Default("http")`/`("grpc")`).
pub fn route_metadata(key: &RouteKey) -> meta::Metadata {
    meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: GATEWAY_GROUP.into(),
            kind: key.kind.as_str().into(),
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            section: String::new(),
            port: 0,
        })),
    }
}

/// Metadata naming a Service port.
pub fn service_metadata(namespace: &str, name: &str, port: u16) -> meta::Metadata {
    meta::Metadata {
        kind: Some(meta::metadata::Kind::Resource(meta::Resource {
            group: "core".into(),
            kind: "Service".into(),
            name: name.into(),
            namespace: namespace.into(),
            section: String::new(),
            port: u32::from(port),
        })),
    }
}

/// A backend balancing over a Service port's endpoints, found with
/// `Destination.Get` of its name.
pub fn service_backend(
    namespace: &str,
    name: &str,
    port: u16,
    cluster_domain: &str,
) -> outbound::Backend {
    use outbound::backend::{self, balance_p2c, endpoint_discovery};
    outbound::Backend {
        metadata: Some(service_metadata(namespace, name, port)),
        queue: Some(outbound::Queue {
            capacity: QUEUE_CAPACITY,
            failfast_timeout: Some(pb(FAILFAST)),
        }),
        kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
            discovery: Some(backend::EndpointDiscovery {
                kind: Some(endpoint_discovery::Kind::Dst(
                    endpoint_discovery::DestinationGet {
                        path: format!("{name}.{namespace}.svc.{cluster_domain}:{port}"),
                    },
                )),
            }),
            load: Some(balance_p2c::Load::PeakEwma(balance_p2c::PeakEwma {
                default_rtt: Some(pb(DEFAULT_RTT)),
                decay: Some(pb(EWMA_DECAY)),
            })),
        })),
    }
}

/// A backend that cannot be reached: its metadata and no balancer; the failure
/// filter beside it answers its share of requests with 500 (Gateway API: requests to
/// an invalid backend fail).
fn invalid_backend(b: &Backend) -> outbound::Backend {
    outbound::Backend {
        metadata: Some(service_metadata(&b.namespace, &b.name, b.port.unwrap_or(0))),
        queue: None,
        kind: None,
    }
}

fn fail_500(message: String) -> api_http::HttpFailureInjector {
    api_http::HttpFailureInjector {
        status: 500,
        message,
        ratio: Some(api_http::Ratio {
            numerator: 1,
            denominator: 1,
        }),
    }
}

/// A header modifier message from a Gateway API one (the API's filter types of
/// rules, backends, HTTP and gRPC are distinct generated types of the same shape).
macro_rules! header_modifier {
    ($($message:ident)::+, $m:expr) => {
        $($message)::+ {
            add: headers($m.add.iter().flatten().map(|h| (&h.name, &h.value))),
            set: headers($m.set.iter().flatten().map(|h| (&h.name, &h.value))),
            remove: $m.remove.clone().unwrap_or_default(),
        }
    };
}

fn headers<'a>(
    pairs: impl Iterator<Item = (&'a String, &'a String)>,
) -> Option<http_types::Headers> {
    let headers: Vec<_> = pairs
        .map(|(name, value)| http_types::headers::Header {
            name: name.clone(),
            value: value.clone().into_bytes(),
        })
        .collect();
    (!headers.is_empty()).then_some(http_types::Headers { headers })
}

fn host_matches(hostnames: &[String]) -> Vec<api_http::HostMatch> {
    hostnames
        .iter()
        .map(|h| match h.strip_prefix("*.") {
            Some(suffix) => api_http::HostMatch {
                r#match: Some(api_http::host_match::Match::Suffix(
                    api_http::host_match::Suffix {
                        reverse_labels: suffix.rsplit('.').map(str::to_owned).collect(),
                    },
                )),
            },
            None => api_http::HostMatch {
                r#match: Some(api_http::host_match::Match::Exact(h.clone())),
            },
        })
        .collect()
}

/// The weighted backends of one rule (the parent Service itself when the rule has
/// none): `(weight, backend, filters)`, where an unresolved backend's filters fail
/// its requests. `None` when every weight is 0 (every request fails).
fn rule_backends(
    checked: &Checked,
    rule: usize,
    parent: (&str, &str, u16),
    cluster_domain: &str,
) -> Option<Vec<(u32, outbound::Backend, Option<String>)>> {
    let mine: Vec<&Backend> = checked.backends.iter().filter(|b| b.rule == rule).collect();
    if mine.is_empty() {
        let (ns, name, port) = parent;
        return Some(vec![(
            1,
            service_backend(ns, name, port, cluster_domain),
            None,
        )]);
    }
    let out: Vec<_> = mine
        .into_iter()
        .filter(|b| b.weight > 0)
        .map(|b| match (&b.problem, b.port) {
            (None, Some(port)) => (
                b.weight,
                service_backend(&b.namespace, &b.name, port, cluster_domain),
                None,
            ),
            (problem, _) => (
                b.weight,
                invalid_backend(b),
                Some(
                    problem
                        .as_ref()
                        .map_or_else(|| "backend has no port".to_owned(), |p| p.1.clone()),
                ),
            ),
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// An HTTPRoute's rules for a caller of Service port `parent` (namespace, name, port).
pub fn http_route(
    checked: &Checked,
    parent: (&str, &str, u16),
    cluster_domain: &str,
) -> outbound::HttpRoute {
    use outbound::http_route::{distribution, filter, Distribution, Filter, Rule};
    let RouteSpec::Http(spec) = &checked.route.spec else {
        return outbound::HttpRoute::default();
    };
    let default_rules = vec![http::HttpRouteRules::default()];
    let rules = match spec.rules.as_deref() {
        Some(r) if !r.is_empty() => r,
        _ => &default_rules,
    };
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let mut filters: Vec<Filter> = rule
                .filters
                .iter()
                .flatten()
                .filter_map(http_filter_message)
                .map(|kind| Filter { kind: Some(kind) })
                .collect();
            let backends = match rule_backends(checked, i, parent, cluster_domain) {
                Some(backends) => Distribution {
                    kind: Some(distribution::Kind::RandomAvailable(
                        distribution::RandomAvailable {
                            backends: backends
                                .into_iter()
                                .zip(
                                    rule.backend_refs
                                        .iter()
                                        .flatten()
                                        .filter(|b| b.weight.unwrap_or(1) > 0)
                                        .map(Some)
                                        .chain(std::iter::repeat(None)),
                                )
                                .map(|((weight, backend, failure), written)| {
                                    outbound::http_route::WeightedRouteBackend {
                                        weight,
                                        backend: Some(outbound::http_route::RouteBackend {
                                            backend: Some(backend),
                                            filters: failure
                                                .map(|m| Filter {
                                                    kind: Some(filter::Kind::FailureInjector(
                                                        fail_500(m),
                                                    )),
                                                })
                                                .into_iter()
                                                .chain(
                                                    written
                                                        .into_iter()
                                                        .flat_map(|b| b.filters.iter().flatten())
                                                        .filter_map(http_backend_filter_message)
                                                        .map(|kind| Filter { kind: Some(kind) }),
                                                )
                                                .collect(),
                                            #[allow(deprecated)]
                                            request_timeout: None,
                                        }),
                                    }
                                })
                                .collect(),
                        },
                    )),
                },
                None => {
                    filters.push(Filter {
                        kind: Some(filter::Kind::FailureInjector(fail_500(
                            "every backendRef of the rule has weight 0".into(),
                        ))),
                    });
                    Distribution {
                        kind: Some(distribution::Kind::Empty(distribution::Empty {})),
                    }
                }
            };
            let request = rule
                .timeouts
                .as_ref()
                .and_then(|t| t.request.as_deref())
                .and_then(|s| duration("", s).ok())
                .filter(|d| !d.is_zero());
            let backend_request = rule
                .timeouts
                .as_ref()
                .and_then(|t| t.backend_request.as_deref())
                .and_then(|s| duration("", s).ok())
                .filter(|d| !d.is_zero());
            let timeouts =
                (request.is_some() || backend_request.is_some()).then(|| api_http::Timeouts {
                    request: request.map(pb),
                    response: backend_request.map(pb),
                    idle: None,
                });
            let retry = rule.retry.as_ref().map(|r| {
                let backoff = r.backoff.as_deref().and_then(|s| duration("", s).ok());
                let codes: Vec<u32> = match &r.codes {
                    Some(c) if !c.is_empty() => {
                        c.iter().filter_map(|c| u32::try_from(*c).ok()).collect()
                    }
                    _ => DEFAULT_RETRY_CODES.to_vec(),
                };
                outbound::http_route::Retry {
                    max_retries: r
                        .attempts
                        .and_then(|a| u32::try_from(a).ok())
                        .unwrap_or(DEFAULT_RETRY_ATTEMPTS),
                    max_request_bytes: RETRY_MAX_REQUEST_BYTES,
                    conditions: Some(outbound::http_route::retry::Conditions {
                        status_ranges: codes
                            .into_iter()
                            .map(|c| outbound::http_route::retry::conditions::StatusRange {
                                start: c,
                                end: c,
                            })
                            .collect(),
                    }),
                    timeout: backend_request.map(pb),
                    backoff: backoff.map(|b| outbound::ExponentialBackoff {
                        min_backoff: Some(pb(b)),
                        max_backoff: Some(pb(b)),
                        jitter_ratio: 0.0,
                        respect_retry_after_hint: false,
                    }),
                }
            });
            #[allow(deprecated)]
            Rule {
                matches: http_matches(rule.matches.as_deref().unwrap_or_default()),
                filters,
                backends: Some(backends),
                request_timeout: backend_request.map(pb),
                timeouts,
                retry,
                allow_l5d_request_headers: false,
            }
        })
        .collect();
    outbound::HttpRoute {
        metadata: Some(route_metadata(&checked.route.key)),
        hosts: host_matches(checked.route.hostnames()),
        rules,
    }
}

fn http_matches(matches: &[http::HttpRouteRulesMatches]) -> Vec<api_http::HttpRouteMatch> {
    let prefix_root = || api_http::PathMatch {
        kind: Some(api_http::path_match::Kind::Prefix("/".into())),
    };
    if matches.is_empty() {
        return vec![api_http::HttpRouteMatch {
            path: Some(prefix_root()),
            ..Default::default()
        }];
    }
    matches
        .iter()
        .map(|m| {
            use http::HttpRouteRulesMatchesPathType as P;
            let path = match &m.path {
                None => prefix_root(),
                Some(p) => {
                    let value = p.value.clone().unwrap_or_else(|| "/".into());
                    api_http::PathMatch {
                        kind: Some(match p.r#type.clone().unwrap_or(P::PathPrefix) {
                            P::Exact => api_http::path_match::Kind::Exact(value),
                            P::PathPrefix => api_http::path_match::Kind::Prefix(value),
                            P::RegularExpression => api_http::path_match::Kind::Regex(value),
                        }),
                    }
                }
            };
            api_http::HttpRouteMatch {
                path: Some(path),
                headers: m
                    .headers
                    .iter()
                    .flatten()
                    .map(|h| api_http::HeaderMatch {
                        name: h.name.clone(),
                        value: Some(match h.r#type {
                            Some(http::HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                                api_http::header_match::Value::Regex(h.value.clone())
                            }
                            _ => api_http::header_match::Value::Exact(h.value.clone().into_bytes()),
                        }),
                    })
                    .collect(),
                query_params: m
                    .query_params
                    .iter()
                    .flatten()
                    .map(|q| api_http::QueryParamMatch {
                        name: q.name.clone(),
                        value: Some(match q.r#type {
                            Some(http::HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                                api_http::query_param_match::Value::Regex(q.value.clone())
                            }
                            _ => api_http::query_param_match::Value::Exact(q.value.clone()),
                        }),
                    })
                    .collect(),
                method: m.method.as_ref().and_then(|meth| {
                    let text = serde_json::to_value(meth).ok()?;
                    let method = ::http::Method::from_bytes(text.as_str()?.as_bytes()).ok()?;
                    Some(http_types::HttpMethod::from(method))
                }),
            }
        })
        .collect()
}

fn http_filter_message(
    f: &http::HttpRouteRulesFilters,
) -> Option<outbound::http_route::filter::Kind> {
    use outbound::http_route::filter::Kind;
    if let Some(m) = &f.request_header_modifier {
        return Some(Kind::RequestHeaderModifier(header_modifier!(
            api_http::RequestHeaderModifier,
            m
        )));
    }
    if let Some(m) = &f.response_header_modifier {
        return Some(Kind::ResponseHeaderModifier(header_modifier!(
            api_http::ResponseHeaderModifier,
            m
        )));
    }
    if let Some(r) = &f.request_redirect {
        use http::HttpRouteRulesFiltersRequestRedirectPathType as P;
        return Some(Kind::Redirect(api_http::RequestRedirect {
            scheme: r.scheme.as_ref().map(|s| {
                http_types::Scheme::from(match s {
                    http::HttpRouteRulesFiltersRequestRedirectScheme::Http => "http",
                    http::HttpRouteRulesFiltersRequestRedirectScheme::Https => "https",
                })
            }),
            host: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().and_then(|p| {
                let replace = match p.r#type {
                    P::ReplaceFullPath => {
                        api_http::path_modifier::Replace::Full(p.replace_full_path.clone()?)
                    }
                    P::ReplacePrefixMatch => {
                        api_http::path_modifier::Replace::Prefix(p.replace_prefix_match.clone()?)
                    }
                };
                Some(api_http::PathModifier {
                    replace: Some(replace),
                })
            }),
            port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            status: r
                .status_code
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(302),
        }));
    }
    None
}

fn http_backend_filter_message(
    f: &http::HttpRouteRulesBackendRefsFilters,
) -> Option<outbound::http_route::filter::Kind> {
    use outbound::http_route::filter::Kind;
    if let Some(m) = &f.request_header_modifier {
        return Some(Kind::RequestHeaderModifier(header_modifier!(
            api_http::RequestHeaderModifier,
            m
        )));
    }
    if let Some(m) = &f.response_header_modifier {
        return Some(Kind::ResponseHeaderModifier(header_modifier!(
            api_http::ResponseHeaderModifier,
            m
        )));
    }
    None
}

/// A GRPCRoute's rules for a caller of Service port `parent`.
pub fn grpc_route(
    checked: &Checked,
    parent: (&str, &str, u16),
    cluster_domain: &str,
) -> outbound::GrpcRoute {
    use outbound::grpc_route::{distribution, filter, Distribution, Filter, Rule};
    let RouteSpec::Grpc(spec) = &checked.route.spec else {
        return outbound::GrpcRoute::default();
    };
    let default_rules = vec![grpc::GrpcRouteRules::default()];
    let rules = match spec.rules.as_deref() {
        Some(r) if !r.is_empty() => r,
        _ => &default_rules,
    };
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let modifier = |m: &grpc::GrpcRouteRulesFiltersRequestHeaderModifier| {
                header_modifier!(api_http::RequestHeaderModifier, m)
            };
            let mut filters: Vec<Filter> = rule
                .filters
                .iter()
                .flatten()
                .filter_map(|f| f.request_header_modifier.as_ref())
                .map(|m| Filter {
                    kind: Some(filter::Kind::RequestHeaderModifier(modifier(m))),
                })
                .collect();
            let backend_filters = |b: &grpc::GrpcRouteRulesBackendRefs| -> Vec<Filter> {
                b.filters
                    .iter()
                    .flatten()
                    .filter_map(|f| f.request_header_modifier.as_ref())
                    .map(|m| Filter {
                        kind: Some(filter::Kind::RequestHeaderModifier(header_modifier!(
                            api_http::RequestHeaderModifier,
                            m
                        ))),
                    })
                    .collect()
            };
            let backends = match rule_backends(checked, i, parent, cluster_domain) {
                Some(backends) => Distribution {
                    kind: Some(distribution::Kind::RandomAvailable(
                        distribution::RandomAvailable {
                            backends: backends
                                .into_iter()
                                .zip(
                                    rule.backend_refs
                                        .iter()
                                        .flatten()
                                        .filter(|b| b.weight.unwrap_or(1) > 0)
                                        .map(Some)
                                        .chain(std::iter::repeat(None)),
                                )
                                .map(|((weight, backend, failure), written)| {
                                    outbound::grpc_route::WeightedRouteBackend {
                                        weight,
                                        backend: Some(outbound::grpc_route::RouteBackend {
                                            backend: Some(backend),
                                            filters: failure
                                                .map(|m| Filter {
                                                    kind: Some(filter::Kind::FailureInjector(
                                                        api_grpc::GrpcFailureInjector {
                                                            // INTERNAL, as a 500 is for HTTP.
                                                            code: 13,
                                                            message: m,
                                                            ratio: Some(api_http::Ratio {
                                                                numerator: 1,
                                                                denominator: 1,
                                                            }),
                                                        },
                                                    )),
                                                })
                                                .into_iter()
                                                .chain(
                                                    written
                                                        .map(backend_filters)
                                                        .unwrap_or_default(),
                                                )
                                                .collect(),
                                            #[allow(deprecated)]
                                            request_timeout: None,
                                        }),
                                    }
                                })
                                .collect(),
                        },
                    )),
                },
                None => {
                    filters.push(Filter {
                        kind: Some(filter::Kind::FailureInjector(
                            api_grpc::GrpcFailureInjector {
                                code: 13,
                                message: "every backendRef of the rule has weight 0".into(),
                                ratio: Some(api_http::Ratio {
                                    numerator: 1,
                                    denominator: 1,
                                }),
                            },
                        )),
                    });
                    Distribution {
                        kind: Some(distribution::Kind::Empty(distribution::Empty {})),
                    }
                }
            };
            let matches = match rule.matches.as_deref() {
                Some(m) if !m.is_empty() => m
                    .iter()
                    .map(|m| api_grpc::GrpcRouteMatch {
                        rpc: m.method.as_ref().map(|meth| api_grpc::GrpcRpcMatch {
                            service: meth.service.clone().unwrap_or_default(),
                            method: meth.method.clone().unwrap_or_default(),
                        }),
                        headers: m
                            .headers
                            .iter()
                            .flatten()
                            .map(|h| api_http::HeaderMatch {
                                name: h.name.clone(),
                                value: Some(match h.r#type {
                                    Some(
                                        grpc::GrpcRouteRulesMatchesHeadersType::RegularExpression,
                                    ) => api_http::header_match::Value::Regex(h.value.clone()),
                                    _ => api_http::header_match::Value::Exact(
                                        h.value.clone().into_bytes(),
                                    ),
                                }),
                            })
                            .collect(),
                    })
                    .collect(),
                _ => vec![api_grpc::GrpcRouteMatch::default()],
            };
            #[allow(deprecated)]
            Rule {
                matches,
                filters,
                backends: Some(backends),
                request_timeout: None,
                timeouts: None,
                retry: None,
                allow_l5d_request_headers: false,
            }
        })
        .collect();
    outbound::GrpcRoute {
        metadata: Some(route_metadata(&checked.route.key)),
        hosts: host_matches(checked.route.hostnames()),
        rules,
    }
}

/// A `URLRewrite` as the extension carries it (the rules' and backendRefs' filter
/// types are distinct generated types of one shape; `$path_type`: the path type's enum).
macro_rules! url_rewrite {
    ($r:expr, $path_type:path) => {{
        use $path_type as P;
        let r = $r;
        UrlRewrite {
            hostname: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().and_then(|p| {
                let replace = match p.r#type {
                    P::ReplaceFullPath => {
                        api_http::path_modifier::Replace::Full(p.replace_full_path.clone()?)
                    }
                    P::ReplacePrefixMatch => {
                        api_http::path_modifier::Replace::Prefix(p.replace_prefix_match.clone()?)
                    }
                };
                Some(api_http::PathModifier {
                    replace: Some(replace),
                })
            }),
        }
    }};
}

/// A `RequestMirror` as the extension carries it, when its backend resolved (one
/// that does not is reported in `ResolvedRefs`, and no copies are sent).
macro_rules! request_mirror {
    ($checked:expr, $cd:expr, ($rule:expr, $backend_ref:expr, $filter:expr), $m:expr) => {{
        let m = $m;
        $checked
            .mirror($rule, $backend_ref, $filter)
            .filter(|r| r.problem.is_none())
            .and_then(|r| Some((r, r.port?)))
            .map(|(r, port)| {
                let ratio = match (m.percent, &m.fraction) {
                    (Some(p), _) => Some((p, 100)),
                    (None, Some(f)) => Some((f.numerator, f.denominator.unwrap_or(100))),
                    (None, None) => None,
                };
                RequestMirror {
                    backend: Some(service_backend(&r.namespace, &r.name, port, $cd)),
                    ratio: ratio.map(|(n, d)| api_http::Ratio {
                        numerator: u32::try_from(n).unwrap_or(0),
                        denominator: u32::try_from(d).unwrap_or(1).max(1),
                    }),
                }
            })
    }};
}

fn rewrite_filter(r: UrlRewrite) -> FilterExtension {
    FilterExtension {
        kind: Some(filter_extension::Kind::UrlRewrite(r)),
    }
}

fn mirror_filter(m: RequestMirror) -> FilterExtension {
    FilterExtension {
        kind: Some(filter_extension::Kind::RequestMirror(Box::new(m))),
    }
}

/// The filters of a checked route that the protocol has no message for
/// (`URLRewrite`, `RequestMirror`), as weft's extension of the policy: one entry per
/// rule that has any, naming the route by the metadata of its `HttpRoute` or
/// `GrpcRoute`, and the backends by their index in the rule's distribution.
pub fn extensions(checked: &Checked, cluster_domain: &str) -> Vec<RouteExtension> {
    let cd = cluster_domain;
    let mut out = Vec::new();
    match &checked.route.spec {
        RouteSpec::Http(spec) => {
            for (i, rule) in spec.rules.iter().flatten().enumerate() {
                let filters: Vec<FilterExtension> = rule
                    .filters
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(j, f)| {
                        if let Some(r) = &f.url_rewrite {
                            return Some(rewrite_filter(url_rewrite!(
                                r,
                                http::HttpRouteRulesFiltersUrlRewritePathType
                            )));
                        }
                        let m = f.request_mirror.as_ref()?;
                        request_mirror!(checked, cd, (i, None, j), m).map(mirror_filter)
                    })
                    .collect();
                // The served distribution leaves out weight-0 backendRefs.
                let mut backend_filters = Vec::new();
                let mut served = 0u32;
                for (k, b) in rule.backend_refs.iter().flatten().enumerate() {
                    if b.weight.unwrap_or(1) <= 0 {
                        continue;
                    }
                    let filters: Vec<FilterExtension> = b
                        .filters
                        .iter()
                        .flatten()
                        .enumerate()
                        .filter_map(|(j, f)| {
                            if let Some(r) = &f.url_rewrite {
                                return Some(rewrite_filter(url_rewrite!(
                                    r,
                                    http::HttpRouteRulesBackendRefsFiltersUrlRewritePathType
                                )));
                            }
                            let m = f.request_mirror.as_ref()?;
                            request_mirror!(checked, cd, (i, Some(k), j), m).map(mirror_filter)
                        })
                        .collect();
                    if !filters.is_empty() {
                        backend_filters.push(BackendFilterExtension {
                            backend: served,
                            filters,
                        });
                    }
                    served += 1;
                }
                if !filters.is_empty() || !backend_filters.is_empty() {
                    out.push(RouteExtension {
                        route: Some(route_metadata(&checked.route.key)),
                        rule: u32::try_from(i).unwrap_or(u32::MAX),
                        filters,
                        backend_filters,
                    });
                }
            }
        }
        RouteSpec::Grpc(spec) => {
            for (i, rule) in spec.rules.iter().flatten().enumerate() {
                let filters: Vec<FilterExtension> = rule
                    .filters
                    .iter()
                    .flatten()
                    .enumerate()
                    .filter_map(|(j, f)| {
                        let m = f.request_mirror.as_ref()?;
                        request_mirror!(checked, cd, (i, None, j), m).map(mirror_filter)
                    })
                    .collect();
                if !filters.is_empty() {
                    out.push(RouteExtension {
                        route: Some(route_metadata(&checked.route.key)),
                        rule: u32::try_from(i).unwrap_or(u32::MAX),
                        filters,
                        backend_filters: Vec::new(),
                    });
                }
            }
        }
    }
    out
}
