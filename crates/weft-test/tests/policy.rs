//! Authorization end to end: a real controller in-process reads Server,
//! AuthorizationPolicy, MeshTLSAuthentication and NetworkAuthentication objects from
//! the mesh directory and serves them (InboundServerPolicies); the `books` workload's
//! inbound proxy follows its port's policy and authorizes each request (HTTP) or
//! connection (TCP). Callers: `web` and `intruder` (meshed proxies, mTLS to books)
//! and plaintext clients without a proxy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_controller::policy::{DefaultPolicy, PolicyConfig};
use weft_test::controller::{pod, TestController};
use weft_test::proxy::{self, TestProxy};
use weft_test::tcp::TcpServer;
use weft_test::{client, eventually, EchoClient, GrpcServer, TestClient, TestServer};

const AUTHORITY: &str = "books.default.svc.cluster.local";

fn mesh_yaml(port: u16) -> String {
    format!(
        "kind: Mesh\nworkloads:\n  - {{name: web, ports: [8080], command: [app]}}\n  - {{name: intruder, ports: [8080], command: [app]}}\n  - {{name: books, labels: {{app: books}}, ports: [{port}], command: [app]}}\n"
    )
}

fn services_yaml(port: u16) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: books}}\nspec:\n  selector: {{app: books}}\n  ports: [{{port: 80, targetPort: {port}}}]\n")
}

/// Server `books-http` on the application's `port`, and a policy requiring the
/// MeshTLSAuthentication `allowed`, which lists service account `sa`; the policy
/// targets Server `target`.
fn identity_policy(port: u16, sa: &str, target: &str) -> String {
    format!(
        r#"apiVersion: policy.weft.io/v1alpha1
kind: Server
metadata: {{name: books-http, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: books}}}}
  port: {port}
  proxyProtocol: HTTP/1
---
apiVersion: policy.weft.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {{name: allowed, namespace: default}}
spec:
  identityRefs: [{{kind: ServiceAccount, name: {sa}}}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: books-callers, namespace: default}}
spec:
  targetRef: {{group: policy.weft.io, kind: Server, name: {target}}}
  requiredAuthenticationRefs:
    - {{group: policy.weft.io, kind: MeshTLSAuthentication, name: allowed}}
"#
    )
}

/// Server `books` on `port`, allowing callers from `cidr` except `except`, with or
/// without mTLS.
fn network_policy(port: u16, cidr: &str, except: &str) -> String {
    format!(
        r#"apiVersion: policy.weft.io/v1alpha1
kind: Server
metadata: {{name: books, namespace: default}}
spec:
  podSelector: {{matchLabels: {{app: books}}}}
  port: {port}
---
apiVersion: policy.weft.io/v1alpha1
kind: NetworkAuthentication
metadata: {{name: local, namespace: default}}
spec:
  networks: [{{cidr: "{cidr}", except: [{except}]}}]
---
apiVersion: policy.weft.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: from-local, namespace: default}}
spec:
  targetRef: {{group: policy.weft.io, kind: Server, name: books}}
  requiredAuthenticationRefs:
    - {{group: policy.weft.io, kind: NetworkAuthentication, name: local}}
"#
    )
}

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The mesh: the controller, `books` (its inbound proxy in front of `app`, at a pod
/// address on the Service's target port), and the meshed callers `web` and
/// `intruder`.
struct Mesh {
    ctl: TestController,
    books: TestProxy,
    web: TestProxy,
    intruder: TestProxy,
    _sinks: Vec<TestServer>,
}

impl Mesh {
    /// `app` is the application's address; `opaque` its port is opaque TCP.
    async fn start(policy: PolicyConfig, app: SocketAddr, opaque: bool) -> Mesh {
        let port = free_port();
        let ctl =
            TestController::start_with_policy(&mesh_yaml(port), &services_yaml(port), policy).await;
        ctl.set_pods(&[pod("books", 0, pod_ip(1), true)]);
        let mut builder = proxy::inbound_to(app)
            .inbound_listen(SocketAddr::new(pod_ip(1), port))
            .workload("default", "books", "books-0");
        if opaque {
            builder = builder.opaque_ports(&[app.port()]);
        }
        let books = ctl.meshed(builder, "books").start().await;
        wait_ready(&books).await;
        let (web_sink, web) = meshed_caller(&ctl, "web").await;
        let (intruder_sink, intruder) = meshed_caller(&ctl, "intruder").await;
        Mesh {
            ctl,
            books,
            web,
            intruder,
            _sinks: vec![web_sink, intruder_sink],
        }
    }

    /// A request from `caller` (a meshed proxy) to books: status and weft-proxy-error.
    async fn call(caller: &TestProxy) -> (u16, String) {
        let mut c = TestClient::http1(caller.outbound(), AUTHORITY)
            .await
            .expect("connect to the caller's proxy");
        let rsp = c.get("/").await.expect("request");
        let error = rsp.header("weft-proxy-error").unwrap_or("").to_owned();
        (rsp.status.as_u16(), error)
    }

    /// A plaintext request straight to books' inbound proxy (an unmeshed caller).
    async fn unmeshed(&self) -> (u16, String) {
        let rsp = client::get(self.books.inbound(), "books", "/")
            .await
            .expect("request");
        let error = rsp.header("weft-proxy-error").unwrap_or("").to_owned();
        (rsp.status.as_u16(), error)
    }
}

/// A meshed workload `name` (its proxy and the application behind it).
async fn meshed_caller(ctl: &TestController, name: &str) -> (TestServer, TestProxy) {
    let sink = TestServer::loopback(name).await;
    let proxy = ctl
        .meshed(proxy::inbound_to(sink.addr()), name)
        .start()
        .await;
    wait_ready(&proxy).await;
    (sink, proxy)
}

/// A plaintext HTTP/1 request to `to` from source address `from`: the status.
async fn get_from(from: IpAddr, to: SocketAddr) -> u16 {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: books\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rsp = Vec::new();
    stream.read_to_end(&mut rsp).await.unwrap();
    let text = String::from_utf8_lossy(&rsp);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

#[tokio::test]
async fn a_workload_requiring_a_named_identity_allows_it_denies_others_and_follows_edits() {
    weft_test::trace_init();
    let app = TestServer::loopback("books").await;
    let m = Mesh::start(PolicyConfig::default(), app.addr(), false).await;
    let port = app.addr().port();
    m.ctl
        .write_mesh_file("policy.yaml", &identity_policy(port, "web", "books-http"));

    // The allowed caller (the first request may race the policy's arrival, which
    // would find the default all-unauthenticated: wait for intruder's refusal first).
    let denied = eventually(Duration::from_secs(5), || async {
        Mesh::call(&m.intruder).await.0 == 403
    })
    .await;
    assert!(denied, "the policy never reached books' proxy");
    assert_eq!(Mesh::call(&m.web).await, (200, String::new()));

    // The wrong identity, through its own proxy (mTLS): 403 naming the reason.
    let (status, error) = Mesh::call(&m.intruder).await;
    assert_eq!(status, 403);
    assert!(
        error.contains("unauthorized: no authorization of server books-http allows identity intruder.default.serviceaccount.identity.weft.cluster.local"),
        "{error}"
    );
    // An unmeshed caller.
    let (status, error) = m.unmeshed().await;
    assert_eq!(status, 403);
    assert!(error.contains("an unauthenticated caller"), "{error}");

    let metrics = m.books.metrics().await;
    let port_label = port.to_string();
    assert!(
        metrics.sum(
            "inbound_http_authz_allow_total",
            &[
                ("srv_kind", "server"),
                ("srv_name", "books-http"),
                ("authz_kind", "authorizationpolicy"),
                ("authz_name", "books-callers"),
                ("target_port", &port_label),
            ],
        ) >= 1.0,
        "{}",
        metrics.text
    );
    assert!(
        metrics.sum(
            "inbound_http_authz_deny_total",
            &[("srv_name", "books-http"), ("target_port", &port_label)],
        ) >= 3.0,
        "{}",
        metrics.text
    );
    assert!(
        metrics.sum(
            "http_errors_total",
            &[("direction", "inbound"), ("error", "unauthorized")]
        ) >= 3.0,
        "{}",
        metrics.text
    );
    assert_eq!(
        app.requests() as f64,
        metrics.sum("inbound_http_authz_allow_total", &[])
    );

    // The policy changes while web sends requests: intruder in, web out, within a
    // second of the file's write.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let web = m.web.outbound();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut c = TestClient::http1(web, AUTHORITY).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                statuses.push(c.get("/").await.expect("request").status);
            }
            statuses
        })
    };
    let edited = Instant::now();
    m.ctl.write_mesh_file(
        "policy.yaml",
        &identity_policy(port, "intruder", "books-http"),
    );
    let switched = eventually(Duration::from_secs(3), || async {
        Mesh::call(&m.intruder).await.0 == 200 && Mesh::call(&m.web).await.0 == 403
    })
    .await;
    let took = edited.elapsed();
    stop.store(true, Ordering::Relaxed);
    let statuses = traffic.await.unwrap();
    assert!(switched, "the policy change never took effect");
    assert!(
        took < Duration::from_secs(1),
        "the policy change took {took:?}"
    );
    // Every request in flight got an answer: allowed before, denied after.
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 403),
        "{statuses:?}"
    );
    let first_denied = statuses.iter().position(|s| *s == 403);
    if let Some(i) = first_denied {
        assert!(statuses[i..].iter().all(|s| *s == 403), "{statuses:?}");
    }
    eprintln!(
        "policy change: in force within {took:?}; {} requests during the change",
        statuses.len()
    );

    // A policy naming an unknown Server: reported, and the last valid version serves.
    m.ctl.write_mesh_file(
        "policy.yaml",
        &identity_policy(port, "web", "no-such-server"),
    );
    let reported = eventually(Duration::from_secs(3), || async {
        m.ctl.policy_reports().iter().any(|r| {
            r.resolved_refs
                .as_ref()
                .is_some_and(|c| c.reason == "TargetNotFound")
        })
    })
    .await;
    assert!(reported, "{:?}", m.ctl.policy_reports());
    let report = m
        .ctl
        .policy_reports()
        .into_iter()
        .find(|r| r.key.as_ref().is_some_and(|k| k.name == "books-callers"))
        .unwrap();
    let cond = report.resolved_refs.clone().unwrap();
    assert!(
        cond.message
            .contains("no valid Server default/no-such-server"),
        "{}",
        cond.message
    );
    assert!(report.serving && report.kept, "{report:?}");
    let after = Instant::now();
    while after.elapsed() < Duration::from_millis(300) {
        assert_eq!(Mesh::call(&m.intruder).await.0, 200);
        assert_eq!(Mesh::call(&m.web).await.0, 403);
    }
}

#[tokio::test]
async fn a_network_authentication_allows_its_networks_but_their_exceptions() {
    weft_test::trace_init();
    let app = TestServer::loopback("books").await;
    let m = Mesh::start(PolicyConfig::default(), app.addr(), false).await;
    let port = app.addr().port();
    m.ctl.write_mesh_file(
        "policy.yaml",
        &network_policy(port, "127.0.0.0/8", "127.0.0.1/32"),
    );
    let denied = eventually(Duration::from_secs(5), || async {
        m.unmeshed().await.0 == 403
    })
    .await;
    assert!(denied, "the policy never reached books' proxy");
    // From 127.0.0.1 (the exception): denied, meshed or not; from 127.0.0.2: allowed
    // without mTLS.
    assert_eq!(Mesh::call(&m.web).await.0, 403);
    assert_eq!(
        get_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), m.books.inbound()).await,
        200
    );
    assert_eq!(
        get_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), m.books.inbound()).await,
        403
    );
}

#[tokio::test]
async fn the_four_default_policies() {
    weft_test::trace_init();
    // (policy, cluster networks, web's status, an unmeshed caller's status)
    let loopback_only = vec!["10.0.0.0/8".parse().unwrap()];
    let cases = [
        (DefaultPolicy::AllUnauthenticated, None, 200, 200),
        (DefaultPolicy::AllAuthenticated, None, 200, 403),
        (DefaultPolicy::ClusterAuthenticated, None, 200, 403),
        // Callers from outside the cluster's networks, even meshed.
        (
            DefaultPolicy::ClusterAuthenticated,
            Some(loopback_only),
            403,
            403,
        ),
        (DefaultPolicy::Deny, None, 403, 403),
    ];
    for (policy, networks, web, unmeshed) in cases {
        let mut config = PolicyConfig {
            default_policy: policy,
            ..PolicyConfig::default()
        };
        if let Some(n) = networks.clone() {
            config.cluster_networks = n;
        }
        let app = TestServer::loopback("books").await;
        let m = Mesh::start(config, app.addr(), false).await;
        let (status, error) = Mesh::call(&m.web).await;
        assert_eq!(status, web, "{policy} ({networks:?}): web: {error}");
        let (status, error) = m.unmeshed().await;
        assert_eq!(status, unmeshed, "{policy}: unmeshed: {error}");
        if status == 403 {
            assert!(
                error.contains(&format!("no authorization of default {policy}")),
                "{error}"
            );
        }
        let metrics = m.books.metrics().await;
        let denied = metrics.sum(
            "inbound_http_authz_deny_total",
            &[("srv_kind", "default"), ("srv_name", policy.as_str())],
        );
        let expected = [web, unmeshed].iter().filter(|s| **s == 403).count() as f64;
        assert_eq!(denied, expected, "{}", metrics.text);
    }
}

#[tokio::test]
async fn a_denied_grpc_call_is_permission_denied() {
    weft_test::trace_init();
    let grpc = GrpcServer::loopback().await;
    let config = PolicyConfig {
        default_policy: DefaultPolicy::AllAuthenticated,
        ..PolicyConfig::default()
    };
    let m = Mesh::start(config, grpc.addr(), false).await;
    let mut c = EchoClient::connect(m.books.inbound(), "books")
        .await
        .unwrap();
    let status = c.unary("hello").await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("unauthorized"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_denied_tcp_connection_is_closed_and_an_open_one_closes_when_denied() {
    weft_test::trace_init();
    let echo = TcpServer::echo_after_eof().await;
    let m = Mesh::start(PolicyConfig::default(), echo.addr(), true).await;
    let port = echo.addr().port();
    m.ctl.write_mesh_file(
        "policy.yaml",
        &network_policy(port, "127.0.0.0/8", "127.255.255.255/32"),
    );
    let allowed = eventually(Duration::from_secs(5), || async {
        exchange(m.books.inbound()).await.as_deref() == Some("got 4 bytes: ping")
            && m.books
                .metrics()
                .await
                .sum("inbound_tcp_authz_allow_total", &[("srv_name", "books")])
                >= 1.0
    })
    .await;
    assert!(allowed, "an allowed TCP connection was not forwarded");

    // An open connection: the policy turns against it while it is open.
    let before = m
        .books
        .metrics()
        .await
        .sum("inbound_tcp_authz_allow_total", &[("srv_name", "books")]);
    let mut open = tokio::net::TcpStream::connect(m.books.inbound())
        .await
        .unwrap();
    open.write_all(b"ping\r\n").await.unwrap();
    let opened = eventually(Duration::from_secs(3), || async {
        m.books
            .metrics()
            .await
            .sum("inbound_tcp_authz_allow_total", &[("srv_name", "books")])
            > before
    })
    .await;
    assert!(opened, "the open connection was never authorized");
    let edited = Instant::now();
    m.ctl
        .write_mesh_file("policy.yaml", &network_policy(port, "10.0.0.0/8", ""));
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), open.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the open connection was not closed");
    assert!(rest.is_empty(), "{rest:?}");
    let took = edited.elapsed();
    assert!(took < Duration::from_secs(1), "closing took {took:?}");
    eprintln!("policy change: an open TCP connection closed within {took:?}");

    // A new connection is closed without reaching the application.
    assert_eq!(exchange(m.books.inbound()).await, None);
    let metrics = m.books.metrics().await;
    assert!(
        metrics.sum(
            "inbound_tcp_authz_deny_total",
            &[("srv_name", "books"), ("target_port", &port.to_string())]
        ) >= 1.0,
        "{}",
        metrics.text
    );
}

/// Sends `ping` and half-closes: the reply, or `None` when the connection was closed
/// without one.
async fn exchange(to: SocketAddr) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(to).await.ok()?;
    s.write_all(b"ping").await.ok()?;
    s.shutdown().await.ok()?;
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply).await;
    (!reply.is_empty()).then(|| String::from_utf8_lossy(&reply).into_owned())
}

#[tokio::test]
async fn without_a_controller_the_proxys_flag_decides() {
    weft_test::trace_init();
    let app = TestServer::loopback("books").await;
    let open = proxy::inbound_to(app.addr()).start().await;
    let rsp = client::get(open.inbound(), "books", "/").await.unwrap();
    assert_eq!(rsp.status, 200, "today's behaviour: everyone");

    let mut builder = proxy::inbound_to(app.addr());
    builder.config_mut().default_inbound_policy = weft_proxy::DefaultInboundPolicy::Deny;
    let closed = builder.start().await;
    let rsp = client::get(closed.inbound(), "books", "/").await.unwrap();
    assert_eq!(rsp.status, 403);
    assert!(
        rsp.header("weft-proxy-error")
            .is_some_and(|e| e.contains("no authorization of default deny")),
        "{:?}",
        rsp.headers
    );
}
