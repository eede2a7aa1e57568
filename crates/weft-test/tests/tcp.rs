//! Opaque TCP: non-HTTP bytes, half-close, server-speaks-first protocols.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_test::proxy;
use weft_test::tcp::TcpServer;

#[tokio::test]
async fn opaque_bytes_and_half_close_pass_through() {
    let server = TcpServer::echo_after_eof().await;
    let proxy = proxy::inbound_to(server.addr()).start().await;

    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    conn.write_all(b"\x00\x01binary protocol\xff")
        .await
        .unwrap();
    // Half-close: the server only answers after it sees our end of stream.
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(reply, b"got 18 bytes: \x00\x01binary protocol\xef\xbf\xbd");
    drop(conn);

    let p = &proxy;
    assert!(
        weft_test::eventually(Duration::from_secs(2), || async move {
            p.metrics()
                .await
                .sum("tcp_open_connections", &[("direction", "inbound")])
                == 0.0
        })
        .await,
        "connections closed"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "dst")]
        ),
        1.0
    );
    assert_eq!(m.sum("tcp_read_bytes_total", &[("peer", "src")]), 18.0);
    assert_eq!(m.sum("tcp_write_bytes_total", &[("peer", "dst")]), 18.0);
    assert_eq!(
        m.sum("tcp_write_bytes_total", &[("peer", "src")]),
        reply.len() as f64
    );
    assert_eq!(m.sum("request_total", &[]), 0.0, "no HTTP was seen");
}

#[tokio::test]
async fn opaque_ports_skip_detection_for_server_first_protocols() {
    let server = TcpServer::banner("220 smtp ready\r\n").await;
    let proxy = proxy::inbound_to(server.addr())
        .opaque_ports(&[server.addr().port()])
        .detect_timeout(Duration::from_secs(5))
        .start()
        .await;

    let start = Instant::now();
    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    let mut banner = [0u8; 16];
    conn.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220 smtp ready\r\n");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "no detection wait on an opaque port"
    );
    conn.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    conn.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
}

#[tokio::test]
async fn silent_clients_become_opaque_after_the_detect_timeout() {
    let server = TcpServer::banner("+OK ready\r\n").await;
    let proxy = proxy::inbound_to(server.addr())
        .detect_timeout(Duration::from_millis(200))
        .start()
        .await;

    let start = Instant::now();
    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut banner))
        .await
        .expect("banner after the detect timeout")
        .unwrap();
    assert_eq!(&banner, b"+OK ready\r\n");
    assert!(start.elapsed() >= Duration::from_millis(200));
}
