//! The admin server the proxy and the controller both run (plain HTTP/1): `GET
//! /metrics` (OpenMetrics text), `GET /ready`, `GET /live`, and a component's own
//! routes. Each component plugs in what differs through [`Admin`]. Feature `admin`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// An admin server's answer.
pub type Reply = Response<Full<Bytes>>;

/// An answer that takes a while (an application probe made on the caller's behalf).
pub type ReplyFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// Paths under this prefix are the application's probes, which the proxy makes for the
/// kubelet ([`Admin::app_probe`]): `/app-probe/CONTAINER/KIND`.
pub const APP_PROBE_PREFIX: &str = "/app-probe/";

/// A route of a component's own, besides `/metrics`, `/ready` and `/live`.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
}

/// What one component's admin server answers where the components differ.
pub trait Admin: Send + Sync + 'static {
    /// Whether `/metrics` is rendered on the blocking pool instead of the runtime's
    /// threads (rendering takes a while with many series).
    const RENDER_BLOCKING: bool = false;

    /// The component's own routes, answered by [`Admin::handle`]; the 404's hint lists
    /// them after the common paths.
    const ROUTES: &'static [Route] = &[];

    /// The body of `GET /metrics`: OpenMetrics text.
    fn metrics(&self) -> String;

    /// `GET /ready`: `Err` is the body of the 503.
    fn ready(&self) -> Result<(), String>;

    /// Whether `peer` may read `/metrics`: `Err` is the body of the 403.
    fn may_read_metrics(&self, _peer: SocketAddr) -> Result<(), String> {
        Ok(())
    }

    /// Answers a request to `path`, one of [`Admin::ROUTES`], with its method.
    fn handle(&self, _path: &'static str, _peer: SocketAddr) -> Reply {
        text(StatusCode::NOT_FOUND, "not found\n")
    }

    /// `GET /app-probe/NAME`: the application's probe `NAME`, made now; `None` (404)
    /// when the component has no such probe.
    fn app_probe(&self, _name: &str) -> Option<ReplyFuture> {
        None
    }

    /// Reports a failed accept (the loop tries again 50 ms later). Logged by the
    /// component, so the line keeps the component's target.
    fn accept_failed(&self, error: &std::io::Error);

    /// Reports a connection that ended in an error.
    fn connection_failed(&self, error: &hyper::Error);
}

/// Serves `listener` until the task is dropped.
pub async fn serve<A: Admin>(listener: TcpListener, admin: Arc<A>) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(error) => {
                admin.accept_failed(&error);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn({
                let admin = admin.clone();
                move |req| {
                    let routed = route(&*admin, &req, peer);
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(answer(admin, routed).await) }
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(socket), svc);
            if let Err(error) = conn.await {
                admin.connection_failed(&error);
            }
        });
    }
}

/// What a request to the admin server gets: an answer, or the metrics.
enum Routed {
    Done(Reply),
    RenderMetrics,
    Later(ReplyFuture),
}

fn route<A: Admin>(admin: &A, req: &Request<Incoming>, peer: SocketAddr) -> Routed {
    let get = req.method() == Method::GET;
    Routed::Done(match req.uri().path() {
        "/metrics" if get => match admin.may_read_metrics(peer) {
            Ok(()) => return Routed::RenderMetrics,
            Err(why) => text(StatusCode::FORBIDDEN, why),
        },
        "/live" if get => text(StatusCode::OK, "live\n"),
        "/ready" if get => match admin.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why),
        },
        "/metrics" | "/live" | "/ready" => method_not_allowed(),
        path if path.starts_with(APP_PROBE_PREFIX) => {
            let name = &path[APP_PROBE_PREFIX.len()..];
            match admin.app_probe(name) {
                Some(_) if !get => method_not_allowed(),
                Some(probe) => return Routed::Later(probe),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!("no application probe {name:?}\n"),
                ),
            }
        }
        path => match A::ROUTES.iter().find(|r| r.path == path) {
            Some(r) if r.method == req.method() => admin.handle(r.path, peer),
            Some(_) => method_not_allowed(),
            None => text(StatusCode::NOT_FOUND, not_found::<A>()),
        },
    })
}

async fn answer<A: Admin>(admin: Arc<A>, routed: Routed) -> Reply {
    match routed {
        Routed::Done(rsp) => rsp,
        Routed::RenderMetrics if A::RENDER_BLOCKING => {
            match tokio::task::spawn_blocking(move || admin.metrics()).await {
                Ok(text) => metrics_response(text),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "rendering the metrics failed\n",
                ),
            }
        }
        Routed::RenderMetrics => metrics_response(admin.metrics()),
        Routed::Later(reply) => reply.await,
    }
}

/// "not found; try /metrics, /ready, /live or POST /shutdown\n": every path, with its
/// method unless it is GET.
fn not_found<A: Admin>() -> String {
    let mut paths: Vec<String> = ["/metrics", "/ready", "/live"].map(String::from).into();
    paths.extend(A::ROUTES.iter().map(|r| {
        if r.method == Method::GET {
            r.path.to_owned()
        } else {
            format!("{} {}", r.method, r.path)
        }
    }));
    let last = paths.pop().unwrap_or_default();
    format!("not found; try {} or {last}\n", paths.join(", "))
}

fn method_not_allowed() -> Reply {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
}

fn metrics_response(body: String) -> Reply {
    let mut rsp = text(StatusCode::OK, body);
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    rsp
}

/// A `text/plain` answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An admin server with `POST /shutdown` of its own, or none.
    struct Fake<const SHUTDOWN: bool>;

    impl<const SHUTDOWN: bool> Admin for Fake<SHUTDOWN> {
        const ROUTES: &'static [Route] = if SHUTDOWN {
            &[Route {
                method: Method::POST,
                path: "/shutdown",
            }]
        } else {
            &[]
        };
        fn metrics(&self) -> String {
            String::new()
        }
        fn ready(&self) -> Result<(), String> {
            Ok(())
        }
        fn accept_failed(&self, _: &std::io::Error) {}
        fn connection_failed(&self, _: &hyper::Error) {}
    }

    #[test]
    fn the_hint_lists_every_path() {
        assert_eq!(
            not_found::<Fake<false>>(),
            "not found; try /metrics, /ready or /live\n"
        );
        assert_eq!(
            not_found::<Fake<true>>(),
            "not found; try /metrics, /ready, /live or POST /shutdown\n"
        );
    }
}
