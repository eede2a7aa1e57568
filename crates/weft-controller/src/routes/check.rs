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
//! | | `RefNotPermitted` | a Service of another namespace (other than a parent of the route) without a ReferenceGrant there allowing it |
//!
//! The rules of a checked route, as the protocol carries them, are built in
//! [`super::messages`].

use std::str::FromStr as _;
use std::time::Duration;

use gateway_api::experimental::grpcroutes as grpc;
use gateway_api::experimental::httproutes as http;
use weft_core::mesh::Service;

use super::parse::{Grant, ParsedRoute, RouteSpec};
use super::{ParentRef, RouteKey, GATEWAY_GROUP};

/// The largest backendRef weight (the Gateway API's CRD limit).
pub const MAX_WEIGHT: i32 = 1_000_000;

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

/// A header modifier filter: present when its type says so, with valid header names
/// (set, add, remove). The API's modifier types of rules and backends, HTTP and gRPC,
/// are distinct generated types of the same shape.
macro_rules! check_modifier {
    ($at:expr, $name:literal, $modifier:expr) => {{
        present($at, $name, $modifier.is_some())?;
        if let Some(m) = &$modifier {
            header_mod(
                $at,
                m.set
                    .iter()
                    .flatten()
                    .map(|h| &h.name)
                    .chain(m.add.iter().flatten().map(|h| &h.name)),
                m.remove.iter().flatten(),
            )?;
        }
    }};
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
    if namespace != route.key.namespace
        && !is_parent(route, namespace, name)
        && !granted(route, namespace, name, cx.grants)
    {
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

/// Whether the route names Service `namespace/name` as a parent: a consumer route
/// may send to the Service it is attached to without a ReferenceGrant (GAMMA; the
/// mesh conformance case MeshConsumerRoute does).
fn is_parent(route: &ParsedRoute, namespace: &str, name: &str) -> bool {
    route.parent_refs().iter().any(|p| {
        p.is_service() && p.name == name && p.namespace_or(&route.key.namespace) == namespace
    })
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
                        check_modifier!(&at, "requestHeaderModifier", f.request_header_modifier);
                    }
                    T::ResponseHeaderModifier => {
                        check_modifier!(&at, "responseHeaderModifier", f.response_header_modifier);
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
            check_modifier!(&at, "requestHeaderModifier", f.request_header_modifier);
        }
        T::ResponseHeaderModifier => {
            check_modifier!(&at, "responseHeaderModifier", f.response_header_modifier);
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
                    check_modifier!(&at, "requestHeaderModifier", f.request_header_modifier);
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
