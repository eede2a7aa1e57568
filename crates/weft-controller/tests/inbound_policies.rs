//! The inbound policy service in-process: InboundServerPolicies.GetPort and WatchPort
//! over gRPC with TLS, answering from a mesh directory whose policy file the test
//! edits while a stream is open. Clients present a workload certificate obtained with
//! Certify, as proxies do; a workload's policy is answered only to its own identity.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use linkerd2_proxy_api::inbound::{PortSpec, Server};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;
use weft_controller::destination::LocalSourceConfig;
use weft_controller::policy::{DefaultPolicy, PolicyConfig};
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_core::pods::PodsFile;

const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";
/// How long a policy may take to arrive after a file changed.
const PROMPT: Duration = Duration::from_secs(1);

const MESH: &str = "kind: Mesh\nworkloads:\n  - {name: web, ports: [8080], command: [app]}\n  - {name: books, ports: [{name: http, port: 8080}], command: [app], labels: {app: books}}\n";

const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: books}\nspec: {selector: {app: books}, ports: [{port: 80, targetPort: 8080}]}\n";

const POLICY: &str = "apiVersion: policy.weft.io/v1alpha1\nkind: Server\nmetadata: {name: books-http}\nspec: {podSelector: {matchLabels: {app: books}}, port: http}\n---\napiVersion: policy.weft.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: everyone}\nspec:\n  targetRef: {group: policy.weft.io, kind: Server, name: books-http}\n";

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
    async fn start(default_policy: DefaultPolicy) -> Mesh {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weft-inbound-policies-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mesh")).unwrap();
        std::fs::write(dir.join("mesh/mesh.yaml"), MESH).unwrap();
        std::fs::write(dir.join("mesh/services.yaml"), SERVICES).unwrap();
        PodsFile::default().write(&dir.join("pods.yaml")).unwrap();
        identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        identity::write_token(&dir.join("tokens"), "default", "web").unwrap();
        identity::write_token(&dir.join("tokens"), "default", "books").unwrap();
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
                policy: PolicyConfig {
                    default_policy,
                    ..PolicyConfig::default()
                },
            }),
        };
        let controller = Some(Controller::start(config).await.unwrap());
        Mesh { dir, controller }
    }

    fn set_policy(&self, text: &str) {
        let tmp = self.dir.join("policy.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join("mesh/policy.yaml")).unwrap();
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

    /// A client presenting the workload certificate of service account `sa` of
    /// namespace default, or none.
    async fn client(&self, sa: Option<&str>) -> InboundServerPoliciesClient<Channel> {
        let Some(sa) = sa else {
            return InboundServerPoliciesClient::new(self.channel(None).await);
        };
        let id = format!("{sa}.default.serviceaccount.identity.weft.cluster.local");
        let token = std::fs::read(identity::token_path(
            &self.dir.join("tokens"),
            "default",
            sa,
        ))
        .unwrap();
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
        InboundServerPoliciesClient::new(self.channel(Some(id)).await)
    }
}

fn spec(workload: &str, port: u32) -> PortSpec {
    PortSpec {
        workload: workload.into(),
        port,
    }
}

fn name(s: &Server) -> (String, String) {
    (s.labels["kind"].clone(), s.labels["name"].clone())
}

#[tokio::test]
async fn a_workload_gets_its_own_ports_policy_and_no_other_workloads() {
    let mesh = Mesh::start(DefaultPolicy::AllAuthenticated).await;
    let mut books = mesh.client(Some("books")).await;
    let server = books
        .get_port(spec("default:books", 8080))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        name(&server),
        ("default".into(), "all-authenticated".into())
    );
    assert_eq!(server.authorizations.len(), 1);

    // Another workload's policy: refused, naming both.
    let mut web = mesh.client(Some("web")).await;
    let status = web.get_port(spec("default:books", 8080)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("web.default.serviceaccount.identity.weft.cluster.local asks for the inbound policy of workload default:books"),
        "{}",
        status.message()
    );
    let status = web
        .watch_port(spec("default:books", 8080))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Without a certificate, an unknown workload, a malformed name, port 0.
    let status = mesh
        .client(None)
        .await
        .get_port(spec("default:books", 8080))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        books
            .get_port(spec("default:nope", 8080))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        books
            .get_port(spec("books", 8080))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        books
            .get_port(spec("default:books", 0))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn a_watched_port_follows_the_policy_file() {
    let mesh = Mesh::start(DefaultPolicy::AllUnauthenticated).await;
    let mut books = mesh.client(Some("books")).await;
    let mut stream = books
        .watch_port(spec("default:books", 8080))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(
        name(&first),
        ("default".into(), "all-unauthenticated".into())
    );

    // A Server for the port (by its name) and a policy allowing everyone.
    let edited = Instant::now();
    mesh.set_policy(POLICY);
    let next = tokio::time::timeout(PROMPT, stream.message())
        .await
        .expect("the new policy within a second")
        .unwrap()
        .unwrap();
    eprintln!("policy file edit to stream: {:?}", edited.elapsed());
    assert_eq!(name(&next), ("server".into(), "books-http".into()));
    assert_eq!(next.authorizations.len(), 1);
    assert_eq!(next.authorizations[0].labels["name"], "everyone");

    // The policy targets an unknown Server: the last valid version keeps serving, so
    // nothing is sent; the Server removed: the default again.
    mesh.set_policy(&POLICY.replace("kind: Server, name: books-http", "kind: Server, name: nope"));
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(
        quiet.is_err(),
        "an invalid edit changed the policy: {quiet:?}"
    );
    mesh.set_policy("");
    let back = tokio::time::timeout(PROMPT, stream.message())
        .await
        .expect("the default policy within a second")
        .unwrap()
        .unwrap();
    assert_eq!(
        name(&back),
        ("default".into(), "all-unauthenticated".into())
    );
}
