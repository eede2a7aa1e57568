//! Reading an `OutboundPolicy` into [`Routes`]. A route the proxy cannot apply as
//! given (an invalid regular expression or header, a backend it cannot resolve) is
//! refused whole, with a message naming the route and the field: the caller keeps
//! the last policy that was valid, so traffic never follows half a route.
//!
//! Weft's extension of the policy ([`OutboundPolicyExt`]) adds `URLRewrite` and
//! `RequestMirror` filters to the rules and backends it names ([`routes_ext`]); an
//! extension naming a route, rule or backend the policy does not have refuses the
//! policy too.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use linkerd2_proxy_api::grpc_route as grpc_api;
use linkerd2_proxy_api::http_route as route_api;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound as api;
use linkerd2_proxy_api::outbound::proxy_protocol::Kind as Protocol;

use weft_core::outbound_ext::{filter_extension, FilterExtension, OutboundPolicyExt};

use super::*;
use crate::retry::{PolicyOverrides, RetryCondition, RetryOn};

/// Why a policy was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("route {route}: {problem}")]
pub struct RouteError {
    /// `HTTPRoute default/books-canary` (or the position when it has no name).
    pub route: String,
    pub problem: String,
}

/// The routes of a policy. Opaque and TLS policies have none (connections go to the
/// Service's endpoints as before).
pub fn routes(policy: api::OutboundPolicy) -> Result<Routes, RouteError> {
    let (routes, parent) = route_list(policy)?;
    Ok(Routes::new(routes, parent))
}

/// The routes of a policy with weft's extension: the policy's, with the extension's
/// filters after each rule's (or backend's) own.
pub fn routes_ext(policy: OutboundPolicyExt) -> Result<Routes, RouteError> {
    let (policy, extensions) = policy.into_parts();
    let (mut routes, parent) = route_list(policy)?;
    for (n, ext) in extensions.into_iter().enumerate() {
        let named = route_meta(ext.route.as_ref(), RouteKind::Http, usize::MAX);
        let fail = |problem: String| RouteError {
            route: format!("{} {}/{}", named.kind.as_str(), named.namespace, named.name),
            problem: format!("extensions[{n}]: {problem}"),
        };
        let Some(route) = routes.iter_mut().find(|r| *r.meta == named) else {
            return Err(fail("names a route the policy does not have".into()));
        };
        let rule_index = ext.rule as usize;
        let Some(rule) = route.rules.get_mut(rule_index) else {
            return Err(fail(format!(
                "names rule {rule_index}, and the route has {}",
                route.rules.len()
            )));
        };
        for f in ext.filters {
            if let Some(f) =
                extension_filter(f).map_err(|p| fail(format!("rules[{rule_index}]: {p}")))?
            {
                rule.filters.push(f);
            }
        }
        for b in ext.backend_filters {
            let i = b.backend as usize;
            let backend = match &mut rule.backends {
                Backends::Weighted(backends) => backends.get_mut(i),
                Backends::None => None,
            };
            let Some(backend) = backend else {
                return Err(fail(format!(
                    "rules[{rule_index}]: names backend {i}, which the rule does not have"
                )));
            };
            for f in b.filters {
                if let Some(f) = extension_filter(f)
                    .map_err(|p| fail(format!("rules[{rule_index}].backends[{i}]: {p}")))?
                {
                    backend.filters.push(f);
                }
            }
        }
    }
    Ok(Routes::new(routes, parent))
}

/// A filter of weft's extension (`None`: a kind this proxy does not know, from a
/// newer controller).
fn extension_filter(f: FilterExtension) -> Result<Option<Filter>, String> {
    Ok(match f.kind {
        Some(filter_extension::Kind::UrlRewrite(r)) => {
            let hostname = match r.hostname.as_str() {
                "" => None,
                h => Some(HeaderValue::from_str(h).map_err(|_| {
                    format!("filters.urlRewrite.hostname: {h:?} is not a valid Host")
                })?),
            };
            let path = r.path.and_then(|p| p.replace).map(|p| match p {
                route_api::path_modifier::Replace::Full(f) => PathModifier::Full(f),
                route_api::path_modifier::Replace::Prefix(p) => PathModifier::Prefix(p),
            });
            if let Some(PathModifier::Full(v) | PathModifier::Prefix(v)) = &path {
                if !v.starts_with('/') || http::uri::PathAndQuery::try_from(v.as_str()).is_err() {
                    return Err(format!(
                        "filters.urlRewrite.path: {v:?} is not an absolute path"
                    ));
                }
            }
            Some(Filter::Rewrite(UrlRewrite { hostname, path }))
        }
        Some(filter_extension::Kind::RequestMirror(m)) => {
            let (authority, name, _) = backend("filters.requestMirror.backend", m.backend)?;
            if authority.is_empty() {
                return Err(
                    "filters.requestMirror.backend: no destination to send copies to".into(),
                );
            }
            let (numerator, denominator) = ratio(m.ratio.as_ref());
            Some(Filter::Mirror(Arc::new(Mirror {
                authority,
                name,
                numerator,
                denominator,
                in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
            })))
        }
        None => None,
    })
}

/// A policy's routes and the Service port it is for.
fn route_list(policy: api::OutboundPolicy) -> Result<(Vec<Route>, Option<ServiceRef>), RouteError> {
    let parent = service_ref(policy.metadata.as_ref());
    let kind = policy.protocol.and_then(|p| p.kind);
    let (http, grpc) = match kind {
        Some(Protocol::Detect(d)) => {
            let http1 = d.http1.map(|h| h.routes).unwrap_or_default();
            let http2 = d.http2.map(|h| h.routes).unwrap_or_default();
            // Both carry the same routes (Linkerd sends them twice); one copy is enough.
            (if http1.is_empty() { http2 } else { http1 }, Vec::new())
        }
        Some(Protocol::Http1(h)) => (h.routes, Vec::new()),
        Some(Protocol::Http2(h)) => (h.routes, Vec::new()),
        Some(Protocol::Grpc(g)) => (Vec::new(), g.routes),
        Some(Protocol::Opaque(_)) | Some(Protocol::Tls(_)) | None => (Vec::new(), Vec::new()),
    };
    let mut routes = Vec::with_capacity(http.len() + grpc.len());
    for (i, r) in http.into_iter().enumerate() {
        let meta = route_meta(r.metadata.as_ref(), RouteKind::Http, i);
        let hosts = hosts(&r.hosts).map_err(|p| error(&meta, p))?;
        let rules = r
            .rules
            .into_iter()
            .enumerate()
            .map(|(n, rule)| http_rule(rule).map_err(|p| error(&meta, format!("rules[{n}]: {p}"))))
            .collect::<Result<_, _>>()?;
        routes.push(Route {
            meta: Arc::new(meta),
            hosts,
            rules,
        });
    }
    for (i, r) in grpc.into_iter().enumerate() {
        let meta = route_meta(r.metadata.as_ref(), RouteKind::Grpc, i);
        let hosts = hosts(&r.hosts).map_err(|p| error(&meta, p))?;
        let rules = r
            .rules
            .into_iter()
            .enumerate()
            .map(|(n, rule)| grpc_rule(rule).map_err(|p| error(&meta, format!("rules[{n}]: {p}"))))
            .collect::<Result<_, _>>()?;
        routes.push(Route {
            meta: Arc::new(meta),
            hosts,
            rules,
        });
    }
    Ok((routes, parent))
}

fn error(meta: &RouteMeta, problem: String) -> RouteError {
    RouteError {
        route: format!("{} {}/{}", meta.kind.as_str(), meta.namespace, meta.name),
        problem,
    }
}

fn route_meta(metadata: Option<&meta::Metadata>, kind: RouteKind, index: usize) -> RouteMeta {
    match metadata.and_then(|m| m.kind.as_ref()) {
        Some(meta::metadata::Kind::Resource(r)) => RouteMeta {
            kind: match r.kind.as_str() {
                "GRPCRoute" => RouteKind::Grpc,
                "HTTPRoute" => RouteKind::Http,
                _ => kind,
            },
            name: r.name.as_str().into(),
            namespace: r.namespace.as_str().into(),
        },
        Some(meta::metadata::Kind::Default(name)) => RouteMeta {
            kind: RouteKind::Default,
            name: name.as_str().into(),
            namespace: "".into(),
        },
        None => RouteMeta {
            kind,
            name: format!("#{index}").into(),
            namespace: "".into(),
        },
    }
}

fn hosts(hosts: &[route_api::HostMatch]) -> Result<Vec<HostMatch>, String> {
    hosts
        .iter()
        .filter_map(|h| h.r#match.as_ref())
        .map(|m| match m {
            route_api::host_match::Match::Exact(h) => Ok(HostMatch::Exact(h.to_ascii_lowercase())),
            route_api::host_match::Match::Suffix(s) => {
                let mut labels = s.reverse_labels.clone();
                labels.reverse();
                Ok(HostMatch::Suffix(labels.join(".").to_ascii_lowercase()))
            }
        })
        .collect()
}

fn regex(field: &str, pattern: &str) -> Result<regex::Regex, String> {
    // Anchored: the Gateway API matches the whole value.
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("{field}: invalid regular expression {pattern:?}: {e}"))
}

fn header_name(field: &str, name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{field}: {name:?} is not a valid header name"))
}

fn header_matches(headers: &[route_api::HeaderMatch]) -> Result<Vec<HeaderMatch>, String> {
    headers
        .iter()
        .map(|h| {
            let name = header_name("matches.headers", &h.name)?;
            let value = match &h.value {
                Some(route_api::header_match::Value::Exact(v)) => ValueMatch::Exact(v.clone()),
                Some(route_api::header_match::Value::Regex(r)) => {
                    ValueMatch::Regex(regex("matches.headers", r)?)
                }
                None => return Err(format!("matches.headers: {name} has no value to match")),
            };
            Ok(HeaderMatch { name, value })
        })
        .collect()
}

fn http_match(m: route_api::HttpRouteMatch) -> Result<RequestMatch, String> {
    let path = match m.path.and_then(|p| p.kind) {
        Some(route_api::path_match::Kind::Exact(p)) => Some(PathMatch::Exact(p)),
        Some(route_api::path_match::Kind::Prefix(p)) => {
            Some(PathMatch::Prefix(p.trim_end_matches('/').to_owned()))
        }
        Some(route_api::path_match::Kind::Regex(r)) => {
            Some(PathMatch::Regex(regex("matches.path", &r)?))
        }
        None => None,
    };
    let query = m
        .query_params
        .iter()
        .map(|q| {
            let value = match &q.value {
                Some(route_api::query_param_match::Value::Exact(v)) => ValueMatch::Exact(v.clone()),
                Some(route_api::query_param_match::Value::Regex(r)) => {
                    ValueMatch::Regex(regex("matches.queryParams", r)?)
                }
                None => {
                    return Err(format!(
                        "matches.queryParams: {} has no value to match",
                        q.name
                    ))
                }
            };
            Ok(QueryMatch {
                name: q.name.clone(),
                value,
            })
        })
        .collect::<Result<_, String>>()?;
    let method = m
        .method
        .map(|m| {
            Method::try_from(m).map_err(|e| format!("matches.method: not an HTTP method ({e})"))
        })
        .transpose()?;
    Ok(RequestMatch {
        path,
        headers: header_matches(&m.headers)?,
        query,
        method,
    })
}

/// A gRPC match is a path match on `/service/method` (POST, as every gRPC call is).
fn grpc_match(m: grpc_api::GrpcRouteMatch) -> Result<RequestMatch, String> {
    let path = match m.rpc {
        Some(rpc) if !rpc.service.is_empty() && !rpc.method.is_empty() => {
            Some(PathMatch::Exact(format!("/{}/{}", rpc.service, rpc.method)))
        }
        Some(rpc) if !rpc.service.is_empty() => {
            Some(PathMatch::Prefix(format!("/{}", rpc.service)))
        }
        Some(rpc) if !rpc.method.is_empty() => Some(PathMatch::Regex(regex(
            "matches.method",
            &format!("/[^/]+/{}", regex::escape(&rpc.method)),
        )?)),
        _ => None,
    };
    Ok(RequestMatch {
        path,
        headers: header_matches(&m.headers)?,
        query: Vec::new(),
        method: None,
    })
}

fn header_list(
    field: &str,
    headers: Option<&linkerd2_proxy_api::http_types::Headers>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    headers
        .map(|h| h.headers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|h| {
            let name = header_name(field, &h.name)?;
            let value = HeaderValue::from_bytes(&h.value)
                .map_err(|_| format!("{field}: the value of {name} is not a valid header value"))?;
            Ok((name, value))
        })
        .collect()
}

fn header_modifier(
    field: &str,
    add: Option<&linkerd2_proxy_api::http_types::Headers>,
    set: Option<&linkerd2_proxy_api::http_types::Headers>,
    remove: &[String],
) -> Result<HeaderModifier, String> {
    Ok(HeaderModifier {
        add: header_list(field, add)?,
        set: header_list(field, set)?,
        remove: remove
            .iter()
            .map(|n| header_name(field, n))
            .collect::<Result<_, _>>()?,
    })
}

fn ratio(r: Option<&route_api::Ratio>) -> (u32, u32) {
    match r {
        Some(r) if r.denominator > 0 => (r.numerator.min(r.denominator), r.denominator),
        // No ratio: every request.
        _ => (1, 1),
    }
}

fn http_filter(f: api::http_route::Filter) -> Result<Option<Filter>, String> {
    use api::http_route::filter::Kind;
    Ok(match f.kind {
        Some(Kind::RequestHeaderModifier(m)) => Some(Filter::RequestHeaders(header_modifier(
            "filters.requestHeaderModifier",
            m.add.as_ref(),
            m.set.as_ref(),
            &m.remove,
        )?)),
        Some(Kind::ResponseHeaderModifier(m)) => Some(Filter::ResponseHeaders(header_modifier(
            "filters.responseHeaderModifier",
            m.add.as_ref(),
            m.set.as_ref(),
            &m.remove,
        )?)),
        Some(Kind::Redirect(r)) => Some(Filter::Redirect(redirect(r)?)),
        Some(Kind::FailureInjector(f)) => {
            let (numerator, denominator) = ratio(f.ratio.as_ref());
            Some(Filter::Fail(FailureInjector {
                status: u16::try_from(f.status)
                    .ok()
                    .filter(|s| (100..=599).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "filters.failureInjector: status {} is not an HTTP status",
                            f.status
                        )
                    })?,
                message: f.message,
                numerator,
                denominator,
            }))
        }
        None => None,
    })
}

fn redirect(r: route_api::RequestRedirect) -> Result<Redirect, String> {
    let scheme = r
        .scheme
        .map(|s| {
            http::uri::Scheme::try_from(s)
                .map_err(|e| format!("filters.requestRedirect.scheme: {e}"))
        })
        .transpose()?;
    let status = match r.status {
        0 => StatusCode::FOUND,
        s => u16::try_from(s)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(StatusCode::is_redirection)
            .ok_or_else(|| {
                format!("filters.requestRedirect.statusCode: {s} is not a redirection status")
            })?,
    };
    let port = match r.port {
        0 => None,
        p => Some(
            u16::try_from(p)
                .map_err(|_| format!("filters.requestRedirect.port: {p} is not a port"))?,
        ),
    };
    Ok(Redirect {
        scheme,
        host: Some(r.host).filter(|h| !h.is_empty()),
        path: r.path.and_then(|p| p.replace).map(|p| match p {
            route_api::path_modifier::Replace::Full(f) => PathModifier::Full(f),
            route_api::path_modifier::Replace::Prefix(p) => PathModifier::Prefix(p),
        }),
        port,
        status,
    })
}

fn grpc_filter(f: api::grpc_route::Filter) -> Result<Option<Filter>, String> {
    use api::grpc_route::filter::Kind;
    Ok(match f.kind {
        Some(Kind::RequestHeaderModifier(m)) => Some(Filter::RequestHeaders(header_modifier(
            "filters.requestHeaderModifier",
            m.add.as_ref(),
            m.set.as_ref(),
            &m.remove,
        )?)),
        Some(Kind::FailureInjector(f)) => {
            let (numerator, denominator) = ratio(f.ratio.as_ref());
            Some(Filter::Fail(FailureInjector {
                status: u16::try_from(f.code)
                    .ok()
                    .filter(|c| *c <= 16)
                    .ok_or_else(|| {
                        format!("filters.failureInjector: {} is not a gRPC code", f.code)
                    })?,
                message: f.message,
                numerator,
                denominator,
            }))
        }
        None => None,
    })
}

fn duration(d: Option<prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let d = Duration::try_from(d).ok()?;
    (!d.is_zero()).then_some(d)
}

/// The Service port a `Resource` metadata names.
fn service_ref(metadata: Option<&meta::Metadata>) -> Option<ServiceRef> {
    match metadata.and_then(|m| m.kind.as_ref()) {
        Some(meta::metadata::Kind::Resource(r)) if r.kind == "Service" => Some(ServiceRef {
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            port: r.port,
        }),
        _ => None,
    }
}

/// A backend's destination path, metrics name and Service port.
type BackendNames = (String, Arc<str>, Option<ServiceRef>);

fn backend(field: &str, b: Option<api::Backend>) -> Result<BackendNames, String> {
    use api::backend::endpoint_discovery::Kind as Discovery;
    use api::backend::Kind;
    let b = b.ok_or_else(|| format!("{field}: no backend"))?;
    let service = service_ref(b.metadata.as_ref());
    let name = match b.metadata.and_then(|m| m.kind) {
        Some(meta::metadata::Kind::Resource(r)) => r.name,
        Some(meta::metadata::Kind::Default(n)) => n,
        None => String::new(),
    };
    let authority = match b.kind {
        Some(Kind::Balancer(p2c)) => match p2c.discovery.and_then(|d| d.kind) {
            Some(Discovery::Dst(dst)) if !dst.path.is_empty() => dst.path,
            _ => {
                return Err(format!(
                    "{field}: a balancer backend without a destination path"
                ))
            }
        },
        Some(Kind::Forward(addr)) => match addr
            .addr
            .and_then(|a| std::net::SocketAddr::try_from(a).ok())
        {
            Some(a) => a.to_string(),
            None => return Err(format!("{field}: a forward backend without an address")),
        },
        // A backendRef the controller could not resolve: its share of requests is
        // answered by its filters (a failure injector), else 500.
        None => String::new(),
    };
    let name = if name.is_empty() {
        authority.split('.').next().unwrap_or_default().to_owned()
    } else {
        name
    };
    Ok((authority.to_ascii_lowercase(), name.into(), service))
}

/// A rule's matches, filters and backends. The protocol's HTTP and gRPC rules are
/// distinct generated types of the same shape, so one macro reads both.
macro_rules! rule_parts {
    ($rule:ident, $module:ident, $match_fn:ident, $filter_fn:ident, $backend_fn:ident) => {{
        use api::$module::distribution::Kind;
        let matches: Vec<RequestMatch> = $rule
            .matches
            .into_iter()
            .map($match_fn)
            .collect::<Result<_, _>>()?;
        let filters: Vec<Filter> = $rule
            .filters
            .into_iter()
            .filter_map(|f| $filter_fn(f).transpose())
            .collect::<Result<_, _>>()?;
        let backends = match $rule.backends.and_then(|d| d.kind) {
            None | Some(Kind::Empty(_)) => Backends::None,
            Some(Kind::FirstAvailable(f)) => Backends::Weighted(
                f.backends
                    .into_iter()
                    .take(1)
                    .map(|b| $backend_fn(b, 1))
                    .collect::<Result<_, _>>()?,
            ),
            Some(Kind::RandomAvailable(r)) => Backends::Weighted(
                r.backends
                    .into_iter()
                    .map(|w| {
                        let b = w.backend.ok_or("backendRefs: an entry without a backend")?;
                        $backend_fn(b, w.weight)
                    })
                    .collect::<Result<_, String>>()?,
            ),
        };
        (matches, filters, backends)
    }};
}

/// A backend of either kind of rule, with its own filters.
macro_rules! route_backend {
    ($b:ident, $weight:ident, $filter_fn:ident) => {{
        let (authority, name, service) = backend("backendRefs", $b.backend)?;
        Ok(Backend {
            authority,
            name,
            service,
            weight: $weight,
            filters: $b
                .filters
                .into_iter()
                .filter_map(|f| $filter_fn(f).transpose())
                .collect::<Result<_, _>>()?,
        })
    }};
}

fn http_rule(rule: api::http_route::Rule) -> Result<Rule, String> {
    let (matches, filters, backends) =
        rule_parts!(rule, http_route, http_match, http_filter, http_backend);
    let retry = rule.retry.map(|r| {
        let on: Vec<RetryCondition> = r
            .conditions
            .map(|c| c.status_ranges)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                let start = u16::try_from(s.start).ok()?;
                let end = u16::try_from(s.end).ok()?.max(start);
                Some(RetryCondition::Http(start, end))
            })
            .collect();
        RouteRetry {
            limit: r.max_retries,
            on: (!on.is_empty()).then(|| RetryOn::new(&on)),
            attempt_timeout: duration(r.timeout),
            backoff: r.backoff.and_then(|b| duration(b.min_backoff)),
        }
    });
    Ok(Rule {
        matches,
        filters,
        backends,
        policy: policy(rule.timeouts, retry),
    })
}

fn grpc_rule(rule: api::grpc_route::Rule) -> Result<Rule, String> {
    let (matches, filters, backends) =
        rule_parts!(rule, grpc_route, grpc_match, grpc_filter, grpc_backend);
    let retry = rule.retry.map(|r| {
        let c = r.conditions.unwrap_or_default();
        let on: Vec<RetryCondition> = [
            (c.cancelled, 1),
            (c.deadine_exceeded, 4),
            (c.resource_exhausted, 8),
            (c.internal, 13),
            (c.unavailable, 14),
        ]
        .into_iter()
        .filter(|(set, _)| *set)
        .map(|(_, code)| RetryCondition::Grpc(code))
        .collect();
        RouteRetry {
            limit: r.max_retries,
            on: (!on.is_empty()).then(|| RetryOn::new(&on)),
            attempt_timeout: duration(r.timeout),
            backoff: r.backoff.and_then(|b| duration(b.min_backoff)),
        }
    });
    Ok(Rule {
        matches,
        filters,
        backends,
        policy: policy(rule.timeouts, retry),
    })
}

fn http_backend(b: api::http_route::RouteBackend, weight: u32) -> Result<Backend, String> {
    route_backend!(b, weight, http_filter)
}

fn grpc_backend(b: api::grpc_route::RouteBackend, weight: u32) -> Result<Backend, String> {
    route_backend!(b, weight, grpc_filter)
}

/// A rule's `retry`, as far as it overrides the Service's.
struct RouteRetry {
    limit: u32,
    on: Option<RetryOn>,
    attempt_timeout: Option<Duration>,
    backoff: Option<Duration>,
}

/// The rule's timeouts and retries as overrides of the Service's policy, or `None`
/// when it sets neither.
fn policy(
    timeouts: Option<route_api::Timeouts>,
    retry: Option<RouteRetry>,
) -> Option<ServicePolicy> {
    let request = timeouts.as_ref().and_then(|t| duration(t.request));
    // `timeouts.backendRequest`: each attempt's time to response headers.
    let response = timeouts.as_ref().and_then(|t| duration(t.response));
    if request.is_none() && response.is_none() && retry.is_none() {
        return None;
    }
    let mut o = PolicyOverrides::default();
    o.set_timeout(request);
    if let Some(r) = retry {
        o.set_retries(r.limit, r.on, r.attempt_timeout.or(response), r.backoff);
    } else if response.is_some() {
        o.set_attempt_timeout(response);
    }
    Some(ServicePolicy::new(o))
}

#[cfg(test)]
mod tests {
    use linkerd2_proxy_api::outbound::{backend, http_route, proxy_protocol};
    use weft_core::outbound_ext::{
        BackendFilterExtension, RequestMirror, RouteExtension, UrlRewrite as ExtRewrite,
    };

    use super::*;

    fn resource(group: &str, kind: &str, name: &str, port: u32) -> Option<meta::Metadata> {
        Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: group.into(),
                kind: kind.into(),
                name: name.into(),
                namespace: "ns".into(),
                section: String::new(),
                port,
            })),
        })
    }

    fn service(name: &str) -> api::Backend {
        api::Backend {
            metadata: resource("core", "Service", name, 80),
            queue: None,
            kind: Some(backend::Kind::Balancer(backend::BalanceP2c {
                discovery: Some(backend::EndpointDiscovery {
                    kind: Some(backend::endpoint_discovery::Kind::Dst(
                        backend::endpoint_discovery::DestinationGet {
                            path: format!("{name}.ns.svc.cluster.local:80"),
                        },
                    )),
                }),
                load: None,
            })),
        }
    }

    fn rule(backends: &[&str]) -> http_route::Rule {
        http_route::Rule {
            backends: Some(http_route::Distribution {
                kind: Some(http_route::distribution::Kind::RandomAvailable(
                    http_route::distribution::RandomAvailable {
                        backends: backends
                            .iter()
                            .map(|b| http_route::WeightedRouteBackend {
                                weight: 1,
                                backend: Some(http_route::RouteBackend {
                                    backend: Some(service(b)),
                                    ..Default::default()
                                }),
                            })
                            .collect(),
                    },
                )),
            }),
            ..Default::default()
        }
    }

    fn policy(extensions: Vec<RouteExtension>) -> OutboundPolicyExt {
        let route = api::HttpRoute {
            metadata: resource("gateway.networking.k8s.io", "HTTPRoute", "r", 0),
            hosts: Vec::new(),
            rules: vec![rule(&["a"]), rule(&["a", "b"])],
        };
        let policy = api::OutboundPolicy {
            protocol: Some(api::ProxyProtocol {
                kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                    timeout: None,
                    opaque: None,
                    http1: Some(proxy_protocol::Http1 {
                        routes: vec![route.clone()],
                        failure_accrual: None,
                    }),
                    http2: Some(proxy_protocol::Http2 {
                        routes: vec![route],
                        failure_accrual: None,
                    }),
                })),
            }),
            metadata: resource("core", "Service", "echo", 80),
        };
        OutboundPolicyExt::new(policy, extensions)
    }

    fn rewrite_to(path: &str) -> FilterExtension {
        FilterExtension {
            kind: Some(filter_extension::Kind::UrlRewrite(ExtRewrite {
                hostname: "h.example".into(),
                path: Some(route_api::PathModifier {
                    replace: Some(route_api::path_modifier::Replace::Full(path.into())),
                }),
            })),
        }
    }

    fn mirror_to(name: &str) -> FilterExtension {
        FilterExtension {
            kind: Some(filter_extension::Kind::RequestMirror(Box::new(
                RequestMirror {
                    backend: Some(service(name)),
                    ratio: Some(route_api::Ratio {
                        numerator: 1,
                        denominator: 4,
                    }),
                },
            ))),
        }
    }

    fn extension(
        route: &str,
        rule: u32,
        filters: Vec<FilterExtension>,
        backend_filters: Vec<BackendFilterExtension>,
    ) -> RouteExtension {
        RouteExtension {
            route: resource("gateway.networking.k8s.io", "HTTPRoute", route, 0),
            rule,
            filters,
            backend_filters,
        }
    }

    #[test]
    fn extensions_add_their_filters_to_the_rules_and_backends_they_name() {
        let routes = routes_ext(policy(vec![
            extension("r", 0, vec![rewrite_to("/x")], Vec::new()),
            extension(
                "r",
                1,
                vec![mirror_to("shadow")],
                vec![BackendFilterExtension {
                    backend: 1,
                    filters: vec![rewrite_to("/b")],
                }],
            ),
        ]))
        .unwrap();
        let rules = &routes.routes[0].rules;
        match rules[0].filters.as_slice() {
            [Filter::Rewrite(r)] => {
                assert_eq!(r.hostname.as_ref().unwrap(), "h.example");
                assert!(matches!(&r.path, Some(PathModifier::Full(p)) if p == "/x"));
            }
            other => panic!("{other:?}"),
        }
        match rules[1].filters.as_slice() {
            [Filter::Mirror(m)] => {
                assert_eq!(m.authority, "shadow.ns.svc.cluster.local:80");
                assert_eq!(&*m.name, "shadow");
                assert_eq!((m.numerator, m.denominator), (1, 4));
            }
            other => panic!("{other:?}"),
        }
        let Backends::Weighted(b) = &rules[1].backends else {
            panic!("no backends");
        };
        assert!(b[0].filters.is_empty());
        assert!(matches!(b[1].filters.as_slice(), [Filter::Rewrite(_)]));
        // Without extensions: the policy's routes alone.
        let plain = routes_ext(policy(Vec::new())).unwrap();
        assert!(plain.routes[0].rules.iter().all(|r| r.filters.is_empty()));
    }

    #[test]
    fn an_extension_naming_what_the_policy_does_not_have_refuses_the_policy() {
        let cases = [
            (
                extension("other", 0, vec![rewrite_to("/x")], Vec::new()),
                "HTTPRoute ns/other: extensions[0]: names a route the policy does not have",
            ),
            (
                extension("r", 2, vec![rewrite_to("/x")], Vec::new()),
                "HTTPRoute ns/r: extensions[0]: names rule 2, and the route has 2",
            ),
            (
                extension(
                    "r",
                    0,
                    Vec::new(),
                    vec![BackendFilterExtension {
                        backend: 1,
                        filters: vec![rewrite_to("/x")],
                    }],
                ),
                "extensions[0]: rules[0]: names backend 1, which the rule does not have",
            ),
            (
                extension("r", 0, vec![rewrite_to("relative")], Vec::new()),
                "filters.urlRewrite.path: \"relative\" is not an absolute path",
            ),
            (
                extension(
                    "r",
                    0,
                    vec![FilterExtension {
                        kind: Some(filter_extension::Kind::RequestMirror(Box::default())),
                    }],
                    Vec::new(),
                ),
                "filters.requestMirror.backend: no backend",
            ),
        ];
        for (ext, expected) in cases {
            let error = routes_ext(policy(vec![ext])).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
