//! Timeouts, retries and the retry budget on the outbound side, through a proxy's
//! service listener: what the caller gets, what each server receives, and the metrics.

use std::time::{Duration, Instant};

use http::Method;
use weft_test::server::{Received, ServerOptions};
use weft_test::{eventually, proxy, trace_init, Scrape, TestClient, TestServer};

/// An endpoints file with one service `books` on a listener of its own, its endpoints
/// and extra YAML (`timeout`, `retries`).
fn books(endpoints: &[std::net::SocketAddr], extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "services:\n  - name: books\n    listen: 127.0.0.1:0\n    endpoints: [{}]\n{extra}",
        list.join(", ")
    )
}

/// A port nothing listens on.
fn refused_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn retries(m: &Scrape, reason: &str) -> f64 {
    m.sum(
        "retry_requests_total",
        &[("dst_service", "books"), ("reason", reason)],
    )
}

fn first_attempts(received: &[Received]) -> usize {
    received
        .iter()
        .filter(|r| r.retry_attempt.is_none())
        .count()
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_on_another_and_every_get_succeeds() {
    trace_init();
    let bad = TestServer::loopback_with("bad", ServerOptions::status(500)).await;
    let good = TestServer::loopback("good").await;
    // One retry only: a retry that went back to the failing endpoint would fail.
    let yaml = books(&[bad.addr(), good.addr()], "    retries: {limit: 1}\n");
    let proxy = proxy::inbound_to(good.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    for _ in 0..50 {
        let rsp = client.get("/").await.unwrap();
        assert_eq!(
            (rsp.status.as_u16(), rsp.body.as_str()),
            (200, "hello from good")
        );
    }

    // The failing endpoint only ever saw first attempts, each retried once on the
    // other endpoint, which says so in a header.
    let failed = bad.requests();
    assert!(
        failed > 0,
        "P2C sends the failing endpoint some first attempts"
    );
    assert_eq!(first_attempts(&bad.received()), failed);
    let retried = good
        .received()
        .iter()
        .filter(|r| r.retry_attempt.as_deref() == Some("1"))
        .count();
    assert_eq!(retried, failed);
    assert_eq!(good.requests(), 50);

    let m = proxy.metrics().await;
    assert_eq!(retries(&m, "status"), failed as f64, "{}", m.text);
    assert_eq!(
        m.sum("retry_successes_total", &[("dst_service", "books")]),
        failed as f64
    );
    // Counted once per request, however many attempts it took.
    let outbound = [("direction", "outbound"), ("dst_service", "books")];
    assert_eq!(m.sum("request_total", &outbound), 50.0);
    assert_eq!(m.sum("response_total", &outbound), 50.0);
    assert_eq!(
        m.sum(
            "response_total",
            &[
                ("dst_service", "books"),
                ("status_code", "200"),
                ("classification", "success")
            ]
        ),
        50.0
    );
    // The responses are labelled with the endpoint that gave them.
    assert_eq!(
        m.sum(
            "response_total",
            &[("target_addr", &good.addr().to_string())]
        ),
        50.0
    );
}

#[tokio::test]
async fn post_is_not_retried_on_a_500_but_put_is_with_its_body() {
    trace_init();
    let bad = TestServer::loopback_with("bad", ServerOptions::status(500)).await;
    let good = TestServer::loopback("good").await;
    let yaml = books(&[bad.addr(), good.addr()], "");
    let proxy = proxy::inbound_to(good.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();

    // POST is not idempotent: a 500 goes back to the caller, and every POST reached
    // exactly one server exactly once.
    let mut failed = 0;
    for i in 0..30 {
        let body = format!("order {i}");
        let rsp = client
            .request(Method::POST, "/echo", body.clone())
            .await
            .unwrap();
        match rsp.status.as_u16() {
            200 => assert_eq!(rsp.body, body),
            500 => failed += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(failed > 0, "some POSTs went to the failing endpoint");
    assert_eq!(bad.requests(), failed);
    assert_eq!(bad.requests() + good.requests(), 30);
    let m = proxy.metrics().await;
    assert_eq!(m.sum("retry_requests_total", &[]), 0.0);
    assert_eq!(
        m.sum(
            "response_total",
            &[("dst_service", "books"), ("status_code", "500")]
        ),
        failed as f64
    );

    // PUT is idempotent: retried elsewhere, with the same body.
    let bad_before = bad.requests();
    for i in 0..30 {
        let body = format!("state {i}");
        let rsp = client
            .request(Method::PUT, "/echo", body.clone())
            .await
            .unwrap();
        assert_eq!((rsp.status.as_u16(), rsp.body), (200, body));
    }
    let m = proxy.metrics().await;
    assert_eq!(
        retries(&m, "status"),
        (bad.requests() - bad_before) as f64,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn any_request_is_retried_when_its_connection_failed() {
    trace_init();
    let dead = refused_port();
    let good = TestServer::loopback("good").await;
    let yaml = books(&[dead, good.addr()], "");
    let proxy = proxy::inbound_to(good.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    // Nothing reached the dead endpoint, so even a POST (with a body that is streamed,
    // not copied) is safe to send elsewhere.
    for i in 0..30 {
        let body = format!("order {i}");
        let rsp = client
            .request(Method::POST, "/echo", body.clone())
            .await
            .unwrap();
        assert_eq!((rsp.status.as_u16(), rsp.body), (200, body));
    }
    // Each POST reached the live server exactly once.
    assert_eq!(good.requests(), 30);
    assert_eq!(first_attempts(&good.received()) + retries_of(&good), 30);
    let m = proxy.metrics().await;
    let connect_retries = retries(&m, "connect-failure");
    assert!(connect_retries >= 1.0, "{}", m.text);
    assert_eq!(connect_retries, retries_of(&good) as f64);
    assert_eq!(
        m.sum(
            "response_total",
            &[("dst_service", "books"), ("classification", "success")]
        ),
        30.0
    );
}

fn retries_of(server: &TestServer) -> usize {
    server.received().len() - first_attempts(&server.received())
}

#[tokio::test]
async fn the_budget_bounds_retries_when_every_endpoint_fails() {
    trace_init();
    let a = TestServer::loopback_with("a", ServerOptions::status(500)).await;
    let b = TestServer::loopback_with("b", ServerOptions::status(503)).await;
    let yaml = books(
        &[a.addr(), b.addr()],
        "    retries: {limit: 2, backoff: 0s, budget: {ratio: 0.2, minPerSecond: 1, ttl: 10s}}\n",
    );
    let proxy = proxy::inbound_to(a.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    let requests = 100;
    for _ in 0..requests {
        let status = client.get("/").await.unwrap().status.as_u16();
        assert!(status == 500 || status == 503, "{status}");
    }
    // Without a budget: 300 attempts. With it: requests × (1 + ratio) + min × ttl.
    let attempts = a.requests() + b.requests();
    let cap = requests + requests / 5 + 10;
    assert!(attempts <= cap, "{attempts} attempts, cap {cap}");
    // The test takes well under the 10 s window: the budget is spent to the last retry.
    assert!(
        attempts >= cap - 5,
        "{attempts} attempts, expected about {cap}"
    );
    let m = proxy.metrics().await;
    assert_eq!(
        retries(&m, "status"),
        (attempts - requests) as f64,
        "{}",
        m.text
    );
    // Every request ended on a retryable failure, stopped either by its limit or by
    // the spent budget; most by the budget.
    let overflow = m.sum("retry_overflow_total", &[("dst_service", "books")]);
    let limited = m.sum("retry_limit_exceeded_total", &[("dst_service", "books")]);
    assert_eq!(overflow + limited, requests as f64);
    assert!(
        overflow >= 80.0,
        "{overflow} requests refused a retry by the budget"
    );
    assert_eq!(
        m.sum("response_total", &[("dst_service", "books")]),
        requests as f64
    );
}

#[tokio::test]
async fn the_request_timeout_answers_504_and_cancels_the_upstream_request() {
    trace_init();
    let app = TestServer::loopback("slow").await;
    let yaml = books(&[app.addr()], "    timeout: 300ms\n");
    let proxy = proxy::inbound_to(app.addr()).services(&yaml).start().await;
    let listener = proxy.service("books");
    for (n, mut client) in [
        TestClient::http1(listener, "books:8080").await.unwrap(),
        TestClient::http2(listener, "books:8080").await.unwrap(),
    ]
    .into_iter()
    .enumerate()
    {
        let started = Instant::now();
        let rsp = client.get("/delay/5000").await.unwrap();
        let took = started.elapsed();
        assert_eq!(rsp.status, 504);
        assert_eq!(
            rsp.header("weft-proxy-error"),
            Some("request timeout: no response within 300ms")
        );
        // At the deadline, well before the server would answer (slack for busy
        // machines).
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_millis(2000),
            "{took:?}"
        );
        // The upstream request was dropped (HTTP/1: connection closed; HTTP/2: reset).
        assert!(
            eventually(Duration::from_secs(2), || async {
                app.cancelled() == n + 1
            })
            .await,
            "the slow server never saw request {n} cancelled"
        );
        // The client's connection carries on.
        assert_eq!(client.get("/delay/1").await.unwrap().status, 200);
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "http_errors_total",
            &[("direction", "outbound"), ("error", "request timeout")]
        ),
        2.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &[("status_code", "504"), ("classification", "failure")]
        ),
        2.0
    );
    // A deadline is not retried.
    assert_eq!(m.sum("retry_requests_total", &[]), 0.0);
}

#[tokio::test]
async fn grpc_timeout_is_honoured_and_the_smaller_limit_wins() {
    trace_init();
    let app = TestServer::loopback("slow").await;
    // The service allows 5 s; the caller asks for 200 ms.
    let yaml = books(&[app.addr()], "    timeout: 5s\n");
    let proxy = proxy::inbound_to(app.addr()).services(&yaml).start().await;
    let mut client = TestClient::http2(proxy.service("books"), "books:9090")
        .await
        .unwrap();
    let grpc = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "200m"),
    ];
    let started = Instant::now();
    let rsp = client
        .request_with(Method::POST, "/delay/3000", &grpc, "")
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(rsp.status, 200, "gRPC errors travel in grpc-status");
    assert_eq!(rsp.header("grpc-status"), Some("4"), "DEADLINE_EXCEEDED");
    assert_eq!(
        rsp.header("grpc-message"),
        Some("request timeout: no response within 200ms")
    );
    // At the deadline, well before the server would answer (slack for busy machines).
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(eventually(Duration::from_secs(2), || async { app.cancelled() == 1 }).await);

    // A response whose body outlives the deadline ends with DEADLINE_EXCEEDED in its
    // trailers: 100 chunks take about 500 ms.
    let rsp = client
        .request_with(Method::POST, "/chunks/100", &grpc, "")
        .await
        .unwrap();
    assert_eq!(rsp.status, 200);
    assert!(rsp.body.starts_with("chunk 0\n"), "{}", rsp.body);
    assert!(!rsp.body.contains("chunk 99"), "the body was cut");
    assert_eq!(
        rsp.trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(&b"4"[..])
    );
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("http_errors_total", &[("error", "request timeout")]),
        2.0
    );
}

#[tokio::test]
async fn grpc_timeout_alone_sets_the_deadline() {
    trace_init();
    let app = TestServer::loopback("slow").await;
    let proxy = proxy::inbound_to(app.addr())
        .services(&books(&[app.addr()], ""))
        .start()
        .await;
    let mut client = TestClient::http2(proxy.service("books"), "books:9090")
        .await
        .unwrap();
    let call = |timeout| {
        [
            ("content-type", "application/grpc"),
            ("grpc-timeout", timeout),
        ]
    };
    let rsp = client
        .request_with(Method::POST, "/delay/3000", &call("150m"), "")
        .await
        .unwrap();
    assert_eq!(rsp.header("grpc-status"), Some("4"));
    // The largest grpc-timeout there is (99,999,999 hours): no trouble, no deadline.
    let rsp = client
        .request_with(Method::POST, "/delay/10", &call("99999999H"), "")
        .await
        .unwrap();
    assert_eq!((rsp.status.as_u16(), rsp.body.as_str()), (200, "slept 10"));
    // Malformed: ignored.
    let rsp = client
        .request_with(Method::POST, "/delay/10", &call("soon"), "")
        .await
        .unwrap();
    assert_eq!((rsp.status.as_u16(), rsp.body.as_str()), (200, "slept 10"));
}

#[tokio::test]
async fn an_http1_body_past_the_deadline_is_cut() {
    trace_init();
    let app = TestServer::loopback("chunky").await;
    let yaml = books(&[app.addr()], "    timeout: 150ms\n");
    let proxy = proxy::inbound_to(app.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    // Headers come at once, then 100 chunks in about 500 ms: the caller sees the
    // response end early (an error reading the body), never a whole one.
    assert!(client.get("/chunks/100").await.is_err());
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum("http_errors_total", &[("error", "request timeout")]),
        1.0
    );
    assert_eq!(
        m.sum(
            "response_total",
            &[("status_code", "200"), ("classification", "failure")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_timed_out_attempt_is_retried_on_another_endpoint() {
    trace_init();
    let slow =
        TestServer::loopback_with("slow", ServerOptions::delay(Duration::from_secs(2))).await;
    let fast = TestServer::loopback("fast").await;
    let yaml = books(
        &[slow.addr(), fast.addr()],
        "    retries: {limit: 1, timeout: 100ms}\n",
    );
    let proxy = proxy::inbound_to(fast.addr()).services(&yaml).start().await;
    let mut client = TestClient::http1(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    for _ in 0..10 {
        let started = Instant::now();
        let rsp = client.get("/").await.unwrap();
        assert_eq!(rsp.body, "hello from fast");
        assert!(started.elapsed() < Duration::from_millis(1500));
    }
    let timed_out = slow.requests();
    assert!(timed_out > 0, "the slow endpoint got some first attempts");
    assert!(
        eventually(Duration::from_secs(2), || async {
            slow.cancelled() == timed_out
        })
        .await
    );
    let m = proxy.metrics().await;
    assert_eq!(retries(&m, "timeout"), timed_out as f64, "{}", m.text);
}

#[tokio::test]
async fn grpc_calls_are_retried_only_on_the_statuses_listed() {
    trace_init();
    let unavailable = TestServer::loopback_with("down", ServerOptions::grpc_status(14)).await;
    let good = TestServer::loopback("good").await;
    let grpc = [("content-type", "application/grpc")];
    for (listed, extra) in [(false, ""), (true, "    retries: {on: [unavailable]}\n")] {
        let before = unavailable.requests();
        let yaml = books(&[unavailable.addr(), good.addr()], extra);
        let proxy = proxy::inbound_to(good.addr()).services(&yaml).start().await;
        let mut client = TestClient::http2(proxy.service("books"), "books:9090")
            .await
            .unwrap();
        let mut failed = 0;
        for _ in 0..30 {
            let rsp = client
                .request_with(Method::POST, "/", &grpc, "")
                .await
                .unwrap();
            if rsp.header("grpc-status") == Some("14") {
                failed += 1;
            } else {
                assert_eq!(rsp.header("x-served-by"), Some("good"));
            }
        }
        let down = unavailable.requests() - before;
        assert!(down > 0);
        let m = proxy.metrics().await;
        if listed {
            // Listing a gRPC status declares the calls safe to retry on it.
            assert_eq!(failed, 0);
            assert_eq!(retries(&m, "status"), down as f64);
        } else {
            // gRPC calls are POSTs: without a listed status they are not retried.
            assert_eq!(failed, down);
            assert_eq!(m.sum("retry_requests_total", &[]), 0.0);
        }
    }
}

#[tokio::test]
async fn proxy_wide_defaults_apply_to_destinations_that_are_not_services() {
    trace_init();
    let app = TestServer::loopback_with("bad", ServerOptions::status(503)).await;
    let proxy = proxy::inbound_to(app.addr())
        .request_policy(weft_proxy::retry::RequestPolicy {
            timeout: None,
            retry: weft_proxy::retry::RetryPolicy {
                limit: 2,
                backoff: Duration::ZERO,
                ..Default::default()
            },
        })
        .start()
        .await;
    // The outbound listener forwards to an ip:port authority: one address, retried in
    // place, paid from the proxy's own budget.
    let authority = app.addr().to_string();
    let mut client = TestClient::http1(proxy.outbound(), &authority)
        .await
        .unwrap();
    assert_eq!(client.get("/").await.unwrap().status, 503);
    assert_eq!(app.requests(), 3);
    let m = proxy.metrics().await;
    assert_eq!(
        m.sum(
            "retry_requests_total",
            &[("dst_service", ""), ("reason", "status")]
        ),
        2.0
    );
    assert_eq!(m.sum("retry_limit_exceeded_total", &[]), 1.0);
    // The inbound side never retries.
    let rsp = weft_test::client::get(proxy.inbound(), "bad", "/")
        .await
        .unwrap();
    assert_eq!(rsp.status, 503);
    assert_eq!(app.requests(), 4);
}

#[tokio::test]
async fn an_endpoint_failing_every_grpc_call_loses_its_traffic() {
    trace_init();
    // 200 with grpc-status 14 in a trailers-only response: how gRPC servers fail.
    let down = TestServer::loopback_with("down", ServerOptions::grpc_status(14)).await;
    let good = TestServer::loopback("good").await;
    let yaml = books(&[down.addr(), good.addr()], "");
    let proxy = proxy::inbound_to(good.addr()).services(&yaml).start().await;
    let mut client = TestClient::http2(proxy.service("books"), "books:9090")
        .await
        .unwrap();
    let grpc = [("content-type", "application/grpc")];
    for _ in 0..100 {
        client
            .request_with(Method::POST, "/", &grpc, "")
            .await
            .unwrap();
    }
    // Without penalties the two endpoints would share the calls about evenly.
    assert!(
        down.requests() < 20,
        "the failing endpoint got {} of 100 calls",
        down.requests()
    );
}

#[tokio::test]
async fn a_request_its_caller_gives_up_on_is_counted_as_a_failure() {
    trace_init();
    let slow =
        TestServer::loopback_with("slow", ServerOptions::delay(Duration::from_secs(10))).await;
    let proxy = proxy::inbound_to(slow.addr())
        .services(&books(&[slow.addr()], ""))
        .start()
        .await;
    let mut client = TestClient::http2(proxy.service("books"), "books:8080")
        .await
        .unwrap();
    // The caller's own deadline: it resets the stream before any response.
    let gave_up = tokio::time::timeout(Duration::from_millis(300), client.get("/")).await;
    assert!(gave_up.is_err());
    let counted = eventually(Duration::from_secs(5), || async {
        let m = proxy.metrics().await;
        m.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("status_code", "499"),
                ("classification", "failure"),
            ],
        ) == 1.0
    })
    .await;
    let m = proxy.metrics().await;
    assert!(counted, "{}", m.text);
    let outbound = [("direction", "outbound")];
    assert_eq!(m.sum("request_total", &outbound), 1.0);
    assert_eq!(m.sum("response_total", &outbound), 1.0);
}
