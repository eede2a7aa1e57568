//! What the Kubernetes tests share: waiting on a condition, and the injector serving
//! as the API server's webhook on a loopback port.
// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::ByteString;
use kube::api::ObjectMeta;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use weft_k8s::inject::{self, InjectConfig, Webhook};
use weft_test::kube::KubeApi;

/// Applies weft's CRDs and waits until the API server serves them.
pub fn install_crds(api: &KubeApi) {
    let crds = weft_k8s::crd::render().unwrap();
    api.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&crds))
        .unwrap();
    wait_crds_established(api);
}

/// Waits (60 s at most each) until the API server serves every weft CRD.
pub fn wait_crds_established(api: &KubeApi) {
    for c in weft_k8s::crd::all() {
        api.wait_established(&c.metadata.name.unwrap(), Duration::from_secs(60));
    }
}

/// Polls `check` every 100 ms until it gives a value or `limit` passes.
pub fn eventually<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CA and a serving certificate for 127.0.0.1, written to `dir`; the CA's PEM.
pub fn webhook_certificate(dir: &Path) -> String {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    ca.pem()
}

/// The injector serving on a loopback port, in a runtime of its own.
pub struct Injector {
    runtime: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
    pub addr: SocketAddr,
    pub ca_pem: String,
    /// The trust anchors it gives the proxies (its own copy, read from a file).
    pub anchors_pem: String,
}

impl Injector {
    /// Serves `config` (its trust anchors, when empty, are the webhook's own CA: any CA
    /// serves as the mesh's anchors where the proxies never start).
    pub fn start(api: &KubeApi, config: InjectConfig) -> Injector {
        let dir = api.dir().join("injector");
        std::fs::create_dir_all(&dir).unwrap();
        let ca_pem = webhook_certificate(&dir);
        let tls = inject::tls_config(&dir.join("tls.crt"), &dir.join("tls.key")).unwrap();
        let mut inject_config = config;
        if inject_config.trust_anchors_pem.is_empty() {
            std::fs::write(dir.join("trust-anchors.pem"), &ca_pem).unwrap();
            inject_config.trust_anchors_pem =
                inject::read_trust_anchors(&dir.join("trust-anchors.pem")).unwrap();
        }
        let anchors_pem = inject_config.trust_anchors_pem.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kubeconfig = api.kubeconfig();
        let (task, addr) = runtime.block_on(async move {
            let kubeconfig = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let webhook = Arc::new(Webhook::new(inject_config, Some(client)));
            (tokio::spawn(inject::serve(listener, tls, webhook)), addr)
        });
        Injector {
            runtime,
            task: Some(task),
            addr,
            ca_pem,
            anchors_pem,
        }
    }

    /// Stops serving: the port closes, with every connection.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = self.runtime.block_on(task);
        }
        assert!(
            std::net::TcpStream::connect(self.addr).is_err(),
            "the injector still listens on {}",
            self.addr
        );
    }

    /// Registers the injector for pod CREATEs as the webhook configuration `name`,
    /// with `failure_policy`.
    pub fn register(&self, api: &KubeApi, name: &str, failure_policy: &str) {
        let config = MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: "inject.weft.io".into(),
                admission_review_versions: vec!["v1".into()],
                client_config: WebhookClientConfig {
                    url: Some(format!("https://{}/inject", self.addr)),
                    ca_bundle: Some(ByteString(self.ca_pem.clone().into_bytes())),
                    service: None,
                },
                failure_policy: Some(failure_policy.into()),
                side_effects: "None".into(),
                timeout_seconds: Some(5),
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into()]),
                    resources: Some(vec!["pods".into()]),
                    scope: Some("Namespaced".into()),
                }]),
                ..MutatingWebhook::default()
            }]),
        };
        api.kubectl_stdin(
            &["apply", "-f", "-"],
            Some(&serde_json::to_string(&config).unwrap()),
        )
        .unwrap();
    }

    /// A raw HTTPS request to the injector: status code and body.
    pub fn request(&self, head: &str, body: &[u8]) -> (u16, String) {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = std::net::TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let request = format!(
            "{head}\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tls.write_all(request.as_bytes()).unwrap();
        tls.write_all(body).unwrap();
        let mut response = Vec::new();
        // The server closes after answering (Connection: close); rustls may report the
        // close without a close_notify as an error after the whole answer arrived.
        let _ = tls.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no HTTP answer: {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        (status, body)
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
