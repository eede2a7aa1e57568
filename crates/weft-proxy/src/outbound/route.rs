//! The outbound path's routing step, for a Service with routes (HTTPRoute, GRPCRoute):
//! the rule the request matches ([`select`]), the rule's filters (a redirect or an
//! injected failure answer here; header modifiers change the request), a backend
//! chosen by weight, and an endpoint of that backend.
//!
//! The Gateway API's answers when no backend can take the request: no rule matches →
//! 404; the rule has no backends, or every weight is 0 → 500; a backend the destination
//! service does not know → 500.

use std::sync::Arc;
use std::time::Instant;

use ::http::{header, HeaderMap, Request, Response, StatusCode};
use rand::Rng;

use crate::endpoints::Service;
use crate::http::{ConnContext, ProxyBody, ProxyError, Target, Unresolved};
use crate::retry::ServicePolicy;
use crate::routes::select::{select, Selected};
use crate::routes::{filters, Backend, Backends, Filter, Routes, Rule};
use crate::Destination;

/// What the route made of a request.
pub(super) enum Routed {
    /// Forward it to `target`, under the rule's policy and response filters.
    Forward { target: Target, rule: ChosenRule },
    /// The route answered it itself (boxed: a response is large, and most requests
    /// are forwarded).
    Answered(Box<Response<ProxyBody>>),
}

/// The rule (and backend) a request took, kept for its policy and response filters.
pub(super) struct ChosenRule {
    routes: Arc<Routes>,
    route: usize,
    rule: usize,
    backend: Option<usize>,
}

impl ChosenRule {
    fn rule(&self) -> &Rule {
        &self.routes.routes[self.route].rules[self.rule]
    }

    fn backend(&self) -> Option<&Backend> {
        match (&self.rule().backends, self.backend) {
            (Backends::Weighted(b), Some(i)) => b.get(i),
            _ => None,
        }
    }

    /// The rule's timeouts and retries, when it sets any.
    pub(super) fn policy(&self) -> Option<&ServicePolicy> {
        self.rule().policy.as_ref()
    }

    /// Applies the rule's and the backend's response header modifiers.
    pub(super) fn filter_response(&self, headers: &mut HeaderMap) {
        let backend_filters = self
            .backend()
            .map(|b| b.filters.as_slice())
            .unwrap_or_default();
        for f in self.rule().filters.iter().chain(backend_filters) {
            if let Filter::ResponseHeaders(m) = f {
                filters::modify_headers(m, headers);
            }
        }
    }
}

/// Routes `req` (whose authority is `authority`) by `routes`, the routes of `parent`.
pub(super) async fn route<B>(
    ctx: &ConnContext,
    req: &mut Request<B>,
    authority: &str,
    routes: Arc<Routes>,
    start: Instant,
) -> Result<Routed, Unresolved> {
    let Some(Selected {
        route: chosen_route,
        rule,
        matched,
    }) = select(&routes, req, authority)
    else {
        return Err(Unresolved::new(
            authority.to_owned(),
            ProxyError::new(
                StatusCode::NOT_FOUND,
                "no route",
                format!(
                    "no route of {authority} matches {} {}",
                    req.method(),
                    req.uri().path()
                ),
            ),
            None,
        ));
    };
    let meta = chosen_route.meta.clone();
    let route = index_of(&routes.routes, chosen_route);
    let rule_index = index_of(&chosen_route.rules, rule);
    // The rule's filters, in order: a redirect or an injected failure ends here.
    for f in &rule.filters {
        match f {
            Filter::RequestHeaders(m) => filters::modify_headers(m, req.headers_mut()),
            Filter::Redirect(r) => {
                let location =
                    filters::location(r, req, authority, matched.and_then(|m| m.path.as_ref()))
                        .map_err(|e| {
                            Unresolved::new(
                                authority.to_owned(),
                                ProxyError::new(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "bad redirect",
                                    e,
                                ),
                                Some(meta.clone()),
                            )
                        })?;
                let labels = ctx.route_labels(authority, None, None, None, Some(&meta));
                let mut headers = HeaderMap::new();
                headers.insert(header::LOCATION, location);
                return Ok(Routed::Answered(Box::new(
                    ctx.answer_locally(labels, r.status, headers, start),
                )));
            }
            Filter::Fail(f) if filters::inject(f) => {
                let grpc_route = meta.kind == crate::routes::RouteKind::Grpc;
                return Err(Unresolved::new(
                    authority.to_owned(),
                    injected(f, grpc_route),
                    Some(meta),
                ));
            }
            Filter::ResponseHeaders(_) | Filter::Fail(_) => {}
        }
    }
    let backend = choose(&rule.backends).ok_or_else(|| {
        Unresolved::new(
            authority.to_owned(),
            ProxyError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no backend",
                format!(
                    "route {}/{} has no backend with a weight above 0 for this request",
                    meta.namespace, meta.name
                ),
            ),
            Some(meta.clone()),
        )
    })?;
    let Backends::Weighted(backends) = &rule.backends else {
        unreachable!("choose found a backend");
    };
    let b = &backends[backend];
    for f in &b.filters {
        match f {
            Filter::RequestHeaders(m) => filters::modify_headers(m, req.headers_mut()),
            Filter::Fail(f) if filters::inject(f) => {
                return Err(Unresolved::new(
                    authority.to_owned(),
                    injected(f, meta.kind == crate::routes::RouteKind::Grpc),
                    Some(meta),
                ));
            }
            _ => {}
        }
    }
    let service = backend_service(ctx, &b.authority).await.ok_or_else(|| {
        Unresolved::new(
            authority.to_owned(),
            ProxyError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backend not found",
                format!(
                    "backend {} of route {}/{} is not known to the destination service",
                    b.authority, meta.namespace, meta.name
                ),
            ),
            Some(meta.clone()),
        )
    })?;
    let mut target = ctx
        .resolve_authority(&Destination::Service(service), authority.to_owned())
        .await
        .map_err(|mut u| {
            u.route = Some(meta.clone());
            u
        })?;
    target.route = Some(meta);
    Ok(Routed::Forward {
        target,
        rule: ChosenRule {
            routes,
            route,
            rule: rule_index,
            backend: Some(backend),
        },
    })
}

/// The answer of a failure injector: its HTTP status (for gRPC callers, its gRPC
/// code when the route is a GRPCRoute, else the status's meaning).
fn injected(f: &crate::routes::FailureInjector, grpc_route: bool) -> ProxyError {
    let message = if f.message.is_empty() {
        "failure injected by the route".to_owned()
    } else {
        f.message.clone()
    };
    if grpc_route {
        // A GRPCRoute's injector carries a gRPC code; the HTTP status is 200.
        return ProxyError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "injected failure",
            message,
        )
        .with_grpc_code(f.status);
    }
    ProxyError::new(
        StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "injected failure",
        message,
    )
}

/// The position of `item` in `items` (by address: it was found there).
fn index_of<T>(items: &[T], item: &T) -> usize {
    items
        .iter()
        .position(|i| std::ptr::eq(i, item))
        .unwrap_or_default()
}

/// A backend by weight; `None` when there is none with a weight above 0.
fn choose(backends: &Backends) -> Option<usize> {
    let Backends::Weighted(backends) = backends else {
        return None;
    };
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = rand::rng().random_range(0..total);
    backends.iter().position(|b| {
        let w = u64::from(b.weight);
        if at < w {
            true
        } else {
            at -= w;
            false
        }
    })
}

/// The Service a backend names, from the destination service (the first request to a
/// backend waits for its first answer).
async fn backend_service(ctx: &ConnContext, authority: &str) -> Option<Arc<Service>> {
    if authority.is_empty() {
        // A backendRef the controller could not resolve.
        return None;
    }
    if let Some(s) = ctx.shared.config.services.by_authority(authority) {
        return Some(s);
    }
    let destinations = ctx.shared.destinations.as_ref()?;
    match destinations.cached_authority(authority) {
        Some(s) => Some(s),
        None => destinations.resolve_authority(authority).await,
    }
}
