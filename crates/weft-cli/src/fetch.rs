//! Plain HTTP/1.1 GETs for admin endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// GETs `http://{addr}{path}` and returns the body; non-2xx answers are errors.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    request(http::Method::GET, addr, path).await
}

/// POSTs an empty body to `http://{addr}{path}`.
pub async fn post(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    request(http::Method::POST, addr, path).await
}

/// Sends `method` with an empty body to `http://{addr}{path}` over a connection of its
/// own, without a time limit: the answer's head (whatever its status) and body.
pub(crate) async fn exchange(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    let io = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let (head, body) = sender.send_request(req).await?.into_parts();
    Ok((head, body.collect().await?.to_bytes()))
}

async fn request(method: http::Method, addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let work = async {
        let (head, body) = exchange(method.clone(), addr, path).await?;
        let status = head.status;
        anyhow::ensure!(
            status.is_success(),
            "{method} http://{addr}{path} answered {status}"
        );
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .with_context(|| format!("{method} http://{addr}{path} timed out"))?
}
