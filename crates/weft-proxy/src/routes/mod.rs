//! Routes: what the controller's `OutboundPolicies` service says about a Service
//! (Gateway API `HTTPRoute` and `GRPCRoute` attached to it, GAMMA-style), and choosing
//! one for a request.
//!
//! - [`convert`] reads an `OutboundPolicy` message (with weft's extension:
//!   `URLRewrite`, `RequestMirror`) into [`Routes`], refusing what the
//!   proxy cannot apply (an invalid regular expression, a backend without a name) with
//!   a message naming the route and the field;
//! - [`select`] picks the route rule a request matches, with the Gateway API's
//!   precedence;
//! - [`filters`] applies a rule's filters (header modifiers, redirects, failure
//!   injection, URL rewrites; mirrors are sent by the outbound path);
//! - [`follow`] keeps a Service's routes current from the controller's stream.
//!
//! A Service without routes (or whose controller serves none) is sent to as before:
//! its own endpoints, the service's timeouts and retries.

pub mod convert;
pub mod filters;
pub(crate) mod follow;
mod index;
pub mod select;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use crate::retry::ServicePolicy;

/// The routes of one Service, in the controller's order (which breaks ties between
/// equally specific matches: the oldest route first, then by namespace and name).
#[derive(Debug, Default)]
pub struct Routes {
    pub routes: Vec<Route>,
    /// The Service port the routes are for (the policy's metadata), when named.
    pub parent: Option<ServiceRef>,
    /// Every way a request can take a rule, most specific first.
    candidates: select::Candidates,
}

impl Routes {
    pub fn new(routes: Vec<Route>, parent: Option<ServiceRef>) -> Routes {
        let candidates = select::Candidates::new(&routes);
        Routes {
            routes,
            parent,
            candidates,
        }
    }

    /// No route of its own: nothing, or only the controller's default route (every
    /// request to the Service itself), which is what the proxy does without routes.
    pub fn is_empty(&self) -> bool {
        self.routes
            .iter()
            .all(|r| r.meta.kind == RouteKind::Default)
    }

    /// Whether `backend` is the parent Service itself (a rule without backendRefs, the
    /// default route).
    pub fn is_parent(&self, backend: &Backend) -> bool {
        self.parent.is_some() && backend.service == self.parent
    }
}

/// A Service port, as the protocol's metadata names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
    pub port: u32,
}

/// Which API a route came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
    /// The controller's default route of a Service with none of its own.
    Default,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Default => "default",
        }
    }
}

/// The names a route is known by, in metrics and logs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteMeta {
    pub kind: RouteKind,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

/// One `HTTPRoute` or `GRPCRoute`.
#[derive(Debug)]
pub struct Route {
    pub meta: Arc<RouteMeta>,
    /// Empty: every host.
    pub hosts: Vec<HostMatch>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: the labels after the wildcard (`example.com`).
    Suffix(String),
}

/// One rule of a route: its matches (any of them), filters, backends, timeouts and
/// retries.
#[derive(Debug)]
pub struct Rule {
    /// Empty: every request (as a rule without `matches` is).
    pub matches: Vec<RequestMatch>,
    pub filters: Vec<Filter>,
    pub backends: Backends,
    /// The rule's timeouts and retries over the Service's (`None`: the Service's).
    pub policy: Option<ServicePolicy>,
}

/// What a request must have to match (all of it).
#[derive(Clone, Debug, Default)]
pub struct RequestMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    pub method: Option<Method>,
}

#[derive(Clone, Debug)]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`. Stored
    /// without a trailing slash (`/` is the empty prefix).
    Prefix(String),
    Regex(regex::Regex),
}

#[derive(Clone, Debug)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: ValueMatch<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch<String>,
}

#[derive(Clone, Debug)]
pub enum ValueMatch<T> {
    Exact(T),
    Regex(regex::Regex),
}

/// A filter of a rule or of one of its backends.
#[derive(Clone, Debug)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect(Redirect),
    /// Answers a share of requests with an error (Linkerd's failure injector).
    Fail(FailureInjector),
    /// Another host or path for the backend (`URLRewrite`, weft's extension).
    Rewrite(UrlRewrite),
    /// A copy of a share of requests to another backend (`RequestMirror`, weft's
    /// extension); shared by the requests that use it (its bound of copies in flight).
    Mirror(Arc<Mirror>),
}

/// The Gateway API's `URLRewrite`.
#[derive(Clone, Debug, Default)]
pub struct UrlRewrite {
    /// The `Host` (`:authority`) the backend sees.
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

/// The Gateway API's `RequestMirror`: where copies go, for which share of requests.
#[derive(Debug)]
pub struct Mirror {
    /// The mirror Service as the destination service knows it
    /// (`name.namespace.svc.cluster.local:port`).
    pub authority: String,
    /// Its name in metrics (`mirror_backend`).
    pub name: Arc<str>,
    pub numerator: u32,
    pub denominator: u32,
    /// Copies in flight: at most [`MAX_MIRRORS_IN_FLIGHT`]; past that, copies are
    /// dropped (counted), never queued.
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// Copies of one mirror filter in flight at once.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 100;

#[derive(Clone, Debug, Default)]
pub struct HeaderModifier {
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Clone, Debug)]
pub struct Redirect {
    pub scheme: Option<http::uri::Scheme>,
    pub host: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    pub status: http::StatusCode,
}

#[derive(Clone, Debug)]
pub enum PathModifier {
    Full(String),
    /// Replaces the prefix the rule matched.
    Prefix(String),
}

#[derive(Clone, Debug)]
pub struct FailureInjector {
    /// HTTP status, or the gRPC code for a gRPC route.
    pub status: u16,
    pub message: String,
    pub numerator: u32,
    pub denominator: u32,
}

/// Where a rule's requests go.
#[derive(Debug)]
pub enum Backends {
    /// None: answered 500 unless a filter answers first (Gateway API: a rule whose
    /// backends are all invalid).
    None,
    /// Weighted choice; weights of 0 are never chosen, and all 0 is answered 500.
    Weighted(Vec<Backend>),
}

/// A backend Service of a rule.
#[derive(Debug)]
pub struct Backend {
    /// What the destination service knows it by: `name.namespace.svc.cluster.local:port`.
    pub authority: String,
    /// Its name in metrics (`backend_name`): the Service's `name`.
    pub name: Arc<str>,
    pub weight: u32,
    pub filters: Vec<Filter>,
    /// The Service port it names (its metadata), when it names one.
    pub service: Option<ServiceRef>,
}
