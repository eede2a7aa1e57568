//! Automatic mTLS between meshed proxies: the caller originates TLS to the server's
//! identity, the server verifies the caller, both label metrics with the identities,
//! unmeshed callers keep working, and bad certificates are refused without disturbing
//! anyone else.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_core::identity::Identity;
use weft_test::ca::TestCa;
use weft_test::{client, proxy, TestClient, TestServer};

const DAY: Duration = Duration::from_secs(24 * 3600);
const BOOKS: &str = "books.default.serviceaccount.identity.weft.cluster.local";
const WEB: &str = "web.default.serviceaccount.identity.weft.cluster.local";

/// A meshed caller ("web") in front of a meshed server proxy whose identity is
/// `server_sa`, both forwarding inbound traffic to `workload`; the caller's "books"
/// service listener leads to the server and expects the identity "books".
async fn meshed_pair(
    ca: &TestCa,
    workload: std::net::SocketAddr,
    server_sa: &str,
) -> (proxy::TestProxy, proxy::TestProxy) {
    meshed_pair_with(ca, workload, server_sa, true).await
}

/// [`meshed_pair`], the caller with `--h2-between-proxies h2`.
async fn meshed_pair_with(
    ca: &TestCa,
    workload: std::net::SocketAddr,
    server_sa: &str,
    h2: bool,
) -> (proxy::TestProxy, proxy::TestProxy) {
    let server = proxy::inbound_to(workload)
        .identity(ca.identity(server_sa, "default", DAY))
        .start()
        .await;
    let caller = proxy::inbound_to(workload)
        .services(&books_service(server.inbound(), BOOKS))
        .identity(ca.identity("web", "default", DAY))
        .h2_between_proxies(h2)
        .start()
        .await;
    (server, caller)
}

/// Requests the server proxy took from "web" over mTLS.
fn inbound_from_web(scrape: &weft_test::Scrape) -> f64 {
    scrape.sum(
        "request_total",
        &[
            ("direction", "inbound"),
            ("tls", "true"),
            ("client_id", WEB),
        ],
    )
}

fn books_service(endpoint: std::net::SocketAddr, identity: &str) -> String {
    format!("services:\n  - name: books\n    listen: 127.0.0.1:0\n    identity: {identity}\n    endpoints: [\"{endpoint}\"]\n")
}

#[tokio::test]
async fn meshed_proxies_speak_mtls_and_label_identities() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    let (server, caller) = meshed_pair(&ca, app.addr(), "books").await;

    let mut c = TestClient::http1(caller.service("books"), "books.default.svc:8080")
        .await
        .unwrap();
    for _ in 0..3 {
        let rsp = c.get("/").await.unwrap();
        assert_eq!(
            (rsp.status.as_u16(), rsp.body.as_str()),
            (200, "hello from books")
        );
    }

    let out = caller.metrics().await;
    assert_eq!(
        out.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("tls", "true"),
                ("server_id", BOOKS)
            ]
        ),
        3.0,
        "{}",
        out.text
    );
    assert_eq!(
        out.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst"), ("tls", "true")]
        ),
        1.0
    );
    let inn = server.metrics().await;
    assert_eq!(inbound_from_web(&inn), 3.0, "{}", inn.text);
    assert_eq!(
        inn.sum(
            "response_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("classification", "success")
            ]
        ),
        3.0
    );

    // An unmeshed caller still gets through, in plaintext.
    let rsp = client::get(server.inbound(), "books", "/").await.unwrap();
    assert_eq!(rsp.status, 200);
    let inn = server.metrics().await;
    assert_eq!(
        inn.sum(
            "request_total",
            &[("direction", "inbound"), ("tls", "no_identity")]
        ),
        1.0
    );
}

/// Eight concurrent HTTP/1 calls through the meshed pair: the application's view of
/// each request (version, Host, header names) and how many connections the caller's
/// proxy opened to the server's.
async fn eight_concurrent_calls(
    app: &TestServer,
    server: &proxy::TestProxy,
    caller: &proxy::TestProxy,
) -> (Vec<weft_test::server::Received>, f64) {
    let addr = caller.service("books");
    let calls = (0..8).map(|_| async move {
        let mut c = TestClient::http1(addr, "books.default.svc:8080")
            .await
            .unwrap();
        c.get("/delay/100").await.unwrap()
    });
    for rsp in futures_util::future::join_all(calls).await {
        assert_eq!((rsp.status.as_u16(), rsp.body.as_str()), (200, "slept 100"));
        assert_eq!(rsp.header("l5d-orig-proto"), None, "{:?}", rsp.headers);
    }
    let out = caller.metrics().await;
    let opened = out.sum(
        "tcp_open_total",
        &[("direction", "outbound"), ("peer", "dst"), ("tls", "true")],
    );
    let inn = server.metrics().await;
    assert_eq!(inbound_from_web(&inn), 8.0, "{}", inn.text);
    (app.received(), opened)
}

/// HTTP/1 between meshed proxies rides one multiplexed HTTP/2 connection (Linkerd's
/// `l5d-orig-proto`): concurrent calls share it, the application gets each as the
/// HTTP/1.1 request it was, with its Host and without the carrying header, and the
/// caller gets an HTTP/1.1 response without it too. With `--h2-between-proxies false`
/// each concurrent call takes a connection of its own.
#[tokio::test]
async fn http1_between_meshed_proxies_shares_one_http2_connection() {
    let ca = TestCa::default();
    for carried in [true, false] {
        let app = TestServer::loopback("books").await;
        let (server, caller) = meshed_pair_with(&ca, app.addr(), "books", carried).await;
        let (received, opened) = eight_concurrent_calls(&app, &server, &caller).await;
        assert_eq!(received.len(), 8);
        for r in &received {
            assert_eq!(r.version, http::Version::HTTP_11);
            assert_eq!(r.hosts, ["books.default.svc:8080"]);
            assert!(
                !r.header_names.iter().any(|h| h == "l5d-orig-proto"),
                "{:?}",
                r.header_names
            );
        }
        if carried {
            assert_eq!(opened, 1.0, "one HTTP/2 connection for eight calls");
        } else {
            assert_eq!(opened, 8.0, "a connection per concurrent HTTP/1 call");
        }
    }
}

/// Large heads (a big cookie or token, many response headers) that HTTP/1 took between
/// the proxies go over HTTP/2 too: hyper's HTTP/2 limit on a head is 16 KiB, HTTP/1's
/// about 400 KiB.
#[tokio::test]
async fn large_heads_go_between_meshed_proxies_too() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    let (_server, caller) = meshed_pair(&ca, app.addr(), "books").await;
    let mut c = TestClient::http1(caller.service("books"), "books.default.svc:8080")
        .await
        .unwrap();
    let cookie = "c".repeat(40_000);
    let rsp = c
        .request_with(http::Method::GET, "/", &[("cookie", &cookie)], Vec::new())
        .await
        .unwrap();
    assert_eq!(
        (rsp.status.as_u16(), rsp.body.as_str()),
        (200, "hello from books")
    );
    // And a large response head back.
    let rsp = c.get("/header/40000").await.unwrap();
    assert_eq!(rsp.status.as_u16(), 200);
    assert_eq!(rsp.header("x-large").map(str::len), Some(40_000));
}

/// A WebSocket handshake between meshed proxies stays HTTP/1 (an upgrade takes its
/// connection over), and works over mTLS.
#[tokio::test]
async fn websocket_upgrades_between_meshed_proxies_stay_http1() {
    use futures_util::{SinkExt as _, StreamExt as _};
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    let (_server, caller) = meshed_pair(&ca, app.addr(), "books").await;
    let stream = tokio::net::TcpStream::connect(caller.service("books"))
        .await
        .unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://books.default.svc:8080/ws", stream)
        .await
        .unwrap();
    assert_eq!(rsp.status(), 101);
    ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hi");
    assert_eq!(app.received()[0].version, http::Version::HTTP_11);
}

/// Calls from one pod to another share one HTTP/2 connection between their proxies:
/// uploads the application does not read hold at most their streams' windows of it, and
/// another call's upload still goes through. (With hyper's server defaults, 1 MB per
/// stream and 1 MB for the whole connection, one unread upload stalled every call.)
#[tokio::test]
async fn uploads_the_application_does_not_read_do_not_stall_other_calls() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    let (server, caller) = meshed_pair(&ca, app.addr(), "books").await;
    let addr = caller.service("books");
    // `/delay/…` sleeps without reading the body: once the sockets on the way to the
    // application are full, the server proxy holds the rest of each upload.
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = TestClient::http1(addr, "books.default.svc:8080")
                    .await
                    .unwrap();
                let _ = c
                    .request(http::Method::POST, "/delay/20000", vec![b'x'; 24_000_000])
                    .await;
            })
        })
        .collect();
    // Well under way: the server proxy has read 8 MB of them from the caller's proxy
    // (what the sockets to the application hold, then what the proxy buffers).
    let under_way = weft_test::eventually(Duration::from_secs(10), || async {
        let inn = server.metrics().await;
        app.requests() >= 2 && inn.sum("tcp_read_bytes_total", &[("direction", "inbound")]) >= 8e6
    })
    .await;
    assert!(under_way, "the uploads reached the application");

    let mut other = TestClient::http1(addr, "books.default.svc:8080")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let rsp = tokio::time::timeout(
        Duration::from_secs(5),
        other.request(http::Method::POST, "/echo", vec![b'y'; 300_000]),
    )
    .await
    .expect("another call's upload was stalled")
    .unwrap();
    assert_eq!((rsp.status.as_u16(), rsp.body.len()), (200, 300_000));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    stalled.iter().for_each(|t| t.abort());
}

#[tokio::test]
async fn grpc_streams_work_over_mtls() {
    let ca = TestCa::default();
    let grpc = weft_test::GrpcServer::loopback().await;
    let (server, caller) = meshed_pair(&ca, grpc.addr(), "books").await;
    let mut echo = weft_test::EchoClient::connect(caller.service("books"), "books:9090")
        .await
        .unwrap();
    assert_eq!(echo.unary("over tls").await.unwrap(), "echo: over tls");
    let inn = server.metrics().await;
    assert_eq!(
        inn.sum("request_total", &[("tls", "true"), ("client_id", WEB)]),
        1.0
    );
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    // The endpoint presents "other", the caller expects "books".
    let (_server, caller) = meshed_pair(&ca, app.addr(), "other").await;
    let rsp = client::get(caller.service("books"), "books", "/")
        .await
        .unwrap();
    assert_eq!(rsp.status, 502);
    let cause = rsp.header("weft-proxy-error").unwrap();
    assert!(
        cause.contains("mTLS handshake") && cause.contains(BOOKS),
        "{cause}"
    );
    assert_eq!(app.requests(), 0);
}

/// Connects to `addr` as a TLS client for `server_name` with `config`, sends one
/// request and returns what came back (an error if the handshake was refused).
async fn raw_tls_get(
    addr: std::net::SocketAddr,
    server_name: &str,
    config: rustls::ClientConfig,
) -> std::io::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: books\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test]
async fn bad_client_certificates_are_refused_and_others_keep_working() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    let server = proxy::inbound_to(app.addr())
        .identity(ca.identity("books", "default", DAY))
        .start()
        .await;
    let web: Identity = WEB.parse().unwrap();
    let now = SystemTime::now();

    // A good client certificate works (the baseline for the refusals below).
    let good = ca.raw_client(&web, now - DAY, now + DAY, ca.roots());
    let reply = raw_tls_get(server.inbound(), BOOKS, good.clone())
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // From another trust anchor.
    let stranger = TestCa::new("stranger");
    let foreign = stranger.raw_client(&web, now - DAY, now + DAY, ca.roots());
    assert!(raw_tls_get(server.inbound(), BOOKS, foreign).await.is_err());

    // Expired.
    let expired = ca.raw_client(&web, now - 2 * DAY, now - DAY, ca.roots());
    assert!(raw_tls_get(server.inbound(), BOOKS, expired).await.is_err());

    // Signed by our issuer, but for a name that is no identity of this mesh: another
    // trust domain, or not a workload identity at all.
    let elsewhere: Identity = "web.default.serviceaccount.identity.weft.other.example"
        .parse()
        .unwrap();
    let other_domain = ca.raw_client(&elsewhere, now - DAY, now + DAY, ca.roots());
    assert!(raw_tls_get(server.inbound(), BOOKS, other_domain)
        .await
        .is_err());
    let not_a_workload = ca.raw_client_named("evil.example.com", now - DAY, now + DAY, ca.roots());
    assert!(raw_tls_get(server.inbound(), BOOKS, not_a_workload)
        .await
        .is_err());

    // The proxy keeps serving everyone else.
    let reply = raw_tls_get(server.inbound(), BOOKS, good).await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(
        client::get(server.inbound(), "books", "/")
            .await
            .unwrap()
            .status,
        200
    );

    let m = server.metrics().await;
    assert_eq!(
        m.sum("tls_handshake_errors_total", &[("direction", "inbound")]),
        4.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("request_total", &[("tls", "true"), ("client_id", WEB)]),
        2.0
    );
    assert_eq!(app.requests(), 3);
}

#[tokio::test]
async fn tls_for_another_name_passes_through_untouched() {
    // The application's own TLS (SNI not this proxy's identity) is forwarded as bytes.
    let ca = TestCa::default();
    let backend = weft_test::tcp::TcpServer::echo_after_eof().await;
    let server = proxy::inbound_to(backend.addr())
        .identity(ca.identity("books", "default", DAY))
        .start()
        .await;
    let mut conn = tokio::net::TcpStream::connect(server.inbound())
        .await
        .unwrap();
    // A ClientHello for example.com, cut short: it must reach the backend as it was.
    let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00];
    conn.write_all(&hello).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    conn.read_to_end(&mut reply).await.unwrap();
    assert!(
        reply.starts_with(b"got 10 bytes: "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test]
async fn certificates_renew_in_place_under_load() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    // One-second certificates, renewed every few hundred milliseconds: across three
    // seconds every request needs a renewed certificate to succeed.
    let lifetime = Duration::from_secs(1);
    let books = ca.identity("books", "default", lifetime);
    let web = ca.identity("web", "default", lifetime);
    let server = proxy::inbound_to(app.addr())
        .identity(books.clone())
        .start()
        .await;
    let caller = proxy::inbound_to(app.addr())
        .services(&books_service(server.inbound(), BOOKS))
        .identity(web.clone())
        // No pooled connections: every request makes a new mTLS handshake.
        .pool_idle_timeout(Duration::ZERO)
        .start()
        .await;

    let first_expiry = books.expiry().unwrap();
    let mut failures = 0;
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if requests % 15 == 0 {
            // Renew both, as the certify loop does at 70 % of the lifetime.
            ca.certify(&books, lifetime);
            ca.certify(&web, lifetime);
        }
        requests += 1;
        match client::get(caller.service("books"), "books", "/").await {
            Ok(rsp) if rsp.status == 200 => {}
            _ => failures += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failures, 0, "{failures} of {requests} requests failed");
    assert!(requests > 50);
    assert!(books.expiry().unwrap() > first_expiry + Duration::from_secs(1));
}

#[tokio::test]
async fn opaque_ports_are_carried_over_mtls_too() {
    let ca = TestCa::default();
    let backend = weft_test::tcp::TcpServer::echo_after_eof().await;
    let server = proxy::inbound_to(backend.addr())
        .opaque_ports(&[backend.addr().port()])
        .identity(ca.identity("books", "default", DAY))
        .start()
        .await;
    let yaml = format!(
        "services:\n  - name: books\n    listen: 127.0.0.1:0\n    opaque: true\n    identity: {BOOKS}\n    endpoints: [\"{}\"]\n",
        server.inbound()
    );
    let caller = proxy::inbound_to(backend.addr())
        .services(&yaml)
        .identity(ca.identity("web", "default", DAY))
        .start()
        .await;

    let mut conn = tokio::net::TcpStream::connect(caller.service("books"))
        .await
        .unwrap();
    conn.write_all(b"opaque bytes").await.unwrap();
    conn.shutdown().await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut reply))
        .await
        .expect("reply in time")
        .unwrap();
    assert_eq!(reply, b"got 12 bytes: opaque bytes");
    let out = caller.metrics().await;
    assert_eq!(
        out.sum(
            "tcp_open_total",
            &[("direction", "outbound"), ("peer", "dst"), ("tls", "true")]
        ),
        1.0
    );
    let inn = server.metrics().await;
    assert_eq!(inn.sum("tls_handshake_errors_total", &[]), 0.0);
    // The caller's identity, proved by its certificate, labels its connection (after
    // the handshake: the bytes of the handshake are counted under it too).
    let from_web = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("tls", "true"),
        ("client_id", WEB),
    ];
    assert_eq!(inn.sum("tcp_open_total", &from_web), 1.0);
    assert!(inn.sum("tcp_read_bytes_total", &from_web) > 12.0);
    assert_eq!(
        inn.sum(
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "dst")]
        ),
        1.0
    );
}

#[tokio::test]
async fn during_an_anchor_rotation_old_and_new_certificates_both_work() {
    // The mesh moves from anchor `old` to anchor `new`: every proxy trusts the bundle
    // old+new while some proxies still hold certificates from the old issuer.
    let (old, new) = (TestCa::new("old"), TestCa::new("new"));
    let bundle = weft_proxy::identity::anchors_from_pem(
        format!("{}{}", old.anchors_pem(), new.anchors_pem()).as_bytes(),
    )
    .unwrap();
    let local = |ca: &TestCa, sa: &str| {
        let name = Identity::new(sa, "default", "cluster.local").unwrap();
        let local =
            weft_proxy::identity::LocalIdentity::new(name, bundle.clone()).expect("identity");
        ca.certify(&local, DAY);
        local
    };
    let app = TestServer::loopback("books").await;
    // The server already has a certificate from the new issuer...
    let server = proxy::inbound_to(app.addr())
        .identity(local(&new, "books"))
        .start()
        .await;
    // ...one caller still has the old issuer's, another the new one's.
    for ca in [&old, &new] {
        let caller = proxy::inbound_to(app.addr())
            .services(&books_service(server.inbound(), BOOKS))
            .identity(local(ca, "web"))
            .start()
            .await;
        let mut c = TestClient::http1(caller.service("books"), "books.default.svc:8080")
            .await
            .unwrap();
        assert_eq!(c.get("/").await.unwrap().status, 200);
    }
    let m = server.metrics().await;
    assert_eq!(
        m.sum("request_total", &[("tls", "true"), ("client_id", WEB)]),
        2.0,
        "{}",
        m.text
    );
    // A proxy that trusts only the new anchor refuses the old issuer's certificates:
    // the bundle is what makes the switch safe.
    let strict = proxy::inbound_to(app.addr())
        .identity(new.identity("books", "default", DAY))
        .start()
        .await;
    let old_web = old.raw_client(
        &WEB.parse().unwrap(),
        SystemTime::now() - DAY,
        SystemTime::now() + DAY,
        new.roots(),
    );
    assert!(raw_tls_get(strict.inbound(), BOOKS, old_web).await.is_err());
}

/// A proxy whose certificate expired (renewal failing, e.g. after a CA change) cannot
/// complete an mTLS handshake: `/ready` says so instead of answering 200.
#[tokio::test]
async fn an_expired_certificate_makes_the_proxy_unready() {
    let ca = TestCa::default();
    let app = TestServer::loopback("books").await;
    let identity = ca.identity("books", "default", Duration::from_secs(2));
    let proxy = proxy::inbound_to(app.addr())
        .identity(identity.clone())
        .start()
        .await;
    let ready = |proxy: &weft_test::proxy::TestProxy| {
        let admin = proxy.admin();
        async move { client::get(admin, "localhost", "/ready").await.unwrap() }
    };
    assert_eq!(ready(&proxy).await.status, 200);
    let expired = weft_test::eventually(Duration::from_secs(10), || async {
        ready(&proxy).await.status == 503
    })
    .await;
    assert!(expired, "still ready after the certificate expired");
    let rsp = ready(&proxy).await;
    assert!(rsp.body.contains("expired"), "{}", rsp.body);
    // A renewed certificate makes it ready again.
    ca.certify(&identity, Duration::from_secs(60));
    assert_eq!(ready(&proxy).await.status, 200);
}
