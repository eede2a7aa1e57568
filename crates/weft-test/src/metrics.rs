//! Reads a proxy's `/metrics`.

use std::net::SocketAddr;

pub use weft_core::prom::{Sample, Scrape};

/// Fetches and parses `http://{admin}/metrics`.
pub async fn fetch(admin: SocketAddr) -> anyhow::Result<Scrape> {
    let rsp = crate::client::get(admin, "admin", "/metrics").await?;
    anyhow::ensure!(rsp.status == 200, "GET /metrics answered {}", rsp.status);
    Ok(Scrape::parse(&rsp.body))
}
