//! The destination service in-process: Destination.Get over gRPC with TLS, answering
//! from a mesh directory and a pods file that the tests change while streams are open.
//! Clients present a workload certificate (web's, obtained with Certify), as proxies
//! do; a client without one is refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use linkerd2_proxy_api::destination::destination_client::DestinationClient;
use linkerd2_proxy_api::destination::update::Update as Kind;
use linkerd2_proxy_api::destination::{GetDestination, Update};
use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Streaming;
use weft_controller::destination::LocalSourceConfig;
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_core::pods::{PodEntry, PodsFile, ServiceAddress};

const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";
const BOOKS_ID: &str = "books.default.serviceaccount.identity.weft.cluster.local";
const WEB_ID: &str = "web.default.serviceaccount.identity.weft.cluster.local";
/// How long an update may take to arrive after a file changed.
const PROMPT: Duration = Duration::from_secs(1);

fn mesh_yaml(replicas: u32) -> String {
    format!(
        "kind: Mesh\nworkloads:\n  - name: web\n    zone: zone-a\n    ports: [8080]\n    command: [app]\n  - name: books\n    zone: zone-b\n    replicas: {replicas}\n    ports: [8080]\n    command: [app]\n"
    )
}

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec:\n  selector: {app: books}\n  ports: [{port: 80, targetPort: 8080}]\n";

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

fn pod(workload: &str, index: u32, ip: [u8; 4], ready: bool) -> PodEntry {
    PodEntry {
        name: format!("{workload}-{index}"),
        namespace: "default".into(),
        workload: workload.into(),
        index,
        ip: ip.into(),
        zone: None,
        ready,
    }
}

/// web-0 at .2; books-0 at .3 and books-1 at .4 (ready as given); books at VIP 198.19.0.1.
fn pods(books_ready: &[bool]) -> PodsFile {
    let mut pods = vec![pod("web", 0, [198, 18, 0, 2], true)];
    for (i, ready) in books_ready.iter().enumerate() {
        pods.push(pod("books", i as u32, [198, 18, 0, 3 + i as u8], *ready));
    }
    PodsFile {
        pods,
        services: vec![ServiceAddress {
            name: "books".into(),
            namespace: "default".into(),
            ip: [198, 19, 0, 1].into(),
        }],
    }
}

impl Mesh {
    async fn start(replicas: u32, books_ready: &[bool]) -> Mesh {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-destination-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mesh")).unwrap();
        std::fs::write(dir.join("mesh/mesh.yaml"), mesh_yaml(replicas)).unwrap();
        std::fs::write(dir.join("mesh/services.yaml"), SERVICES).unwrap();
        pods(books_ready).write(&dir.join("pods.yaml")).unwrap();
        identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        identity::write_token(&dir.join("tokens"), "default", "web").unwrap();
        let mut mesh = Mesh {
            dir,
            controller: None,
        };
        mesh.controller = Some(Controller::start(mesh.config()).await.unwrap());
        mesh
    }

    fn config(&self) -> Config {
        Config {
            identity_dir: self.dir.join("identity"),
            tokens_dir: self.dir.join("tokens"),
            trust_domain: "cluster.local".into(),
            cert_lifetime: Duration::from_secs(3600),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            destination: Some(DestinationConfig {
                source: LocalSourceConfig {
                    mesh_dir: self.dir.join("mesh"),
                    pods_file: self.dir.join("pods.yaml"),
                    watch_interval: Duration::from_millis(20),
                }
                .into(),
                cluster_domain: "cluster.local".into(),
                opaque_ports: vec![],
                policy: Default::default(),
            }),
        }
    }

    fn controller(&self) -> &Controller {
        self.controller.as_ref().unwrap()
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    async fn channel(&self, client_cert: Option<Identity>) -> Channel {
        // The bundle as it is now (an anchor rotation may have added one).
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

    /// web's workload certificate (chain and key), issued by the controller through
    /// Certify with web's token, as a proxy obtains its own.
    async fn web_certificate(&self) -> Identity {
        let token = std::fs::read(identity::token_path(
            &self.dir.join("tokens"),
            "default",
            "web",
        ))
        .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec![WEB_ID.to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .der()
            .to_vec();
        let rsp = IdentityClient::new(self.channel(None).await)
            .certify(CertifyRequest {
                identity: WEB_ID.into(),
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
        Identity::from_pem(chain, key.serialize_pem())
    }

    /// A client presenting web's workload certificate.
    async fn client(&self) -> DestinationClient<Channel> {
        let id = self.web_certificate().await;
        DestinationClient::new(self.channel(Some(id)).await)
    }

    /// A client presenting no certificate.
    async fn anonymous_client(&self) -> DestinationClient<Channel> {
        DestinationClient::new(self.channel(None).await)
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

    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.controller().admin_addr())
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// The next update, within [`PROMPT`].
async fn next(stream: &mut Streaming<Update>) -> Kind {
    tokio::time::timeout(PROMPT, stream.message())
        .await
        .expect("an update within a second")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .update
        .expect("an update of some kind")
}

/// No update arrives for a while.
async fn quiet(stream: &mut Streaming<Update>, wait: Duration) {
    if let Ok(update) = tokio::time::timeout(wait, stream.message()).await {
        panic!("expected no update, got {update:?}");
    }
}

fn added(kind: Kind) -> Vec<(SocketAddr, String, String)> {
    let Kind::Add(set) = kind else {
        panic!("expected Add, got {kind:?}")
    };
    let mut out: Vec<_> = set
        .addrs
        .into_iter()
        .map(|a| {
            let id = a
                .tls_identity
                .and_then(|t| t.server_name)
                .map(|n| n.name)
                .unwrap_or_default();
            (
                SocketAddr::try_from(a.addr.unwrap()).unwrap(),
                a.metric_labels.get("zone").cloned().unwrap_or_default(),
                id,
            )
        })
        .collect();
    out.sort();
    out
}

fn removed(kind: Kind) -> Vec<SocketAddr> {
    let Kind::Remove(set) = kind else {
        panic!("expected Remove, got {kind:?}")
    };
    set.addrs
        .into_iter()
        .map(|a| SocketAddr::try_from(a).unwrap())
        .collect()
}

fn books(last: u8) -> (SocketAddr, String, String) {
    (
        SocketAddr::from(([198, 18, 0, last], 8080)),
        "zone-b".into(),
        BOOKS_ID.into(),
    )
}

#[tokio::test]
async fn get_by_name_by_vip_and_by_pod_ip() {
    let mesh = Mesh::start(2, &[true, true]).await;
    for path in [
        "books.default.svc.cluster.local:80",
        "books.default.svc:80",
        "books.default:80",
        "198.19.0.1:80",
    ] {
        let mut s = mesh.get(path).await;
        assert_eq!(added(next(&mut s).await), [books(3), books(4)], "{path}");
    }
    let mut s = mesh.get("198.18.0.4:8080").await;
    assert_eq!(added(next(&mut s).await), [books(4)]);
    // web-0 has no zone label value in the pods file: its workload's zone.
    let mut s = mesh.get("198.18.0.2:8080").await;
    assert_eq!(
        added(next(&mut s).await),
        [(
            "198.18.0.2:8080".parse().unwrap(),
            "zone-a".into(),
            "web.default.serviceaccount.identity.weft.cluster.local".into()
        )]
    );
}

#[tokio::test]
async fn unknown_destinations_and_bad_requests() {
    let mesh = Mesh::start(1, &[true]).await;
    for path in [
        "nope.default.svc.cluster.local:80",
        "books.default:81",
        "203.0.113.7:443",
    ] {
        let mut s = mesh.get(path).await;
        match next(&mut s).await {
            Kind::NoEndpoints(n) => assert!(!n.exists, "{path}"),
            other => panic!("{path}: {other:?}"),
        }
    }
    let mut client = mesh.client().await;
    let get = |path: &str, scheme: &str| GetDestination {
        scheme: scheme.into(),
        path: path.into(),
        context_token: String::new(),
    };
    let status = client.get(get("books:80", "k8s")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("\"books\" is not a Service name of this cluster"),
        "{}",
        status.message()
    );
    let status = client
        .get(get("books.default:http", "k8s"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("\"http\" is not a port number"));
    let status = client
        .get(get("books.default:80", "dns"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = client
        .get_profile(get("books.default:80", "k8s"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(status.message().contains("GetProfile is not implemented"));
}

#[tokio::test]
async fn replicas_coming_and_going_are_streamed() {
    let mesh = Mesh::start(2, &[true, false]).await;
    let mut s = mesh.get("books.default.svc.cluster.local:80").await;
    assert_eq!(added(next(&mut s).await), [books(3)]);

    // books-1 ready.
    pods(&[true, true]).write(&mesh.path("pods.yaml")).unwrap();
    assert_eq!(added(next(&mut s).await), [books(4)]);

    // Scale up to 3 in the mesh directory: nothing until the new pod is ready.
    std::fs::write(mesh.path("mesh/mesh.yaml"), mesh_yaml(3)).unwrap();
    quiet(&mut s, Duration::from_millis(200)).await;
    pods(&[true, true, true])
        .write(&mesh.path("pods.yaml"))
        .unwrap();
    assert_eq!(added(next(&mut s).await), [books(5)]);

    // Scale down to 1: the surplus leaves the endpoints at once, before its pods stop.
    std::fs::write(mesh.path("mesh/mesh.yaml"), mesh_yaml(1)).unwrap();
    let mut gone = removed(next(&mut s).await);
    gone.sort();
    assert_eq!(
        gone,
        [
            "198.18.0.4:8080".parse().unwrap(),
            "198.18.0.5:8080".parse().unwrap()
        ]
    );
    // The last one not ready: the Service exists without endpoints.
    pods(&[false]).write(&mesh.path("pods.yaml")).unwrap();
    match next(&mut s).await {
        Kind::NoEndpoints(n) => assert!(n.exists),
        other => panic!("{other:?}"),
    }

    let text = mesh.metrics().await;
    assert!(
        text.contains("weft_controller_destination_streams 1"),
        "{text}"
    );
    assert!(
        text.contains("weft_controller_destination_updates_total{kind=\"add\"} 3"),
        "{text}"
    );
    assert!(text.contains("weft_controller_destination_updates_total{kind=\"remove\"} 1"));
    assert!(text.contains("weft_controller_local_reloads_total{file=\"mesh\",result=\"ok\"} 2"));
    drop(s);
    let closed = weft_eventually(|| async {
        mesh.metrics()
            .await
            .contains("weft_controller_destination_streams 0")
    })
    .await;
    assert!(closed, "the stream's task did not end with the client");
}

#[tokio::test]
async fn an_invalid_mesh_directory_keeps_the_last_good_state() {
    let mesh = Mesh::start(1, &[true, true]).await;
    let mut s = mesh.get("books.default:80").await;
    assert_eq!(added(next(&mut s).await), [books(3)]);

    // A typo in the scale-up: nothing changes, and the problem is counted.
    std::fs::write(
        mesh.path("mesh/mesh.yaml"),
        mesh_yaml(2).replace("replicas", "replica"),
    )
    .unwrap();
    quiet(&mut s, Duration::from_millis(300)).await;
    let text = mesh.metrics().await;
    assert!(
        text.contains("weft_controller_local_reloads_total{file=\"mesh\",result=\"error\"} 1"),
        "{text}"
    );
    // New streams are served from the last good state too.
    let mut fresh = mesh.get("198.19.0.1:80").await;
    assert_eq!(added(next(&mut fresh).await), [books(3)]);
    assert_eq!(
        mesh.controller()
            .destination_index()
            .unwrap()
            .mesh()
            .workloads[1]
            .replicas,
        1
    );

    // A broken pods file is kept out as well.
    std::fs::write(mesh.path("pods.yaml"), "pods: [{name: x}]\n").unwrap();
    quiet(&mut s, Duration::from_millis(300)).await;

    // Fixed: applied.
    std::fs::write(mesh.path("mesh/mesh.yaml"), mesh_yaml(2)).unwrap();
    pods(&[true, true]).write(&mesh.path("pods.yaml")).unwrap();
    assert_eq!(added(next(&mut s).await), [books(4)]);
}

#[tokio::test]
async fn an_invalid_mesh_directory_at_start_is_refused_with_its_location() {
    let mesh = Mesh::start(1, &[true]).await;
    std::fs::write(
        mesh.path("mesh/services.yaml"),
        SERVICES.replace("targetPort: 8080", "targetPort: http"),
    )
    .unwrap();
    let err = Controller::start(mesh.config())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not load"), "{err}");
    assert!(
        err.contains("services.yaml: Service default/books: spec.ports[0].targetPort: \"http\" names no port of workload books"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let mesh = Mesh::start(1, &[true]).await;
    let mut s = mesh.get("books.default:80").await;
    assert_eq!(added(next(&mut s).await), [books(3)]);
    let mut mesh = mesh;
    let controller = mesh.controller.take().unwrap();
    tokio::time::timeout(Duration::from_secs(5), controller.shutdown())
        .await
        .expect("shutdown does not wait on open streams")
        .unwrap();
    let end = tokio::time::timeout(PROMPT, s.message())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test]
async fn only_clients_with_a_mesh_certificate_are_served() {
    let mesh = Mesh::start(1, &[true]).await;
    let get = || GetDestination {
        scheme: "k8s".into(),
        path: "books.default.svc.cluster.local:80".into(),
        context_token: String::new(),
    };
    // No client certificate: nothing is listed, whatever the request.
    let mut anonymous = mesh.anonymous_client().await;
    let status = anonymous.get(get()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        status.message(),
        "a mesh client certificate is required: the destination service answers only proxies presenting their workload certificate (an identity of trust domain \"cluster.local\") in the TLS handshake"
    );
    let status = anonymous.get_profile(get()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status
        .message()
        .starts_with("a mesh client certificate is required"));
    assert!(!mesh
        .metrics()
        .await
        .contains("weft_controller_destination_updates_total{kind=\"add\"}"));

    // web's workload certificate: served on the same controller.
    let mut client = mesh.client().await;
    let mut s = client.get(get()).await.unwrap().into_inner();
    assert_eq!(added(next(&mut s).await), [books(3)]);
}

#[tokio::test]
async fn after_an_anchor_rotation_certificates_from_the_new_anchor_are_served() {
    let mesh = Mesh::start(1, &[true]).await;
    // A new anchor joins the bundle and signs a new issuer; the controller reloads both.
    let offline = mesh.path("offline");
    let anchor = identity::new_anchor(
        &offline.join("anchor.crt"),
        &offline.join("anchor.key"),
        "cluster.local",
        identity::ANCHOR_LIFETIME,
        false,
    )
    .unwrap();
    let bundle = mesh.path("identity").join(identity::ANCHORS_FILE);
    let mut pem = std::fs::read(&bundle).unwrap();
    pem.extend(std::fs::read(&anchor.cert).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    identity::rotate_issuer(&identity::RotateOptions::new(
        &anchor.cert,
        &anchor.key,
        &mesh.path("identity"),
    ))
    .unwrap();
    let reloaded = weft_eventually_for(Duration::from_secs(10), || async {
        mesh.metrics()
            .await
            .contains("weft_controller_identity_reloads_total{result=\"ok\"} 1")
    })
    .await;
    assert!(
        reloaded,
        "the controller did not load the new identity files"
    );

    // web's certificate now chains to the new anchor only: still a mesh certificate.
    let mut client = mesh.client().await;
    let mut s = client
        .get(GetDestination {
            scheme: "k8s".into(),
            path: "books.default:80".into(),
            context_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added(next(&mut s).await), [books(3)]);
}

async fn weft_eventually<F, Fut>(check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    weft_eventually_for(Duration::from_secs(1), check).await
}

/// Whether `check` holds within `limit` (checked every 10 ms).
async fn weft_eventually_for<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
