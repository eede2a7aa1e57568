//! One route checked against the mesh's Services and ReferenceGrants, as a Gateway
//! API controller checks it (GAMMA: parents are Services):
//!
//! | condition | reason | when |
//! |---|---|---|
//! | `Accepted` | `Accepted` | the parent Service (and port) exists and the route is valid |
//! | | `NoMatchingParent` | no such Service, or no such port (`port`, `sectionName`) |
//! | | `UnsupportedValue` | an invalid regular expression, a weight out of 0..1,000,000, a filter or match weft cannot carry, a bad timeout or retry, an object that does not parse |
//! | | `Conflicted` | an HTTPRoute on a parent a GRPCRoute of the same namespace also has (GEP-1426: the GRPCRoute wins) — set by the [table](super::table) |
//! | `ResolvedRefs` | `ResolvedRefs` | every backendRef names an existing Service port |
//! | | `BackendNotFound` | no such Service, no such port, or no port given |
//! | | `InvalidKind` | a backendRef that is not a core Service |
//! | | `RefNotPermitted` | a Service of another namespace without a ReferenceGrant there allowing it |
//!
//! The rules of a route, as the OutboundPolicies protocol carries them, are built here
//! too ([`http_route`], [`grpc_route`]), for one parent Service.

use std::str::FromStr as _;
use std::time::Duration;

use gateway_api::experimental::grpcroutes as grpc;
use gateway_api::experimental::httproutes as http;
use linkerd2_proxy_api::grpc_route as api_grpc;
use linkerd2_proxy_api::http_route as api_http;
use linkerd2_proxy_api::http_types;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound;
use weft_core::mesh::Service;

use super::parse::{Grant, ParsedRoute, RouteSpec};
use super::{ParentRef, RouteKey, GATEWAY_GROUP};

/// The largest backendRef weight (the Gateway API's CRD limit).
pub const MAX_WEIGHT: i32 = 1_000_000;

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

/// One condition's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn ok(reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            ok: true,
            reason,
            message: message.into(),
        }
    }

    pub fn fail(reason: &'static str, message: impl Into<String>) -> Cond {
        Cond {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// A Service port a route is attached to (`port: None`: every port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attachment {
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
}

impl Attachment {
    pub fn covers(&self, namespace: &str, name: &str, port: u16) -> bool {
        self.namespace == namespace && self.name == name && self.port.is_none_or(|p| p == port)
    }

    /// Whether both could take the same requests (one Service, ports overlapping).
    pub fn overlaps(&self, other: &Attachment) -> bool {
        self.namespace == other.namespace
            && self.name == other.name
            && (self.port.is_none() || other.port.is_none() || self.port == other.port)
    }
}

/// A route's status for one of its Service parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    pub parent: ParentRef,
    pub accepted: Cond,
    pub resolved: Cond,
    /// Where it attaches (when the Service and port exist).
    pub attachment: Option<Attachment>,
}

/// One backendRef, for display (`weft get routes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub rule: usize,
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    pub weight: u32,
    /// Why it does not resolve (reason, message).
    pub problem: Option<(&'static str, String)>,
}

/// A route checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub route: ParsedRoute,
    /// One per Service parent, in the order written.
    pub parents: Vec<ParentStatus>,
    /// Why the route is not valid (`UnsupportedValue`), whatever its parents.
    pub invalid: Option<String>,
    /// Why its backends do not all resolve (reason, message).
    pub unresolved: Option<(&'static str, String)>,
    pub backends: Vec<Backend>,
}

impl Checked {
    /// Valid and every reference resolved: a version worth keeping to serve.
    pub fn valid(&self) -> bool {
        self.invalid.is_none() && self.unresolved.is_none()
    }

    pub fn key(&self) -> &RouteKey {
        &self.route.key
    }
}

/// What routes are checked against.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub services: &'a [Service],
    pub grants: &'a [Grant],
    pub cluster_domain: &'a str,
}

impl Context<'_> {
    fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }
}

/// Checks `route` against `cx`.
pub fn check(route: &ParsedRoute, cx: Context<'_>) -> Checked {
    let invalid = match &route.spec {
        RouteSpec::Http(spec) => check_http(spec).err(),
        RouteSpec::Grpc(spec) => check_grpc(spec).err(),
    };
    let backends = backends(route, cx);
    let unresolved = backends
        .iter()
        .filter_map(|b| b.problem.clone())
        .reduce(|(reason, a), (_, b)| (reason, format!("{a}; {b}")));
    let parents = route
        .parent_refs()
        .into_iter()
        .filter(ParentRef::is_service)
        .map(|parent| {
            let (attachment, problem) = attach(&parent, &route.key.namespace, cx);
            let accepted = match (&problem, &invalid) {
                (Some(p), _) => Cond::fail("NoMatchingParent", p.clone()),
                (None, Some(why)) => Cond::fail("UnsupportedValue", why.clone()),
                (None, None) => Cond::ok("Accepted", "Route was valid"),
            };
            let resolved = match &unresolved {
                Some((reason, message)) => Cond::fail(reason, message.clone()),
                None => Cond::ok(
                    "ResolvedRefs",
                    "Resolved all the Object references for the Route",
                ),
            };
            ParentStatus {
                parent,
                accepted,
                resolved,
                attachment,
            }
        })
        .collect();
    Checked {
        route: route.clone(),
        parents,
        invalid,
        unresolved,
        backends,
    }
}

/// The Service port `parent` names, or why it names none.
fn attach(
    parent: &ParentRef,
    route_namespace: &str,
    cx: Context<'_>,
) -> (Option<Attachment>, Option<String>) {
    let namespace = parent.namespace_or(route_namespace);
    let Some(svc) = cx.service(namespace, &parent.name) else {
        return (
            None,
            Some(format!(
                "parentRef Service {namespace}/{} does not exist",
                parent.name
            )),
        );
    };
    let mut port = None;
    if let Some(p) = parent.port {
        if !svc.ports.iter().any(|sp| i32::from(sp.port) == p) {
            return (
                None,
                Some(format!(
                    "Service {namespace}/{} has no port {p} (ports: {})",
                    parent.name,
                    ports(svc)
                )),
            );
        }
        port = u16::try_from(p).ok();
    }
    if let Some(section) = &parent.section_name {
        match svc
            .ports
            .iter()
            .find(|sp| sp.name.as_deref() == Some(section))
        {
            Some(sp) if port.is_none_or(|p| p == sp.port) => port = Some(sp.port),
            _ => {
                return (
                    None,
                    Some(format!(
                        "Service {namespace}/{} has no port named {section:?} (ports: {})",
                        parent.name,
                        ports(svc)
                    )),
                )
            }
        }
    }
    (
        Some(Attachment {
            namespace: namespace.to_owned(),
            name: parent.name.clone(),
            port,
        }),
        None,
    )
}

fn ports(svc: &Service) -> String {
    svc.ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{} ({n})", p.port),
            None => p.port.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A backendRef, whichever route kind it comes from.
struct Ref<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
    port: Option<i32>,
    weight: Option<i32>,
}

fn refs(route: &ParsedRoute) -> Vec<(usize, Ref<'_>)> {
    let mut out = Vec::new();
    match &route.spec {
        RouteSpec::Http(spec) => {
            for (i, rule) in spec.rules.iter().flatten().enumerate() {
                for b in rule.backend_refs.iter().flatten() {
                    out.push((
                        i,
                        Ref {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            namespace: b.namespace.as_deref(),
                            name: &b.name,
                            port: b.port,
                            weight: b.weight,
                        },
                    ));
                }
            }
        }
        RouteSpec::Grpc(spec) => {
            for (i, rule) in spec.rules.iter().flatten().enumerate() {
                for b in rule.backend_refs.iter().flatten() {
                    out.push((
                        i,
                        Ref {
                            group: b.group.as_deref(),
                            kind: b.kind.as_deref(),
                            namespace: b.namespace.as_deref(),
                            name: &b.name,
                            port: b.port,
                            weight: b.weight,
                        },
                    ));
                }
            }
        }
    }
    out
}

fn backends(route: &ParsedRoute, cx: Context<'_>) -> Vec<Backend> {
    refs(route)
        .into_iter()
        .map(|(rule, r)| {
            let namespace = r.namespace.unwrap_or(&route.key.namespace).to_owned();
            let port = r
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let problem = resolve(route, &r, &namespace, port, cx);
            Backend {
                rule,
                namespace,
                name: r.name.to_owned(),
                port,
                weight: r.weight.unwrap_or(1).clamp(0, MAX_WEIGHT) as u32,
                problem,
            }
        })
        .collect()
}

fn resolve(
    route: &ParsedRoute,
    r: &Ref<'_>,
    namespace: &str,
    port: Option<u16>,
    cx: Context<'_>,
) -> Option<(&'static str, String)> {
    let name = r.name;
    if !matches!(r.group, None | Some("" | "core")) || !matches!(r.kind, None | Some("Service")) {
        return Some((
            "InvalidKind",
            format!(
                "backendRef {name} is a {}/{}: only core Services are backends",
                r.group.unwrap_or(""),
                r.kind.unwrap_or("Service")
            ),
        ));
    }
    if namespace != route.key.namespace && !granted(route, namespace, name, cx.grants) {
        return Some((
            "RefNotPermitted",
            format!(
                "backendRef Service {namespace}/{name} is in another namespace and no ReferenceGrant in {namespace} allows {}s of {} to refer to it",
                route.key.kind.as_str(),
                route.key.namespace
            ),
        ));
    }
    let Some(svc) = cx.service(namespace, name) else {
        return Some((
            "BackendNotFound",
            format!("backendRef Service {namespace}/{name} does not exist"),
        ));
    };
    let Some(port) = port else {
        return Some((
            "BackendNotFound",
            format!(
                "backendRef Service {namespace}/{name} has no port: a Service backend needs one"
            ),
        ));
    };
    if !svc.ports.iter().any(|p| p.port == port) {
        return Some((
            "BackendNotFound",
            format!(
                "backendRef Service {namespace}/{name} has no port {port} (ports: {})",
                ports(svc)
            ),
        ));
    }
    None
}

/// Whether a ReferenceGrant in `namespace` lets the route refer to Service `name` there.
fn granted(route: &ParsedRoute, namespace: &str, name: &str, grants: &[Grant]) -> bool {
    grants.iter().filter(|g| g.namespace == namespace).any(|g| {
        g.spec.from.iter().any(|f| {
            f.group == GATEWAY_GROUP
                && f.kind == route.key.kind.as_str()
                && f.namespace == route.key.namespace
        }) && g.spec.to.iter().any(|t| {
            matches!(t.group.as_str(), "" | "core")
                && t.kind == "Service"
                && t.name.as_deref().is_none_or(|n| n == name)
        })
    })
}

// ----- validity: what the API server's schema leaves to the controller -----

fn regex(what: &str, pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| {
        format!(
            "{what}: invalid regular expression {pattern:?}: {}",
            first_line(&e.to_string())
        )
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or(s)
        .trim()
        .to_owned()
}

fn header_name(what: &str, name: &str) -> Result<(), String> {
    ::http::HeaderName::from_bytes(name.as_bytes())
        .map(|_| ())
        .map_err(|_| format!("{what}: {name:?} is not a valid header name"))
}

fn weight(what: &str, w: Option<i32>) -> Result<(), String> {
    match w {
        Some(w) if !(0..=MAX_WEIGHT).contains(&w) => Err(format!(
            "{what}.weight: {w} is out of range (0 to {MAX_WEIGHT})"
        )),
        _ => Ok(()),
    }
}

/// A Gateway API duration (GEP-2257: `1h2m3s4ms`, at most four parts).
pub fn duration(what: &str, s: &str) -> Result<Duration, String> {
    gateway_api::Duration::from_str(s)
        .map(|d| Duration::new(d.as_secs(), d.subsec_nanos()))
        .map_err(|e| {
            format!("{what}: {s:?} is not a Gateway API duration (e.g. 10s, 1m30s, 500ms): {e}")
        })
}

fn unsupported_filter(what: &str, kind: &str) -> String {
    format!("{what}: filter {kind} is not supported by weft: the OutboundPolicies protocol (linkerd2-proxy-api 0.20) has no message for it")
}

fn check_http(spec: &http::HttpRouteSpec) -> Result<(), String> {
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut has_prefix_match = rule.matches.as_ref().is_none_or(|m| m.is_empty());
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(path) = &m.path {
                let value = path.value.as_deref().unwrap_or("/");
                match path
                    .r#type
                    .clone()
                    .unwrap_or(http::HttpRouteRulesMatchesPathType::PathPrefix)
                {
                    http::HttpRouteRulesMatchesPathType::RegularExpression => {
                        regex(&format!("{at}.path.value"), value)?
                    }
                    t => {
                        if !value.starts_with('/') {
                            return Err(format!("{at}.path.value: {value:?} must start with '/'"));
                        }
                        if t == http::HttpRouteRulesMatchesPathType::PathPrefix {
                            has_prefix_match = true;
                        }
                    }
                }
            } else {
                has_prefix_match = true;
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                let at = format!("{at}.headers[{k}]");
                header_name(&format!("{at}.name"), &h.name)?;
                if h.r#type == Some(http::HttpRouteRulesMatchesHeadersType::RegularExpression) {
                    regex(&format!("{at}.value"), &h.value)?;
                }
            }
            for (k, q) in m.query_params.iter().flatten().enumerate() {
                if q.r#type == Some(http::HttpRouteRulesMatchesQueryParamsType::RegularExpression) {
                    regex(&format!("{at}.queryParams[{k}].value"), &q.value)?;
                }
            }
        }
        for (j, f) in rule.filters.iter().flatten().enumerate() {
            http_filter(&format!("{at}.filters[{j}]"), f, has_prefix_match)?;
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let at = format!("{at}.backendRefs[{j}]");
            weight(&at, b.weight)?;
            for (k, f) in b.filters.iter().flatten().enumerate() {
                let at = format!("{at}.filters[{k}]");
                use http::HttpRouteRulesBackendRefsFiltersType as T;
                match f.r#type {
                    T::RequestHeaderModifier => {
                        present(
                            &at,
                            "requestHeaderModifier",
                            f.request_header_modifier.is_some(),
                        )?;
                        if let Some(m) = &f.request_header_modifier {
                            header_mod(
                                &at,
                                m.set
                                    .iter()
                                    .flatten()
                                    .map(|h| &h.name)
                                    .chain(m.add.iter().flatten().map(|h| &h.name)),
                                m.remove.iter().flatten(),
                            )?;
                        }
                    }
                    T::ResponseHeaderModifier => {
                        present(
                            &at,
                            "responseHeaderModifier",
                            f.response_header_modifier.is_some(),
                        )?;
                        if let Some(m) = &f.response_header_modifier {
                            header_mod(
                                &at,
                                m.set
                                    .iter()
                                    .flatten()
                                    .map(|h| &h.name)
                                    .chain(m.add.iter().flatten().map(|h| &h.name)),
                                m.remove.iter().flatten(),
                            )?;
                        }
                    }
                    ref other => return Err(unsupported_filter(&at, &format!("{other:?}"))),
                }
            }
        }
        let mut request = None;
        if let Some(t) = &rule.timeouts {
            if let Some(r) = &t.request {
                request = Some(duration(&format!("{at}.timeouts.request"), r)?);
            }
            if let Some(b) = &t.backend_request {
                let backend = duration(&format!("{at}.timeouts.backendRequest"), b)?;
                // Zero is no timeout.
                if let Some(r) = request.filter(|r| !r.is_zero()) {
                    if backend > r {
                        return Err(format!(
                            "{at}.timeouts.backendRequest: {b} is longer than timeouts.request ({})",
                            t.request.as_deref().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        if let Some(r) = &rule.retry {
            if let Some(a) = r.attempts {
                if !(0..=i64::from(u32::MAX)).contains(&a) {
                    return Err(format!("{at}.retry.attempts: {a} is out of range"));
                }
            }
            for (k, c) in r.codes.iter().flatten().enumerate() {
                if !(400..=599).contains(c) {
                    return Err(format!(
                        "{at}.retry.codes[{k}]: {c} is not an HTTP error status (400-599)"
                    ));
                }
            }
            if let Some(b) = &r.backoff {
                duration(&format!("{at}.retry.backoff"), b)?;
            }
        }
        if rule.session_persistence.is_some() {
            return Err(format!("{at}.sessionPersistence: not supported by weft"));
        }
    }
    Ok(())
}

fn present(at: &str, field: &str, present: bool) -> Result<(), String> {
    if present {
        Ok(())
    } else {
        Err(format!("{at}.{field}: required by the filter's type"))
    }
}

fn header_mod<'a>(
    at: &str,
    names: impl Iterator<Item = &'a String>,
    removed: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    for n in names.chain(removed) {
        header_name(at, n)?;
    }
    Ok(())
}

fn http_filter(
    at: &str,
    f: &http::HttpRouteRulesFilters,
    has_prefix_match: bool,
) -> Result<(), String> {
    use http::HttpRouteRulesFiltersType as T;
    match f.r#type {
        T::RequestHeaderModifier => {
            present(
                at,
                "requestHeaderModifier",
                f.request_header_modifier.is_some(),
            )?;
            if let Some(m) = &f.request_header_modifier {
                header_mod(
                    at,
                    m.set
                        .iter()
                        .flatten()
                        .map(|h| &h.name)
                        .chain(m.add.iter().flatten().map(|h| &h.name)),
                    m.remove.iter().flatten(),
                )?;
            }
        }
        T::ResponseHeaderModifier => {
            present(
                at,
                "responseHeaderModifier",
                f.response_header_modifier.is_some(),
            )?;
            if let Some(m) = &f.response_header_modifier {
                header_mod(
                    at,
                    m.set
                        .iter()
                        .flatten()
                        .map(|h| &h.name)
                        .chain(m.add.iter().flatten().map(|h| &h.name)),
                    m.remove.iter().flatten(),
                )?;
            }
        }
        T::RequestRedirect => {
            present(at, "requestRedirect", f.request_redirect.is_some())?;
            if let Some(r) = &f.request_redirect {
                if let Some(code) = r.status_code {
                    if ![301, 302, 303, 307, 308].contains(&code) {
                        return Err(format!("{at}.requestRedirect.statusCode: {code} is not a redirect status (301, 302, 303, 307, 308)"));
                    }
                }
                if let Some(p) = &r.path {
                    if p.r#type
                        == http::HttpRouteRulesFiltersRequestRedirectPathType::ReplacePrefixMatch
                    {
                        if p.replace_prefix_match.is_none() {
                            return Err(format!("{at}.requestRedirect.path.replacePrefixMatch: required by type ReplacePrefixMatch"));
                        }
                        if !has_prefix_match {
                            return Err(format!("{at}.requestRedirect.path: ReplacePrefixMatch needs a PathPrefix match in the rule"));
                        }
                    } else if p.replace_full_path.is_none() {
                        return Err(format!("{at}.requestRedirect.path.replaceFullPath: required by type ReplaceFullPath"));
                    }
                }
            }
        }
        ref other => {
            let name = match other {
                T::UrlRewrite => "URLRewrite".to_owned(),
                T::Cors => "CORS".to_owned(),
                other => format!("{other:?}"),
            };
            return Err(unsupported_filter(at, &name));
        }
    }
    Ok(())
}

fn check_grpc(spec: &grpc::GrpcRouteSpec) -> Result<(), String> {
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().flatten().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(method) = &m.method {
                if method.r#type == Some(grpc::GrpcRouteRulesMatchesMethodType::RegularExpression) {
                    return Err(format!("{at}.method.type: RegularExpression is not supported by weft (the protocol matches gRPC services and methods exactly)"));
                }
                if method.service.is_none() && method.method.is_none() {
                    return Err(format!("{at}.method: one of service or method is required"));
                }
            }
            for (k, h) in m.headers.iter().flatten().enumerate() {
                let at = format!("{at}.headers[{k}]");
                header_name(&format!("{at}.name"), &h.name)?;
                if h.r#type == Some(grpc::GrpcRouteRulesMatchesHeadersType::RegularExpression) {
                    regex(&format!("{at}.value"), &h.value)?;
                }
            }
        }
        for (j, f) in rule.filters.iter().flatten().enumerate() {
            let at = format!("{at}.filters[{j}]");
            match f.r#type {
                grpc::GrpcRouteRulesFiltersType::RequestHeaderModifier => {
                    present(
                        &at,
                        "requestHeaderModifier",
                        f.request_header_modifier.is_some(),
                    )?;
                    if let Some(m) = &f.request_header_modifier {
                        header_mod(
                            &at,
                            m.set
                                .iter()
                                .flatten()
                                .map(|h| &h.name)
                                .chain(m.add.iter().flatten().map(|h| &h.name)),
                            m.remove.iter().flatten(),
                        )?;
                    }
                }
                ref other => return Err(unsupported_filter(&at, &format!("{other:?}"))),
            }
        }
        for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
            let at = format!("{at}.backendRefs[{j}]");
            weight(&at, b.weight)?;
            for (k, f) in b.filters.iter().flatten().enumerate() {
                let at = format!("{at}.filters[{k}]");
                match f.r#type {
                    grpc::GrpcRouteRulesBackendRefsFiltersType::RequestHeaderModifier => {
                        present(
                            &at,
                            "requestHeaderModifier",
                            f.request_header_modifier.is_some(),
                        )?;
                    }
                    ref other => return Err(unsupported_filter(&at, &format!("{other:?}"))),
                }
            }
        }
        if rule.session_persistence.is_some() {
            return Err(format!("{at}.sessionPersistence: not supported by weft"));
        }
    }
    Ok(())
}

// ----- the protocol's messages -----

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
        return Some(Kind::RequestHeaderModifier(
            api_http::RequestHeaderModifier {
                add: headers(m.add.iter().flatten().map(|h| (&h.name, &h.value))),
                set: headers(m.set.iter().flatten().map(|h| (&h.name, &h.value))),
                remove: m.remove.clone().unwrap_or_default(),
            },
        ));
    }
    if let Some(m) = &f.response_header_modifier {
        return Some(Kind::ResponseHeaderModifier(
            api_http::ResponseHeaderModifier {
                add: headers(m.add.iter().flatten().map(|h| (&h.name, &h.value))),
                set: headers(m.set.iter().flatten().map(|h| (&h.name, &h.value))),
                remove: m.remove.clone().unwrap_or_default(),
            },
        ));
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
        return Some(Kind::RequestHeaderModifier(
            api_http::RequestHeaderModifier {
                add: headers(m.add.iter().flatten().map(|h| (&h.name, &h.value))),
                set: headers(m.set.iter().flatten().map(|h| (&h.name, &h.value))),
                remove: m.remove.clone().unwrap_or_default(),
            },
        ));
    }
    if let Some(m) = &f.response_header_modifier {
        return Some(Kind::ResponseHeaderModifier(
            api_http::ResponseHeaderModifier {
                add: headers(m.add.iter().flatten().map(|h| (&h.name, &h.value))),
                set: headers(m.set.iter().flatten().map(|h| (&h.name, &h.value))),
                remove: m.remove.clone().unwrap_or_default(),
            },
        ));
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
                api_http::RequestHeaderModifier {
                    add: headers(m.add.iter().flatten().map(|h| (&h.name, &h.value))),
                    set: headers(m.set.iter().flatten().map(|h| (&h.name, &h.value))),
                    remove: m.remove.clone().unwrap_or_default(),
                }
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
                        kind: Some(filter::Kind::RequestHeaderModifier(
                            api_http::RequestHeaderModifier {
                                add: headers(m.add.iter().flatten().map(|h| (&h.name, &h.value))),
                                set: headers(m.set.iter().flatten().map(|h| (&h.name, &h.value))),
                                remove: m.remove.clone().unwrap_or_default(),
                            },
                        )),
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
