//! Test clients over one kept-alive connection: HTTP/1.1 and HTTP/2 (prior knowledge).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A response read whole.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    /// Trailers (HTTP/2), empty when there were none.
    pub trailers: HeaderMap,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One connection to `addr`, sending requests with a fixed authority.
pub struct TestClient {
    sender: Sender,
    authority: String,
}

impl TestClient {
    /// An HTTP/1.1 client to `addr` sending `Host: authority`.
    pub async fn http1(addr: SocketAddr, authority: &str) -> anyhow::Result<TestClient> {
        let io = TcpStream::connect(addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(TestClient {
            sender: Sender::H1(sender),
            authority: authority.to_owned(),
        })
    }

    /// An HTTP/2 client to `addr` sending `:authority = authority`.
    pub async fn http2(addr: SocketAddr, authority: &str) -> anyhow::Result<TestClient> {
        let io = TcpStream::connect(addr).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(conn);
        Ok(TestClient {
            sender: Sender::H2(sender),
            authority: authority.to_owned(),
        })
    }

    /// Another handle on the same HTTP/2 connection, for concurrent streams.
    pub fn clone_h2(&self) -> TestClient {
        match &self.sender {
            Sender::H2(s) => TestClient {
                sender: Sender::H2(s.clone()),
                authority: self.authority.clone(),
            },
            Sender::H1(_) => panic!("HTTP/1 connections carry one request at a time"),
        }
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<TestResponse> {
        self.request(Method::GET, path, Bytes::new()).await
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<TestResponse> {
        self.request_with(method, path, &[], body).await
    }

    /// A request with extra headers.
    pub async fn request_with(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<TestResponse> {
        let builder = match &self.sender {
            Sender::H1(_) => Request::builder()
                .uri(path)
                .header(http::header::HOST, &self.authority),
            Sender::H2(_) => Request::builder().uri(format!("http://{}{}", self.authority, path)),
        };
        let mut builder = builder.method(method);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(body.into()))?;
        let rsp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let (parts, body) = rsp.into_parts();
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let body = collected.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            trailers,
        })
    }
}

/// Sends one HTTP/1.1 GET on a new connection.
pub async fn get(addr: SocketAddr, authority: &str, path: &str) -> anyhow::Result<TestResponse> {
    TestClient::http1(addr, authority).await?.get(path).await
}
