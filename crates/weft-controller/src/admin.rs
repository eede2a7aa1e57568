//! The admin server (plain HTTP/1): `/metrics`, `/ready`, `/live`, served by
//! `weft_core::admin`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Serves until the task is dropped. `ready` is what `/ready` reports.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) {
    weft_core::admin::serve(listener, Arc::new(Admin { metrics, ready })).await;
}

struct Admin {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

impl weft_core::admin::Admin for Admin {
    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn ready(&self) -> Result<(), String> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err("shutting down\n".to_owned())
        }
    }

    fn accept_failed(&self, error: &std::io::Error) {
        tracing::warn!(%error, "admin accept failed");
    }

    fn connection_failed(&self, error: &hyper::Error) {
        tracing::debug!(%error, "admin connection failed");
    }
}
