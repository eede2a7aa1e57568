//! The outbound policy service in-process: OutboundPolicies.Get and Watch over gRPC
//! with TLS, answering from a mesh directory whose HTTPRoute the test edits while a
//! stream is open (the weight change a canary release makes). Clients present a
//! workload certificate (web's, obtained with Certify), as proxies do.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::meta;
use linkerd2_proxy_api::outbound::outbound_policies_client::OutboundPoliciesClient;
use linkerd2_proxy_api::outbound::{
    http_route, proxy_protocol, traffic_spec, OutboundPolicy, TrafficSpec,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Streaming};
use weft_controller::destination::LocalSourceConfig;
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_core::pods::{PodsFile, ServiceAddress};

const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";
/// How long a policy may take to arrive after a file changed.
const PROMPT: Duration = Duration::from_secs(1);

const MESH: &str = "kind: Mesh\nworkloads:\n  - {name: web, ports: [8080], command: [app]}\n  - {name: books-v1, ports: [8080], command: [app], labels: {app: books, version: v1}}\n  - {name: books-v2, ports: [8080], command: [app], labels: {app: books, version: v2}}\n";

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec: {selector: {app: books}, ports: [{port: 80, targetPort: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: books-v1}\nspec: {selector: {app: books, version: v1}, ports: [{port: 80, targetPort: 8080}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: books-v2}\nspec: {selector: {app: books, version: v2}, ports: [{port: 80, targetPort: 8080}]}\n";

/// The canary route, with books-v1 and books-v2 weighted.
fn canary(v1: i64, v2: i64) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: books-canary, namespace: default}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: books, port: 80}}]\n  rules:\n  - backendRefs:\n    - {{name: books-v1, port: 80, weight: {v1}}}\n    - {{name: books-v2, port: 80, weight: {v2}}}\n"
    )
}

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
    async fn start(routes: &str) -> Mesh {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-outbound-policies-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mesh")).unwrap();
        std::fs::write(dir.join("mesh/mesh.yaml"), MESH).unwrap();
        std::fs::write(dir.join("mesh/services.yaml"), SERVICES).unwrap();
        std::fs::write(dir.join("mesh/routes.yaml"), routes).unwrap();
        PodsFile {
            pods: Vec::new(),
            services: vec![ServiceAddress {
                name: "books".into(),
                namespace: "default".into(),
                ip: [198, 19, 0, 1].into(),
            }],
        }
        .write(&dir.join("pods.yaml"))
        .unwrap();
        identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        identity::write_token(&dir.join("tokens"), "default", "web").unwrap();
        identity::write_token(&dir.join("tokens"), "shop", "client").unwrap();
        let config = Config {
            identity_dir: dir.join("identity"),
            tokens_dir: dir.join("tokens"),
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(3600),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            destination: Some(DestinationConfig {
                source: LocalSourceConfig {
                    mesh_dir: dir.join("mesh"),
                    pods_file: dir.join("pods.yaml"),
                    watch_interval: Duration::from_millis(20),
                }
                .into(),
                cluster_domain: "cluster.local".into(),
                opaque_ports: vec![],
                policy: Default::default(),
            }),
        };
        let controller = Some(Controller::start(config).await.unwrap());
        Mesh { dir, controller }
    }

    /// Replaces the route file as an editor or `kubectl apply` would (atomically).
    fn set_routes(&self, text: &str) {
        let tmp = self.dir.join("routes.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("mesh/routes.yaml")).unwrap();
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
        let addr = self.controller.as_ref().unwrap().grpc_addr();
        Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A client presenting web's workload certificate, issued through Certify.
    async fn client(&self) -> OutboundPoliciesClient<Channel> {
        self.client_of("default", "web").await
    }

    /// A client presenting the workload certificate of service account `sa` of
    /// namespace `ns`.
    async fn client_of(&self, ns: &str, sa: &str) -> OutboundPoliciesClient<Channel> {
        let id = format!("{sa}.{ns}.serviceaccount.identity.weft.cluster.local");
        let token = std::fs::read(identity::token_path(&self.dir.join("tokens"), ns, sa)).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec![id.clone()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let rsp = IdentityClient::new(self.channel(None).await)
            .certify(CertifyRequest {
                identity: id,
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
        OutboundPoliciesClient::new(self.channel(Some(id)).await)
    }
}

fn authority(a: &str) -> TrafficSpec {
    TrafficSpec {
        source_workload: "web-0".into(),
        target: Some(traffic_spec::Target::Authority(a.into())),
    }
}

/// `(route name, [(backend Service, weight)])` of each HTTP route of a policy.
fn routes(policy: &OutboundPolicy) -> Vec<(String, Vec<(String, u32)>)> {
    let Some(proxy_protocol::Kind::Detect(detect)) =
        policy.protocol.as_ref().and_then(|p| p.kind.as_ref())
    else {
        panic!("not a detect policy: {policy:?}");
    };
    let name = |m: Option<&meta::Metadata>| match m.and_then(|m| m.kind.as_ref()) {
        Some(meta::metadata::Kind::Resource(r)) => r.name.clone(),
        Some(meta::metadata::Kind::Default(d)) => format!("default:{d}"),
        None => String::new(),
    };
    detect
        .http1
        .as_ref()
        .unwrap()
        .routes
        .iter()
        .map(|r| {
            let backends = match r.rules[0].backends.as_ref().and_then(|d| d.kind.as_ref()) {
                Some(http_route::distribution::Kind::RandomAvailable(ra)) => ra
                    .backends
                    .iter()
                    .map(|b| {
                        let backend = b.backend.as_ref().and_then(|rb| rb.backend.as_ref());
                        (name(backend.and_then(|b| b.metadata.as_ref())), b.weight)
                    })
                    .collect(),
                other => panic!("unexpected distribution {other:?}"),
            };
            (name(r.metadata.as_ref()), backends)
        })
        .collect()
}

fn canary_routes(v1: u32, v2: u32) -> Vec<(String, Vec<(String, u32)>)> {
    vec![(
        "books-canary".into(),
        vec![("books-v1".into(), v1), ("books-v2".into(), v2)],
    )]
}

/// The next policy on the stream, within [`PROMPT`] of `since`.
async fn next(stream: &mut Streaming<OutboundPolicy>, since: Instant) -> OutboundPolicy {
    let left = PROMPT.saturating_sub(since.elapsed());
    tokio::time::timeout(left, stream.message())
        .await
        .expect("a policy within a second of the change")
        .expect("the stream is healthy")
        .expect("the stream is open")
}

#[tokio::test]
async fn get_and_watch_follow_the_route_file() {
    let mesh = Mesh::start(&canary(90, 10)).await;
    let mut client = mesh.client().await;
    let books = authority("books.default.svc.cluster.local:80");

    let policy = client.get(books.clone()).await.unwrap().into_inner();
    assert_eq!(routes(&policy), canary_routes(90, 10));
    // By the Service's address, the same policy.
    let by_addr = TrafficSpec {
        source_workload: String::new(),
        target: Some(traffic_spec::Target::Addr(
            "198.19.0.1:80"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )),
    };
    assert_eq!(client.get(by_addr).await.unwrap().into_inner(), policy);

    let mut stream = client.watch(books.clone()).await.unwrap().into_inner();
    assert_eq!(
        routes(&next(&mut stream, Instant::now()).await),
        canary_routes(90, 10)
    );

    // The canary's share grows: the new weights arrive within a second.
    let changed = Instant::now();
    mesh.set_routes(&canary(50, 50));
    assert_eq!(
        routes(&next(&mut stream, changed).await),
        canary_routes(50, 50)
    );
    eprintln!(
        "weight change reached the stream in {:?}",
        changed.elapsed()
    );

    // An edit out of range is refused: the last valid weights keep serving (no new
    // policy), and the next valid edit is the next policy.
    mesh.set_routes(&canary(50, 2_000_000));
    let refused = Instant::now();
    let kept = weft_test::eventually(PROMPT, || {
        let mut client = client.clone();
        let books = books.clone();
        async move {
            // The refusal shows in the table only once the file was read again.
            client
                .get(books)
                .await
                .is_ok_and(|p| routes(&p.into_inner()) == canary_routes(50, 50))
        }
    })
    .await;
    assert!(kept, "the last valid weights serve after the bad edit");
    let changed = Instant::now();
    mesh.set_routes(&canary(0, 100));
    let policy = next(&mut stream, changed).await;
    assert_eq!(
        routes(&policy),
        vec![("books-canary".into(), vec![("books-v2".into(), 100)])]
    );
    assert!(refused.elapsed() < Duration::from_secs(5));

    // The route removed: the Service's default route, to itself.
    let changed = Instant::now();
    mesh.set_routes("");
    let policy = next(&mut stream, changed).await;
    assert_eq!(
        routes(&policy),
        vec![("default:http".into(), vec![("books".into(), 1)])]
    );
}

#[tokio::test]
async fn unknown_targets_and_callers_without_a_certificate_are_refused() {
    let mesh = Mesh::start(&canary(1, 1)).await;
    let mut client = mesh.client().await;
    for (target, code, text) in [
        (
            "nope.default.svc.cluster.local:80",
            Code::NotFound,
            "is not a Service port of the mesh",
        ),
        (
            "books.default.svc.cluster.local:81",
            Code::NotFound,
            "is not a Service port of the mesh",
        ),
        (
            "books:80",
            Code::InvalidArgument,
            "is not a Service name of this cluster",
        ),
    ] {
        let status = client.get(authority(target)).await.unwrap_err();
        assert_eq!(status.code(), code, "{target}: {status:?}");
        assert!(
            status.message().contains(text),
            "{target}: {}",
            status.message()
        );
        let status = client.watch(authority(target)).await.unwrap_err();
        assert_eq!(status.code(), code, "{target}: {status:?}");
    }
    let mut anonymous = OutboundPoliciesClient::new(mesh.channel(None).await);
    let status = anonymous
        .get(authority("books.default.svc.cluster.local:80"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status
        .message()
        .contains("a mesh client certificate is required"));
}

#[tokio::test]
async fn a_consumer_route_applies_to_callers_of_its_namespace_only() {
    let consumer = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: shop-to-v2, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: books, namespace: default, port: 80}]\n  rules:\n  - backendRefs: [{name: books-v2, namespace: default, port: 80}]\n---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: shop, namespace: default}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]\n  to: [{group: \"\", kind: Service}]\n";
    let mesh = Mesh::start(&format!("{}---\n{consumer}", canary(90, 10))).await;
    let books = authority("books.default.svc.cluster.local:80");
    // The caller's namespace is its certificate's.
    let mut shop = mesh.client_of("shop", "client").await;
    let policy = shop.get(books.clone()).await.unwrap().into_inner();
    assert_eq!(
        routes(&policy),
        vec![("shop-to-v2".into(), vec![("books-v2".into(), 1)])]
    );
    let mut web = mesh.client().await;
    let policy = web.get(books).await.unwrap().into_inner();
    assert_eq!(routes(&policy), canary_routes(90, 10));
}
