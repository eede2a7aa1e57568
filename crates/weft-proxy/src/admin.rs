//! The admin server: `/metrics` (loopback and `--admin-metrics-from` callers),
//! `/ready`, `/live`, `POST /shutdown` (loopback callers only) and `GET
//! /app-probe/CONTAINER/KIND` (the application's probes, `--app-probes`), served by
//! `weft_core::admin`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::net::TcpListener;
use weft_core::admin::{text, Reply, ReplyFuture, Route};

use crate::app_probe::AppProbes;

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
    app_probes: Arc<AppProbes>,
) {
    let admin = Admin {
        metrics,
        control,
        identity,
        services,
        metrics_from,
        app_probes,
    };
    weft_core::admin::serve(listener, Arc::new(admin)).await;
}

struct Admin {
    metrics: Arc<Metrics>,
    control: Arc<Control>,
    identity: Option<Arc<LocalIdentity>>,
    services: ServiceIndex,
    metrics_from: Arc<[ipnet::IpNet]>,
    app_probes: Arc<AppProbes>,
}

impl weft_core::admin::Admin for Admin {
    // Off the threads that forward requests.
    const RENDER_BLOCKING: bool = true;

    const ROUTES: &'static [Route] = &[Route {
        method: Method::POST,
        path: "/shutdown",
    }];

    fn metrics(&self) -> String {
        self.metrics.encode(&self.services)
    }

    fn ready(&self) -> Result<(), String> {
        if self.control.is_draining() {
            return Err("draining\n".to_owned());
        }
        match self.identity.as_deref() {
            Some(identity) if !identity.is_ready() => Err(match identity.expiry() {
                Some(expiry) => format!(
                    "the certificate expired at {} and has not been renewed\n",
                    humantime::format_rfc3339_seconds(expiry)
                ),
                None => "waiting for a certificate from the identity service\n".to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Metrics name identities and topology: off loopback, only the configured
    /// scrapers read them.
    fn may_read_metrics(&self, peer: SocketAddr) -> Result<(), String> {
        let ip = peer.ip();
        if ip.is_loopback() || self.metrics_from.iter().any(|n| n.contains(&ip)) {
            Ok(())
        } else {
            Err(format!(
                "{ip} may not read metrics (--admin-metrics-from)\n"
            ))
        }
    }

    fn handle(&self, _shutdown: &'static str, peer: SocketAddr) -> Reply {
        if peer.ip().is_loopback() {
            self.control.shutdown();
            text(StatusCode::OK, "shutting down\n")
        } else {
            text(
                StatusCode::FORBIDDEN,
                "shutdown is only accepted from loopback addresses\n",
            )
        }
    }

    /// The kubelet's probe of the application, made on loopback (see `app_probe`).
    fn app_probe(&self, name: &str) -> Option<ReplyFuture> {
        let probe = self.app_probes.get(name)?.clone();
        Some(Box::pin(crate::app_probe::run(name.to_owned(), probe)))
    }

    fn accept_failed(&self, error: &std::io::Error) {
        tracing::warn!(%error, "admin accept failed");
    }

    fn connection_failed(&self, error: &hyper::Error) {
        tracing::debug!(%error, "admin connection failed");
    }
}
