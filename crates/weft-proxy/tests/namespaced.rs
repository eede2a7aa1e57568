//! Transparent proxying end to end, through real network namespaces and iptables.
//!
//! Two pods on a bridge: A (client) and B (server). Each runs the `weft-proxy` binary
//! as UID 2102 in transparent mode behind the sidecar's nat rules. Code in A calls B's
//! address directly, knowing nothing of proxies; the rules take the connection through
//! A's outbound listener and B's inbound listener to the app, and both proxies must
//! find the original destination with `SO_ORIGINAL_DST`. Needs root; skips otherwise.

#![cfg(target_os = "linux")]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use weft_test::netns::{self, run_in, TestNet, ADMIN_PORT, PROXY_UID};
use weft_test::tcp::TcpServer;
use weft_test::{client, metrics, Scrape, TestServer};

/// HTTP requests A sends, one connection each.
const REQUESTS: usize = 20;
const APP_PORT: u16 = 8080;
/// Listed in the proxies' `--opaque-ports`: forwarded as TCP without detection.
const OPAQUE_PORT: u16 = 7777;
/// Opaque TCP connections A opens.
const CONNECTIONS: usize = 3;
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ADMIN_PORT);
const STEP: Duration = Duration::from_secs(2);

/// Starts `weft-proxy` in pod `pod` as UID 2102, named `{deployment}-proxy`.
fn start_proxy(net: &TestNet, pod: usize, deployment: &str) -> u32 {
    start_proxy_with(net, pod, deployment, &[])
}

/// [`start_proxy`] with more arguments.
fn start_proxy_with(net: &TestNet, pod: usize, deployment: &str, args: &[&str]) -> u32 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-proxy"));
    cmd.args(args);
    cmd.args(["--mode", "transparent"])
        .args(["--outbound-listen", "127.0.0.1:4140"])
        .args(["--inbound-listen", "0.0.0.0:4143"])
        .args(["--admin-listen", "0.0.0.0:4191"])
        .args(["--namespace", "test", "--deployment", deployment])
        .args(["--pod", &format!("{deployment}-0")])
        .args(["--opaque-ports", &OPAQUE_PORT.to_string()])
        .args(["--drain-grace", "1s", "--log", "info,weft_proxy=debug"])
        .env("NO_COLOR", "1");
    let name = format!("{deployment}-proxy");
    net.spawn_in(&net.pod(pod).ns, &name, &cmd, Some(PROXY_UID))
        .unwrap_or_else(|e| panic!("start {name}: {e:#}"))
}

/// Polls the proxy's `/ready` from inside its pod for up to 5 s.
fn wait_ready(net: &TestNet, pod: usize, name: &str, pid: u32) {
    let ready = run_in(&net.pod(pod).ns, || async {
        weft_test::eventually(Duration::from_secs(5), || async {
            matches!(
                timeout(STEP, client::get(ADMIN, "localhost", "/ready")).await,
                Ok(Ok(rsp)) if rsp.status == 200
            )
        })
        .await
    })
    .expect("poll /ready inside the pod");
    assert!(
        ready,
        "{name} (pid {pid}) was not ready within 5s; exit status: {:?}\n{}",
        net.exited(pid),
        net.log(name)
    );
}

/// Waits (up to 5 s) until a plain TCP connection from pod `from` reaches `to`, before
/// any redirection exists: the bridge forwards and the app listens.
fn wait_reachable(net: &TestNet, from: usize, to: SocketAddr) {
    let reached = run_in(&net.pod(from).ns, move || async move {
        weft_test::eventually(Duration::from_secs(5), || async {
            matches!(timeout(STEP, TcpStream::connect(to)).await, Ok(Ok(_)))
        })
        .await
    })
    .expect("connect inside the pod");
    assert!(
        reached,
        "{to} is not reachable from pod {from} without proxies"
    );
}

/// The HTTP app on [`APP_PORT`] and the TCP echo server on [`OPAQUE_PORT`] in `ns`.
fn start_servers(net: &TestNet, ns: &str) -> (TestServer, TcpServer) {
    let app = net
        .spawn_server_in(ns, ([0, 0, 0, 0], APP_PORT).into(), "books")
        .unwrap_or_else(|e| panic!("start the app: {e:#}"));
    let echo = net
        .runtime(ns)
        .and_then(|rt| {
            rt.run(STEP, || {
                TcpServer::echo_after_eof_at(([0, 0, 0, 0], OPAQUE_PORT).into())
            })
        })
        .and_then(|r| Ok(r?))
        .unwrap_or_else(|e| panic!("start the TCP echo server: {e:#}"));
    (app, echo)
}

/// The metrics of the proxy in pod `pod`, fetched from inside the pod.
fn scrape(net: &TestNet, pod: usize) -> Scrape {
    run_in(&net.pod(pod).ns, || async {
        timeout(STEP, metrics::fetch(ADMIN))
            .await
            .map_err(|_| anyhow::anyhow!("timed out"))?
    })
    .and_then(|r| r)
    .unwrap_or_else(|e| panic!("scrape the proxy in pod {pod}: {e:#}"))
}

#[test]
fn client_reaches_server_through_both_proxies() {
    if let Err(reason) = netns::can_run() {
        netns::skip(&reason);
        return;
    }
    let net = TestNet::new(2).unwrap_or_else(|e| panic!("create the namespaces: {e:#}"));
    let (a, b) = (net.pod(0).clone(), net.pod(1).clone());
    let app_addr = SocketAddr::from((b.ip, APP_PORT));
    let echo_addr = SocketAddr::from((b.ip, OPAQUE_PORT));

    let (app, echo) = start_servers(&net, &b.ns);
    wait_reachable(&net, 0, app_addr);

    let client_proxy = start_proxy(&net, 0, "client");
    let server_proxy = start_proxy(&net, 1, "server");
    wait_ready(&net, 0, "client-proxy", client_proxy);
    wait_ready(&net, 1, "server-proxy", server_proxy);
    for pod in [&a, &b] {
        netns::install_redirect(&pod.ns, &[])
            .unwrap_or_else(|e| panic!("redirect in {}: {e:#}", pod.ns));
    }

    // HTTP: a client that knows only the app's address.
    let authority = app_addr.to_string();
    let results = run_in(&a.ns, move || async move {
        let mut results = Vec::new();
        for _ in 0..REQUESTS {
            results.push(
                match timeout(STEP, client::get(app_addr, &authority, "/")).await {
                    Ok(Ok(rsp)) => Ok((rsp.status.as_u16(), rsp.body)),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err(format!("no response within {STEP:?}")),
                },
            );
        }
        results
    })
    .expect("run the client in pod A");
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result,
            &Ok((200, "hello from books".to_owned())),
            "request {i}; nat rules in A:\n{}",
            netns::nat_rules(&a.ns)
        );
    }
    assert_eq!(app.requests(), REQUESTS, "the app counts every request");

    let n = REQUESTS as f64;
    let target = app_addr.to_string();
    let (sa, sb) = (scrape(&net, 0), scrape(&net, 1));
    for (scrape, direction, deployment) in [(&sa, "outbound", "client"), (&sb, "inbound", "server")]
    {
        let route = [
            ("direction", direction),
            ("deployment", deployment),
            ("namespace", "test"),
            // The original destination, read with SO_ORIGINAL_DST.
            ("target_addr", target.as_str()),
        ];
        assert_eq!(
            scrape.sum("request_total", &route),
            n,
            "{deployment} proxy request_total{{direction={direction}}}:\n{}",
            scrape.text
        );
        let ok = [
            ("direction", direction),
            ("classification", "success"),
            ("status_code", "200"),
        ];
        assert_eq!(
            scrape.sum("response_total", &ok),
            n,
            "{deployment} proxy response_total{{direction={direction},success,200}}:\n{}",
            scrape.text
        );
        assert_eq!(
            scrape.sum("response_total", &[("direction", direction)]),
            n,
            "{deployment} proxy: every response was a success"
        );
    }
    // Each proxy saw the traffic once: A's own outbound hop to B and B's hop to the app
    // were let through by the UID and loopback rules, not proxied again.
    assert_eq!(sa.sum("request_total", &[("direction", "inbound")]), 0.0);
    assert_eq!(sb.sum("request_total", &[("direction", "outbound")]), 0.0);

    // Opaque TCP on a port both proxies forward without protocol detection.
    let replies = run_in(&a.ns, move || async move {
        let mut replies = Vec::new();
        for i in 0..CONNECTIONS {
            let exchange = async {
                let mut socket = TcpStream::connect(echo_addr).await?;
                socket.write_all(format!("ping {i}").as_bytes()).await?;
                socket.shutdown().await?;
                let mut reply = String::new();
                socket.read_to_string(&mut reply).await?;
                Ok::<_, std::io::Error>(reply)
            };
            replies.push(match timeout(STEP, exchange).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => format!("no reply within {STEP:?}"),
            });
        }
        replies
    })
    .expect("run the TCP client in pod A");
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply, &format!("got 6 bytes: ping {i}"), "connection {i}");
    }
    let (ta, tb) = (scrape(&net, 0), scrape(&net, 1));
    let opened = |before: &Scrape, after: &Scrape, direction: &str, peer: &str| {
        let labels = [("direction", direction), ("peer", peer)];
        after.sum("tcp_open_total", &labels) - before.sum("tcp_open_total", &labels)
    };
    let c = CONNECTIONS as f64;
    assert_eq!(
        opened(&sa, &ta, "outbound", "src"),
        c,
        "A: accepted from the client"
    );
    assert_eq!(
        opened(&sa, &ta, "outbound", "dst"),
        c,
        "A: opened towards B"
    );
    assert_eq!(opened(&sb, &tb, "inbound", "src"), c, "B: accepted from A");
    assert_eq!(
        opened(&sb, &tb, "inbound", "dst"),
        c,
        "B: opened to the app"
    );
    assert_eq!(
        ta.sum("request_total", &[]),
        n,
        "opaque bytes were not parsed as HTTP"
    );

    // Dropping the net stops both proxies and removes every namespace it made.
    drop((echo, app));
    let id = net.id().to_owned();
    drop(net);
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&format!("{id}-"))),
        "namespaces left behind:\n{left}"
    );
    for pid in [client_proxy, server_proxy] {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map_or(true, |c| !c.contains("weft-proxy")),
            "proxy pid {pid} still runs"
        );
    }
}

/// An inbound proxy forwards only to its own pod. Pod A (no proxy, an attacker's
/// view) routes packets for pod C through pod B; B's iptables hand them to B's inbound
/// proxy with C as the original destination. Relaying them would let A reach C as if
/// it were B (C would see B's address); the proxy refuses and counts them instead.
#[test]
fn an_inbound_proxy_relays_to_no_other_pod() {
    if let Err(reason) = netns::can_run() {
        netns::skip(&reason);
        return;
    }
    let net = TestNet::new(3).unwrap_or_else(|e| panic!("create the namespaces: {e:#}"));
    let (a, b, c) = (net.pod(0).clone(), net.pod(1).clone(), net.pod(2).clone());
    let target = SocketAddr::from((c.ip, APP_PORT));
    let app: TestServer = net
        .spawn_server_in(&c.ns, ([0, 0, 0, 0], APP_PORT).into(), "target")
        .unwrap_or_else(|e| panic!("start the app: {e:#}"));
    wait_reachable(&net, 0, target);
    // Only C may scrape B's metrics (besides B itself, on loopback).
    let relay = start_proxy_with(
        &net,
        1,
        "relay",
        &["--admin-metrics-from", &c.ip.to_string()],
    );
    wait_ready(&net, 1, "relay-proxy", relay);
    netns::install_redirect(&b.ns, &[]).unwrap_or_else(|e| panic!("redirect in {}: {e:#}", b.ns));

    // Control: A reaches C's app directly.
    let get = move || {
        run_in(&a.ns, move || async move {
            match timeout(STEP, client::get(target, &target.to_string(), "/")).await {
                Ok(Ok(rsp)) => Ok(rsp.status.as_u16()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("no response".to_owned()),
            }
        })
        .expect("run the client in pod A")
    };
    assert_eq!(get(), Ok(200));
    assert_eq!(app.requests(), 1);

    // Through B: C is routed via B's address.
    let route = Command::new("ip")
        .args(["netns", "exec", &net.pod(0).ns, "ip", "route", "add"])
        .args([&format!("{}/32", c.ip), "via", &b.ip.to_string()])
        .status()
        .expect("run ip route");
    assert!(route.success(), "ip route add in pod A");
    for _ in 0..3 {
        assert!(get().is_err(), "a request relayed by B's inbound proxy");
    }
    assert_eq!(app.requests(), 1, "C's app saw only the direct request");
    let scraped = scrape(&net, 1);
    assert_eq!(
        scraped.sum(
            "tcp_refused_total",
            &[("direction", "inbound"), ("reason", "not_local")]
        ),
        3.0,
        "{}",
        scraped.text
    );
    assert!(net
        .log("relay-proxy")
        .contains("not an address of this pod"));
}

/// Fail closed: with the destination service unreachable, an outbound connection to
/// an address in the mesh's pod network is refused (HTTP 503 naming the reason, TCP
/// closed), never sent to the pod in plaintext.
#[test]
fn with_discovery_down_mesh_addresses_are_refused_not_reached_in_plaintext() {
    if let Err(reason) = netns::can_run() {
        netns::skip(&reason);
        return;
    }
    let net = TestNet::new(2).unwrap_or_else(|e| panic!("create the namespaces: {e:#}"));
    let (a, b) = (net.pod(0).clone(), net.pod(1).clone());
    let app_addr = SocketAddr::from((b.ip, APP_PORT));
    let echo_addr = SocketAddr::from((b.ip, OPAQUE_PORT));
    let (app, _echo) = start_servers(&net, &b.ns);
    wait_reachable(&net, 0, app_addr);

    // A's proxy: mTLS and discovery configured, the controller nowhere (nothing
    // listens on the hub's port 1).
    let anchors = net.log_dir().join("anchors.pem");
    let token = net.log_dir().join("token");
    std::fs::write(&anchors, weft_test::ca::TestCa::default().anchors_pem()).unwrap();
    std::fs::write(&token, "not-a-real-token").unwrap();
    let dead = "198.18.255.254:1";
    let client = start_proxy_with(
        &net,
        0,
        "client",
        &[
            "--trust-anchors",
            anchors.to_str().unwrap(),
            "--identity-token",
            token.to_str().unwrap(),
            "--controller",
            dead,
            "--destination",
            dead,
            "--destination-wait",
            "300ms",
        ],
    );
    // Not ready (no certificate can be had): wait until it listens instead.
    let live = run_in(&a.ns, || async {
        weft_test::eventually(Duration::from_secs(5), || async {
            matches!(
                timeout(STEP, client::get(ADMIN, "localhost", "/live")).await,
                Ok(Ok(rsp)) if rsp.status == 200
            )
        })
        .await
    })
    .expect("poll /live inside pod A");
    assert!(
        live,
        "client proxy (pid {client}) never listened\n{}",
        net.log("client-proxy")
    );
    netns::install_redirect(&a.ns, &[]).unwrap_or_else(|e| panic!("redirect in {}: {e:#}", a.ns));

    let authority = app_addr.to_string();
    let (http, tcp) = run_in(&a.ns, move || async move {
        let http = match timeout(STEP, client::get(app_addr, &authority, "/")).await {
            Ok(Ok(rsp)) => Ok((
                rsp.status.as_u16(),
                rsp.header("weft-proxy-error")
                    .unwrap_or_default()
                    .to_owned(),
            )),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err("no response".to_owned()),
        };
        let tcp = async {
            let mut socket = TcpStream::connect(echo_addr).await?;
            socket.write_all(b"secret").await?;
            socket.shutdown().await?;
            let mut reply = String::new();
            socket.read_to_string(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let tcp = match timeout(STEP, tcp).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => format!("error: {e}"),
            Err(_) => "no reply".to_owned(),
        };
        (http, tcp)
    })
    .expect("run the client in pod A");
    let (status, why) = http.unwrap_or_else(|e| panic!("HTTP: {e}"));
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("without mTLS"), "{why}");
    assert!(!tcp.contains("secret"), "TCP reached the pod: {tcp}");
    assert_eq!(app.requests(), 0, "nothing reached the app in plaintext");
    let m = scrape(&net, 0);
    assert_eq!(
        m.sum(
            "tcp_refused_total",
            &[
                ("direction", "outbound"),
                ("reason", "discovery_unavailable")
            ]
        ),
        1.0,
        "{}",
        m.text
    );
}
