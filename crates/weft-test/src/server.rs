//! A test application server speaking HTTP/1.1 and HTTP/2 (prior knowledge) on one port.
//!
//! Routes:
//! - `GET /` → `hello from {name}`
//! - `POST /echo` → the request body, streamed back
//! - `/status/{code}` → an empty response with that status
//! - `/delay/{ms}` → `slept {ms}` after waiting
//! - `/chunks/{n}` → `n` chunks of `chunk {i}\n`, streamed with short pauses
//! - `/ws` → a WebSocket echo (HTTP/1.1 Upgrade)
//!
//! Every response carries `x-served-by: {name}`. [`ServerOptions`] make a server
//! answer every request with one status, or only after a delay; every server logs
//! what it received ([`TestServer::received`]) and counts requests it was still
//! working on when their caller went away ([`TestServer::cancelled`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, hyper::Error>;

/// A running test application. Stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    task: JoinHandle<()>,
}

/// How a test server behaves beyond its routes.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Answer every request with this status (and an empty body) instead of routing it.
    pub status: Option<StatusCode>,
    /// Wait this long before answering each request.
    pub delay: Option<Duration>,
    /// Answer every request as a gRPC server failing with this status would: 200,
    /// `content-type: application/grpc` and `grpc-status` in the headers.
    pub grpc_status: Option<u32>,
}

impl ServerOptions {
    /// Every request answered with `status`.
    pub fn status(code: u16) -> Self {
        ServerOptions {
            status: Some(StatusCode::from_u16(code).expect("a valid status code")),
            ..Default::default()
        }
    }

    /// Every request answered as a failed gRPC call with status `code`.
    pub fn grpc_status(code: u32) -> Self {
        ServerOptions {
            grpc_status: Some(code),
            ..Default::default()
        }
    }

    /// Every request answered after `delay`.
    pub fn delay(delay: Duration) -> Self {
        ServerOptions {
            delay: Some(delay),
            ..Default::default()
        }
    }
}

/// A request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub method: Method,
    pub path: String,
    /// The `weft-retry-attempt` header, when the proxy retried the request.
    pub retry_attempt: Option<String>,
    /// The `Host` headers, in order.
    pub hosts: Vec<String>,
    pub version: http::Version,
    /// The names of the request's headers, in order (`Host` included).
    pub header_names: Vec<String>,
}

#[derive(Default)]
struct ServerState {
    options: ServerOptions,
    requests: AtomicUsize,
    cancelled: AtomicUsize,
    received: Mutex<Vec<Received>>,
}

/// Counts a request as cancelled if it is dropped before it was answered.
struct Unanswered<'a>(&'a AtomicUsize, bool);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl TestServer {
    /// Starts the app on `addr` (use port 0 for an ephemeral port).
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<TestServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::from_listener(listener, name))
    }

    /// Starts the app on an ephemeral loopback port.
    pub async fn loopback(name: &str) -> TestServer {
        Self::start(([127, 0, 0, 1], 0).into(), name)
            .await
            .expect("bind a loopback port")
    }

    /// Starts the app on an ephemeral loopback port, behaving as `options` say.
    pub async fn loopback_with(name: &str, options: ServerOptions) -> TestServer {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind a loopback port");
        Self::from_listener_with(listener, name, options)
    }

    pub fn from_listener(listener: TcpListener, name: &str) -> TestServer {
        Self::from_listener_with(listener, name, ServerOptions::default())
    }

    pub fn from_listener_with(
        listener: TcpListener,
        name: &str,
        options: ServerOptions,
    ) -> TestServer {
        let addr = listener.local_addr().expect("bound listener");
        let state = Arc::new(ServerState {
            options,
            ..Default::default()
        });
        let name: Arc<str> = name.into();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let name = name.clone();
                let state = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let name = name.clone();
                        let state = state.clone();
                        async move { serve(&state, name, req).await }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(socket), svc)
                        .await;
                });
            }
        });
        TestServer { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Requests whose caller went away before they were answered.
    pub fn cancelled(&self) -> usize {
        self.state.cancelled.load(Ordering::Relaxed)
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn serve(
    state: &ServerState,
    name: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    state
        .received
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            hosts: req
                .headers()
                .get_all(http::header::HOST)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect(),
            retry_attempt: req
                .headers()
                .get("weft-retry-attempt")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            version: req.version(),
            header_names: req.headers().keys().map(|k| k.to_string()).collect(),
        });
    let mut answer = Unanswered(&state.cancelled, false);
    if let Some(delay) = state.options.delay {
        tokio::time::sleep(delay).await;
    }
    let rsp = match (state.options.status, state.options.grpc_status) {
        (None, None) => route(name, req).await,
        (status, grpc) => {
            let mut rsp = Response::new(full(Bytes::new()));
            *rsp.status_mut() = status.unwrap_or(StatusCode::OK);
            let h = rsp.headers_mut();
            if let Some(code) = grpc {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                h.insert("grpc-status", HeaderValue::from(code));
            }
            if let Ok(v) = HeaderValue::from_str(&name) {
                h.insert("x-served-by", v);
            }
            Ok(rsp)
        }
    };
    answer.1 = true;
    rsp
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn route(name: Arc<str>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut segments = path.trim_start_matches('/').splitn(2, '/');
    let (first, arg) = (segments.next().unwrap_or(""), segments.next());
    let mut rsp = match (first, arg) {
        ("", None) => Response::new(full(format!("hello from {name}"))),
        ("echo", None) => Response::new(req.into_body().boxed()),
        ("status", Some(code)) => {
            let mut rsp = Response::new(full(Bytes::new()));
            *rsp.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            rsp
        }
        ("delay", Some(ms)) => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(format!("slept {ms}")))
        }
        ("chunks", Some(n)) => {
            let n: usize = n.parse().unwrap_or(0);
            let stream = futures_util::stream::unfold(0, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                Some((
                    Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!("chunk {i}\n")))),
                    i + 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        ("bytes", Some(n)) => {
            let n: usize = n.parse().unwrap_or(0);
            Response::new(full(vec![b'x'; n]))
        }
        ("header", Some(n)) => {
            // A response head with an `x-large` header of n bytes.
            let n: usize = n.parse().unwrap_or(0);
            let mut rsp = Response::new(full(Bytes::new()));
            if let Ok(v) = HeaderValue::from_str(&"h".repeat(n)) {
                rsp.headers_mut().insert("x-large", v);
            }
            rsp
        }
        ("ws", None) => websocket(&mut req),
        _ => {
            let mut rsp = Response::new(full("not found"));
            *rsp.status_mut() = StatusCode::NOT_FOUND;
            rsp
        }
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        rsp.headers_mut().insert("x-served-by", v);
    }
    Ok(rsp)
}

/// Accepts a WebSocket handshake and echoes every message.
fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        let mut rsp = Response::new(full("expected a WebSocket handshake"));
        *rsp.status_mut() = StatusCode::BAD_REQUEST;
        return rsp;
    };
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut rsp = Response::new(full(Bytes::new()));
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = rsp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    rsp
}
