//! Proxies resolving through a real controller in-process: a meshed caller ("web")
//! sends requests for `books.default.svc.cluster.local`; the controller's destination
//! service names books' replicas (server proxies on their own loopback addresses) with
//! their identity; the caller balances over them over mTLS, follows scaling within a
//! second, keeps serving while the controller is down, and takes the controller's word
//! again once it is back.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use weft_test::controller::{pod, TestController};
use weft_test::proxy::{self, TestProxy};
use weft_test::{client, eventually, TestClient, TestServer};

const BOOKS_ID: &str = "books.default.serviceaccount.identity.weft.cluster.local";
const AUTHORITY: &str = "books.default.svc.cluster.local";

fn mesh_yaml(port: u16, replicas: u32) -> String {
    format!(
        "kind: Mesh\nworkloads:\n  - name: web\n    ports: [8080]\n    command: [app]\n  - name: books\n    zone: zone-b\n    replicas: {replicas}\n    ports: [{port}]\n    command: [app]\n"
    )
}

fn services_yaml(port: u16) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: books}}\nspec:\n  selector: {{app: books}}\n  ports: [{{port: 80, targetPort: {port}}}]\n")
}

/// Loopback addresses of this test's replicas (127/8 is all loopback), apart from
/// other tests', and a port free on 127.0.0.1 (books' target port).
fn replica_ips(test: u8) -> (Vec<IpAddr>, u16) {
    let pid = std::process::id();
    let ips = (1..=3)
        .map(|r| IpAddr::V4(Ipv4Addr::new(127, 64 + (pid % 64) as u8, test, r)))
        .collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    (ips, port)
}

/// A books replica: its app and its meshed proxy, inbound on `ip:port`.
async fn replica(
    ctl: &TestController,
    name: &str,
    ip: IpAddr,
    port: u16,
) -> (TestServer, TestProxy) {
    let app = TestServer::loopback(name).await;
    let proxy = ctl
        .meshed(
            proxy::inbound_to(app.addr()).inbound_listen(SocketAddr::new(ip, port)),
            "books",
        )
        .start()
        .await;
    wait_ready(&proxy).await;
    (app, proxy)
}

/// The caller: a meshed "web" proxy in front of a sink app, ready.
async fn meshed_web(ctl: &TestController) -> (TestServer, TestProxy) {
    let sink = TestServer::loopback("web").await;
    let web = ctl
        .meshed(proxy::inbound_to(sink.addr()), "web")
        .start()
        .await;
    wait_ready(&web).await;
    (sink, web)
}

async fn wait_ready(proxy: &TestProxy) {
    let ready = eventually(Duration::from_secs(5), || async {
        matches!(client::get(proxy.admin(), "localhost", "/ready").await, Ok(r) if r.status == 200)
    })
    .await;
    assert!(ready, "the proxy got no certificate from the controller");
}

/// Which replicas answered `n` requests (all must succeed).
async fn replicas_answering(c: &mut TestClient, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let rsp = c.get("/").await.expect("request");
        assert_eq!(rsp.status, 200, "{}", rsp.body);
        seen.insert(rsp.body.trim_start_matches("hello from ").to_owned());
    }
    seen
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn resolves_through_the_controller_follows_scaling_and_survives_its_absence() {
    weft_test::trace_init();
    let (ips, port) = replica_ips(1);
    let mut ctl = TestController::start(&mesh_yaml(port, 1), &services_yaml(port)).await;
    ctl.set_pods(&[pod("books", 0, ips[0], true)]);
    let (_app0, _books0) = replica(&ctl, "books-0", ips[0], port).await;
    let (_sink, web) = meshed_web(&ctl).await;

    let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
    assert_eq!(replicas_answering(&mut c, 5).await, set(&["books-0"]));
    let m = web.metrics().await;
    assert_eq!(
        m.sum(
            "request_total",
            &[
                ("direction", "outbound"),
                ("dst_service", "books"),
                ("dst_zone", "zone-b"),
                ("tls", "true"),
                ("server_id", BOOKS_ID)
            ]
        ),
        5.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("destination_lookups_total", &[("result", "service")]),
        1.0
    );
    assert_eq!(m.sum("destination_streams", &[]), 1.0);
    assert_eq!(
        m.sum("balancer_endpoints", &[("dst_service", "books")]),
        1.0
    );

    // Scale up: a second replica, in the mesh directory and (once ready) the pods file.
    let (_app1, _books1) = replica(&ctl, "books-1", ips[1], port).await;
    ctl.set_mesh(&mesh_yaml(port, 2));
    let changed = Instant::now();
    ctl.set_pods(&[pod("books", 0, ips[0], true), pod("books", 1, ips[1], true)]);
    let mut reached = false;
    while changed.elapsed() < Duration::from_secs(1) {
        if replicas_answering(&mut c, 5).await.contains("books-1") {
            reached = true;
            break;
        }
    }
    assert!(
        reached,
        "traffic did not reach the new replica within a second"
    );

    // The controller goes away: every request still succeeds, on both replicas.
    ctl.stop().await;
    // Its stream ended, and at least one attempt to reopen it failed.
    let noticed = eventually(Duration::from_secs(5), || async {
        web.metrics()
            .await
            .sum("destination_stream_errors_total", &[])
            >= 2.0
    })
    .await;
    assert!(noticed, "the proxy did not notice the controller leaving");
    assert_eq!(web.metrics().await.sum("destination_streams", &[]), 0.0);
    let mut fresh = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
    assert_eq!(
        replicas_answering(&mut fresh, 40).await,
        set(&["books-0", "books-1"])
    );
    assert_eq!(replicas_answering(&mut c, 20).await.len(), 2);

    // Back, with books-1 gone meanwhile: the proxy reconnects and takes its word.
    ctl.set_mesh(&mesh_yaml(port, 1));
    ctl.set_pods(&[pod("books", 0, ips[0], true)]);
    ctl.restart().await;
    let only_books0 = eventually(Duration::from_secs(8), || async {
        web.metrics()
            .await
            .sum("balancer_endpoints", &[("dst_service", "books")])
            == 1.0
    })
    .await;
    assert!(
        only_books0,
        "the proxy did not resynchronize after the controller came back"
    );
    assert_eq!(replicas_answering(&mut c, 20).await, set(&["books-0"]));
}

#[tokio::test]
async fn destinations_the_controller_does_not_know() {
    let (ips, port) = replica_ips(2);
    let ctl = TestController::start(&mesh_yaml(port, 1), &services_yaml(port)).await;
    ctl.set_pods(&[pod("books", 0, ips[0], true)]);
    let direct = TestServer::loopback("direct").await;
    let (_sink, web) = meshed_web(&ctl).await;

    // An address the mesh does not know: straight to it, without waiting.
    let started = Instant::now();
    let rsp = client::get(web.outbound(), &direct.addr().to_string(), "/")
        .await
        .unwrap();
    assert_eq!(
        (rsp.status.as_u16(), rsp.body.as_str()),
        (200, "hello from direct")
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // A Service name that does not exist: refused at once, naming the authority.
    let started = Instant::now();
    let rsp = client::get(web.outbound(), "nope.default.svc.cluster.local", "/")
        .await
        .unwrap();
    assert_eq!(rsp.status, 503);
    assert!(
        rsp.body
            .contains("no service is known for authority \"nope.default.svc.cluster.local\""),
        "{}",
        rsp.body
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // A Service without ready endpoints exists: requests wait for one up to the
    // failfast timeout, then 503 (no fallback), and at once after that.
    ctl.set_pods(&[pod("books", 0, ips[0], false)]);
    let empty = eventually(Duration::from_secs(10), || async {
        client::get(web.outbound(), AUTHORITY, "/")
            .await
            .is_ok_and(|r| r.status == 503 && r.body.contains("service books has no endpoints"))
    })
    .await;
    assert!(empty);
    let started = Instant::now();
    let rsp = client::get(web.outbound(), AUTHORITY, "/").await.unwrap();
    assert_eq!(rsp.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "fails fast once the service had no endpoints for the failfast timeout: {:?}",
        started.elapsed()
    );
    let m = web.metrics().await;
    assert!(
        m.sum("destination_lookups_total", &[("result", "unknown")]) >= 2.0,
        "{}",
        m.text
    );
}

#[tokio::test]
async fn a_controller_that_never_answers_delays_first_contact_by_at_most_a_second() {
    // Nothing listens on this port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let direct = TestServer::loopback("direct").await;
    let sink = TestServer::loopback("web").await;
    let mut builder = proxy::inbound_to(sink.addr());
    builder.config_mut().destination = Some(weft_proxy::destination::DestinationConfig {
        controller: dead_addr.to_string(),
        controller_name: weft_test::controller::CONTROLLER_NAME.into(),
        anchors_pem: weft_test::ca::TestCa::default().anchors_pem().into_bytes(),
        first_update: Duration::from_millis(300),
        mesh_networks: weft_proxy::destination::DestinationConfig::default_mesh_networks(),
    });
    let web = builder.start().await;

    for round in 0..2 {
        let started = Instant::now();
        let rsp = client::get(web.outbound(), &direct.addr().to_string(), "/")
            .await
            .unwrap();
        assert_eq!(rsp.status, 200);
        let took = started.elapsed();
        if round == 0 {
            // The first contact waits for the controller, within bounds.
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(1),
                "{took:?}"
            );
        } else {
            // Later ones do not wait again.
            assert!(took < Duration::from_millis(200), "{took:?}");
        }
    }
    let m = web.metrics().await;
    assert_eq!(
        m.sum("destination_lookups_total", &[("result", "timeout")]),
        2.0
    );
    assert!(m.sum("destination_stream_errors_total", &[]) >= 1.0);
}

#[tokio::test]
async fn a_mesh_address_is_refused_not_sent_in_plaintext_while_the_controller_is_down() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    // In the mesh's pod network (here: loopback), unanswered by the controller.
    let meshed = TestServer::loopback("meshed").await;
    let sink = TestServer::loopback("web").await;
    let mut builder = proxy::inbound_to(sink.addr());
    builder.config_mut().destination = Some(weft_proxy::destination::DestinationConfig {
        controller: dead_addr.to_string(),
        controller_name: weft_test::controller::CONTROLLER_NAME.into(),
        anchors_pem: weft_test::ca::TestCa::default().anchors_pem().into_bytes(),
        first_update: Duration::from_millis(300),
        mesh_networks: vec!["127.0.0.0/8".parse().unwrap()],
    });
    let web = builder.start().await;

    for _ in 0..2 {
        let rsp = client::get(web.outbound(), &meshed.addr().to_string(), "/")
            .await
            .unwrap();
        assert_eq!(rsp.status, 503);
        let why = rsp.header("weft-proxy-error").unwrap_or_default();
        assert!(
            why.contains("destination service") && why.contains("without mTLS"),
            "{why}"
        );
    }
    assert_eq!(meshed.requests(), 0, "nothing reached the app in plaintext");
    let m = web.metrics().await;
    assert_eq!(
        m.sum(
            "http_errors_total",
            &[
                ("direction", "outbound"),
                ("error", "discovery unavailable")
            ]
        ),
        2.0
    );
}

#[tokio::test]
async fn destinations_nothing_uses_are_no_longer_followed_and_come_back_on_use() {
    let (ips, port) = replica_ips(4);
    let ctl = TestController::start(&mesh_yaml(port, 1), &services_yaml(port)).await;
    ctl.set_pods(&[pod("books", 0, ips[0], true)]);
    let (_app0, _books0) = replica(&ctl, "books-0", ips[0], port).await;
    let sink = TestServer::loopback("web").await;
    let mut builder = ctl.meshed(proxy::inbound_to(sink.addr()), "web");
    builder.config_mut().destination_idle_timeout = Duration::from_millis(300);
    let web = builder.start().await;
    wait_ready(&web).await;

    let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
    assert_eq!(replicas_answering(&mut c, 3).await, set(&["books-0"]));
    let m = web.metrics().await;
    assert_eq!(m.sum("destination_streams", &[]), 1.0);
    assert_eq!(
        m.sum("balancer_endpoints", &[("dst_service", "books")]),
        1.0
    );

    // Unused (the client's connection stays open, idle): the stream closes and the
    // service is no longer listed.
    let forgotten = eventually(Duration::from_secs(5), || async {
        let m = web.metrics().await;
        m.sum("destination_streams", &[]) == 0.0
            && m.sum("balancer_endpoints", &[("dst_service", "books")]) == 0.0
    })
    .await;
    assert!(forgotten, "{}", web.metrics().await.text);

    // Used again, on the connection left open and on a new one: looked up again.
    assert_eq!(replicas_answering(&mut c, 3).await, set(&["books-0"]));
    let mut fresh = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
    assert_eq!(replicas_answering(&mut fresh, 3).await, set(&["books-0"]));
    let m = web.metrics().await;
    assert_eq!(m.sum("destination_streams", &[]), 1.0, "{}", m.text);
    assert_eq!(
        m.sum("destination_lookups_total", &[("result", "service")]),
        2.0,
        "{}",
        m.text
    );
    assert_eq!(
        m.sum("balancer_endpoints", &[("dst_service", "books")]),
        1.0
    );
}

#[tokio::test]
async fn a_request_sent_before_the_service_has_endpoints_waits_for_them() {
    let (ips, port) = replica_ips(6);
    let ctl = TestController::start(&mesh_yaml(port, 1), &services_yaml(port)).await;
    // books exists, its replica is not ready yet (weft up publishes a pod once ready).
    ctl.set_pods(&[pod("books", 0, ips[0], false)]);
    let (_sink, web) = meshed_web(&ctl).await;
    let (_app, _proxy) = replica(&ctl, "books-0", ips[0], port).await;

    // The caller's first request meets a service without endpoints (the controller
    // says so without its name) and waits; the replica becomes ready within the
    // failfast timeout and the request is served, counted under the service's name.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let outbound = web.outbound();
        async move { client::get(outbound, AUTHORITY, "/").await }
    });
    let seen = eventually(Duration::from_secs(2), || async {
        web.metrics()
            .await
            .sum("destination_updates_total", &[("kind", "no_endpoints")])
            >= 1.0
    })
    .await;
    assert!(seen, "the proxy never heard that books has no endpoints");
    assert!(!waiting.is_finished(), "the request did not wait");
    ctl.set_pods(&[pod("books", 0, ips[0], true)]);
    let rsp = waiting.await.unwrap().unwrap();
    assert_eq!(
        (rsp.status.as_u16(), rsp.body.as_str()),
        (200, "hello from books-0")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let m = web.metrics().await;
    assert_eq!(
        m.sum(
            "response_total",
            &[
                ("direction", "outbound"),
                ("dst_service", "books"),
                ("status_code", "200")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
    assert_eq!(m.sum("http_errors_total", &[]), 0.0, "{}", m.text);
}
