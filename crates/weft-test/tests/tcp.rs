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

/// Idle connections cannot exhaust the proxy: at --max-connections it stops accepting
/// (new clients wait in the listen queue, the file table never fills), and opaque
/// connections that pass no byte for --tcp-idle-timeout are closed, which lets the
/// waiting clients in.
#[tokio::test]
async fn idle_connections_are_bounded_and_reclaimed_so_new_clients_get_in() {
    let server = TcpServer::echo_after_eof().await;
    let mut builder = proxy::inbound_to(server.addr()).opaque_ports(&[server.addr().port()]);
    builder.config_mut().max_connections = Some(4);
    builder.config_mut().tcp_idle_timeout = Some(Duration::from_millis(500));
    let proxy = builder.start().await;

    // Four clients that connect and say nothing; each notes when the proxy closes it.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
        idle.push(tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
                .await
                .expect("closed by the proxy")
                .unwrap_or(0);
            (n, Instant::now())
        }));
    }
    let p = &proxy;
    assert!(
        weft_test::eventually(Duration::from_secs(2), || async move {
            p.metrics().await.sum(
                "tcp_open_total",
                &[("direction", "inbound"), ("peer", "src")],
            ) == 4.0
        })
        .await
    );
    // A fifth: the kernel queues it, the proxy takes it once an idle one is closed.
    let mut late = TcpStream::connect(proxy.inbound()).await.unwrap();
    late.write_all(b"ping").await.unwrap();
    late.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), late.read_to_end(&mut reply))
        .await
        .expect("the waiting client is served")
        .unwrap();
    let served = Instant::now();
    assert_eq!(reply, b"got 4 bytes: ping");
    let mut first_closed = served;
    for reader in idle {
        let (n, closed) = reader.await.unwrap();
        assert_eq!(n, 0, "an idle client got bytes");
        first_closed = first_closed.min(closed);
    }
    assert!(
        first_closed <= served,
        "the fifth client was served before any idle one was closed"
    );
    let m = proxy.metrics().await;
    assert!(
        m.sum("tcp_connection_limit_reached_total", &[]) >= 1.0,
        "{}",
        m.text
    );
}
