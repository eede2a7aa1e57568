//! weft's test harness, so integration tests read like scenarios:
//!
//! ```ignore
//! let app = TestServer::loopback("books").await;
//! let proxy = proxy::inbound_to(app.addr()).start().await;
//! let rsp = client::get(proxy.inbound(), "books", "/").await?;
//! assert_eq!(proxy.metrics().await.sum("request_total", &[("direction", "inbound")]), 1.0);
//! ```

pub mod ca;
pub mod client;
pub mod controller;
pub mod docs;
pub mod fifo;
pub mod grpc;
pub mod kube;
#[cfg(target_os = "linux")]
pub mod kube_node;
pub mod metrics;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod proxy;
pub mod server;
pub mod tcp;

pub use client::{TestClient, TestResponse};
pub use grpc::{EchoClient, GrpcServer};
pub use metrics::Scrape;
pub use server::TestServer;

/// Logs to the test output once per process (`RUST_LOG` filters).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Retries `check` every 10 ms until it returns `true` or `limit` passes.
pub async fn eventually<F, Fut>(limit: std::time::Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
