//! Injected pods run for real (issue 12's "best version" of discovery and injection end
//! to end): a real kube-apiserver and kube-controller-manager (`weft_test::kube`), the
//! real `weft-injector` as the API server's mutating webhook, the real
//! `weft-controller` with `--source kube --identity-tokens kube`, and a test node agent
//! (`weft_test::kube_node`) that runs the pods bound to its Node from their stored,
//! injected spec: `weft-init`'s `weft-proxy init`, the `weft-proxy` sidecar with its
//! injected environment and a projected token from TokenRequest, the app. A request
//! between two Deployments then crosses both injected proxies over mTLS with the
//! ServiceAccounts' identities; a scaled-up server is reached and a scaled-down one
//! removed; an impostor pod (another ServiceAccount's token) gets no certificate.
//!
//! Needs root (network namespaces, iptables), the Kubernetes test binaries
//! (`scripts/setup --kube`) and the workspace's binaries (`cargo build --workspace
//! --bins`): skipped with a message without them, failing under CI.

mod common;

use common::eventually;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use weft_test::kube::KubeApi;
use weft_test::kube_node::{KubeNode, NodeConfig, NODE_IP};
use weft_test::Scrape;

/// The image the injector gives both of its containers; the node runs weft-proxy for it.
const PROXY_IMAGE: &str = "weft.test/weft-proxy:dev";
const APP_IMAGE: &str = "weft.test/weft-demo-app:dev";
const CLIENT_ID: &str = "client.shop.serviceaccount.identity.weft.cluster.local";
const SERVER_ID: &str = "server.shop.serviceaccount.identity.weft.cluster.local";
/// The controller's ports on the node's network.
const CONTROLLER_PORT: u16 = 8090;
const CONTROLLER_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9990);
/// The bound of every wait.
const LIMIT: Duration = Duration::from_secs(30);

/// Where cargo put this package's binaries, and the workspace's others.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_weft-injector"))
        .parent()
        .expect("a directory")
        .to_owned()
}

/// Why this test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    if let Err(reason) = weft_test::netns::can_run() {
        return Some(reason);
    }
    let missing: Vec<&str> = ["weft", "weft-proxy", "weft-controller", "weft-demo-app"]
        .into_iter()
        .filter(|b| !bin_dir().join(b).is_file())
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not built in {}: run `cargo build --workspace --bins` first (scripts/test does)",
            missing.join(", "),
            bin_dir().display()
        )
    })
}

/// The real weft-injector on a loopback port (started by the node, which stops it),
/// with a serving certificate for 127.0.0.1 from a CA of its own, registered as the
/// API server's webhook for pods.
fn start_injector(api: &KubeApi, node: &KubeNode, dir: &Path, anchors: &Path) {
    let ca_pem = common::webhook_certificate(dir);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut injector = Command::new(env!("CARGO_BIN_EXE_weft-injector"));
    injector
        .arg(format!("--listen=127.0.0.1:{port}"))
        .arg(format!("--cert={}", dir.join("tls.crt").display()))
        .arg(format!("--key={}", dir.join("tls.key").display()))
        .arg(format!("--trust-anchors={}", anchors.display()))
        .arg(format!("--controller={NODE_IP}:{CONTROLLER_PORT}"))
        .arg(format!("--proxy-image={PROXY_IMAGE}"))
        .env("KUBECONFIG", api.kubeconfig());
    node.spawn_local("weft-injector", injector).unwrap();
    let webhook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": { "name": "weft-injector" },
        "webhooks": [{
            "name": "inject.weft.io",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/inject"),
                "caBundle": k8s_openapi::ByteString(ca_pem.into_bytes()),
            },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": 5,
            "rules": [{ "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"], "scope": "Namespaced" }],
        }],
    });
    api.apply(&webhook.to_string());
}

/// The body of the node's `GET /` of `addr` once it answers `status` (within `LIMIT`);
/// panics with `what`, the last answer and the node's logs if it never does.
fn answered(node: &KubeNode, addr: SocketAddr, status: u16, what: &str) -> String {
    let body = eventually(LIMIT, || {
        let (got, body) = node.get(addr, "/").ok()?;
        (got == status).then_some(body)
    });
    body.unwrap_or_else(|| panic!("{what}: {:?}\n{}", node.get(addr, "/"), node.logs()))
}

fn get_json(api: &KubeApi, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&api.kubectl(&all).unwrap()).unwrap()
}

/// A Deployment of weft-demo-app in shop: `name`'s pods (label `app: name`, service
/// account `name`), serving on 8080.
fn deployment(name: &str, replicas: u32, extra_args: &[&str], probe: Value) -> String {
    let mut args = vec!["serve", "--name", name, "--port", "8080"];
    args.extend(extra_args);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "serviceAccountName": name,
                    "containers": [{
                        "name": "app",
                        "image": APP_IMAGE,
                        "args": args,
                        "env": [
                            { "name": "WEFT_POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                        ],
                        "ports": [{ "name": "http", "containerPort": 8080 }],
                        "readinessProbe": probe,
                    }],
                },
            },
        },
    })
    .to_string()
}

/// The names and addresses of the node's Ready pods of `app`.
fn ready_pods(node: &KubeNode, app: &str) -> Vec<(String, Ipv4Addr)> {
    node.pods()
        .into_iter()
        .filter(|p| p.namespace == "shop" && p.name.starts_with(&format!("{app}-")))
        .filter(|p| p.state == "ready")
        .map(|p| (p.name, p.ip))
        .collect()
}

fn metrics(node: &KubeNode, addr: SocketAddr) -> (Scrape, String) {
    let (status, body) = node
        .get(addr, "/metrics")
        .unwrap_or_else(|e| panic!("GET {addr}/metrics: {e:#}"));
    assert_eq!(status, 200, "{body}");
    (Scrape::parse(&body), body)
}

#[test]
fn a_request_between_two_injected_deployments_crosses_both_proxies_over_mtls() {
    if let Some(reason) = cannot_run() {
        weft_test::netns::skip(&reason);
        return;
    }
    let Some(api) = KubeApi::start_with_controller_manager() else {
        return;
    };
    let bins = bin_dir();
    let dir = api.dir().join("e2e");
    std::fs::create_dir_all(&dir).unwrap();

    // The mesh's trust anchors and issuer, as an operator makes them.
    let identity = dir.join("identity");
    let out = Command::new(bins.join("weft"))
        .args([
            "identity",
            "init",
            "--trust-domain",
            "cluster.local",
            "--dir",
        ])
        .arg(&identity)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let anchors = identity.join("trust-anchors.pem");

    let node = KubeNode::start(
        &api,
        NodeConfig::new("weft-test-node")
            .zone("zone-a")
            .namespace("shop")
            .image(PROXY_IMAGE, bins.join("weft-proxy"))
            .image(APP_IMAGE, bins.join("weft-demo-app")),
    )
    .unwrap();

    // The controller on the node's network (as a host-network pod), serving the pods
    // at the node's address, reading the API through the fixture's kubeconfig.
    api.kubectl(&["create", "namespace", "weft-system"])
        .unwrap();
    let mut controller = Command::new(bins.join("weft-controller"));
    controller
        .arg(format!("--identity-dir={}", identity.display()))
        .args(["--identity-tokens=kube", "--source=kube"])
        .arg(format!("--kubeconfig={}", api.kubeconfig().display()))
        .arg(format!("--listen={NODE_IP}:{CONTROLLER_PORT}"))
        .arg(format!("--admin-listen={CONTROLLER_ADMIN}"))
        .args(["--lease-namespace=weft-system", "--lease-identity=node-e2e"]);
    node.spawn_on_node("weft-controller", &controller).unwrap();
    let controller_ready = eventually(LIMIT, || {
        let (status, _) = node.get(CONTROLLER_ADMIN, "/ready").ok()?;
        (status == 200).then_some(())
    });
    assert!(
        controller_ready.is_some(),
        "the controller's /ready never turned 200:\n{}",
        node.log("weft-controller")
    );

    // The injector, called by the API server for the pods of the annotated namespace.
    api.apply(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop, annotations: {weft.io/inject: enabled}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: client, namespace: shop}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: server, namespace: shop}}
- apiVersion: v1
  kind: Service
  metadata: {name: server, namespace: shop}
  spec: {selector: {app: server}, ports: [{name: http, port: 80, targetPort: http}]}
"#,
    );
    start_injector(&api, &node, &dir, &anchors);
    let probe = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "probe", "namespace": "shop" },
        "spec": { "containers": [{ "name": "app", "image": APP_IMAGE }] },
    })
    .to_string();
    let called = eventually(LIMIT, || {
        let pod: Value = serde_json::from_str(
            &api.kubectl_stdin(
                &["create", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(&probe),
            )
            .ok()?,
        )
        .ok()?;
        pod["spec"]["initContainers"].is_array().then_some(())
    });
    assert!(
        called.is_some(),
        "the API server never called the injector:\n{}",
        node.log("weft-injector")
    );

    // The server, then the client calling the server's ClusterIP for every request.
    let started = Instant::now();
    api.apply(&deployment(
        "server",
        1,
        &[],
        json!({ "httpGet": { "path": "/", "port": "http" }, "periodSeconds": 1 }),
    ));
    let vip = api
        .kubectl(&[
            "-n",
            "shop",
            "get",
            "service",
            "server",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .unwrap();
    let upstream = format!("http://{vip}:80/");
    api.apply(&deployment(
        "client",
        1,
        &["--upstream", &upstream],
        json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1 }),
    ));
    let running = eventually(LIMIT, || {
        let (client, server) = (ready_pods(&node, "client"), ready_pods(&node, "server"));
        (client.len() == 1 && server.len() == 1).then(|| (client[0].clone(), server[0].clone()))
    });
    let Some(((client_pod, client_ip), (server_pod, server_ip))) = running else {
        panic!(
            "the pods did not become ready:\n{}\n{}",
            api.kubectl(&["-n", "shop", "get", "pods", "-o", "wide"])
                .unwrap_or_default(),
            node.logs()
        );
    };
    eprintln!(
        "client {client_pod} ({client_ip}) and server {server_pod} ({server_ip}) ready {:?} after the server's Deployment was applied",
        started.elapsed()
    );

    // What the API server stored: the injected spec the node ran, Ready where it runs.
    let stored = get_json(&api, &["-n", "shop", "get", "pod", &server_pod]);
    let init: Vec<&str> = stored["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["weft-init", "weft-proxy"], "{stored:#}");
    assert_eq!(stored["spec"]["nodeName"], "weft-test-node");
    // Bound through pods/binding, as the scheduler binds: the API server's
    // PodTopologyLabels admission copied the Node's zone, which the injected proxy
    // reads through the downward API (WEFT_ZONE).
    assert_eq!(
        stored["metadata"]["labels"]["topology.kubernetes.io/zone"], "zone-a",
        "{stored:#}"
    );
    assert_eq!(stored["status"]["podIP"], server_ip.to_string());
    let slices = get_json(
        &api,
        &[
            "-n",
            "shop",
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=server",
        ],
    );
    let slice_addrs: Vec<&str> = slices["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter_map(|e| e["addresses"][0].as_str())
        .collect();
    assert_eq!(
        slice_addrs,
        [server_ip.to_string()],
        "kube-controller-manager's EndpointSlice for server: {slices:#}"
    );

    // The request: from the node to the client's app (through its inbound proxy), which
    // calls the server's ClusterIP: out through the client's proxy, in through the
    // server's.
    let client_app = SocketAddr::from((client_ip, 8080));
    let answer = answered(&node, client_app, 200, "the client never answered 200");
    eprintln!("answer: {}", answer.trim());
    assert!(
        answer.starts_with(&format!("client / (pod {client_pod}, zone )")),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("<- [200 server / (pod {server_pod}, zone )]")),
        "{answer}"
    );

    // From inside the client pod (as `kubectl exec` would run it, as the app's user):
    // the ClusterIP through the client's proxy too.
    let bin_demo = bins.join("weft-demo-app");
    let out = node
        .exec(
            "shop",
            &client_pod,
            2103,
            &[bin_demo.to_str().unwrap(), "get", &upstream],
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("server / (pod {server_pod}, zone )")),
        "{out:?}"
    );

    // Both hops' proxies saw the request over mTLS with the other side's identity.
    let (client_proxy, client_text) = metrics(&node, SocketAddr::from((client_ip, 4191)));
    let outbound = client_proxy.sum(
        "request_total",
        &[
            ("direction", "outbound"),
            ("tls", "true"),
            ("server_id", SERVER_ID),
            ("zone", "zone-a"),
            ("dst_zone", "zone-a"),
        ],
    );
    assert!(outbound >= 1.0, "client's proxy:\n{client_text}");
    for line in client_text
        .lines()
        .filter(|l| l.starts_with("request_total{") && l.contains(r#"direction="outbound""#))
    {
        eprintln!("client's proxy: {line}");
    }
    let (server_proxy, server_text) = metrics(&node, SocketAddr::from((server_ip, 4191)));
    let inbound = server_proxy.sum(
        "request_total",
        &[
            ("direction", "inbound"),
            ("tls", "true"),
            ("client_id", CLIENT_ID),
        ],
    );
    assert!(inbound >= 1.0, "server's proxy:\n{server_text}");
    for line in server_text
        .lines()
        .filter(|l| l.starts_with("request_total{") && l.contains(r#"tls="true""#))
    {
        eprintln!("server's proxy: {line}");
    }
    for (scrape, text) in [(&client_proxy, &client_text), (&server_proxy, &server_text)] {
        assert_eq!(
            scrape.sum("identity_cert_refresh_total", &[("result", "ok")]),
            1.0,
            "{text}"
        );
    }

    // Inbound policy reaches the injected pods: a Server for the server's port that
    // only the client's ServiceAccount may call. The client's calls still pass; a
    // caller without a mesh identity (the node) gets 403 from the server's proxy. The
    // kubelet's probes come from the node too, but the injector pointed them at the
    // proxy's admin port, which makes them on loopback: the new server pods below
    // become Ready all the same.
    common::install_crds(&api);
    api.apply(
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: policy.weft.io/v1alpha1
  kind: Server
  metadata: {name: server-http, namespace: shop}
  spec: {podSelector: {matchLabels: {app: server}}, port: http, proxyProtocol: HTTP/1}
- apiVersion: policy.weft.io/v1alpha1
  kind: MeshTLSAuthentication
  metadata: {name: clients, namespace: shop}
  spec: {identityRefs: [{kind: ServiceAccount, name: client}]}
- apiVersion: policy.weft.io/v1alpha1
  kind: AuthorizationPolicy
  metadata: {name: server-from-client, namespace: shop}
  spec:
    targetRef: {group: policy.weft.io, kind: Server, name: server-http}
    requiredAuthenticationRefs: [{group: policy.weft.io, kind: MeshTLSAuthentication, name: clients}]
"#,
    );
    let server_app = SocketAddr::from((server_ip, 8080));
    let refused = answered(
        &node,
        server_app,
        403,
        "the server's proxy never refused an unauthenticated caller",
    );
    eprintln!(
        "the node, unauthenticated, to the server: 403 {}",
        refused.trim()
    );
    // The three objects reach the controller's index one by one: until the
    // authentication is there too, the Server admits no one.
    let allowed = eventually(LIMIT, || {
        let (status, body) = node.get(client_app, "/").ok()?;
        (status == 200 && body.contains("<- [200 server /")).then_some(())
    });
    assert!(
        allowed.is_some(),
        "the client, authorized, is refused: {:?}",
        node.get(client_app, "/")
    );
    assert!(
        !node.logs().contains("no inbound policy for this workload"),
        "a proxy found no inbound policy for its pod:\n{}",
        node.logs()
    );

    // Their certificates came from projected tokens the controller had reviewed.
    let (controller_metrics, text) = metrics(&node, CONTROLLER_ADMIN);
    let reviewed = controller_metrics.sum(
        "weft_controller_identity_token_reviews_total",
        &[("result", "authenticated")],
    );
    assert_eq!(reviewed, 2.0, "{text}");
    assert_eq!(
        controller_metrics.sum(
            "weft_controller_identity_certify_total",
            &[("result", "ok")]
        ),
        2.0,
        "{text}"
    );

    // Scaled to two servers: the new one is reached through the same proxies.
    let scaled = Instant::now();
    api.kubectl(&[
        "-n",
        "shop",
        "scale",
        "deployment",
        "server",
        "--replicas=2",
    ])
    .unwrap();
    let new_server = eventually(LIMIT, || {
        ready_pods(&node, "server")
            .into_iter()
            .find(|(name, _)| *name != server_pod)
    });
    let Some((new_pod, new_ip)) = new_server else {
        panic!("no second server became ready:\n{}", node.logs());
    };
    let ready_after = scaled.elapsed();
    let reached = eventually(LIMIT, || {
        let (status, body) = node.get(client_app, "/").ok()?;
        (status == 200 && body.contains(&format!("(pod {new_pod}, zone )"))).then_some(body)
    });
    assert!(
        reached.is_some(),
        "{new_pod} ({new_ip}) was never reached through the client:\n{}",
        node.logs()
    );
    eprintln!(
        "{new_pod} ({new_ip}) ready {ready_after:?} and reached {:?} after kubectl scale returned",
        scaled.elapsed()
    );
    let (new_proxy, text) = metrics(&node, SocketAddr::from((new_ip, 4191)));
    assert!(
        new_proxy.sum(
            "request_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", CLIENT_ID),
            ],
        ) >= 1.0,
        "{text}"
    );
    let (controller_metrics, text) = metrics(&node, CONTROLLER_ADMIN);
    assert_eq!(
        controller_metrics.sum(
            "weft_controller_identity_token_reviews_total",
            &[("result", "authenticated")],
        ),
        3.0,
        "the new proxy's token was reviewed too:\n{text}"
    );

    // Scaled back to one: the node stops the deleted pod's containers, removes its
    // network and deletes it for good; the client's answers come from the one left.
    let scaled_down = Instant::now();
    api.kubectl(&[
        "-n",
        "shop",
        "scale",
        "deployment",
        "server",
        "--replicas=1",
    ])
    .unwrap();
    let gone = eventually(LIMIT, || {
        let pods = get_json(&api, &["-n", "shop", "get", "pods", "-l", "app=server"]);
        let names: Vec<String> = pods["items"]
            .as_array()?
            .iter()
            .filter_map(|p| Some(p["metadata"]["name"].as_str()?.to_owned()))
            .collect();
        let running = ready_pods(&node, "server");
        (names.len() == 1 && running.len() == 1 && node.pods().len() == 2)
            .then(|| running[0].clone())
    });
    let Some((left, _)) = gone else {
        panic!(
            "the scale-down did not finish:\n{}\n{}",
            api.kubectl(&["-n", "shop", "get", "pods", "-o", "wide"])
                .unwrap_or_default(),
            node.logs()
        );
    };
    let only_left = eventually(LIMIT, || {
        (0..5)
            .all(|_| {
                node.get(client_app, "/").is_ok_and(|(status, body)| {
                    status == 200 && body.contains(&format!("(pod {left}, zone )"))
                })
            })
            .then_some(())
    });
    assert!(
        only_left.is_some(),
        "the client's answers did not all come from {left}:\n{}",
        node.logs()
    );
    eprintln!(
        "scaled back to {left} alone {:?} after kubectl scale returned",
        scaled_down.elapsed()
    );

    // An impostor: the server's injected pod as stored, run as ServiceAccount client but
    // with its proxy told it is server (created injected, so the webhook leaves it). Its
    // projected token is client's, so the controller refuses server's certificate and
    // the pod never becomes Ready.
    let mut impostor = get_json(&api, &["-n", "shop", "get", "pod", &left]);
    impostor.as_object_mut().unwrap().remove("status");
    impostor["metadata"] = json!({
        "name": "impostor",
        "namespace": "shop",
        "labels": { "app": "impostor" },
        "annotations": impostor["metadata"]["annotations"].clone(),
    });
    impostor["spec"]["serviceAccountName"] = json!("client");
    impostor["spec"]["serviceAccount"] = json!("client");
    impostor["spec"].as_object_mut().unwrap().remove("nodeName");
    let proxy_env = impostor["spec"]["initContainers"][1]["env"]
        .as_array_mut()
        .unwrap();
    let account = proxy_env
        .iter_mut()
        .find(|e| e["name"] == "WEFT_SERVICE_ACCOUNT")
        .unwrap();
    *account = json!({ "name": "WEFT_SERVICE_ACCOUNT", "value": "server" });
    let created = Instant::now();
    api.apply(&impostor.to_string());
    let refused = eventually(LIMIT, || {
        let (scrape, _) = metrics(&node, CONTROLLER_ADMIN);
        (scrape.sum(
            "weft_controller_identity_certify_total",
            &[("result", "wrong_identity")],
        ) >= 1.0)
            .then_some(())
    });
    assert!(
        refused.is_some(),
        "the impostor's proxy was not refused:\n{}",
        node.logs()
    );
    // The proxy says why (logged after the controller counted it).
    let refusal =
        format!("the token proves ServiceAccount shop/client ({CLIENT_ID}), not {SERVER_ID}");
    let logged = eventually(LIMIT, || {
        node.log("shop/impostor/weft-proxy")
            .contains(&refusal)
            .then_some(())
    });
    assert!(logged.is_some(), "{}", node.log("shop/impostor/weft-proxy"));
    let log = node.log("shop/impostor/weft-proxy");
    let line = log
        .lines()
        .find(|l| l.contains(&refusal))
        .unwrap_or_default();
    eprintln!(
        "impostor refused {:?} after kubectl apply returned: {line}",
        created.elapsed()
    );
    let state = node
        .pods()
        .into_iter()
        .find(|p| p.name == "impostor")
        .map(|p| p.state);
    assert_eq!(
        state.as_deref(),
        Some("starting init container weft-proxy"),
        "waiting for its proxy's startup probe"
    );
    let ready = api
        .kubectl(&[
            "-n",
            "shop",
            "get",
            "pod",
            "impostor",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .unwrap();
    assert_ne!(ready, "True");
    // Deleted while it starts: the node stops it and deletes it for good.
    api.kubectl(&["-n", "shop", "delete", "pod", "impostor", "--wait=false"])
        .unwrap();
    let deleted = eventually(LIMIT, || {
        let gone = api
            .kubectl(&["-n", "shop", "get", "pod", "impostor", "--ignore-not-found"])
            .ok()?
            .trim()
            .is_empty();
        (gone && node.pods().iter().all(|p| p.name != "impostor")).then_some(())
    });
    assert!(
        deleted.is_some(),
        "the impostor was not stopped and deleted:\n{}",
        node.logs()
    );
    eprintln!(
        "impostor stopped and deleted {:?} after it was created",
        created.elapsed()
    );
}
