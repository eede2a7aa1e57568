//! The outbound path's routing step, for a Service with routes (HTTPRoute, GRPCRoute):
//! the rule the request matches ([`select`]), the rule's filters (a redirect or an
//! injected failure answer here; header modifiers and URL rewrites change the
//! request; a mirror is noted, for [`super::mirror`] to send its copy), a backend
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
use crate::routes::{
    filters, Backend, Backends, Filter, Mirror, PathMatch, RouteKind, RouteMeta, Routes, Rule,
};
use crate::{Destination, Shared};

/// What the route made of a request.
pub(super) enum Routed {
    /// Forward it to `target`, under the rule's policy and response filters (`None`:
    /// a Service without routes).
    Forward {
        target: Target,
        rule: Option<ChosenRule>,
    },
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
    /// The mirrors this request is copied to (its share of each).
    pub(super) mirrors: Vec<Arc<Mirror>>,
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
    parent: &Arc<Service>,
    routes: Arc<Routes>,
    start: Instant,
) -> Result<Routed, Unresolved> {
    let fail = |status, kind, message: String, meta: Option<&Arc<RouteMeta>>| {
        Unresolved::new(
            authority.to_owned(),
            ProxyError::new(status, kind, message),
            meta.cloned(),
        )
    };
    let Some(selected) = select(&routes, req, authority) else {
        let message = format!(
            "no route of {authority} matches {} {}",
            req.method(),
            req.uri().path()
        );
        return Err(fail(StatusCode::NOT_FOUND, "no route", message, None));
    };
    let meta = selected.route.meta.clone();
    let route = index_of(&routes.routes, selected.route);
    let rule_index = index_of(&selected.route.rules, selected.rule);
    let rule = selected.rule;
    let matched = selected.matched.and_then(|m| m.path.as_ref());
    let mut mirrors = Vec::new();
    if let Some(answer) = rule_filters(ctx, req, authority, &selected, start, &mut mirrors)? {
        return Ok(Routed::Answered(answer));
    }
    let Some(backend) = choose(&rule.backends) else {
        let message = format!(
            "route {}/{} has no backend with a weight above 0 for this request",
            meta.namespace, meta.name
        );
        return Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no backend",
            message,
            Some(&meta),
        ));
    };
    let Backends::Weighted(backends) = &rule.backends else {
        unreachable!("choose found a backend");
    };
    let b = &backends[backend];
    backend_filters(req, authority, b, &meta, matched, &mut mirrors)?;
    // The parent itself (a rule without backendRefs) is the Service already known;
    // any other backend is looked up by name.
    let service = if routes.is_parent(b) {
        Some(parent.clone())
    } else {
        backend_service(&ctx.shared, &b.authority).await
    };
    let Some(service) = service else {
        let message = format!(
            "backend {} of route {}/{} is not known to the destination service",
            b.authority, meta.namespace, meta.name
        );
        return Err(fail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "backend not found",
            message,
            Some(&meta),
        ));
    };
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
        rule: Some(ChosenRule {
            routes,
            route,
            rule: rule_index,
            backend: Some(backend),
            mirrors,
        }),
    })
}

/// The rule's filters, in order: header modifiers and URL rewrites change the
/// request; a redirect or an injected failure answers it (`Some` response, or the
/// failure as an error); mirrors that take this request are added to `mirrors`.
fn rule_filters<B>(
    ctx: &ConnContext,
    req: &mut Request<B>,
    authority: &str,
    selected: &Selected<'_>,
    start: Instant,
    mirrors: &mut Vec<Arc<Mirror>>,
) -> Result<Option<Box<Response<ProxyBody>>>, Unresolved> {
    let meta = &selected.route.meta;
    let matched = selected.matched.and_then(|m| m.path.as_ref());
    for f in &selected.rule.filters {
        match f {
            Filter::RequestHeaders(m) => filters::modify_headers(m, req.headers_mut()),
            Filter::Rewrite(r) => rewrite(r, req, authority, matched, meta)?,
            Filter::Mirror(m) if filters::mirrored(m) => mirrors.push(m.clone()),
            Filter::Redirect(r) => {
                let location = filters::location(r, req, authority, matched).map_err(|e| {
                    Unresolved::new(
                        authority.to_owned(),
                        ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect", e),
                        Some(meta.clone()),
                    )
                })?;
                let labels = ctx.route_labels(authority, None, None, None, Some(meta));
                let mut headers = HeaderMap::new();
                headers.insert(header::LOCATION, location);
                return Ok(Some(Box::new(
                    ctx.answer_locally(labels, r.status, headers, start),
                )));
            }
            Filter::Fail(f) if filters::inject(f) => {
                return Err(Unresolved::new(
                    authority.to_owned(),
                    injected(f, meta.kind == RouteKind::Grpc),
                    Some(meta.clone()),
                ));
            }
            Filter::ResponseHeaders(_) | Filter::Fail(_) | Filter::Mirror(_) => {}
        }
    }
    Ok(None)
}

/// A backend's own filters: header modifiers, URL rewrites, mirrors, and the failure
/// injector of a backend the controller could not resolve.
fn backend_filters<B>(
    req: &mut Request<B>,
    authority: &str,
    b: &Backend,
    meta: &Arc<RouteMeta>,
    matched: Option<&PathMatch>,
    mirrors: &mut Vec<Arc<Mirror>>,
) -> Result<(), Unresolved> {
    for f in &b.filters {
        match f {
            Filter::RequestHeaders(m) => filters::modify_headers(m, req.headers_mut()),
            Filter::Rewrite(r) => rewrite(r, req, authority, matched, meta)?,
            Filter::Mirror(m) if filters::mirrored(m) => mirrors.push(m.clone()),
            Filter::Fail(f) if filters::inject(f) => {
                return Err(Unresolved::new(
                    authority.to_owned(),
                    injected(f, meta.kind == RouteKind::Grpc),
                    Some(meta.clone()),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies a `URLRewrite`; one that cannot be applied (a prefix replacement without a
/// prefix match, which the controller refuses) fails the request with 500.
fn rewrite<B>(
    r: &crate::routes::UrlRewrite,
    req: &mut Request<B>,
    authority: &str,
    matched: Option<&PathMatch>,
    meta: &Arc<RouteMeta>,
) -> Result<(), Unresolved> {
    filters::rewrite(r, req, matched).map_err(|e| {
        Unresolved::new(
            authority.to_owned(),
            ProxyError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad rewrite", e),
            Some(meta.clone()),
        )
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
pub(super) async fn backend_service(shared: &Shared, authority: &str) -> Option<Arc<Service>> {
    if authority.is_empty() {
        // A backendRef the controller could not resolve.
        return None;
    }
    if let Some(s) = shared.known_service(authority) {
        return Some(s);
    }
    shared
        .destinations
        .as_ref()?
        .resolve_authority(authority)
        .await
}
