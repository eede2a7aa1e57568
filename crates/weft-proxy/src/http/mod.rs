//! HTTP forwarding, the steps both request paths share: serving a detected HTTP/1 or
//! HTTP/2 connection, resolving a request to an endpoint, its metric labels, the
//! upstream hop's head, one attempt over a pooled upstream connection, and the
//! response streamed back with the golden metrics recorded.
//!
//! The paths themselves, read top to bottom: [`crate::outbound::http`] (resolve →
//! per-service policy: deadline and retries → balance → endpoint over mTLS) and
//! [`crate::inbound::http`] (→ the local application).

mod body;
mod headers;
pub(crate) mod orig_proto;
mod timer;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use weft_core::identity::Identity;

use crate::balance::{Outcome, Picked};
use crate::detect::Protocol;
use crate::drain::Watch;
use crate::endpoints::Service;
use crate::metrics::{
    Classification, Direction, HttpMetrics, RouteLabel, RouteLabelValues, RouteLabels, Str, Tls,
};
use crate::retry::RequestBody;
use crate::routes::RouteMeta;
use crate::upstream::{HttpUpstreams, HttpVersion, PoolCache, Reusable, SendError, UpstreamError};
use crate::{Destination, ResolveError, Resolved, Shared};

pub(crate) use body::{BodyDeadline, ProxyBody};
pub use headers::{authority_of, is_upgrade, strip_hop_by_hop};
pub(crate) use headers::{grpc_status_of, is_grpc};

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
    /// Inbound: the last authorization decision and its counter (the caller and the
    /// port are the same for every request of a connection).
    pub(crate) authz_cache: std::sync::Mutex<Option<crate::inbound::authorize::Cached>>,
    /// The upstream pool the last request used (requests on one connection usually go
    /// to the same endpoint).
    pub(crate) pool_cache: PoolCache,
}

pub struct CachedRoute {
    authority: String,
    endpoint: SocketAddr,
    route: Option<Arc<RouteMeta>>,
    labels: RouteLabels,
    requests: Counter,
    /// The metrics' generation `requests` was fetched under (idle series dropped since
    /// make it stale).
    generation: u64,
}

/// The future of one request down a connection's path.
type Answering = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// One request down `$path` (`outbound` or `inbound`), boxed at its own path's size.
macro_rules! answer {
    ($ctx:expr, $req:expr, $path:ident) => {{
        let (ctx, req) = ($ctx, $req);
        Box::pin(async move {
            let start = Instant::now();
            // Every request counted must end in a response: one the caller gave up on
            // is recorded when this future is dropped.
            let mut unanswered = Unanswered::new(&ctx, start);
            let rsp = crate::$path::http::forward(&ctx, req, start, &mut unanswered).await;
            unanswered.answered();
            Ok::<_, Infallible>(rsp)
        }) as Answering
    }};
}

/// The connection's path as hyper's service: each request goes down it.
struct PathService(Arc<ConnContext>);

impl hyper::service::Service<Request<Incoming>> for PathService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Answering;

    fn call(&self, req: Request<Incoming>) -> Answering {
        match self.0.direction {
            Direction::Outbound => answer!(self.0.clone(), req, outbound),
            Direction::Inbound => answer!(self.0.clone(), req, inbound),
        }
    }
}

/// Serves HTTP on `io` until the client closes, or drain is signalled and in-flight
/// requests are done. Each request goes down the connection's path: outbound or
/// inbound.
///
/// Memory per connection (docs/reliability.md, "Memory per connection"): the future is
/// boxed at the size of hyper's connection and the drain watch, and is all that a
/// connection's task holds once it is served (see [`crate::accept`]). hyper keeps room
/// for its service's future in a box for the connection's whole life, so each
/// request's future is boxed on its own, at its path's size, and an idle kept-alive
/// connection holds none. HTTP/2's connection state (rarer: between proxies, and
/// multiplexed) is in its own box of its own size.
pub(crate) fn serve<I>(
    io: I,
    protocol: Protocol,
    ctx: Arc<ConnContext>,
    drain: Watch,
) -> crate::accept::Serving
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = PathService(ctx);
    let io = TokioIo::new(io);
    if protocol == Protocol::Http2 {
        let conn = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            // One request body the application does not read holds at most its stream's
            // window, not the whole connection's (hyper's defaults: 1 MB each, so one
            // unread upload stalled every other request on the connection).
            .initial_stream_window_size(crate::upstream::H2_STREAM_WINDOW)
            .initial_connection_window_size(crate::upstream::H2_CONNECTION_WINDOW)
            .max_header_list_size(crate::upstream::H2_MAX_HEADER_LIST_SIZE)
            .serve_connection(io, svc);
        return Box::pin(Serve {
            conn,
            drain,
            draining: false,
        });
    }
    // The header-read timeout (hyper's default, 30 s) on one timer per connection
    // instead of a new one per request (see `timer`); the same timer gives a kept-alive
    // connection's buffers back once it has idled `IDLE_BUFFER_RELEASE`.
    let conn = http1::Builder::new()
        .timer(timer::ConnTimer::default())
        .idle_buffer_release(IDLE_BUFFER_RELEASE)
        .serve_connection(io, svc)
        .with_upgrades();
    Box::pin(Serve {
        conn,
        drain,
        draining: false,
    })
}

/// Most requests in flight on one HTTP/2 connection served. A client proxy sends all
/// its requests to this endpoint on one connection (HTTP/1 too, `orig_proto`); past
/// the limit they wait at the client. hyper's default, 200, would hold back a client
/// with many long-polling calls that HTTP/1 (a connection each) let through.
const MAX_CONCURRENT_STREAMS: u32 = 2048;

/// How long a kept-alive client connection may wait for its next request before it
/// gives back hyper's read buffer (1 KiB or more), head write buffer and cached header
/// map (vendor/README.md). Busier connections keep them, so a request costs no
/// allocation; an idle one holds a few KiB less (bench/README.md, `bench/memory`).
pub(crate) const IDLE_BUFFER_RELEASE: Duration = Duration::from_secs(1);

/// A hyper server connection that can be told to finish what is in flight and close.
trait GracefulShutdown: Future<Output = hyper::Result<()>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I> GracefulShutdown for http1::UpgradeableConnection<TokioIo<I>, PathService>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I> GracefulShutdown for http2::Connection<TokioIo<I>, PathService, TokioExecutor>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

pin_project_lite::pin_project! {
    /// A server connection run until it ends, shut down gracefully once drain is
    /// signalled: the whole of what an HTTP connection's task holds while it is idle.
    ///
    /// Written out rather than an `async` block: an async block (or fn) keeps its
    /// captured values' slots for its whole life beside its locals, so the connection
    /// (744 bytes for HTTP/1, io included) would be held twice.
    struct Serve<C> {
        #[pin]
        conn: C,
        drain: Watch,
        draining: bool,
    }
}

impl<C: GracefulShutdown> Future for Serve<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut this = self.project();
        if !*this.draining && this.drain.poll_signaled(cx).is_ready() {
            *this.draining = true;
            this.conn.as_mut().shutdown();
        }
        // The watch is kept until the connection is done: drain waits for it.
        if let Err(error) = std::task::ready!(this.conn.poll(cx)) {
            tracing::debug!(%error, "HTTP connection ended with an error");
        }
        std::task::Poll::Ready(())
    }
}

/// Why the proxy answered a request itself.
#[derive(Debug)]
pub(crate) struct ProxyError {
    status: StatusCode,
    /// Short cause for metrics (`http_errors_total{error=...}`).
    kind: &'static str,
    message: String,
    /// The gRPC status to answer gRPC callers with, when it is not the HTTP status's.
    grpc_code: Option<u16>,
}

impl ProxyError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            status,
            kind,
            message: message.into(),
            grpc_code: None,
        }
    }

    /// Answers gRPC callers with `code` (an injected gRPC failure).
    pub(crate) fn with_grpc_code(mut self, code: u16) -> Self {
        self.grpc_code = Some(code);
        self
    }

    /// The gRPC status that carries the same meaning to gRPC clients.
    fn grpc_status(&self) -> HeaderValue {
        if let Some(code) = self.grpc_code {
            return HeaderValue::from(code);
        }
        HeaderValue::from_static(match self.status {
            StatusCode::NOT_FOUND => "12",             // UNIMPLEMENTED
            StatusCode::INTERNAL_SERVER_ERROR => "13", // INTERNAL
            StatusCode::BAD_REQUEST => "13",           // INTERNAL
            StatusCode::GATEWAY_TIMEOUT => "4",        // DEADLINE_EXCEEDED
            _ => "14",                                 // UNAVAILABLE
        })
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
pub(crate) struct Unanswered {
    metrics: Arc<crate::metrics::Metrics>,
    route: Option<RouteLabels>,
    start: Instant,
}

impl Unanswered {
    pub(crate) fn new(ctx: &ConnContext, start: Instant) -> Self {
        Unanswered {
            metrics: ctx.shared.metrics.clone(),
            route: None,
            start,
        }
    }

    /// The request has been counted under `route`: from here on it must end in a
    /// response.
    pub(crate) fn counted(&mut self, route: RouteLabels) {
        self.route = Some(route);
    }

    /// The request got its response headers.
    pub(crate) fn answered(&mut self) {
        self.route = None;
    }
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

/// Where a request goes: the authority it names and the endpoint picked for it.
pub(crate) struct Target {
    pub(crate) authority: String,
    pub(crate) endpoint: SocketAddr,
    pub(crate) service: Option<Arc<Service>>,
    /// The balancer's pick, to report the outcome on (none for a single address).
    pub(crate) picked: Option<Picked>,
    /// The route that chose the service (outbound, when it has routes).
    pub(crate) route: Option<Arc<RouteMeta>>,
}

/// A request refused before it reached an endpoint, with the authority it named (empty
/// when it named none the proxy accepts).
pub(crate) struct Unresolved {
    authority: String,
    error: ProxyError,
    /// The route that chose a backend which could not be resolved.
    pub(crate) route: Option<Arc<RouteMeta>>,
}

impl Unresolved {
    pub(crate) fn new(authority: String, error: ProxyError, route: Option<Arc<RouteMeta>>) -> Self {
        Unresolved {
            authority,
            error,
            route,
        }
    }
}

impl ConnContext {
    /// The authority a request is routed by, or the 400 that refuses it. A connection's
    /// requests usually name one authority: when this one's Host is the last counted
    /// request's authority ([`headers::names_authority`]), that is taken as it is, not
    /// parsed again (parsing allocates twice; about 700 instructions per request,
    /// `bench/instructions`).
    pub(crate) fn authority<B>(&self, req: &Request<B>) -> Result<String, Unresolved> {
        if let Some(last) = &*self.route_cache.lock().unwrap_or_else(|e| e.into_inner()) {
            if headers::names_authority(req, &last.authority) {
                return Ok(last.authority.clone());
            }
        }
        headers::request_authority(req).map_err(|error| Unresolved::new(String::new(), error, None))
    }

    pub(crate) fn metrics(&self) -> &HttpMetrics {
        &self.shared.metrics.http
    }

    pub(crate) fn upstreams(&self) -> &HttpUpstreams {
        match self.direction {
            Direction::Inbound => &self.shared.inbound,
            Direction::Outbound => &self.shared.outbound,
        }
    }

    /// Resolve: the request's authority, the service it names (asking the destination
    /// service first in explicit mode) and an endpoint of it, waiting within the
    /// failfast timeout for a service that has none yet.
    pub(crate) async fn resolve<B>(&self, req: &Request<B>) -> Result<Target, Unresolved> {
        let authority = self.authority(req)?;
        // Explicit mode: an authority met for the first time may need the controller.
        self.shared.discover(&self.destination, &authority).await;
        self.resolve_authority(&self.destination, authority).await
    }

    /// [`ConnContext::resolve`] for a known authority, to `destination` (the
    /// connection's, or a route's backend).
    pub(crate) async fn resolve_authority(
        &self,
        destination: &Destination,
        authority: String,
    ) -> Result<Target, Unresolved> {
        // (Discovered by the caller: `Shared::discover`.)
        match self.shared.resolve_or_wait(destination, &authority).await {
            Ok(Resolved {
                addr,
                service,
                picked,
            }) => Ok(Target {
                authority,
                endpoint: addr,
                service,
                picked,
                route: None,
            }),
            Err(e) => {
                let error = match e {
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
                Err(Unresolved::new(authority, error, None))
            }
        }
    }

    /// The proxy's own answer to a request that could not be resolved.
    pub(crate) fn unresolved(
        &self,
        unresolved: Unresolved,
        grpc: bool,
        start: Instant,
    ) -> Response<ProxyBody> {
        let route = self.route_labels(
            &unresolved.authority,
            None,
            None,
            None,
            unresolved.route.as_ref(),
        );
        self.error_response(route, grpc, start, unresolved.error)
    }

    /// The request's metric labels, with `request_total` counted: taken from the
    /// connection's cache when the previous request went the same way.
    pub(crate) fn count_request(&self, target: &Target) -> RouteLabels {
        let metrics = self.metrics();
        let mut cache = self.route_cache.lock().unwrap_or_else(|e| e.into_inner());
        let generation = metrics.generation();
        match &*cache {
            Some(c)
                if c.endpoint == target.endpoint
                    && c.authority == target.authority
                    && c.route == target.route
                    && c.generation == generation =>
            {
                c.requests.inc();
                c.labels.clone()
            }
            _ => {
                let (labels, requests) = metrics.requests(self.target_labels(target));
                requests.inc();
                *cache = Some(CachedRoute {
                    authority: target.authority.clone(),
                    endpoint: target.endpoint,
                    route: target.route.clone(),
                    labels: labels.clone(),
                    requests,
                    generation,
                });
                labels
            }
        }
    }

    /// The labels of a request sent to `target`.
    pub(crate) fn target_labels(&self, target: &Target) -> RouteLabels {
        self.route_labels(
            &target.authority,
            Some(target.endpoint),
            target.service.as_deref(),
            target.picked.as_ref(),
            target.route.as_ref(),
        )
    }

    pub(crate) fn route_labels(
        &self,
        authority: &str,
        endpoint: Option<SocketAddr>,
        service: Option<&Service>,
        picked: Option<&Picked>,
        route: Option<&Arc<RouteMeta>>,
    ) -> RouteLabels {
        // Outbound requests to a meshed endpoint go over mTLS (when this proxy has an
        // identity): the route is labelled with the server's identity.
        let server_id = picked
            .and_then(|p| p.identity())
            .filter(|_| self.direction == Direction::Outbound && self.shared.identity.is_some());
        let dst_zone = picked.and_then(|p| p.zone()).map(|z| &**z);
        RouteLabels::new(RouteLabelValues {
            direction: self.direction,
            authority: self.shared.metrics.authority_label(authority),
            target_addr: Str(endpoint.map(|e| e.to_string()).unwrap_or_default().into()),
            tls: if server_id.is_some() {
                Tls::Yes
            } else {
                self.tls
            },
            dst_service: Str(service.map_or_else(|| "".into(), |s| s.name())),
            dst_zone: dst_zone.unwrap_or("").into(),
            client_id: self.client_id.clone(),
            server_id: Str(server_id.map(|id| id.dns_name()).unwrap_or_default().into()),
            route: RouteLabel(route.cloned()),
        })
    }

    /// A response the proxy makes itself, counted as a failure.
    pub(crate) fn error_response(
        &self,
        route: RouteLabels,
        grpc: bool,
        start: Instant,
        e: ProxyError,
    ) -> Response<ProxyBody> {
        let metrics = self.metrics();
        metrics.error(self.direction, e.kind);
        let cause =
            HeaderValue::from_str(&e.message).unwrap_or_else(|_| HeaderValue::from_static(e.kind));
        let mut rsp = if grpc {
            // gRPC clients read errors from grpc-status, not the HTTP status: answer
            // with a trailers-only response.
            let mut rsp = Response::new(ProxyBody::full(Bytes::new()));
            let h = rsp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", e.grpc_status());
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
}

impl ConnContext {
    /// A response the proxy makes on a route's behalf (a redirect): no body, counted
    /// by its status like an upstream's.
    pub(crate) fn answer_locally(
        &self,
        route: RouteLabels,
        status: StatusCode,
        headers: http::HeaderMap,
        start: Instant,
    ) -> Response<ProxyBody> {
        let metrics = self.metrics();
        let mut rsp = Response::new(ProxyBody::full(Bytes::new()));
        *rsp.status_mut() = status;
        *rsp.headers_mut() = headers;
        let code = status.as_u16();
        metrics.latency(&route, code, elapsed_ms(start));
        let classification = if status.is_server_error() {
            Classification::Failure
        } else {
            Classification::Success
        };
        metrics.response(route, code, classification);
        rsp
    }
}

/// What preparing a request's head for the upstream hop found out.
pub(crate) struct Prepared {
    pub(crate) version: HttpVersion,
    /// The client's side of the protocol upgrade it asked for (HTTP/1 only).
    pub(crate) upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// Rewrites a request's head for the upstream hop (HTTP/1: origin-form target, the
/// routed authority as Host, no hop-by-hop headers) and takes its upgrade, if any. In
/// place: a request moved in and out is copied twice (it is a few hundred bytes).
pub(crate) fn prepare(
    req: &mut Request<Incoming>,
    authority: &str,
) -> Result<Prepared, ProxyError> {
    let version = if req.version() == Version::HTTP_2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    };
    let upgrade = if version == HttpVersion::Http1 && is_upgrade(req.headers()) {
        Some(hyper::upgrade::on(&mut *req))
    } else {
        None
    };
    if version == HttpVersion::Http1 {
        headers::prepare_h1_request(req, authority, upgrade.is_some())?;
    }
    Ok(Prepared { version, upgrade })
}

/// When a request must be over, and the limit that set it.
pub(crate) struct Deadline {
    pub(crate) at: tokio::time::Instant,
    pub(crate) limit: Duration,
}

/// An upstream's response and, for HTTP/1, its connection (back to the pool once the
/// body is read).
pub(crate) type Sent = (Response<Incoming>, Option<Reusable>);

/// Why an attempt produced no response.
pub(crate) enum Failure {
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

/// One attempt: `req` sent to `endpoint` (over mTLS to `server` when it is meshed),
/// within the attempt's own time and the request's deadline, whichever ends first.
/// Running out of time drops the send, which cancels the upstream request.
pub(crate) async fn attempt(
    ctx: &ConnContext,
    endpoint: SocketAddr,
    version: HttpVersion,
    server: Option<&Identity>,
    req: Request<RequestBody>,
    attempt_timeout: Option<Duration>,
    deadline: Option<&Deadline>,
) -> Result<Sent, Failure> {
    let send = ctx
        .upstreams()
        .send_cached(&ctx.pool_cache, endpoint, version, server, req);
    let attempt_end = attempt_timeout.map(|t| (tokio::time::Instant::now() + t, t));
    let limit = match (attempt_end, deadline) {
        (None, None) => None,
        (Some((end, t)), Some(d)) if end < d.at => Some((end, Failure::AttemptTimeout(t))),
        (_, Some(d)) => Some((d.at, Failure::Deadline)),
        (Some((end, t)), None) => Some((end, Failure::AttemptTimeout(t))),
    };
    match limit {
        None => send.await.map_err(|e| Failure::Send(Box::new(e))),
        Some((end, expired)) => match tokio::time::timeout_at(end, send).await {
            Ok(sent) => sent.map_err(|e| Failure::Send(Box::new(e))),
            Err(_) => Err(expired),
        },
    }
}

/// What is known of a request when its upstream result comes back: enough to answer
/// the client and record the golden metrics.
pub(crate) struct Answer {
    pub(crate) route: RouteLabels,
    pub(crate) start: Instant,
    pub(crate) grpc: bool,
    pub(crate) version: HttpVersion,
    pub(crate) upgrade: Option<hyper::upgrade::OnUpgrade>,
    pub(crate) authority: String,
    /// The endpoint of the last attempt.
    pub(crate) endpoint: SocketAddr,
    pub(crate) picked: Option<Picked>,
    pub(crate) retries: u32,
    pub(crate) deadline: Option<Deadline>,
}

impl Answer {
    /// The client's response: the upstream's, streamed back (the body keeps recording
    /// and keeps the request's deadline), or the proxy's own error. The balancer learns
    /// the endpoint's outcome here.
    pub(crate) fn respond(
        self,
        ctx: &ConnContext,
        result: Result<Sent, Failure>,
    ) -> Response<ProxyBody> {
        let Answer {
            route,
            start,
            grpc,
            version,
            upgrade,
            authority,
            endpoint,
            picked,
            retries,
            deadline,
        } = self;
        let metrics = ctx.metrics();
        let (mut rsp, mut reusable) = match result {
            Ok(sent) => sent,
            Err(failure) => {
                let e = failure.into_proxy_error(endpoint, deadline.as_ref());
                tracing::info!(direction = ctx.direction.as_str(), client = %ctx.client, %authority, %endpoint, retries, error = %e.message, "request failed");
                if let Some(p) = picked {
                    p.finish(Outcome::Failure);
                }
                return ctx.error_response(route, grpc, start, e);
            }
        };

        let status = rsp.status();
        // The balancer learns from the time to response headers; 5xx and 429 count
        // against the endpoint.
        // A gRPC error in a trailers-only response (how servers fail a call) counts too;
        // one in trailers after a body is seen only by the metrics.
        let grpc_failed = grpc && grpc_status_of(rsp.headers()) == Some(false);
        let failed =
            status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || grpc_failed;
        if let Some(p) = picked {
            p.finish(if failed {
                Outcome::Failure
            } else {
                Outcome::Success
            });
        }
        if retries > 0 && !failed {
            metrics.retries.succeeded(&route.dst_service);
        }
        metrics.latency(&route, status.as_u16(), elapsed_ms(start));

        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now belongs to the tunnel.
            reusable = None;
            if let Some(server_upgrade) = upgrade {
                let client_upgrade = hyper::upgrade::on(&mut rsp);
                tokio::spawn(headers::tunnel(server_upgrade, client_upgrade));
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
        let recorder = body::ResponseRecorder::new(
            ctx.shared.metrics.clone(),
            route,
            status.as_u16(),
            grpc,
            grpc_status,
        );
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
}

pub(crate) fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests;
