//! HTTP forwarding: serves a detected HTTP/1 or HTTP/2 connection, picks an endpoint
//! per request, forwards over a pooled upstream connection, streams bodies both ways
//! and records the golden metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::balance::{Outcome, Picked};
use crate::detect::Protocol;
use crate::drain::Watch;
use crate::endpoints::Service;
use crate::metrics::{Classification, Direction, HttpMetrics, RouteLabels, Str, Tls};
use crate::retry::{self, Replay, RequestBody};
use crate::upstream::{HttpUpstreams, HttpVersion, Reusable, SendError, UpstreamError};
use crate::{Destination, ResolveError, Resolved, Shared};
use prometheus_client::metrics::counter::Counter;

/// The header naming the cause of a response the proxy generated itself.
pub const PROXY_ERROR_HEADER: &str = "weft-proxy-error";

/// What one accepted connection is for.
pub struct ConnContext {
    pub direction: Direction,
    pub client: SocketAddr,
    pub destination: Destination,
    pub tls: Tls,
    /// The caller's identity when it came over mTLS (empty otherwise).
    pub client_id: Str,
    pub shared: Arc<Shared>,
    /// The last route's labels and request counter: requests on one connection
    /// usually share them, and building labels allocates.
    pub route_cache: std::sync::Mutex<Option<CachedRoute>>,
}

pub struct CachedRoute {
    authority: String,
    endpoint: SocketAddr,
    labels: RouteLabels,
    requests: Counter,
    /// The metrics' generation `requests` was fetched under (idle series dropped since
    /// make it stale).
    generation: u64,
}

impl ConnContext {
    fn upstreams(&self) -> &HttpUpstreams {
        match self.direction {
            Direction::Inbound => &self.shared.inbound,
            Direction::Outbound => &self.shared.outbound,
        }
    }
}

/// Serves HTTP on `io` until the client closes, or drain is signalled and in-flight
/// requests are done.
pub async fn serve<I>(io: I, protocol: Protocol, ctx: Arc<ConnContext>, mut drain: Watch)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let io = TokioIo::new(io);
    let result = if protocol == Protocol::Http2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => res,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            res = conn.as_mut() => res,
            _ = drain.signaled() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Why the proxy answered a request itself.
#[derive(Debug)]
struct ProxyError {
    status: StatusCode,
    /// Short cause for metrics (`http_errors_total{error=...}`).
    kind: &'static str,
    message: String,
}

impl ProxyError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// The gRPC status that carries the same meaning to gRPC clients.
    fn grpc_status(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "13",    // INTERNAL
            StatusCode::GATEWAY_TIMEOUT => "4", // DEADLINE_EXCEEDED
            _ => "14",                          // UNAVAILABLE
        }
    }
}

impl From<UpstreamError> for ProxyError {
    fn from(e: UpstreamError) -> Self {
        let (status, kind) = match &e {
            UpstreamError::ConnectTimeout { .. } => {
                (StatusCode::GATEWAY_TIMEOUT, "connect timeout")
            }
            UpstreamError::ConnectRefused { .. } => (StatusCode::BAD_GATEWAY, "connect refused"),
            UpstreamError::Connect { .. } => (StatusCode::BAD_GATEWAY, "connect error"),
            UpstreamError::Handshake { .. } => (StatusCode::BAD_GATEWAY, "handshake error"),
            UpstreamError::TlsHandshake { .. } => (StatusCode::BAD_GATEWAY, "tls error"),
            UpstreamError::Http { .. } => (StatusCode::BAD_GATEWAY, "upstream error"),
        };
        ProxyError::new(status, kind, e.to_string())
    }
}

/// Status code recorded for a request whose caller went away (hung up, reset the
/// stream, gave up at its own deadline) before response headers: nginx's "client
/// closed request".
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Counts a request that never got its response headers because its caller gave up:
/// dropping the request's future with a route set records it in `response_total` as a
/// failure with status 499, so every counted request ends in a response.
struct Unanswered {
    metrics: Arc<crate::metrics::Metrics>,
    route: Option<RouteLabels>,
    start: Instant,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(route) = self.route.take() {
            let http = &self.metrics.http;
            http.latency(&route, CLIENT_CLOSED_REQUEST, elapsed_ms(self.start));
            http.response(route, CLIENT_CLOSED_REQUEST, Classification::Failure);
        }
    }
}

async fn handle(ctx: Arc<ConnContext>, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let mut unanswered = Unanswered {
        metrics: ctx.shared.metrics.clone(),
        route: None,
        start,
    };
    let rsp = forward(ctx, req, start, &mut unanswered).await;
    unanswered.route = None;
    rsp
}

/// One request, from resolution to response headers.
async fn forward(
    ctx: Arc<ConnContext>,
    mut req: Request<Incoming>,
    start: Instant,
    unanswered: &mut Unanswered,
) -> Response<ProxyBody> {
    let grpc = is_grpc(req.headers());
    let shared = &ctx.shared;
    let metrics = &shared.metrics.http;

    let authority = match request_authority(&req) {
        Ok(a) => a,
        Err(e) => {
            let route = route_labels(&ctx, "", None, None, None);
            return error_response(metrics, route, ctx.direction, grpc, start, e);
        }
    };

    // Explicit mode: an authority met for the first time may need the controller.
    shared.discover(&ctx.destination, &authority).await;
    let resolved = match shared.resolve_or_wait(&ctx.destination, &authority).await {
        Ok(resolved) => resolved,
        Err(e) => {
            let route = route_labels(&ctx, &authority, None, None, None);
            let e = match e {
                ResolveError::Loop(_) => {
                    ProxyError::new(StatusCode::BAD_REQUEST, "loop", e.to_string())
                }
                ResolveError::DiscoveryUnavailable(_) => ProxyError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "discovery unavailable",
                    e.to_string(),
                ),
                _ => ProxyError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no endpoints",
                    e.to_string(),
                ),
            };
            return error_response(metrics, route, ctx.direction, grpc, start, e);
        }
    };
    let Resolved {
        addr: endpoint,
        service,
        picked,
    } = resolved;
    let route = {
        let mut cache = ctx.route_cache.lock().unwrap_or_else(|e| e.into_inner());
        let generation = metrics.generation();
        match &*cache {
            Some(c)
                if c.endpoint == endpoint
                    && c.authority == authority
                    && c.generation == generation =>
            {
                c.requests.inc();
                c.labels.clone()
            }
            _ => {
                let labels = route_labels(
                    &ctx,
                    &authority,
                    Some(endpoint),
                    service.as_deref(),
                    picked.as_ref(),
                );
                let requests = metrics.requests(&labels);
                requests.inc();
                *cache = Some(CachedRoute {
                    authority: authority.clone(),
                    endpoint,
                    labels: labels.clone(),
                    requests,
                    generation,
                });
                labels
            }
        }
    };

    unanswered.route = Some(route.clone());

    let version = if req.version() == Version::HTTP_2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    let upgrade = if version == HttpVersion::Http1 && is_upgrade(req.headers()) {
        Some(hyper::upgrade::on(&mut req))
    } else {
        None
    };
    if version == HttpVersion::Http1 {
        if let Err(e) = prepare_h1_request(&mut req, &authority, upgrade.is_some()) {
            return error_response(metrics, route, ctx.direction, grpc, start, e);
        }
    }

    // Timeouts and retries are the client's business: outbound only, as in Linkerd.
    let policy = match ctx.direction {
        Direction::Outbound => Some(match &service {
            Some(s) => s.policy.get(&shared.config.request_policy.policy),
            None => &*shared.config.request_policy,
        }),
        Direction::Inbound => None,
    };
    let deadline = policy.and_then(|p| {
        let asked = grpc.then(|| retry::grpc_timeout(req.headers())).flatten();
        let limit = match (p.policy.timeout, asked) {
            (Some(ours), Some(asked)) => ours.min(asked),
            (ours, asked) => ours.or(asked)?,
        };
        // A deadline past what the clock holds (grpc-timeout allows 99,999,999 hours)
        // is no deadline.
        Some(Deadline {
            at: tokio::time::Instant::from_std(start.checked_add(limit)?),
            limit,
        })
    });
    let retry = policy.filter(|p| p.policy.retry.limit > 0);
    if let Some(p) = retry {
        p.budget.deposit(start);
    }
    // A request that may be retried on its response keeps a copy of its head and of
    // a small body; any other is sent as it is (and retried only if it never left).
    let mut replay = None;
    let mut req = match retry {
        Some(p) if upgrade.is_none() && p.policy.retry.replayable(req.method(), grpc) => {
            let (req, copy) = Replay::capture(req, retry::MAX_REPLAY_BODY);
            replay = copy;
            req
        }
        _ => req.map(RequestBody::Stream),
    };
    let attempt_timeout = policy
        .and_then(|p| p.policy.retry.attempt_timeout)
        .or(shared.config.response_timeout);

    let mut endpoint = endpoint;
    let mut picked = picked;
    let mut retries = 0u32;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let result = loop {
        // mTLS to the endpoint's identity, when it is meshed.
        let server = picked.as_ref().and_then(|p| p.identity()).cloned();
        // Within the attempt's own time and the request's deadline, whichever ends
        // first; dropping `send` on expiry cancels the upstream request. (Inline: the
        // send future is large, and every move of it is a copy.)
        let limit = attempt_limit(attempt_timeout, deadline.as_ref());
        let send = ctx
            .upstreams()
            .send(endpoint, version, server.as_ref(), req);
        let mut result = match limit {
            None => send.await.map_err(|e| Failure::Send(Box::new(e))),
            Some((end, expired)) => match tokio::time::timeout_at(end, send).await {
                Ok(sent) => sent.map_err(|e| Failure::Send(Box::new(e))),
                Err(_) => Err(expired),
            },
        };
        let Some(p) = retry else {
            break result;
        };
        let reason = match &result {
            Ok((rsp, _)) => (replay.is_some()
                && p.policy
                    .retry
                    .retry_on_response(rsp.status(), rsp.headers(), grpc))
            .then_some("status"),
            Err(Failure::Send(e)) if e.unsent.is_some() => Some("connect-failure"),
            Err(Failure::Send(_)) if replay.is_some() => Some("reset"),
            Err(Failure::AttemptTimeout(_)) if replay.is_some() => Some("timeout"),
            Err(_) => None,
        };
        let Some(reason) = reason else {
            break result;
        };
        if retries >= p.policy.retry.limit {
            metrics.retries.limit_exceeded(&route.dst_service);
            break result;
        }
        // A request that never left is sent again as it is.
        let unsent = match &mut result {
            Err(Failure::Send(e)) => e.unsent.take(),
            _ => None,
        };
        // Where the next attempt goes: an endpoint not tried yet when the service has
        // one. A failed connection is retried only there (the same endpoint would
        // refuse it again, or make the caller wait out another connect timeout).
        tried.push(endpoint);
        let next_pick = match &service {
            Some(service) => match service.balancer().pick_avoiding(&tried) {
                Some(p) => Some(p),
                None => break result,
            },
            None => None,
        };
        let next_endpoint = next_pick.as_ref().map_or(endpoint, Picked::addr);
        if unsent.is_some() && tried.contains(&next_endpoint) {
            break result;
        }
        // The next request: the same one if it never left, else a replay (none while
        // the first attempt's body is still streaming, or if it was too large).
        let replayed = if unsent.is_some() {
            None
        } else {
            match replay.as_ref().and_then(Replay::request) {
                Some(r) => Some(r),
                None => break result,
            }
        };
        if !p.budget.withdraw(Instant::now()) {
            metrics.retries.overflow(&route.dst_service);
            break result;
        }
        let retry_connect = unsent.is_some();
        let Some(mut next) = unsent.or(replayed) else {
            break result;
        };
        if let Ok((rsp, reusable)) = result {
            // Dropping an unread body cancels it; an empty one frees its connection.
            if let Some(reusable) = reusable.filter(|_| rsp.body().is_end_stream()) {
                reusable.give_back();
            }
        }
        retries += 1;
        tracing::debug!(direction = ctx.direction.as_str(), %authority, %endpoint, next = %next_endpoint, reason, retry = retries, "retrying");
        metrics.retries.retried(&route.dst_service, reason);
        if let Some(p) = picked.take() {
            p.finish(Outcome::Failure);
        }
        endpoint = next_endpoint;
        picked = next_pick;
        // Another endpoint after a failed connection: at once. Otherwise a short,
        // jittered wait, within the request's deadline.
        if !retry_connect {
            let wait = tokio::time::sleep(p.policy.retry.backoff(retries));
            match &deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d.at, wait).await.is_err() {
                        break Err(Failure::Deadline);
                    }
                }
                None => wait.await,
            }
        }
        let headers = next.headers_mut();
        headers.insert(retry::RETRY_ATTEMPT_HEADER, HeaderValue::from(retries));
        if let Some(d) = deadline.as_ref().filter(|_| grpc) {
            let left = d.at.saturating_duration_since(tokio::time::Instant::now());
            headers.insert("grpc-timeout", retry::grpc_timeout_value(left));
        }
        req = next;
    };

    // The final attempt labels the response (request_total counted the first).
    let route = if tried.first().is_some_and(|first| *first != endpoint) {
        route_labels(
            &ctx,
            &authority,
            Some(endpoint),
            service.as_deref(),
            picked.as_ref(),
        )
    } else {
        route
    };
    let (mut rsp, reusable) = match result {
        Ok(sent) => sent,
        Err(failure) => {
            let e = failure.into_proxy_error(endpoint, deadline.as_ref());
            tracing::info!(direction = ctx.direction.as_str(), client = %ctx.client, %authority, %endpoint, retries, error = %e.message, "request failed");
            if let Some(p) = picked {
                p.finish(Outcome::Failure);
            }
            return error_response(metrics, route, ctx.direction, grpc, start, e);
        }
    };

    let status = rsp.status();
    // The balancer learns from the time to response headers; 5xx and 429 count
    // against the endpoint.
    // A gRPC error in a trailers-only response (how servers fail a call) counts too;
    // one in trailers after a body is seen only by the metrics.
    let failed = status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || (grpc && grpc_status_of(rsp.headers()) == Some(false));
    if let Some(p) = picked {
        p.finish(if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        });
    }
    if retries > 0 && !failed && !(grpc && grpc_status_of(rsp.headers()) == Some(false)) {
        metrics.retries.succeeded(&route.dst_service);
    }
    metrics.latency(&route, status.as_u16(), elapsed_ms(start));

    let mut reusable = reusable;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection now belongs to the tunnel.
        reusable = None;
        if let Some(server_upgrade) = upgrade {
            let client_upgrade = hyper::upgrade::on(&mut rsp);
            tokio::spawn(tunnel(server_upgrade, client_upgrade));
        }
    } else if version == HttpVersion::Http1 {
        strip_hop_by_hop(rsp.headers_mut());
    }

    let grpc_status = grpc.then(|| grpc_status_of(rsp.headers())).flatten();
    let (parts, body) = rsp.into_parts();
    if body.is_end_stream() {
        // No body to wait for (and none will be polled).
        if let Some(r) = reusable.take() {
            r.give_back();
        }
    }
    let recorder = ResponseRecorder {
        metrics: metrics.clone(),
        route: Some(route),
        status: status.as_u16(),
        grpc,
        grpc_status,
        broken: false,
    };
    // The deadline still holds for the body (not for a tunnel, which is no longer a
    // request).
    let deadline = deadline
        .filter(|_| !body.is_end_stream() && status != StatusCode::SWITCHING_PROTOCOLS)
        .map(|d| BodyDeadline {
            sleep: Box::pin(tokio::time::sleep_until(d.at)),
            limit: d.limit,
        });
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            inner: body,
            recorder,
            reusable,
            deadline,
            expired: false,
        },
    )
}

/// When a request must be over, and the limit that set it.
struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

/// The request's deadline, carried into its response body.
pub(crate) struct BodyDeadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

/// Why an attempt produced no response.
enum Failure {
    /// Boxed: it holds the unsent request, and a large error would make every
    /// attempt's result (moved a few times per request) large too.
    Send(Box<SendError>),
    /// The attempt's own time ran out (`--response-timeout`, `retries.timeout`).
    AttemptTimeout(Duration),
    /// The request's deadline passed.
    Deadline,
}

impl Failure {
    fn into_proxy_error(self, endpoint: SocketAddr, deadline: Option<&Deadline>) -> ProxyError {
        match self {
            Failure::Send(e) => ProxyError::from(e.error),
            Failure::AttemptTimeout(limit) => ProxyError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "response timeout",
                format!("{endpoint} did not respond within {limit:?}"),
            ),
            Failure::Deadline => request_timeout(deadline.map_or(Duration::ZERO, |d| d.limit)),
        }
    }
}

fn request_timeout(limit: Duration) -> ProxyError {
    ProxyError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "request timeout",
        format!("request timeout: no response within {limit:?}"),
    )
}

/// When an attempt must be over (its own time limit or the request's deadline,
/// whichever ends first), and the failure it then is.
fn attempt_limit(
    attempt_timeout: Option<Duration>,
    deadline: Option<&Deadline>,
) -> Option<(tokio::time::Instant, Failure)> {
    let attempt_end = attempt_timeout.map(|t| (tokio::time::Instant::now() + t, t));
    match (attempt_end, deadline) {
        (None, None) => None,
        (Some((end, t)), Some(d)) if end < d.at => Some((end, Failure::AttemptTimeout(t))),
        (_, Some(d)) => Some((d.at, Failure::Deadline)),
        (Some((end, t)), None) => Some((end, Failure::AttemptTimeout(t))),
    }
}

fn route_labels(
    ctx: &ConnContext,
    authority: &str,
    endpoint: Option<SocketAddr>,
    service: Option<&Service>,
    picked: Option<&Picked>,
) -> RouteLabels {
    // Outbound requests to a meshed endpoint go over mTLS (when this proxy has an
    // identity): the route is labelled with the server's identity.
    let server_id = picked
        .and_then(|p| p.identity())
        .filter(|_| ctx.direction == Direction::Outbound && ctx.shared.identity.is_some());
    let dst_zone = picked.and_then(|p| p.zone()).map(|z| &**z);
    RouteLabels {
        direction: ctx.direction,
        authority: ctx.shared.metrics.authority_label(authority),
        target_addr: Str(endpoint.map(|e| e.to_string()).unwrap_or_default().into()),
        tls: if server_id.is_some() {
            Tls::Yes
        } else {
            ctx.tls
        },
        dst_service: Str(service.map_or_else(|| "".into(), |s| s.name())),
        dst_zone: dst_zone.unwrap_or("").into(),
        client_id: ctx.client_id.clone(),
        server_id: Str(server_id.map(|id| id.dns_name()).unwrap_or_default().into()),
    }
}

fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// The authority a request head is routed by (lowercased), or why the proxy refuses it
/// as malformed (400): what `forward` does first with every request. Public for the
/// fuzz targets (`fuzz/`); the body type does not matter.
pub fn authority_of<B>(req: &Request<B>) -> Result<String, String> {
    request_authority(req).map_err(|e| e.message)
}

/// The request's authority: the URI's (HTTP/2, absolute-form HTTP/1) or the Host header.
fn request_authority<B>(req: &Request<B>) -> Result<String, ProxyError> {
    // RFC 9112 §3.2: a request with more than one Host field is refused (which one a
    // server reads is up to it: the proxy and the application could disagree).
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Err(ProxyError::new(
            StatusCode::BAD_REQUEST,
            "malformed request",
            "more than one Host header",
        ));
    }
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str().to_ascii_lowercase());
    }
    match req.headers().get(header::HOST) {
        Some(host) => match host.to_str() {
            Ok(h) if !h.is_empty() && h.parse::<http::uri::Authority>().is_ok() => {
                Ok(h.to_ascii_lowercase())
            }
            _ => Err(ProxyError::new(
                StatusCode::BAD_REQUEST,
                "malformed request",
                "the Host header is not a valid authority",
            )),
        },
        None if req.version() == Version::HTTP_10 => Ok(String::new()),
        None => Err(ProxyError::new(
            StatusCode::BAD_REQUEST,
            "malformed request",
            "HTTP/1.1 request without a Host header",
        )),
    }
}

/// Rewrites an HTTP/1 request for the upstream hop: origin-form URI, Host header,
/// no hop-by-hop headers (but the upgrade handshake when one is asked for).
fn prepare_h1_request(
    req: &mut Request<Incoming>,
    authority: &str,
    upgrade: bool,
) -> Result<(), ProxyError> {
    if req.uri().authority().is_some() && req.method() != Method::CONNECT {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        *req.uri_mut() = Uri::try_from(path).map_err(|_| {
            ProxyError::new(
                StatusCode::BAD_REQUEST,
                "malformed request",
                "invalid request target",
            )
        })?;
        // RFC 9112 §3.2.2: the target's authority replaces any Host the client sent
        // (the request was routed by it; the upstream must see the same).
        if let Ok(v) = HeaderValue::from_str(authority) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    let upgrade_value = upgrade
        .then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten();
    strip_hop_by_hop(req.headers_mut());
    if let Some(protocol) = upgrade_value {
        req.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        req.headers_mut().insert(header::UPGRADE, protocol);
    }
    Ok(())
}

/// Whether the request asks for a protocol upgrade (`Upgrade` named in `Connection`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes headers that apply to one connection only (RFC 9110 §7.6.1), including
/// those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

async fn tunnel(server: hyper::upgrade::OnUpgrade, client: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(server, client) {
        Ok((server, client)) => {
            let mut server = TokioIo::new(server);
            let mut client = TokioIo::new(client);
            if let Err(error) = tokio::io::copy_bidirectional(&mut server, &mut client).await {
                tracing::debug!(%error, "upgraded connection ended with an error");
            }
        }
        Err(error) => tracing::debug!(%error, "protocol upgrade failed"),
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn grpc_status_of(headers: &HeaderMap) -> Option<bool> {
    headers.get("grpc-status").map(|v| v.as_bytes() == b"0")
}

fn error_response(
    metrics: &HttpMetrics,
    route: RouteLabels,
    direction: Direction,
    grpc: bool,
    start: Instant,
    e: ProxyError,
) -> Response<ProxyBody> {
    metrics.error(direction, e.kind);
    let cause =
        HeaderValue::from_str(&e.message).unwrap_or_else(|_| HeaderValue::from_static(e.kind));
    let mut rsp = if grpc {
        // gRPC clients read errors from grpc-status, not the HTTP status: answer with a
        // trailers-only response.
        let mut rsp = Response::new(ProxyBody::full(Bytes::new()));
        let h = rsp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static(e.grpc_status()));
        h.insert("grpc-message", cause.clone());
        rsp
    } else {
        let mut rsp = Response::new(ProxyBody::full(Bytes::from(format!("{}\n", e.message))));
        *rsp.status_mut() = e.status;
        rsp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        rsp
    };
    rsp.headers_mut().insert(PROXY_ERROR_HEADER, cause);
    let status = rsp.status().as_u16();
    metrics.latency(&route, status, elapsed_ms(start));
    metrics.response(route, status, Classification::Failure);
    rsp
}

/// Records `response_total` once the response stream ends (or is dropped), when its
/// gRPC status (possibly in trailers) is known.
pub(crate) struct ResponseRecorder {
    metrics: HttpMetrics,
    route: Option<RouteLabels>,
    status: u16,
    grpc: bool,
    /// `Some(true)` once a grpc-status of OK was seen, `Some(false)` for any other.
    grpc_status: Option<bool>,
    broken: bool,
}

impl ResponseRecorder {
    fn record(&mut self) {
        let Some(route) = self.route.take() else {
            return;
        };
        let failed =
            self.broken || self.status >= 500 || (self.grpc && self.grpc_status != Some(true));
        let classification = if failed {
            Classification::Failure
        } else {
            Classification::Success
        };
        self.metrics.response(route, self.status, classification);
    }
}

impl Drop for ResponseRecorder {
    fn drop(&mut self) {
        self.record();
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body did not end before the request's deadline.
#[derive(Debug, thiserror::Error)]
#[error("request timeout: the response did not end within {0:?}")]
struct BodyTimeout(Duration);

pin_project_lite::pin_project! {
    /// A response body: the upstream's, streamed through, or one the proxy made.
    #[project = ProxyBodyProj]
    pub(crate) enum ProxyBody {
        Upstream {
            #[pin]
            inner: Incoming,
            recorder: ResponseRecorder,
            // The upstream HTTP/1 connection, back to the pool once the body is read.
            reusable: Option<Reusable>,
            // The request's deadline: past it the body is cut (gRPC: ended with
            // DEADLINE_EXCEEDED), and the upstream request cancelled.
            deadline: Option<BodyDeadline>,
            expired: bool,
        },
        Full {
            data: Option<Bytes>,
        },
    }
}

impl ProxyBody {
    fn full(data: Bytes) -> Self {
        ProxyBody::Full {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Upstream {
                mut inner,
                recorder,
                reusable,
                deadline,
                expired,
            } => {
                if *expired {
                    return Poll::Ready(None);
                }
                if let Some(d) = deadline {
                    if std::future::Future::poll(d.sleep.as_mut(), cx).is_ready() {
                        let limit = d.limit;
                        *deadline = None;
                        *expired = true;
                        // The connection is mid-response: closed, not pooled.
                        reusable.take();
                        recorder.broken = true;
                        recorder.metrics.error(
                            recorder
                                .route
                                .as_ref()
                                .map_or(Direction::Outbound, |r| r.direction),
                            "request timeout",
                        );
                        recorder.record();
                        if recorder.grpc {
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("4"));
                            if let Ok(m) = HeaderValue::from_str(&BodyTimeout(limit).to_string()) {
                                trailers.insert("grpc-message", m);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout(limit)))));
                    }
                }
                let polled = inner.as_mut().poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            if let Some(ok) = grpc_status_of(trailers) {
                                recorder.grpc_status = Some(ok);
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        recorder.broken = true;
                        recorder.record();
                    }
                    Poll::Ready(None) => recorder.record(),
                    Poll::Pending => {}
                }
                let done = matches!(polled, Poll::Ready(None))
                    || (matches!(polled, Poll::Ready(Some(Ok(_)))) && inner.is_end_stream());
                if done {
                    if let Some(r) = reusable.take() {
                        r.give_back();
                    }
                }
                polled.map(|p| p.map(|r| r.map_err(Into::into)))
            }
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, expired, .. } => *expired || inner.is_end_stream(),
            ProxyBody::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
