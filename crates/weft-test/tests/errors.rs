//! Proxy-generated errors carry a status and a `weft-proxy-error` cause; bad peers never
//! disturb other connections.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_test::{client, proxy, TestClient, TestServer};

fn unused_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn connection_refused_is_a_502() {
    let dead = unused_port();
    let proxy = proxy::inbound_to(dead).start().await;
    let rsp = client::get(proxy.inbound(), "books", "/").await.unwrap();
    assert_eq!(rsp.status, 502);
    assert_eq!(
        rsp.header("weft-proxy-error"),
        Some(format!("connection to {dead} refused").as_str())
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "response_total",
            &[("status_code", "502"), ("classification", "failure")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "http_errors_total",
            &[("direction", "inbound"), ("error", "connect refused")]
        ),
        1.0
    );
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let app = TestServer::loopback("slow").await;
    let proxy = proxy::inbound_to(app.addr())
        .response_timeout(Duration::from_millis(100))
        .start()
        .await;
    let mut client = TestClient::http1(proxy.inbound(), "slow").await.unwrap();
    let rsp = client.get("/delay/2000").await.unwrap();
    assert_eq!(rsp.status, 504);
    assert!(rsp
        .header("weft-proxy-error")
        .unwrap()
        .contains("did not respond within 100ms"));
    // The same client connection keeps working.
    let rsp = client.get("/delay/1").await.unwrap();
    assert_eq!(rsp.status, 200);
}

#[tokio::test]
async fn request_without_host_is_a_400() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;
    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let text = read_head(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("weft-proxy-error: http/1.1 request without a host header"),
        "{text}"
    );
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn two_host_headers_are_a_400() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;
    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: books\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let text = read_head(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("weft-proxy-error: more than one host header"),
        "{text}"
    );
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn an_absolute_form_target_replaces_the_host_header() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;
    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    conn.write_all(b"GET http://books.example:8080/?b=c HTTP/1.1\r\nHost: other\r\n\r\n")
        .await
        .unwrap();
    let text = read_head(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let received = app.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/");
    assert_eq!(received[0].hosts, vec!["books.example:8080".to_owned()]);
}

/// Bytes that start like an HTTP request are HTTP: a malformed request line, or a head
/// cut short, gets the HTTP server's 4xx and never reaches the application as opaque
/// bytes (which the proxy could neither count nor authorize).
#[tokio::test]
async fn malformed_request_lines_are_answered_not_forwarded_as_tcp() {
    // An application that would echo whatever opaque bytes reached it.
    let app = weft_test::tcp::TcpServer::echo_after_eof().await;
    let proxy = proxy::inbound_to(app.addr())
        .detect_timeout(Duration::from_millis(100))
        .start()
        .await;
    for line in [
        &b"GET /a b HTTP/1.1\r\nHost: books\r\n\r\n"[..],
        b"GET / HTTP/2.0\r\nHost: books\r\n\r\n",
        b"POST /\x01 HTTP/1.1\r\n\r\n",
    ] {
        let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
        conn.write_all(line).await.unwrap();
        conn.shutdown().await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply))
            .await
            .expect("an answer")
            .unwrap();
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("HTTP/1.1 4") || reply.starts_with("HTTP/1.1 505"),
            "{:?}: {reply}",
            String::from_utf8_lossy(line)
        );
        assert!(!reply.contains("got "), "forwarded as TCP: {reply}");
    }
    // A request line cut short, then silence past the detect timeout: still HTTP
    // (the server's head timeout bounds it), not a tunnel to the application.
    let mut slow = TcpStream::connect(proxy.inbound()).await.unwrap();
    slow.write_all(b"GET /slow").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut reply)).await;
    assert!(
        !String::from_utf8_lossy(&reply).contains("got "),
        "forwarded as TCP"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "dst")]
        ),
        0.0,
        "no connection to the application was opened"
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_and_others_keep_working() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr())
        .detect_timeout(Duration::from_millis(100))
        .start()
        .await;

    // A good client on a kept-alive connection, in the middle of bad ones.
    let mut good = TestClient::http1(proxy.inbound(), "books").await.unwrap();
    assert_eq!(good.get("/").await.unwrap().status, 200);

    // An unparsable header block: hyper refuses it with a 400.
    let mut bad = TcpStream::connect(proxy.inbound()).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: books\r\nbad header\r\n\r\n")
        .await
        .unwrap();
    let text = read_head(&mut bad).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // A client that sends half a request and vanishes.
    let mut half = TcpStream::connect(proxy.inbound()).await.unwrap();
    half.write_all(b"POST /echo HTTP/1.1\r\nHost: books\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    drop(half);

    // A client that never speaks.
    let _silent = TcpStream::connect(proxy.inbound()).await.unwrap();

    // Garbage to a port that is forwarded as opaque TCP after detection.
    let mut garbage = TcpStream::connect(proxy.inbound()).await.unwrap();
    garbage
        .write_all(&[0xde, 0xad, 0xbe, 0xef, b'\n'])
        .await
        .unwrap();
    drop(garbage);

    for _ in 0..3 {
        assert_eq!(good.get("/").await.unwrap().body, "hello from books");
    }
    let m = proxy.metrics().await;
    assert_eq!(m.sum("response_total", &[("status_code", "200")]), 4.0);
}

#[tokio::test]
async fn admin_endpoints_and_graceful_shutdown() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr())
        .drain_grace(Duration::from_secs(5))
        .start()
        .await;

    let ready = client::get(proxy.admin(), "admin", "/ready").await.unwrap();
    assert_eq!(
        (ready.status.as_u16(), ready.body.as_str()),
        (200, "ready\n")
    );
    assert_eq!(
        client::get(proxy.admin(), "admin", "/live")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client::get(proxy.admin(), "admin", "/nope")
            .await
            .unwrap()
            .status,
        404
    );
    let get_shutdown = client::get(proxy.admin(), "admin", "/shutdown")
        .await
        .unwrap();
    assert_eq!(get_shutdown.status, 405);
    let metrics = client::get(proxy.admin(), "admin", "/metrics")
        .await
        .unwrap();
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);
    assert!(metrics.body.contains("process_resident_memory_bytes"));

    // A request in flight when shutdown is asked for still completes.
    let inbound = proxy.inbound();
    let in_flight = tokio::spawn(async move { client::get(inbound, "books", "/delay/300").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut admin = TestClient::http1(proxy.admin(), "admin").await.unwrap();
    let rsp = admin
        .request(http::Method::POST, "/shutdown", "")
        .await
        .unwrap();
    assert_eq!(rsp.status, 200);
    let ready = admin.get("/ready").await.unwrap();
    assert_eq!(ready.status, 503, "not ready while draining");

    let rsp = in_flight.await.unwrap().unwrap();
    assert_eq!((rsp.status.as_u16(), rsp.body.as_str()), (200, "slept 300"));
    tokio::time::timeout(Duration::from_secs(5), proxy.handle().closed())
        .await
        .expect("drained before the grace period ended");
    // No new connections are accepted.
    assert!(client::get(inbound, "books", "/").await.is_err());
}

async fn read_head(conn: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while let Ok(Ok(read)) =
        tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf[n..])).await
    {
        if read == 0 {
            break;
        }
        n += read;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The `authority` label comes from the caller's Host header: a caller sending
/// thousands of them must not grow `/metrics` without bound.
#[tokio::test]
async fn random_hosts_do_not_grow_the_metrics_without_bound() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;
    let mut conn = TcpStream::connect(proxy.inbound()).await.unwrap();
    let hosts = weft_proxy::metrics::MAX_AUTHORITIES + 300;
    for i in 0..hosts {
        let request = format!("GET /nope HTTP/1.1\r\nHost: host-{i}.example\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        // The whole response: its head and the small body ("not found").
        let mut rsp = Vec::new();
        while !rsp.ends_with(b"not found") {
            let mut buf = [0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&rsp));
            rsp.extend_from_slice(&buf[..n]);
        }
        assert!(rsp.starts_with(b"HTTP/1.1 404"));
    }
    let m = proxy.metrics().await;
    let inbound = [("direction", "inbound")];
    assert_eq!(m.sum("request_total", &inbound), hosts as f64);
    let distinct: std::collections::HashSet<&str> = m
        .text
        .lines()
        .filter(|l| l.starts_with("request_total{"))
        .filter_map(|l| l.split("authority=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(distinct.len(), weft_proxy::metrics::MAX_AUTHORITIES + 1);
    assert!(distinct.contains(weft_proxy::metrics::OVERFLOW_AUTHORITY));
    assert_eq!(
        m.sum(
            "request_total",
            &[("authority", weft_proxy::metrics::OVERFLOW_AUTHORITY)]
        ),
        300.0
    );
}
