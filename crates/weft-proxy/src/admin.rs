//! The admin server: `/metrics` (loopback and `--admin-metrics-from` callers),
//! `/ready`, `/live`, and `POST /shutdown` (loopback callers only).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::endpoints::ServiceIndex;
use crate::identity::LocalIdentity;
use crate::metrics::Metrics;
use crate::Control;

pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    identity: Option<Arc<LocalIdentity>>,
    services: ServiceIndex,
    metrics_from: Arc<[ipnet::IpNet]>,
) {
    loop {
        let (socket, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let control = control.clone();
        let identity = identity.clone();
        let services = services.clone();
        let metrics_from = metrics_from.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let rsp = route(&req, peer, &control, identity.as_deref(), &metrics_from);
                let metrics = metrics.clone();
                let services = services.clone();
                async move {
                    let rsp = match rsp {
                        Routed::Done(rsp) => rsp,
                        // Rendering takes a while with many series: off the threads
                        // that forward requests.
                        Routed::RenderMetrics => {
                            match tokio::task::spawn_blocking(move || metrics.encode(&services))
                                .await
                            {
                                Ok(text) => metrics_response(text),
                                Err(_) => text(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "rendering the metrics failed\n",
                                ),
                            }
                        }
                    };
                    Ok::<_, Infallible>(rsp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(socket), svc);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "admin connection failed");
            }
        });
    }
}

/// What a request to the admin server gets: an answer, or the metrics (rendered on a
/// blocking thread).
enum Routed {
    Done(Response<Full<Bytes>>),
    RenderMetrics,
}

fn route(
    req: &Request<Incoming>,
    peer: SocketAddr,
    control: &Arc<Control>,
    identity: Option<&LocalIdentity>,
    metrics_from: &[ipnet::IpNet],
) -> Routed {
    Routed::Done(match (req.method(), req.uri().path()) {
        // Metrics name identities and topology: off loopback, only the configured
        // scrapers read them.
        (&Method::GET, "/metrics")
            if !peer.ip().is_loopback() && !metrics_from.iter().any(|n| n.contains(&peer.ip())) =>
        {
            text(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not read metrics (--admin-metrics-from)\n",
                    peer.ip()
                ),
            )
        }
        (&Method::GET, "/metrics") => return Routed::RenderMetrics,
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") if control.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET, "/ready") if identity.is_some_and(|i| !i.is_ready()) => {
            let why = match identity.and_then(|i| i.expiry()) {
                Some(expiry) => format!(
                    "the certificate expired at {} and has not been renewed\n",
                    humantime::format_rfc3339_seconds(expiry)
                ),
                None => "waiting for a certificate from the identity service\n".to_owned(),
            };
            text(StatusCode::SERVICE_UNAVAILABLE, why)
        }
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::POST, "/shutdown") if peer.ip().is_loopback() => {
            control.shutdown();
            text(StatusCode::OK, "shutting down\n")
        }
        (&Method::POST, "/shutdown") => text(
            StatusCode::FORBIDDEN,
            "shutdown is only accepted from loopback addresses\n",
        ),
        (_, "/metrics" | "/live" | "/ready" | "/shutdown") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /ready, /live or POST /shutdown\n",
        ),
    })
}

fn metrics_response(body: String) -> Response<Full<Bytes>> {
    let mut rsp = text(StatusCode::OK, body);
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    rsp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}
