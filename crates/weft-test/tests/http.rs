//! HTTP/1.1 and HTTP/2 through the proxy, with metrics asserted by value.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Method;
use tokio_tungstenite::tungstenite::Message;
use weft_test::{client, proxy, trace_init, TestClient, TestServer};

#[tokio::test]
async fn http1_keep_alive_requests_are_forwarded_and_counted() {
    trace_init();
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr())
        .workload("shop", "books", "books-0")
        .start()
        .await;

    let mut client = TestClient::http1(proxy.inbound(), "books.shop.svc:8080")
        .await
        .unwrap();
    for _ in 0..5 {
        let rsp = client.get("/").await.unwrap();
        assert_eq!(rsp.status, 200);
        assert_eq!(rsp.body, "hello from books");
        assert_eq!(rsp.header("x-served-by"), Some("books"));
    }
    let rsp = client.get("/status/503").await.unwrap();
    assert_eq!(rsp.status, 503);
    let rsp = client.get("/status/404").await.unwrap();
    assert_eq!(rsp.status, 404);
    assert_eq!(app.requests(), 7);

    let m = proxy.metrics().await;
    let route = [
        ("direction", "inbound"),
        ("authority", "books.shop.svc:8080"),
    ];
    assert_eq!(m.sum("request_total", &route), 7.0, "{}", m.text);
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = route.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    assert_eq!(
        m.sum(
            "response_total",
            &with(&[("classification", "success"), ("status_code", "200")])
        ),
        5.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &with(&[("classification", "failure"), ("status_code", "503")])
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &with(&[("classification", "success"), ("status_code", "404")])
        ),
        1.0
    );
    assert_eq!(m.sum("response_latency_ms_count", &route), 7.0);
    assert!(m.has(
        "request_total",
        &[
            ("namespace", "shop"),
            ("deployment", "books"),
            ("pod", "books-0"),
            ("tls", "no_identity")
        ]
    ));
    // One client connection, and one pooled upstream connection reused for all seven.
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
    assert!(
        m.sum(
            "tcp_read_bytes_total",
            &[("direction", "inbound"), ("peer", "src")]
        ) > 0.0
    );
    assert!(
        m.sum(
            "tcp_write_bytes_total",
            &[("direction", "inbound"), ("peer", "dst")]
        ) > 0.0
    );
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let app = TestServer::loopback("echo").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;
    let mut client = TestClient::http1(proxy.inbound(), "echo").await.unwrap();

    let big: String = "0123456789abcdef".repeat(64 * 1024); // 1 MiB
    let rsp = client
        .request(Method::POST, "/echo", big.clone())
        .await
        .unwrap();
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body.len(), big.len());
    assert!(rsp.body == big);

    // Chunked responses arrive as the server writes them.
    let rsp = client.get("/chunks/5").await.unwrap();
    assert_eq!(rsp.body, "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n");
}

#[tokio::test]
async fn http2_requests_are_multiplexed_to_the_upstream() {
    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;
    let client = TestClient::http2(proxy.inbound(), "books:8080")
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut c = client.clone_h2();
        tasks.push(tokio::spawn(async move {
            let rsp = c.get(&format!("/delay/{}", 20 + i)).await.unwrap();
            assert_eq!(rsp.status, 200);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "request_total",
            &[("direction", "inbound"), ("authority", "books:8080")]
        ),
        10.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &[("classification", "success"), ("status_code", "200")]
        ),
        10.0
    );
    // All ten concurrent streams share one upstream HTTP/2 connection.
    assert_eq!(m.sum("tcp_open_total", &[("peer", "dst")]), 1.0);
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let app = TestServer::loopback("ws").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;

    let stream = tokio::net::TcpStream::connect(proxy.inbound())
        .await
        .unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://chat.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(rsp.status(), 101);
    for text in ["one", "two", "three"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    ws.close(None).await.unwrap();

    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "response_total",
            &[("status_code", "101"), ("classification", "success")]
        ),
        1.0
    );
}

#[tokio::test]
async fn outbound_service_listener_balances_per_request() {
    let a = TestServer::loopback("books-a").await;
    let b = TestServer::loopback("books-b").await;
    let yaml = format!(
        "services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [\"{}\", \"{}\"]\n",
        a.addr(),
        b.addr()
    );
    let proxy = proxy::inbound_to(a.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books.default.svc:8080")
        .await
        .unwrap();
    for _ in 0..10 {
        assert_eq!(client.get("/").await.unwrap().status, 200);
    }
    // One client connection, spread per request over both endpoints.
    // P2C over equal endpoints: both take traffic (not an exact split).
    assert!(a.requests() > 0 && b.requests() > 0);
    assert_eq!(a.requests() + b.requests(), 10);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "request_total",
            &[("direction", "outbound"), ("dst_service", "books")]
        ),
        10.0
    );
    assert_eq!(
        m.sum("request_total", &[("target_addr", &a.addr().to_string())]),
        a.requests() as f64
    );
}

#[tokio::test]
async fn outbound_listener_routes_by_authority() {
    let app = TestServer::loopback("books").await;
    let yaml = format!(
        "services:\n  - name: books\n    authorities: [\"books.default.svc:8080\"]\n    endpoints: [\"{}\"]\n",
        app.addr()
    );
    let proxy = proxy::inbound_to(app.addr()).services(&yaml).start().await;

    let rsp = client::get(proxy.outbound(), "books.default.svc:8080", "/")
        .await
        .unwrap();
    assert_eq!(rsp.body, "hello from books");

    // Naming the proxy itself would loop: refused, not followed.
    let own = proxy.outbound().to_string();
    let rsp = client::get(proxy.outbound(), &own, "/").await.unwrap();
    assert_eq!(rsp.status, 400);
    assert!(rsp
        .header("weft-proxy-error")
        .unwrap()
        .contains("would loop"));

    let rsp = client::get(proxy.outbound(), "unknown.default.svc:8080", "/")
        .await
        .unwrap();
    assert_eq!(rsp.status, 503);
    assert_eq!(
        rsp.header("weft-proxy-error"),
        Some("no service is known for authority \"unknown.default.svc:8080\"")
    );
}

#[tokio::test]
async fn two_hops_outbound_then_inbound() {
    let app = TestServer::loopback("books").await;
    let server_proxy = proxy::inbound_to(app.addr())
        .workload("default", "books", "books-0")
        .start()
        .await;
    let yaml = format!(
        "services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [\"{}\"]\n",
        server_proxy.inbound()
    );
    let client_proxy = proxy::inbound_to(app.addr())
        .services(&yaml)
        .workload("default", "web", "web-0")
        .start()
        .await;

    let mut client = TestClient::http1(client_proxy.service("books"), "books.default.svc:8080")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(client.get("/").await.unwrap().body, "hello from books");
    }
    let out = client_proxy.metrics().await;
    let inn = server_proxy.metrics().await;
    assert_eq!(
        out.sum(
            "request_total",
            &[("direction", "outbound"), ("deployment", "web")]
        ),
        3.0
    );
    assert_eq!(
        inn.sum(
            "request_total",
            &[("direction", "inbound"), ("deployment", "books")]
        ),
        3.0
    );
    assert_eq!(
        inn.sum(
            "response_total",
            &[("direction", "inbound"), ("classification", "success")]
        ),
        3.0
    );
}

/// Callers share one upstream HTTP/2 connection per endpoint. A caller that stops
/// reading its responses (zero-window streams) must not use up that connection's
/// flow-control window and stall everybody else's requests.
#[tokio::test]
async fn a_caller_that_stops_reading_does_not_stall_others_on_a_shared_connection() {
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let app = TestServer::loopback("books").await;
    let proxy = proxy::inbound_to(app.addr()).start().await;

    // The stalling caller: small windows, and response bodies it never reads.
    let io = tokio::net::TcpStream::connect(proxy.inbound())
        .await
        .unwrap();
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535 * 16)
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut held = Vec::new();
    for _ in 0..6 {
        let mut s = sender.clone();
        s.ready().await.unwrap();
        let req = http::Request::get("http://books:8080/bytes/8000000")
            .body(http_body_util::Empty::new())
            .unwrap();
        let rsp = s.send_request(req).await.unwrap();
        assert_eq!(rsp.status(), 200);
        held.push(rsp);
    }

    // Another caller on a connection of its own, to the same endpoint.
    let mut other = TestClient::http2(proxy.inbound(), "books:8080")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let rsp = tokio::time::timeout(Duration::from_secs(5), other.get("/"))
        .await
        .expect("the other caller was stalled")
        .unwrap();
    assert_eq!(rsp.body, "hello from books");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    drop(held);
}
