//! Raw TCP servers for opaque-traffic tests.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A TCP server that stops when dropped.
pub struct TcpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpServer {
    /// Reads until the client half-closes, then answers `got {n} bytes: {data}` and closes.
    pub async fn echo_after_eof() -> TcpServer {
        Self::echo_after_eof_at(([127, 0, 0, 1], 0).into())
            .await
            .expect("bind loopback")
    }

    /// [`TcpServer::echo_after_eof`] listening on `addr`.
    pub async fn echo_after_eof_at(addr: SocketAddr) -> std::io::Result<TcpServer> {
        Self::spawn_at(addr, |mut socket| async move {
            let mut data = Vec::new();
            if socket.read_to_end(&mut data).await.is_ok() {
                let reply = format!(
                    "got {} bytes: {}",
                    data.len(),
                    String::from_utf8_lossy(&data)
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        })
        .await
    }

    /// Speaks first: writes `banner` on accept, then echoes lines.
    pub async fn banner(banner: &'static str) -> TcpServer {
        Self::spawn(move |mut socket| async move {
            if socket.write_all(banner.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            while let Ok(n) = socket.read(&mut buf).await {
                if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        })
        .await
    }

    async fn spawn<F, Fut>(handler: F) -> TcpServer
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        Self::spawn_at(([127, 0, 0, 1], 0).into(), handler)
            .await
            .expect("bind loopback")
    }

    async fn spawn_at<F, Fut>(addr: SocketAddr, handler: F) -> std::io::Result<TcpServer>
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(handler(socket));
            }
        });
        Ok(TcpServer { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
