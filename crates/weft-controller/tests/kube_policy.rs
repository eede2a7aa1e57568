//! The kube source's policy objects against a real kube-apiserver
//! (`weft_test::kube::KubeApi`; skipped with a message when the binaries are not built,
//! failing under CI): a Server, an AuthorizationPolicy and a MeshTLSAuthentication
//! created through the API (CRDs from the chart's `crds/`) reach the
//! InboundServerPolicies stream of the pod they select, and deleting the
//! AuthorizationPolicy takes its authorization away.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use linkerd2_proxy_api::inbound::{PortSpec, Server};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Streaming;
use weft_controller::kube::KubeSourceConfig;
use weft_controller::{identity, Config, Controller, DestinationConfig};
use weft_test::kube::KubeApi;

use common::{apply, kubectl, policy_crds};

const CONTROLLER: &str = "weft-controller.weft-system.serviceaccount.identity.weft.cluster.local";
const WEB_ID: &str = "web.shop.serviceaccount.identity.weft.cluster.local";
/// How long a policy may take to reach the stream after the API server stored a change.
const PROMPT: Duration = Duration::from_secs(1);

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
    async fn start(kubeconfig: &Path) -> Mesh {
        let dir = std::env::temp_dir().join(format!("weft-kube-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        identity::init(&dir.join("identity"), "cluster.local", false).unwrap();
        identity::write_token(&dir.join("tokens"), "shop", "web").unwrap();
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

    async fn ready(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(self.controller().admin_addr()).await else {
            return false;
        };
        if s.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out.starts_with("HTTP/1.1 200")
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

    /// An inbound policy client presenting web's workload certificate (obtained with
    /// Certify, as its proxy would).
    async fn web_client(&self) -> InboundServerPoliciesClient<Channel> {
        let token = std::fs::read(identity::token_path(
            &self.dir.join("tokens"),
            "shop",
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
        let id = Identity::from_pem(chain, key.serialize_pem());
        InboundServerPoliciesClient::new(self.channel(Some(id)).await)
    }
}

/// The Server's kind and name labels and its authorizations' names.
fn summary(s: &Server) -> (String, String, Vec<String>) {
    let mut authz: Vec<String> = s
        .authorizations
        .iter()
        .map(|a| a.labels.get("name").cloned().unwrap_or_default())
        .collect();
    authz.sort();
    (
        s.labels.get("kind").cloned().unwrap_or_default(),
        s.labels.get("name").cloned().unwrap_or_default(),
        authz,
    )
}

/// Reads `stream` until its last Server satisfies `done`, for at most `within`.
async fn until(
    stream: &mut Streaming<Server>,
    within: Duration,
    done: impl Fn(&Server) -> bool,
) -> Option<Server> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .ok()?
            .unwrap_or_else(|s| panic!("WatchPort: {s}"))
            .expect("the stream ended");
        if done(&next) {
            return Some(next);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_objects_from_the_api_reach_the_workloads_inbound_policy() {
    let Some(api) = tokio::task::block_in_place(KubeApi::start) else {
        return;
    };
    policy_crds(&api);
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: web, namespace: shop}}
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-1
    namespace: shop
    labels: {app: web}
    annotations: {weft.io/injected: "true"}
  spec:
    nodeName: node-1
    serviceAccountName: web
    containers: [{name: app, image: web, ports: [{name: http, containerPort: 8080}]}]
"#,
    );
    // Plays the kubelet: the pod runs at a test address.
    kubectl(
        &api,
        &[
            "-n",
            "shop",
            "patch",
            "pod",
            "web-1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running","podIP":"198.18.0.21","podIPs":[{"ip":"198.18.0.21"}],"conditions":[{"type":"Ready","status":"True"}]}}"#,
        ],
    );

    let mesh = Mesh::start(&api.kubeconfig()).await;
    assert!(
        weft_test::eventually(Duration::from_secs(60), || mesh.ready()).await,
        "the controller did not turn ready"
    );
    let mut client = mesh.web_client().await;
    let mut stream = client
        .watch_port(PortSpec {
            workload: "shop:web-1".into(),
            port: 8080,
        })
        .await
        .unwrap_or_else(|s| panic!("WatchPort shop:web-1: {s}"))
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(
        summary(&first),
        (
            "default".into(),
            "all-unauthenticated".into(),
            vec!["all-unauthenticated".into()]
        ),
        "no Server yet: the default policy"
    );

    let created = Instant::now();
    apply(
        &api,
        r#"
apiVersion: v1
kind: List
items:
- apiVersion: policy.weft.io/v1alpha1
  kind: Server
  metadata: {name: web-http, namespace: shop, labels: {team: shop}}
  spec: {podSelector: {matchLabels: {app: web}}, port: http, proxyProtocol: HTTP/1}
- apiVersion: policy.weft.io/v1alpha1
  kind: MeshTLSAuthentication
  metadata: {name: meshed, namespace: shop}
  spec: {identities: ["*"]}
- apiVersion: policy.weft.io/v1alpha1
  kind: AuthorizationPolicy
  metadata: {name: web-meshed, namespace: shop}
  spec:
    targetRef: {group: policy.weft.io, kind: Server, name: web-http}
    requiredAuthenticationRefs:
    - {group: policy.weft.io, kind: MeshTLSAuthentication, name: meshed}
"#,
    );
    let applied = created.elapsed();
    let served = until(&mut stream, PROMPT, |s| {
        summary(s)
            == (
                "server".into(),
                "web-http".into(),
                vec!["web-meshed".into()],
            )
    })
    .await;
    let took = created.elapsed();
    let served = served.unwrap_or_else(|| {
        panic!("Server web-http with AuthorizationPolicy web-meshed did not reach the stream within {PROMPT:?} of kubectl apply returning")
    });
    eprintln!(
        "kubectl apply took {applied:?}; the Server and its authorization reached the stream {:?} after it returned",
        took - applied
    );
    assert_eq!(served.authorizations.len(), 1);

    let deleted = Instant::now();
    kubectl(
        &api,
        &["-n", "shop", "delete", "authorizationpolicy", "web-meshed"],
    );
    let returned = deleted.elapsed();
    let left = until(&mut stream, PROMPT, |s| s.authorizations.is_empty()).await;
    assert!(
        left.is_some(),
        "deleting AuthorizationPolicy web-meshed did not take its authorization away within {PROMPT:?}"
    );
    eprintln!(
        "kubectl delete took {returned:?}; the authorization left the stream {:?} after it returned",
        deleted.elapsed() - returned
    );
    assert_eq!(
        summary(left.as_ref().unwrap()).1,
        "web-http",
        "still the Server (denying everyone)"
    );
}
