//! The outbound request path: a request from the local workload, top to bottom.
//!
//! 1. **Resolve** the authority to a service (or an address) and pick an endpoint
//!    ([`ConnContext::resolve`]: the balancer, zone-aware).
//! 2. **Count** it under its labels ([`ConnContext::count_request`]).
//! 3. **Prepare** the head for the upstream hop ([`http::prepare`]).
//! 4. **Policy**: the service's deadline and retries ([`RequestPolicy`]), outbound only:
//!    timeouts and retries are the caller's business, as in Linkerd.
//! 5. **Send**, retrying on another endpoint within the policy and its budget
//!    ([`send_with_retries`]); each attempt goes over the endpoint's pool, with mTLS to
//!    its identity when it is meshed ([`http::attempt`]). The route's mirrors get
//!    their copy ([`mirror`]): a request without a body at once, one whose body was
//!    buffered once the primary answered.
//! 6. **Answer** the client ([`Answer::respond`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ::http::header::HeaderValue;
use ::http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::balance::{Outcome, Picked};
use crate::endpoints::Service;
use crate::http::{
    self, orig_proto, Answer, ConnContext, Deadline, Failure, Prepared, ProxyBody, Sent, Target,
    Unanswered, Unresolved,
};
use crate::metrics::RouteLabels;
use crate::retry::{self, BudgetedPolicy, Replay, RequestBody, ServicePolicy};
use crate::routes::Routes;
use crate::Destination;

use super::mirror;
use super::route::{self, Routed};
use crate::upstream::HttpVersion;

/// Handles one request from the local workload.
pub(crate) async fn forward(
    ctx: &ConnContext,
    mut req: Request<Incoming>,
    start: Instant,
    unanswered: &mut Unanswered,
) -> Response<ProxyBody> {
    let grpc = http::is_grpc(req.headers());
    let (target, rule) = match resolve(ctx, &mut req, start).await {
        Ok(Routed::Forward { target, rule }) => (target, rule),
        Ok(Routed::Answered(rsp)) => return *rsp,
        Err(unresolved) => return ctx.unresolved(unresolved, grpc, start),
    };
    let route = ctx.count_request(&target);
    unanswered.counted(route.clone());
    let Prepared { version, upgrade } = match http::prepare(&mut req, &target.authority) {
        Ok(prepared) => prepared,
        Err(e) => return ctx.error_response(route, grpc, start, e),
    };
    let Target {
        authority,
        endpoint,
        service,
        picked,
        route: route_meta,
    } = target;
    // Copies of a request without a body go at once; others once it was sent whole.
    let mut mirrors = rule
        .as_ref()
        .map(|r| r.mirrors.as_slice())
        .unwrap_or_default();
    if !mirrors.is_empty() && (upgrade.is_some() || req.body().is_end_stream()) {
        let head = (upgrade.is_none()).then(|| empty_copy(&req));
        mirror::send(ctx, mirrors, route_meta.as_ref(), version, || {
            head.as_ref().map(|h| h())
        });
        mirrors = &[];
    }
    let rule_policy = rule.as_ref().and_then(|r| r.policy());
    let policy = RequestPolicy::new(ctx, service.as_deref(), rule_policy, &req, grpc, start);
    let mut last = Endpoint {
        addr: endpoint,
        picked,
    };
    let attempts = Attempts {
        ctx,
        policy: &policy,
        route: &route,
        authority: &authority,
        service: service.as_deref(),
        version,
    };
    let (result, retries, replay) = attempts
        .send(req, upgrade.is_some(), !mirrors.is_empty(), &mut last)
        .await;
    if !mirrors.is_empty() {
        mirror::send(ctx, mirrors, route_meta.as_ref(), version, || {
            replay.as_ref()?.request()
        });
    }
    // The final attempt labels the response (request_total counted the first).
    let route = if last.addr != endpoint {
        ctx.route_labels(
            &authority,
            Some(last.addr),
            service.as_deref(),
            last.picked.as_ref(),
            route_meta.as_ref(),
        )
    } else {
        route
    };
    let mut rsp = Answer {
        route,
        start,
        grpc,
        version,
        upgrade,
        authority,
        endpoint: last.addr,
        picked: last.picked,
        retries,
        deadline: policy.deadline,
    }
    .respond(ctx, result);
    if let Some(rule) = &rule {
        rule.filter_response(rsp.headers_mut());
    }
    rsp
}

/// Resolve (and route): the request's authority, the service it names and, when that
/// service has routes, the rule and backend they choose; then an endpoint.
async fn resolve(
    ctx: &ConnContext,
    req: &mut Request<Incoming>,
    start: Instant,
) -> Result<Routed, Unresolved> {
    let authority = ctx.authority(req)?;
    // Explicit mode: an authority met for the first time may need the controller.
    ctx.shared.discover(&ctx.destination, &authority).await;
    if let Some((parent, routes)) = parent_routes(ctx, &authority) {
        return route::route(ctx, req, &authority, &parent, routes, start).await;
    }
    let target = ctx.resolve_authority(&ctx.destination, authority).await?;
    Ok(Routed::Forward { target, rule: None })
}

/// The routes of the Service the connection (or, in explicit mode, the authority)
/// goes to, when the controller serves some.
fn parent_routes(ctx: &ConnContext, authority: &str) -> Option<(Arc<Service>, Arc<Routes>)> {
    match &ctx.destination {
        // The service is cloned only when it has routes (most requests: none).
        Destination::Service(s) => Some((s.clone(), s.routes()?)),
        Destination::ByAuthority => {
            let parent = ctx.shared.known_service(authority)?;
            let routes = parent.routes()?;
            Some((parent, routes))
        }
        Destination::Addr(_) | Destination::Unavailable(_) => None,
    }
}

/// The policy of one request: the service's (or the proxy-wide) timeouts and retries,
/// and the request's own `grpc-timeout`.
struct RequestPolicy<'a> {
    grpc: bool,
    /// The whole request's deadline: the smallest of the service's timeout and the
    /// caller's `grpc-timeout`.
    deadline: Option<Deadline>,
    /// Retries, when the policy allows any.
    retry: Option<&'a BudgetedPolicy>,
    /// Each attempt's own time limit.
    attempt_timeout: Option<std::time::Duration>,
}

impl<'a> RequestPolicy<'a> {
    fn new<B>(
        ctx: &'a ConnContext,
        service: Option<&'a Service>,
        rule: Option<&'a ServicePolicy>,
        req: &Request<B>,
        grpc: bool,
        start: Instant,
    ) -> Self {
        let shared = &ctx.shared;
        let policy = match service {
            Some(s) => s.policy.get(&shared.config.request_policy.policy),
            None => &*shared.config.request_policy,
        };
        // A route's rule sets its own, over the service's.
        let policy = match rule {
            Some(rule) => rule.get(&policy.policy),
            None => policy,
        };
        let asked = grpc.then(|| retry::grpc_timeout(req.headers())).flatten();
        let limit = match (policy.policy.timeout, asked) {
            (Some(ours), Some(asked)) => Some(ours.min(asked)),
            (ours, asked) => ours.or(asked),
        };
        // A deadline past what the clock holds (grpc-timeout allows 99,999,999 hours)
        // is no deadline.
        let deadline = limit.and_then(|limit| {
            Some(Deadline {
                at: tokio::time::Instant::from_std(start.checked_add(limit)?),
                limit,
            })
        });
        let retry = Some(policy).filter(|p| p.policy.retry.limit > 0);
        if let Some(p) = retry {
            p.budget.deposit(start);
        }
        RequestPolicy {
            grpc,
            deadline,
            retry,
            attempt_timeout: policy
                .policy
                .retry
                .attempt_timeout
                .or(shared.config.response_timeout),
        }
    }
}

/// The endpoint an attempt goes to, and the balancer's pick that chose it.
struct Endpoint {
    addr: SocketAddr,
    picked: Option<Picked>,
}

/// What every attempt of one request shares.
struct Attempts<'a> {
    ctx: &'a ConnContext,
    policy: &'a RequestPolicy<'a>,
    route: &'a RouteLabels,
    authority: &'a str,
    service: Option<&'a Service>,
    version: HttpVersion,
}

impl Attempts<'_> {
    /// Sends the request to `last`, and again to an endpoint not tried yet when the
    /// policy says it may be retried and the budget allows; `last` ends as the endpoint
    /// of the last attempt. Returns its result, the number of retries and, when
    /// `mirrored` (or retries needed one), the copy of the request kept.
    async fn send(
        &self,
        req: Request<Incoming>,
        upgrading: bool,
        mirrored: bool,
        last: &mut Endpoint,
    ) -> (Result<Sent, Failure>, u32, Option<Replay>) {
        let Attempts {
            ctx,
            policy,
            route,
            authority,
            version,
            ..
        } = *self;
        let metrics = ctx.metrics();
        let grpc = policy.grpc;
        let deadline = policy.deadline.as_ref();
        // A request that may be retried on its response keeps a copy of its head and of
        // a small body; any other is sent as it is (and retried only if it never left).
        // A mirrored one keeps the copy for its mirrors, not for retries.
        let replayable = matches!(policy.retry,
            Some(p) if !upgrading && p.policy.retry.replayable(req.method(), grpc));
        let mut replay = None;
        let mut req = if replayable || (mirrored && !upgrading) {
            let (req, copy) = Replay::capture(req, retry::MAX_REPLAY_BODY);
            replay = copy;
            req
        } else {
            req.map(RequestBody::Stream)
        };
        let mut endpoint = last.addr;
        let mut picked = last.picked.take();
        let mut retries = 0u32;
        let mut tried: Vec<SocketAddr> = Vec::new();
        // HTTP/1 to a meshed endpoint goes over the HTTP/2 connection shared with the
        // endpoint's proxy (`orig_proto`); `carried`: `req` is in that form now.
        let h1_version = req.version();
        let mut carried = false;
        let result = loop {
            // mTLS to the endpoint's identity, when it is meshed.
            let server = picked.as_ref().and_then(|p| p.identity()).cloned();
            let carry = version == HttpVersion::Http1
                && !upgrading
                && server.is_some()
                && ctx.shared.config.h2_between_proxies
                && !reaches_the_app_directly(ctx, endpoint);
            if carry != carried {
                carried = if carry {
                    orig_proto::upgrade(&mut req, authority)
                } else {
                    orig_proto::undo(&mut req);
                    false
                };
            }
            let mut result = http::attempt(
                ctx,
                endpoint,
                if carried { HttpVersion::Http2 } else { version },
                server.as_ref(),
                req,
                policy.attempt_timeout,
                deadline,
            )
            .await;
            if let (true, Ok((rsp, _))) = (carried, &mut result) {
                orig_proto::downgrade_response(rsp, h1_version);
            }
            let Some(p) = policy.retry else {
                break result;
            };
            let retry_copy = replay.as_ref().filter(|_| replayable);
            let Some(reason) = retry_reason(p, &result, retry_copy.is_some(), grpc) else {
                break result;
            };
            if retries >= p.policy.retry.limit {
                metrics.retries.limit_exceeded(&route.dst_service);
                break result;
            }
            let Some(next) = self.next_attempt(p, &mut result, retry_copy, &mut tried, endpoint)
            else {
                break result;
            };
            if let Ok((rsp, reusable)) = result {
                // Dropping an unread body cancels it; an empty one frees its connection.
                if let Some(reusable) = reusable.filter(|_| rsp.body().is_end_stream()) {
                    reusable.give_back();
                }
            }
            retries += 1;
            tracing::debug!(direction = ctx.direction.as_str(), %authority, %endpoint, next = %next.endpoint, reason, retry = retries, "retrying");
            metrics.retries.retried(&route.dst_service, reason);
            if let Some(p) = picked.take() {
                p.finish(Outcome::Failure);
            }
            endpoint = next.endpoint;
            picked = next.picked;
            // Another endpoint after a failed connection: at once. Otherwise a short,
            // jittered wait, within the request's deadline.
            if !next.unsent && !backoff(p, retries, deadline).await {
                break Err(Failure::Deadline);
            }
            // A request that never left is still in the form it was sent in; a replay
            // is in its client's.
            carried &= next.unsent;
            req = next.req;
            stamp(&mut req, retries, deadline.filter(|_| grpc));
        };
        last.addr = endpoint;
        last.picked = picked;
        (result, retries, replay)
    }

    /// The next attempt after a failed one: to an endpoint not tried yet when the
    /// service has one (a failed connection is retried only there: the same endpoint
    /// would refuse it again, or make the caller wait out another connect timeout),
    /// with the same request if it never left, else a replay (none while the first
    /// attempt's body is still streaming, or if it was too large), within the budget.
    /// `None`: no retry.
    fn next_attempt(
        &self,
        p: &BudgetedPolicy,
        result: &mut Result<Sent, Failure>,
        replay: Option<&Replay>,
        tried: &mut Vec<SocketAddr>,
        endpoint: SocketAddr,
    ) -> Option<Next> {
        // A request that never left is sent again as it is.
        let unsent = match result {
            Err(Failure::Send(e)) => e.unsent.take(),
            _ => None,
        };
        tried.push(endpoint);
        let picked = match self.service {
            Some(service) => Some(service.balancer().pick_avoiding(tried)?),
            None => None,
        };
        let next_endpoint = picked.as_ref().map_or(endpoint, Picked::addr);
        if unsent.is_some() && tried.contains(&next_endpoint) {
            return None;
        }
        let was_unsent = unsent.is_some();
        let req = match unsent {
            Some(req) => req,
            None => replay?.request()?,
        };
        if !p.budget.withdraw(Instant::now()) {
            self.ctx.metrics().retries.overflow(&self.route.dst_service);
            return None;
        }
        Some(Next {
            req,
            endpoint: next_endpoint,
            picked,
            unsent: was_unsent,
        })
    }
}

/// Whether a connection to `endpoint` reaches the application itself, not a proxy: in
/// transparent mode the proxy's own connections are not redirected, so one to this
/// pod's own address goes straight to the application (in plaintext, see
/// `Connector::with_plaintext_to_self`), which must get HTTP/1 as it was sent. The
/// pod's address is the one its application called from (the source address of a
/// connection the kernel redirected here).
fn reaches_the_app_directly(ctx: &ConnContext, endpoint: SocketAddr) -> bool {
    ctx.shared.config.mode == crate::config::Mode::Transparent && endpoint.ip() == ctx.client.ip()
}

/// A copy of a request without a body (its prepared head), for a mirror.
fn empty_copy<B>(req: &Request<B>) -> impl Fn() -> Request<RequestBody> {
    let (method, uri, version, headers) = (
        req.method().clone(),
        req.uri().clone(),
        req.version(),
        req.headers().clone(),
    );
    move || {
        let mut copy = Request::new(RequestBody::Replay {
            data: Vec::new().into_iter(),
            trailers: None,
            remaining: 0,
        });
        *copy.method_mut() = method.clone();
        *copy.uri_mut() = uri.clone();
        *copy.version_mut() = version;
        *copy.headers_mut() = headers.clone();
        copy
    }
}

/// Where and what the next attempt sends.
struct Next {
    req: Request<RequestBody>,
    endpoint: SocketAddr,
    picked: Option<Picked>,
    /// The request never left: sent again at once.
    unsent: bool,
}

/// Why an attempt's result is worth another attempt, if it is: a response the policy
/// retries or a timed-out or reset attempt (when the request can be replayed), or a
/// connection that failed (the request never left).
fn retry_reason(
    p: &BudgetedPolicy,
    result: &Result<Sent, Failure>,
    replayable: bool,
    grpc: bool,
) -> Option<&'static str> {
    match result {
        Ok((rsp, _)) => (replayable
            && p.policy
                .retry
                .retry_on_response(rsp.status(), rsp.headers(), grpc))
        .then_some("status"),
        Err(Failure::Send(e)) if e.unsent.is_some() => Some("connect-failure"),
        Err(Failure::Send(_)) if replayable => Some("reset"),
        Err(Failure::AttemptTimeout(_)) if replayable => Some("timeout"),
        Err(_) => None,
    }
}

/// The jittered wait before retry number `retries`, within the deadline: `false` when
/// the deadline passes first.
async fn backoff(p: &BudgetedPolicy, retries: u32, deadline: Option<&Deadline>) -> bool {
    let wait = tokio::time::sleep(p.policy.retry.backoff(retries));
    match deadline {
        Some(d) => tokio::time::timeout_at(d.at, wait).await.is_ok(),
        None => {
            wait.await;
            true
        }
    }
}

/// Marks a retried request (`weft-retry-attempt`) and, for gRPC with a deadline, gives
/// it the time left (`grpc-timeout`).
fn stamp(req: &mut Request<RequestBody>, retries: u32, grpc_deadline: Option<&Deadline>) {
    let headers = req.headers_mut();
    headers.insert(retry::RETRY_ATTEMPT_HEADER, HeaderValue::from(retries));
    if let Some(d) = grpc_deadline {
        let left = d.at.saturating_duration_since(tokio::time::Instant::now());
        headers.insert("grpc-timeout", retry::grpc_timeout_value(left));
    }
}
