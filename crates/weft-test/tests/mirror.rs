//! RequestMirror and URLRewrite end to end (weft's extension of the OutboundPolicies
//! messages): a real controller in-process serves an HTTPRoute on Service `books`
//! whose rule sends to `books-v1`, mirrors every request to `books-shadow` and to
//! `books-down` (a pod with nothing listening), and whose `/api` rule rewrites host
//! and path. The caller sees only the primary's answers; the shadow receives the
//! copies; the mirror that is down fails no request; copies are counted.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use weft_test::controller::{pod, TestController};
use weft_test::proxy::{self, TestProxy};
use weft_test::{client, eventually, TestClient, TestServer};

const AUTHORITY: &str = "books.default.svc.cluster.local";

fn mesh_yaml(port: u16) -> String {
    let workload = |name: &str, version: &str| {
        format!("  - name: {name}\n    labels: {{app: books, version: {version}}}\n    ports: [{port}]\n    command: [app]\n")
    };
    format!(
        "kind: Mesh\nworkloads:\n  - name: web\n    ports: [8080]\n    command: [app]\n{}{}{}",
        workload("books-v1", "v1"),
        workload("books-shadow", "shadow"),
        workload("books-down", "down"),
    )
}

fn services_yaml(port: u16) -> String {
    let service = |name: &str, selector: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {selector}\n  ports: [{{port: 80, targetPort: {port}}}]\n---\n")
    };
    format!(
        "{}{}{}{}",
        service("books", "{app: books, version: v1}"),
        service("books-v1", "{app: books, version: v1}"),
        service("books-shadow", "{app: books, version: shadow}"),
        service("books-down", "{app: books, version: down}")
    )
}

const ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books-mirror, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: books, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - type: URLRewrite
          urlRewrite:
            hostname: books.internal
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /status}
      backendRefs: [{name: books-v1, port: 80}]
    - backendRefs: [{name: books-v1, port: 80}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: books-shadow, port: 80}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: books-down, port: 80}}
"#;

/// A loopback address for this test's pods.
fn pod_ip(n: u8) -> IpAddr {
    let pid = std::process::id();
    IpAddr::V4(Ipv4Addr::new(127, 64 + (pid % 64) as u8, 41, n))
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

#[tokio::test]
async fn mirrors_get_copies_the_caller_never_sees_and_rewrites_change_host_and_path() {
    weft_test::trace_init();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ctl = TestController::start(&mesh_yaml(port), &services_yaml(port)).await;
    let dir = ctl.mesh_dir();
    std::fs::write(dir.join(".routes.yaml.tmp"), ROUTE).expect("route file");
    std::fs::rename(dir.join(".routes.yaml.tmp"), dir.join("routes.yaml")).expect("route file");
    ctl.set_pods(&[
        pod("books-v1", 0, pod_ip(1), true),
        pod("books-shadow", 0, pod_ip(2), true),
        // Nothing listens there: the mirror is down.
        pod("books-down", 0, pod_ip(3), true),
    ]);
    let (primary, _primary_proxy) = replica(&ctl, "books-v1", pod_ip(1), port).await;
    let (shadow, _shadow_proxy) = replica(&ctl, "books-shadow", pod_ip(2), port).await;
    let sink = TestServer::loopback("web").await;
    let web = ctl
        .meshed(proxy::inbound_to(sink.addr()), "web")
        .start()
        .await;
    wait_ready(&web).await;

    // The first requests may race the route's first arrival: wait for a copy.
    let mirrored = eventually(Duration::from_secs(5), || async {
        let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
        let _ = c.get("/first").await;
        shadow.received().iter().any(|r| r.path == "/first")
    })
    .await;
    assert!(mirrored, "the shadow never got a copy");

    // Every request answered by the primary alone, while both mirrors get theirs.
    let mut c = TestClient::http1(web.outbound(), AUTHORITY).await.unwrap();
    let n = 50;
    for i in 0..n {
        let rsp = c.get("/").await.expect("request");
        assert_eq!(rsp.status, 200, "request {i}: {}", rsp.body);
        assert_eq!(rsp.body, "hello from books-v1");
    }
    // A small body is mirrored once the primary has it whole.
    let rsp = c
        .request_with(http::Method::POST, "/echo", &[], "a small body")
        .await
        .expect("request");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body, "a small body");
    // A body over the replay limit is not copied (and the primary is unaffected).
    let large = vec![b'x'; 100 * 1024];
    let rsp = c
        .request_with(http::Method::POST, "/echo", &[], large.clone())
        .await
        .expect("request");
    assert_eq!(rsp.status, 200);
    assert_eq!(rsp.body.len(), large.len());

    let copies = eventually(Duration::from_secs(5), || async {
        let seen = shadow.received();
        seen.iter().filter(|r| r.path == "/").count() == n as usize
            && seen
                .iter()
                .any(|r| r.method == http::Method::POST && r.path == "/echo")
    })
    .await;
    assert!(copies, "copies missing: {:?}", shadow.received());
    let posts = |s: &TestServer| {
        s.received()
            .iter()
            .filter(|r| r.method == http::Method::POST)
            .count()
    };
    assert_eq!(posts(&primary), 2);
    assert_eq!(posts(&shadow), 1, "only the small body is copied");
    // Copies keep the request's authority.
    let copy = shadow
        .received()
        .into_iter()
        .find(|r| r.path == "/")
        .unwrap();
    assert_eq!(copy.hosts, vec![AUTHORITY.to_owned()]);

    let counted = eventually(Duration::from_secs(5), || async {
        let m = web.metrics().await;
        let count = |backend, result| {
            m.sum(
                "mirror_requests_total",
                &[
                    ("route_name", "books-mirror"),
                    ("mirror_backend", backend),
                    ("result", result),
                ],
            )
        };
        count("books-shadow", "success") >= f64::from(n + 1)
            && count("books-down", "failure") >= f64::from(n + 1)
            && count("books-shadow", "skipped") == 1.0
            && count("books-down", "skipped") == 1.0
    })
    .await;
    assert!(counted, "{}", web.metrics().await.text);

    // URLRewrite: the backend sees the new host and the prefix replaced (`/api/204`
    // is `/status/204` for the backend, which answers that status).
    let rsp = c.get("/api/204?x=1").await.expect("request");
    assert_eq!(rsp.status, 204, "{}", rsp.body);
    let rewritten = primary
        .received()
        .into_iter()
        .find(|r| r.path.starts_with("/status"))
        .expect("the rewritten request reached the primary");
    assert_eq!(rewritten.path, "/status/204");
    assert_eq!(rewritten.hosts, vec!["books.internal".to_owned()]);
    assert!(
        !shadow
            .received()
            .iter()
            .any(|r| r.path.starts_with("/status") || r.path.starts_with("/api")),
        "the /api rule mirrors nothing"
    );
}
