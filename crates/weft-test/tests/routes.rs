//! HTTPRoutes end to end: a real controller in-process reads a route from the mesh
//! directory and serves it (OutboundPolicies); a meshed caller's proxy follows it. The
//! route on Service `books` (parent) splits its traffic between `books-v1` and
//! `books-v2` by weight, sends a header-matched request to v2, answers a path with a
//! redirect, sets a response header; editing the file moves traffic within a second,
//! and an invalid edit leaves the last valid route in force.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use weft_test::controller::{pod, TestController};
use weft_test::proxy::{self, TestProxy};
use weft_test::{client, eventually, TestClient, TestServer};

const AUTHORITY: &str = "books.default.svc.cluster.local";

fn mesh_yaml(port: u16) -> String {
    format!(
        "kind: Mesh\nworkloads:\n  - name: web\n    ports: [8080]\n    command: [app]\n  - name: books-v1\n    labels: {{app: books, version: v1}}\n    ports: [{port}]\n    command: [app]\n  - name: books-v2\n    labels: {{app: books, version: v2}}\n    ports: [{port}]\n    command: [app]\n"
    )
}

fn services_yaml(port: u16) -> String {
    let service = |name: &str, selector: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n  ports: [{{port: 80, targetPort: {port}}}]\n---\n")
    };
    format!(
        "{}{}{}",
        service("books", "{app: books}"),
        service("books-v1", "{app: books, version: v1}"),
        service("books-v2", "{app: books, version: v2}")
    )
}

/// The route under test, with `v1`/`v2` as the default rule's weights and `regex` as a
/// header regex of a rule no test request matches.
fn route_yaml(v1: u32, v2: u32, regex: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: books-split, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: books, port: 80}}]
  rules:
    - matches: [{{headers: [{{name: x-canary, value: "yes"}}]}}]
      backendRefs: [{{name: books-v2, port: 80}}]
    - matches: [{{path: {{type: PathPrefix, value: /moved}}}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {{hostname: example.org, statusCode: 301}}
    - matches: [{{headers: [{{name: x-never, type: RegularExpression, value: "{regex}"}}]}}]
      backendRefs: [{{name: books-v1, port: 80}}]
    - backendRefs:
        - {{name: books-v1, port: 80, weight: {v1}}}
        - {{name: books-v2, port: 80, weight: {v2}}}
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {{set: [{{name: x-route, value: split}}]}}
"#
    )
}

fn write_route(ctl: &TestController, yaml: &str) {
    let dir = ctl.mesh_dir();
    let tmp = dir.join(".routes.yaml.tmp");
    std::fs::write(&tmp, yaml).expect("route file");
    std::fs::rename(&tmp, dir.join("routes.yaml")).expect("route file");
}

/// A loopback address for this test's pods and a free port (the pods' target port).
fn pod_ip(n: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 64 + (pid % 64) as u8, 40, n))
}

async fn wait_ready(proxy: &TestProxy) {
    let ready = eventually(Duration::from_secs(5), || async {
        matches!(client::get(proxy.admin(), "localhost", "/ready").await, Ok(r) if r.status == 200)
    })
    .await;
    assert!(ready, "the proxy got no certificate from the controller");
}

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
            name,
        )
        .start()
        .await;
    wait_ready(&proxy).await;
    (app, proxy)
}

/// How many of `n` requests each version answered (all must succeed).
async fn split(c: &mut TestClient, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let rsp = c.get("/").await.expect("request");
        assert_eq!(rsp.status, 200, "{}", rsp.body);
        *seen
            .entry(rsp.body.trim_start_matches("hello from ").to_owned())
            .or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn an_httproute_splits_matches_redirects_and_follows_edits() {
    weft_test::trace_init();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ctl = TestController::start(&mesh_yaml(port), &services_yaml(port)).await;
    write_route(&ctl, &route_yaml(70, 30, "^a+$"));
    ctl.set_pods(&[
        pod("books-v1", 0, pod_ip(1), true),
        pod("books-v2", 0, pod_ip(2), true),
    ]);
    let (_v1, _v1_proxy) = replica(&ctl, "books-v1", pod_ip(1), port).await;
    let (_v2, _v2_proxy) = replica(&ctl, "books-v2", pod_ip(2), port).await;
    let sink = TestServer::loopback("web").await;
    let web = ctl
        .meshed(proxy::inbound_to(sink.addr()), "web")
        .start()
        .await;
    wait_ready(&web).await;
    let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();

    // The first requests may race the route's first arrival: wait for the header.
    let routed = eventually(Duration::from_secs(5), || async {
        let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
        c.get("/")
            .await
            .is_ok_and(|r| r.headers.get("x-route").is_some_and(|v| v == "split"))
    })
    .await;
    assert!(routed, "the route's response header never appeared");

    // 70/30 (MeshHTTPRouteWeight): 300 requests, 210 expected on v1; ±45 is over
    // 5 standard deviations (sd ≈ 7.9).
    let seen = split(&mut c, 300).await;
    let v1 = seen.get("books-v1").copied().unwrap_or_default();
    let v2 = seen.get("books-v2").copied().unwrap_or_default();
    assert_eq!(v1 + v2, 300, "{seen:?}");
    assert!((165..=255).contains(&v1), "70/30 expected, got {seen:?}");

    // A header match outranks the default rule.
    let mut canary = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
    for _ in 0..20 {
        let rsp = canary
            .request_with(http::Method::GET, "/", &[("x-canary", "yes")], "")
            .await
            .expect("request");
        assert_eq!(rsp.body, "hello from books-v2");
    }

    // A redirect is answered by the caller's proxy.
    let rsp = c.get("/moved/here?x=1").await.expect("request");
    assert_eq!(rsp.status, 301);
    assert_eq!(
        rsp.headers.get("location").map(|v| v.to_str().unwrap()),
        Some("http://example.org/moved/here?x=1")
    );

    let m = web.metrics().await;
    let routed = m.sum(
        "request_total",
        &[
            ("direction", "outbound"),
            ("route_kind", "HTTPRoute"),
            ("route_name", "books-split"),
            ("route_namespace", "default"),
        ],
    );
    assert!(routed >= 321.0, "{}", m.text);
    assert!(
        m.sum(
            "response_total",
            &[("route_name", "books-split"), ("dst_service", "books-v2")]
        ) >= 20.0
    );

    // Shift everything to v2: every proxy follows within a second.
    let edited = Instant::now();
    write_route(&ctl, &route_yaml(0, 100, "^a+$"));
    let moved = eventually(Duration::from_secs(3), || async {
        let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
        split(&mut c, 10).await.get("books-v2") == Some(&10)
    })
    .await;
    assert!(moved, "traffic did not move to books-v2");
    assert!(
        edited.elapsed() < Duration::from_secs(2),
        "the weight change took {:?}",
        edited.elapsed()
    );

    // An invalid edit (a regex that does not compile) is refused by the controller:
    // traffic keeps following the last valid route.
    write_route(&ctl, &route_yaml(100, 0, "(unclosed"));
    let after = Instant::now();
    while after.elapsed() < Duration::from_millis(500) {
        assert_eq!(split(&mut c, 5).await.get("books-v2"), Some(&5));
    }
}
