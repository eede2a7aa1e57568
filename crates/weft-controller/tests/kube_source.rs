//! The controller's kube source against a real kube-apiserver and
//! kube-controller-manager (`weft_test::kube::KubeApi`; skipped with a message when the
//! binaries are not built, failing under CI). The test plays the node: it marks pods
//! Running and Ready at test addresses, the controller manager lists them in
//! EndpointSlices, and a Destination.Get stream (a client with a workload certificate,
//! as a proxy) sees them with their zone and identity.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use linkerd2_proxy_api::destination::update::Update as Kind;
use linkerd2_proxy_api::destination::{GetDestination, Update};
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound::outbound_policies_client::OutboundPoliciesClient;
use linkerd2_proxy_api::outbound::{proxy_protocol, traffic_spec, TrafficSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Streaming;
use weft_controller::kube::KubeSourceConfig;
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_test::kube::KubeApi;

use common::{apply, established, kubectl};

const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";
const CLIENT_ID: &str = "client.default.serviceaccount.identity.weft.cluster.local";
const WEB_ID: &str = "web.shop.serviceaccount.identity.weft.cluster.local";
/// How long an update may take to reach the stream after the API server stored a change.
const PROMPT: Duration = Duration::from_secs(1);

/// A controller with the kube source, in-process.
struct Mesh {
    dir: PathBuf,
    controller: Option<Controller>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        drop(self.controller.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Mesh {
    /// Starts a controller reading the API through `kubeconfig`.
    async fn start(kubeconfig: &Path, test: &str) -> Mesh {
        let dir =
            std::env::temp_dir().join(format!("weft-kube-source-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        identity::write_token(&dir.join("tokens"), "default", "client").unwrap();
        let config = Config {
            identity_dir: dir.join("identity"),
            tokens_dir: dir.join("tokens"),
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(3600),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            destination: Some(DestinationConfig {
                source: KubeSourceConfig {
                    kubeconfig: Some(kubeconfig.to_owned()),
                    ..Default::default()
                }
                .into(),
                cluster_domain: "cluster.local".into(),
                opaque_ports: vec![],
                policy: Default::default(),
            }),
        };
        let controller = Controller::start(config).await.unwrap();
        Mesh {
            dir,
            controller: Some(controller),
        }
    }

    fn controller(&self) -> &Controller {
        self.controller.as_ref().unwrap()
    }

    /// The admin server's answer to `GET path` (status line and body).
    async fn admin(&self, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(self.controller().admin_addr())
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn ready(&self) -> bool {
        self.admin("/ready").await.starts_with("HTTP/1.1 200")
    }

    async fn channel(&self, client_cert: Option<Identity>) -> Channel {
        let anchors =
            std::fs::read(self.dir.join("identity").join(identity::ANCHORS_FILE)).unwrap();
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(anchors))
            .domain_name(CONTROLLER);
        if let Some(id) = client_cert {
            tls = tls.identity(id);
        }
        Endpoint::from_shared(format!("https://{}", self.controller().grpc_addr()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A channel presenting a workload certificate (obtained with Certify, as a proxy).
    async fn workload_channel(&self) -> Channel {
        let token = std::fs::read(identity::token_path(
            &self.dir.join("tokens"),
            "default",
            "client",
        ))
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec![CLIENT_ID.to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let rsp = IdentityClient::new(self.channel(None).await)
            .certify(CertifyRequest {
                identity: CLIENT_ID.into(),
                token,
                certificate_signing_request: csr,
            })
            .await
            .unwrap()
            .into_inner();
        let chain: String = std::iter::once(rsp.leaf_certificate)
            .chain(rsp.intermediate_certificates)
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der)))
            .collect();
        let id = Identity::from_pem(chain, key.serialize_pem());
        self.channel(Some(id)).await
    }

    async fn client(&self) -> DestinationClient<Channel> {
        DestinationClient::new(self.workload_channel().await)
    }

    /// The names of the HTTP routes of `authority`'s outbound policy.
    async fn http_routes(&self, authority: &str) -> Vec<String> {
        let spec = TrafficSpec {
            source_workload: "default:client".into(),
            target: Some(traffic_spec::Target::Authority(authority.into())),
        };
        let policy = OutboundPoliciesClient::new(self.workload_channel().await)
            .get(spec)
            .await
            .unwrap_or_else(|s| panic!("OutboundPolicies.Get {authority}: {s}"))
            .into_inner();
        let Some(proxy_protocol::Kind::Detect(detect)) =
            policy.protocol.as_ref().and_then(|p| p.kind.as_ref())
        else {
            panic!("not a detect policy: {policy:?}");
        };
        detect
            .http1
            .iter()
            .flat_map(|h| &h.routes)
            .filter_map(|r| match r.metadata.as_ref()?.kind.as_ref()? {
                meta::metadata::Kind::Resource(r) => Some(r.name.clone()),
                meta::metadata::Kind::Default(_) => None,
            })
            .collect()
    }

    async fn get(&self, path: &str) -> Streaming<Update> {
        self.client()
            .await
            .get(GetDestination {
                scheme: "k8s".into(),
                path: path.into(),
                context_token: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("Get {path}: {s}"))
            .into_inner()
    }
}

/// Pod `name` of Service web (app: web), injected, service account web, on node-1.
fn pod_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {{app: web}}
  annotations: {{weft.io/injected: "true"}}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers: [{{name: app, image: web, ports: [{{name: http, containerPort: 8080}}]}}]
"#
    )
}

/// Plays the kubelet: the pod runs at `ip` and is Ready.
fn run_pod(api: &KubeApi, name: &str, ip: &str) {
    let status = format!(
        r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}},{{"type":"ContainersReady","status":"True"}}]}}}}"#
    );
    kubectl(
        api,
        &[
            "-n",
            "shop",
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ],
    );
}

/// What a stream has told its client: the endpoints (address → zone, identity), or
/// `NoEndpoints { exists }`.
#[derive(Debug, Default)]
struct View {
    endpoints: BTreeMap<SocketAddr, (String, String)>,
    no_endpoints: Option<bool>,
    removed: usize,
}

impl View {
    fn apply(&mut self, kind: Kind) {
        match kind {
            Kind::Add(set) => {
                self.no_endpoints = None;
                for a in set.addrs {
                    let id = a
                        .tls_identity
                        .and_then(|t| t.server_name)
                        .map(|n| n.name)
                        .unwrap_or_default();
                    let zone = a.metric_labels.get("zone").cloned().unwrap_or_default();
                    self.endpoints
                        .insert(SocketAddr::try_from(a.addr.unwrap()).unwrap(), (zone, id));
                }
            }
            Kind::Remove(set) => {
                for a in set.addrs {
                    self.endpoints.remove(&SocketAddr::try_from(a).unwrap());
                    self.removed += 1;
                }
            }
            Kind::NoEndpoints(n) => {
                self.endpoints.clear();
                self.no_endpoints = Some(n.exists);
            }
        }
    }

    /// Applies updates until `done` holds; how long that took, or `None` after `limit`.
    async fn until(
        &mut self,
        stream: &mut Streaming<Update>,
        limit: Duration,
        done: impl Fn(&View) -> bool,
    ) -> Option<Duration> {
        let started = Instant::now();
        while !done(self) {
            let left = limit.checked_sub(started.elapsed())?;
            let message = tokio::time::timeout(left, stream.message()).await.ok()?;
            let update = message
                .expect("the stream is healthy")
                .expect("the stream is open");
            self.apply(update.update.expect("an update of some kind"));
        }
        Some(started.elapsed())
    }

    fn addrs(&self) -> Vec<String> {
        self.endpoints.keys().map(|a| a.to_string()).collect()
    }
}

fn web(last: u8) -> String {
    format!("198.18.0.{last}:8080")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_marked_ready_reach_a_destination_stream_with_zone_and_identity() {
    let Some(api) = tokio::task::block_in_place(KubeApi::start_with_controller_manager) else {
        return;
    };
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: web, namespace: shop}}
- apiVersion: v1
  kind: Node
  metadata: {name: node-1, labels: {topology.kubernetes.io/zone: zone-a}}
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec: {selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}]}
"#,
    );
    apply(&api, &pod_yaml("web-1"));
    apply(&api, &pod_yaml("web-2"));
    // The Gateway API's HTTPRoute, as its CRD serves it (the schema left open: the
    // controller checks routes itself); no GRPCRoute nor ReferenceGrant CRD.
    apply(&api, HTTPROUTE_CRD);
    established(&api, "httproutes.gateway.networking.k8s.io");

    let mesh = Mesh::start(&api.kubeconfig(), "ready").await;
    assert!(
        weft_test::eventually(Duration::from_secs(30), || mesh.ready()).await,
        "/ready never turned 200 (the kube source's first list)"
    );
    let metrics = mesh.admin("/metrics").await;
    assert!(
        metrics.contains("weft_controller_kube_events_total{kind=\"pod\"}"),
        "{metrics}"
    );

    let mut stream = mesh.get("web.shop.svc.cluster.local:80").await;
    let mut view = View::default();
    assert!(
        view.until(&mut stream, PROMPT, |v| v.no_endpoints == Some(true))
            .await
            .is_some(),
        "a Service without ready pods is NoEndpoints {{ exists: true }}: {view:?}"
    );

    run_pod(&api, "web-1", "198.18.0.21");
    run_pod(&api, "web-2", "198.18.0.22");
    let both = [web(21), web(22)];
    let took = view.until(&mut stream, PROMPT, |v| v.addrs() == both).await;
    eprintln!("both pods reached the stream {took:?} after web-2's status patch returned");
    assert!(took.is_some(), "within {PROMPT:?}: {view:?}");
    for (addr, (zone, id)) in &view.endpoints {
        assert_eq!(
            (zone.as_str(), id.as_str()),
            ("zone-a", WEB_ID),
            "{addr}: the node's zone (the slice's) and web's identity"
        );
    }

    // A route whose parent is the Service reaches its outbound policy.
    apply(
        &api,
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-split, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"#,
    );
    assert!(
        weft_test::eventually(Duration::from_secs(5), || async {
            mesh.http_routes("web.shop.svc.cluster.local:80").await == ["web-split"]
        })
        .await,
        "the HTTPRoute did not reach web's outbound policy: {:?}",
        mesh.http_routes("web.shop.svc.cluster.local:80").await
    );

    // Scaled to 3.
    apply(&api, &pod_yaml("web-3"));
    run_pod(&api, "web-3", "198.18.0.23");
    let three = [web(21), web(22), web(23)];
    let took = view
        .until(&mut stream, PROMPT, |v| v.addrs() == three)
        .await;
    eprintln!("web-3 added {took:?} after its status patch returned");
    assert!(took.is_some(), "web-3 was not added: {view:?}");

    // One deleted.
    kubectl(
        &api,
        &[
            "-n",
            "shop",
            "delete",
            "pod",
            "web-1",
            "--grace-period=0",
            "--force",
        ],
    );
    let two = [web(22), web(23)];
    let took = view
        .until(&mut stream, PROMPT, |v| v.addrs() == two && v.removed == 1)
        .await;
    eprintln!("web-1 removed {took:?} after its deletion returned");
    assert!(took.is_some(), "web-1 was not removed: {view:?}");

    // The Service deleted.
    kubectl(&api, &["-n", "shop", "delete", "service", "web"]);
    let took = view
        .until(&mut stream, PROMPT, |v| v.no_endpoints == Some(false))
        .await;
    eprintln!("NoEndpoints {took:?} after the Service's deletion returned");
    assert!(
        took.is_some(),
        "no NoEndpoints {{ exists: false }}: {view:?}"
    );
}

/// Log lines of the whole test process (each test runs in a process of its own under
/// nextest).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("weft_controller=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    /// Lines that contain every one of `words`.
    fn lines(&self, words: &[&str]) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_owned)
            .collect()
    }
}

/// The number in `metrics` of the sample named `name` (with its labels), if any.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let value = l.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_then_granted_then_the_api_server_gone() {
    let logs = Logs::capture();
    let Some(api) = tokio::task::block_in_place(KubeApi::start) else {
        return;
    };
    // The controller as it runs in a cluster: a ServiceAccount's token, with no RBAC
    // permission yet.
    kubectl(&api, &["create", "namespace", "weft-system"]);
    kubectl(
        &api,
        &[
            "-n",
            "weft-system",
            "create",
            "serviceaccount",
            "weft-controller",
        ],
    );
    let token = kubectl(
        &api,
        &[
            "-n",
            "weft-system",
            "create",
            "token",
            "weft-controller",
            "--duration=1h",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{}\", certificate-authority: \"{}\"}}}}]\nusers: [{{name: controller, user: {{token: \"{}\"}}}}]\ncontexts: [{{name: test, context: {{cluster: test, user: controller}}}}]\ncurrent-context: test\n",
            api.url(),
            api.ca_cert().display(),
            token.trim()
        ),
    )
    .unwrap();
    let mesh = Mesh::start(&kubeconfig, "forbidden").await;

    // Refused: retried with backoff, said once, not ready.
    let pod_errors = "weft_controller_kube_errors_total{kind=\"pod\"}";
    assert!(
        weft_test::eventually(Duration::from_secs(30), || async {
            sample(&mesh.admin("/metrics").await, pod_errors).unwrap_or(0.0) >= 2.0
        })
        .await,
        "the pods' list was not refused twice: {}",
        mesh.admin("/metrics").await
    );
    assert!(!mesh.ready().await, "/ready before the first full list");
    // Discovery unavailable: a stream says nothing (the proxy fails closed), rather
    // than "no such destination".
    let mut early = mesh.get("db.shop.svc.cluster.local:5432").await;
    if let Ok(update) = tokio::time::timeout(Duration::from_millis(300), early.message()).await {
        panic!("an update before the first full list: {update:?}");
    }
    let refused = [
        "cannot watch",
        "kind=\"pod\"",
        "needs get, list and watch on pods",
    ];
    let said = logs.lines(&refused);
    assert_eq!(
        said.len(),
        1,
        "one line for the refused pods, however many retries: {said:#?}"
    );

    apply(
        &api,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: weft-controller}
rules:
- {apiGroups: [""], resources: [services, pods, nodes], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes, grpcroutes, referencegrants]
  verbs: [get, list, watch]
"#,
    );
    kubectl(
        &api,
        &[
            "create",
            "clusterrolebinding",
            "weft-controller",
            "--clusterrole=weft-controller",
            "--serviceaccount=weft-system:weft-controller",
        ],
    );
    assert!(
        weft_test::eventually(Duration::from_secs(60), || mesh.ready()).await,
        "/ready did not turn 200 once the controller could list"
    );
    let said = logs.lines(&["watching again", "kind=\"pod\""]);
    assert_eq!(said.len(), 1, "the recovery is said once: {said:#?}");

    // A Service without a selector and the EndpointSlice its owner maintains (no
    // controller manager here): an unmeshed endpoint, no identity.
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: shop}
  spec: {ports: [{name: sql, port: 5432}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: db-1, namespace: shop, labels: {kubernetes.io/service-name: db}}
  addressType: IPv4
  ports: [{name: sql, port: 5432}]
  endpoints: [{addresses: [198.18.0.40], zone: zone-c}]
"#,
    );
    let db = [(
        "198.18.0.40:5432".to_owned(),
        "zone-c".to_owned(),
        String::new(),
    )];
    let endpoints = |view: &View| -> Vec<(String, String, String)> {
        view.endpoints
            .iter()
            .map(|(a, (z, id))| (a.to_string(), z.clone(), id.clone()))
            .collect()
    };
    let mut stream = mesh.get("db.shop.svc.cluster.local:5432").await;
    let mut view = View::default();
    assert!(
        view.until(&mut stream, Duration::from_secs(5), |v| endpoints(v) == db)
            .await
            .is_some(),
        "{view:?}"
    );
    // The stream opened before the first list follows too.
    let mut view = View::default();
    assert!(
        view.until(&mut early, PROMPT, |v| endpoints(v) == db)
            .await
            .is_some(),
        "{view:?}"
    );

    // The API server gone: said once per kind, and the last index keeps serving.
    let apiserver = api.pids()[1];
    let killed = std::process::Command::new("kill")
        .args(["-9", &apiserver.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        weft_test::eventually(Duration::from_secs(30), || async {
            sample(&mesh.admin("/metrics").await, pod_errors).unwrap_or(0.0) >= 4.0
        })
        .await,
        "the watches did not fail without the API server"
    );
    let said = logs.lines(&["cannot watch", "kind=\"pod\""]);
    assert_eq!(said.len(), 2, "refused once, gone once: {said:#?}");
    let mut stream = mesh.get("db.shop.svc.cluster.local:5432").await;
    let mut view = View::default();
    assert!(
        view.until(&mut stream, PROMPT, |v| endpoints(v) == db)
            .await
            .is_some(),
        "the last index no longer serves: {view:?}"
    );
    assert!(mesh.ready().await, "ready stays ready");
}

/// The HTTPRoute CRD, its schema open.
const HTTPROUTE_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: httproutes.gateway.networking.k8s.io
  annotations: {api-approved.kubernetes.io: "https://github.com/kubernetes-sigs/gateway-api/pull/2466"}
spec:
  group: gateway.networking.k8s.io
  names: {kind: HTTPRoute, listKind: HTTPRouteList, plural: httproutes, singular: httproute}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;
