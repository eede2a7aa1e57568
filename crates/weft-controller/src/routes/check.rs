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
//! | | `BackendNotFound` | no such Service, no such port, or no port given (a backendRef, or a `RequestMirror` filter's) |
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
    /// The backends of its `RequestMirror` filters.
    pub mirrors: Vec<MirrorRef>,
}

/// The backend of a `RequestMirror` filter, checked as a backendRef is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorRef {
    pub rule: usize,
    /// The backendRef whose filter it is (its index as written); `None`: the rule's.
    pub backend_ref: Option<usize>,
    /// The filter's index in its list.
    pub filter: usize,
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    /// Why it does not resolve (reason, message): no copies are sent.
    pub problem: Option<(&'static str, String)>,
}

impl Checked {
    /// The resolved backend of the `RequestMirror` filter at `filter` of the rule (or
    /// of its backendRef `backend_ref`).
    pub fn mirror(
        &self,
        rule: usize,
        backend_ref: Option<usize>,
        filter: usize,
    ) -> Option<&MirrorRef> {
        self.mirrors
            .iter()
            .find(|m| m.rule == rule && m.backend_ref == backend_ref && m.filter == filter)
    }

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
    let mirrors = mirrors(route, cx);
    let unresolved = backends
        .iter()
        .filter_map(|b| b.problem.clone())
        .chain(mirrors.iter().filter_map(|m| m.problem.clone()))
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
        mirrors,
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

/// A `URLRewrite` filter (rules' and backendRefs' are distinct generated types of the
/// same shape; `$path_type` is the path type's enum): a valid hostname, the
/// replacement its path type names, and a prefix replacement only on a rule with a
/// `PathPrefix` match (the Gateway API's rule).
macro_rules! check_rewrite {
    ($at:expr, $rewrite:expr, $path_type:path, $has_prefix_match:expr) => {{
        present($at, "urlRewrite", $rewrite.is_some())?;
        if let Some(r) = &$rewrite {
            if let Some(h) = &r.hostname {
                hostname(&format!("{}.urlRewrite.hostname", $at), h)?;
            }
            if let Some(p) = &r.path {
                use $path_type as P;
                match p.r#type {
                    P::ReplacePrefixMatch => {
                        let Some(v) = &p.replace_prefix_match else {
                            return Err(format!("{}.urlRewrite.path.replacePrefixMatch: required by type ReplacePrefixMatch", $at));
                        };
                        path_value(&format!("{}.urlRewrite.path.replacePrefixMatch", $at), v)?;
                        if !$has_prefix_match {
                            return Err(format!("{}.urlRewrite.path: ReplacePrefixMatch needs the rule to have exactly one match, of type PathPrefix", $at));
                        }
                    }
                    P::ReplaceFullPath => {
                        let Some(v) = &p.replace_full_path else {
                            return Err(format!("{}.urlRewrite.path.replaceFullPath: required by type ReplaceFullPath", $at));
                        };
                        path_value(&format!("{}.urlRewrite.path.replaceFullPath", $at), v)?;
                    }
                }
            }
        }
    }};
}

/// A `RequestMirror` filter: present, and its share (`percent` 0 to 100, or
/// `fraction`: numerator ≤ denominator, denominator above 0; not both). Its backend is
/// resolved with the backendRefs (`ResolvedRefs`).
macro_rules! check_mirror {
    ($at:expr, $mirror:expr) => {{
        present($at, "requestMirror", $mirror.is_some())?;
        if let Some(m) = &$mirror {
            mirror_share(
                $at,
                m.percent,
                m.fraction.as_ref().map(|f| (f.numerator, f.denominator)),
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

/// The backends of the route's `RequestMirror` filters (HTTPRoute rules and
/// backendRefs, GRPCRoute rules), each resolved as a backendRef is.
fn mirrors(route: &ParsedRoute, cx: Context<'_>) -> Vec<MirrorRef> {
    macro_rules! mirror_ref {
        ($out:ident, $rule:expr, $backend_ref:expr, $filter:expr, $m:expr) => {{
            let b = &$m.backend_ref;
            let r = Ref {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                namespace: b.namespace.as_deref(),
                name: &b.name,
                port: b.port,
                weight: None,
            };
            let namespace = r.namespace.unwrap_or(&route.key.namespace).to_owned();
            let port = r
                .port
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p != 0);
            let problem = resolve(route, &r, &namespace, port, cx)
                .map(|(reason, message)| (reason, format!("requestMirror: {message}")));
            $out.push(MirrorRef {
                rule: $rule,
                backend_ref: $backend_ref,
                filter: $filter,
                namespace,
                name: b.name.clone(),
                port,
                problem,
            });
        }};
    }
    let mut out = Vec::new();
    match &route.spec {
        RouteSpec::Http(spec) => {
            for (i, rule) in spec.rules.iter().flatten().enumerate() {
                for (j, f) in rule.filters.iter().flatten().enumerate() {
                    if let Some(m) = &f.request_mirror {
                        mirror_ref!(out, i, None, j, m);
                    }
                }
                for (k, b) in rule.backend_refs.iter().flatten().enumerate() {
                    for (j, f) in b.filters.iter().flatten().enumerate() {
                        if let Some(m) = &f.request_mirror {
                            mirror_ref!(out, i, Some(k), j, m);
                        }
                    }
                }
            }
        }
        RouteSpec::Grpc(spec) => {
            for (i, rule) in spec.rules.iter().flatten().enumerate() {
                for (j, f) in rule.filters.iter().flatten().enumerate() {
                    if let Some(m) = &f.request_mirror {
                        mirror_ref!(out, i, None, j, m);
                    }
                }
            }
        }
    }
    out
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

/// A hostname as the Gateway API's `PreciseHostname` (RFC 1123, no wildcard).
fn hostname(what: &str, h: &str) -> Result<(), String> {
    let valid = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what}: {h:?} is not a valid hostname (RFC 1123, no wildcard, no port)"
        ))
    }
}

/// A path a rewrite replaces with: absolute, and valid in a URI.
fn path_value(what: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!("{what}: {p:?} must start with '/'"));
    }
    if ::http::uri::PathAndQuery::try_from(p).is_err() || p.contains(['?', '#']) {
        return Err(format!("{what}: {p:?} is not a valid URI path"));
    }
    Ok(())
}

fn mirror_share(
    at: &str,
    percent: Option<i32>,
    fraction: Option<(i32, Option<i32>)>,
) -> Result<(), String> {
    match (percent, fraction) {
        (Some(_), Some(_)) => Err(format!(
            "{at}.requestMirror: percent and fraction are exclusive: give one"
        )),
        (Some(p), None) if !(0..=100).contains(&p) => Err(format!(
            "{at}.requestMirror.percent: {p} is out of range (0 to 100)"
        )),
        (None, Some((n, d))) => {
            let d = d.unwrap_or(100);
            if d <= 0 {
                Err(format!(
                    "{at}.requestMirror.fraction.denominator: {d} must be above 0"
                ))
            } else if !(0..=d).contains(&n) {
                Err(format!(
                    "{at}.requestMirror.fraction.numerator: {n} is out of range (0 to the denominator, {d})"
                ))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
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
    format!("{what}: filter {kind} is not supported by weft")
}

fn check_http(spec: &http::HttpRouteSpec) -> Result<(), String> {
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        let mut has_prefix_match = rule.matches.as_ref().is_none_or(|m| m.is_empty());
        // A URLRewrite's prefix replacement: exactly one match, a PathPrefix (the
        // Gateway API's rule; no matches is one `PathPrefix /`).
        let one_prefix_match = match rule.matches.as_deref() {
            None | Some([]) => true,
            Some([m]) => m.path.as_ref().is_none_or(|p| {
                p.r#type
                    .as_ref()
                    .is_none_or(|t| *t == http::HttpRouteRulesMatchesPathType::PathPrefix)
            }),
            Some(_) => false,
        };
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
            http_filter(
                &format!("{at}.filters[{j}]"),
                f,
                has_prefix_match,
                one_prefix_match,
            )?;
        }
        let has = |t: http::HttpRouteRulesFiltersType| {
            rule.filters.iter().flatten().any(|f| f.r#type == t)
        };
        if has(http::HttpRouteRulesFiltersType::RequestRedirect)
            && has(http::HttpRouteRulesFiltersType::UrlRewrite)
        {
            return Err(format!(
                "{at}.filters: RequestRedirect and URLRewrite cannot both be given (the Gateway API allows one)"
            ));
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
                    T::UrlRewrite => check_rewrite!(
                        &at,
                        f.url_rewrite,
                        http::HttpRouteRulesBackendRefsFiltersUrlRewritePathType,
                        one_prefix_match
                    ),
                    T::RequestMirror => check_mirror!(&at, f.request_mirror),
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
    one_prefix_match: bool,
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
        T::UrlRewrite => check_rewrite!(
            at,
            f.url_rewrite,
            http::HttpRouteRulesFiltersUrlRewritePathType,
            one_prefix_match
        ),
        T::RequestMirror => check_mirror!(at, f.request_mirror),
        ref other => {
            let name = match other {
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
                grpc::GrpcRouteRulesFiltersType::RequestMirror => {
                    check_mirror!(&at, f.request_mirror);
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
