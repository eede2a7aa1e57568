//! The mutating admission webhook: HTTPS (rustls), `POST /inject` with an
//! `admission.k8s.io/v1` AdmissionReview, plus `GET /ready`, `/live` and `/metrics`.
//!
//! Answers, by case:
//! - a pod to inject: allowed, with the JSON patch;
//! - a pod left as it is (not enabled, disabled, injected already, host network, a
//!   container named weft-proxy): allowed without a patch; a warning for the client
//!   when the pod asked for the proxy and does not get it ([`Skip::warning`]);
//! - a pod with an annotation that cannot be used: refused, the message naming it;
//! - anything else than a Pod CREATE: allowed, untouched;
//! - a body that is not an AdmissionReview with a request: HTTP 400 with the reason
//!   (the API server then applies the webhook's `failurePolicy`);
//! - the pod's namespace unreadable when its annotations decide: HTTP 500, likewise.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{inject, Decision, InjectConfig, INJECTED_ANNOTATION, INJECT_ANNOTATION};

/// Largest AdmissionReview read (the API server's own request limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;
/// How long a client has to finish its TLS handshake, and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the namespace lookup may take (the API server gives a webhook 10 s).
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the webhook cannot start, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot read the certificate chain {}", path.display())]
    Certificate {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("cannot read the private key {}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate {} and key {} do not make a TLS server", cert.display(), key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// The TLS settings of the webhook from a PEM certificate chain and key. The files are
/// read now (an error names the file) and again when they change: a Secret volume is
/// updated in place when the certificate is renewed (the operator renews it), and new
/// handshakes use the new certificate within [`RELOAD_CHECK`] of the change. A change
/// that does not load (a half-written pair, a key of another certificate) is logged and
/// the previous certificate kept.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let files = CertFiles::load(cert, key, provider.clone())?;
    let tls_error = |source| ServeError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(files));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How often the certificate files are looked at (on a handshake, at most this often).
pub const RELOAD_CHECK: Duration = Duration::from_secs(10);

/// The certificate and key files, loaded, and when they were last looked at.
#[derive(Debug)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    state: std::sync::Mutex<CertState>,
}

#[derive(Debug)]
struct CertState {
    current: Arc<rustls::sign::CertifiedKey>,
    /// The files' modification times when `current` was loaded.
    stamps: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
    checked: std::time::Instant,
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertFiles {
    fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<CertFiles, ServeError> {
        let stamps = (modified(cert), modified(key));
        let current = Arc::new(Self::read(cert, key, &provider)?);
        Ok(CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            provider,
            state: std::sync::Mutex::new(CertState {
                current,
                stamps,
                checked: std::time::Instant::now(),
            }),
        })
    }

    fn read(
        cert: &Path,
        key: &Path,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<rustls::sign::CertifiedKey, ServeError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|source| ServeError::Certificate {
                path: cert.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(ServeError::NoCertificate {
                path: cert.to_owned(),
            });
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|source| ServeError::Key {
            path: key.to_owned(),
            source,
        })?;
        let tls_error = |source| ServeError::Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        };
        let certified =
            rustls::sign::CertifiedKey::from_der(chain, private, provider).map_err(tls_error)?;
        Ok(certified)
    }

    /// The certificate to present, reloaded first if the files changed.
    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut state = match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.checked.elapsed() >= RELOAD_CHECK {
            state.checked = std::time::Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != state.stamps {
                match Self::read(&self.cert, &self.key, &self.provider) {
                    Ok(certified) => {
                        tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                        state.current = Arc::new(certified);
                        state.stamps = stamps;
                    }
                    Err(error) => {
                        // Looked at again at the next check: a pair half-written now is
                        // whole then.
                        tracing::warn!(error = %error, "the certificate files changed but do not load; serving the previous certificate");
                    }
                }
            }
        }
        state.current.clone()
    }
}

impl rustls::server::ResolvesServerCert for CertFiles {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    /// injected, skipped, refused, ignored (not a Pod CREATE) or error (no answer but an
    /// HTTP error).
    result: &'static str,
    reason: &'static str,
}

/// The webhook's metrics: `weft_injector_admissions_total{result, reason}`.
pub struct Metrics {
    registry: Registry,
    admissions: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("weft_injector");
        let admissions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "admissions",
            "AdmissionReviews answered, by result (injected, skipped, refused, ignored, error) and reason",
            admissions.clone(),
        );
        Metrics {
            registry,
            admissions,
        }
    }
}

impl Metrics {
    fn count(&self, result: &'static str, reason: &'static str) {
        self.admissions
            .get_or_create(&ResultLabels { result, reason })
            .inc();
    }

    /// The OpenMetrics text of `/metrics`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The injector behind the HTTPS server: its configuration, the API client that reads
/// namespaces, its metrics.
pub struct Webhook {
    pub config: InjectConfig,
    /// Reads the namespace of a pod whose own annotations do not decide (`None`: such
    /// pods are not injected).
    pub client: Option<kube::Client>,
    pub metrics: Metrics,
}

/// An HTTP answer before TLS and hyper: status, content type, body.
pub struct Answer {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Answer {
    fn text(status: StatusCode, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }

    fn review(response: AdmissionResponse) -> Answer {
        match serde_json::to_vec(&response.into_review()) {
            Ok(body) => Answer {
                status: StatusCode::OK,
                content_type: "application/json",
                body,
            },
            Err(e) => Answer::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the AdmissionReview: {e}\n"),
            ),
        }
    }
}

impl Webhook {
    pub fn new(config: InjectConfig, client: Option<kube::Client>) -> Webhook {
        Webhook {
            config,
            client,
            metrics: Metrics::default(),
        }
    }

    /// Answers the body of a `POST /inject`.
    pub async fn review(&self, body: &[u8]) -> Answer {
        let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.count("error", "malformed");
                return Answer::text(
                    StatusCode::BAD_REQUEST,
                    format!("not an admission.k8s.io/v1 AdmissionReview: {e}\n"),
                );
            }
        };
        let request: AdmissionRequest<DynamicObject> = match review.try_into() {
            Ok(r) => r,
            Err(_) => {
                self.metrics.count("error", "malformed");
                return Answer::text(
                    StatusCode::BAD_REQUEST,
                    "the AdmissionReview has no request\n",
                );
            }
        };
        let response = AdmissionResponse::from(&request);
        let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
        if !is_pod || request.operation != Operation::Create || request.sub_resource.is_some() {
            self.metrics.count("ignored", "not_a_pod_create");
            return Answer::review(response);
        }
        let Some(object) = &request.object else {
            self.metrics.count("error", "malformed");
            return Answer::text(StatusCode::BAD_REQUEST, "a Pod CREATE without its object\n");
        };
        let pod: Pod = match serde_json::to_value(object).and_then(serde_json::from_value) {
            Ok(pod) => pod,
            Err(e) => {
                self.metrics.count("refused", "unreadable_pod");
                return Answer::review(
                    response.deny(format!("weft injector: cannot read the Pod: {e}")),
                );
            }
        };
        let name = pod
            .metadata
            .name
            .clone()
            .or_else(|| pod.metadata.generate_name.clone().map(|g| format!("{g}*")))
            .unwrap_or_default();
        let namespace_name = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        let namespace = match self.namespace_if_needed(&pod, &namespace_name).await {
            Ok(ns) => ns,
            Err(message) => {
                tracing::warn!(pod = %name, namespace = %namespace_name, %message, "cannot decide");
                self.metrics.count("error", "namespace_unavailable");
                return Answer::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{message}\n"));
            }
        };
        match inject(&pod, namespace.as_ref(), &self.config) {
            Ok(Decision::Inject(injection)) => match response.with_patch(injection.patch) {
                Ok(response) => {
                    tracing::info!(pod = %name, namespace = %namespace_name, "injected");
                    self.metrics.count("injected", "");
                    Answer::review(response)
                }
                Err(e) => {
                    self.metrics.count("error", "patch");
                    Answer::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
                }
            },
            Ok(Decision::Skip(skip)) => {
                tracing::debug!(pod = %name, namespace = %namespace_name, reason = %skip, "not injected");
                self.metrics.count("skipped", skip.reason());
                let mut response = response;
                if let Some(warning) = skip.warning() {
                    tracing::info!(pod = %name, namespace = %namespace_name, reason = %skip, "not injected");
                    response.warnings = Some(vec![warning]);
                }
                Answer::review(response)
            }
            Err(invalid) => {
                tracing::info!(pod = %name, namespace = %namespace_name, %invalid, "refused");
                self.metrics.count("refused", "invalid_annotation");
                Answer::review(response.deny(format!("weft injector: {invalid}")))
            }
        }
    }

    /// The pod's namespace's metadata when the pod's own annotations do not decide.
    async fn namespace_if_needed(
        &self,
        pod: &Pod,
        namespace: &str,
    ) -> Result<Option<kube::core::ObjectMeta>, String> {
        let annotations = pod.metadata.annotations.as_ref();
        let decided = annotations.is_some_and(|a| {
            a.contains_key(INJECT_ANNOTATION) || a.contains_key(INJECTED_ANNOTATION)
        });
        let Some(client) = &self.client else {
            return Ok(None);
        };
        if decided || namespace.is_empty() {
            return Ok(None);
        }
        let api = kube::Api::<Namespace>::all(client.clone());
        match tokio::time::timeout(NAMESPACE_TIMEOUT, api.get_metadata(namespace)).await {
            Ok(Ok(meta)) => Ok(Some(meta.metadata)),
            Ok(Err(e)) => Err(format!(
                "weft injector: cannot read namespace {namespace} (its {INJECT_ANNOTATION} annotation or label decides): {e}"
            )),
            Err(_) => Err(format!(
                "weft injector: reading namespace {namespace} took over {NAMESPACE_TIMEOUT:?}"
            )),
        }
    }

    async fn route(&self, req: Request<Incoming>) -> Answer {
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        match (method, path.as_str()) {
            (Method::POST, "/inject") => {
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(body) => body.to_bytes(),
                    Err(e) => {
                        self.metrics.count("error", "body");
                        let too_large = e.is::<http_body_util::LengthLimitError>();
                        return if too_large {
                            Answer::text(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                format!("an AdmissionReview is at most {MAX_BODY} bytes\n"),
                            )
                        } else {
                            Answer::text(
                                StatusCode::BAD_REQUEST,
                                format!("cannot read the body: {e}\n"),
                            )
                        };
                    }
                };
                self.review(&body).await
            }
            (Method::GET, "/ready" | "/live") => Answer::text(StatusCode::OK, "ok\n"),
            (Method::GET, "/metrics") => Answer {
                status: StatusCode::OK,
                content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body: self.metrics.render().into_bytes(),
            },
            (_, "/inject" | "/ready" | "/live" | "/metrics") => {
                Answer::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            (_, other) => Answer::text(
                StatusCode::NOT_FOUND,
                format!("no {other}: POST /inject, GET /ready, /live, /metrics\n"),
            ),
        }
    }
}

/// Serves `listener` over TLS until the future is dropped, which closes every
/// connection too.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, webhook: Arc<Webhook>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    loop {
        let (socket, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (acceptor, webhook) = (acceptor.clone(), webhook.clone());
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| {
                let webhook = webhook.clone();
                async move {
                    let answer = webhook.route(req).await;
                    let response = Response::builder()
                        .status(answer.status)
                        .header(header::CONTENT_TYPE, answer.content_type)
                        .body(Full::new(Bytes::from(answer.body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())));
                    Ok::<_, Infallible>(response)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended in an error");
            }
        });
    }
}

#[cfg(test)]
mod cert_reload_tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn force_check(files: &CertFiles) {
        let mut state = files.state.lock().unwrap();
        state.checked -= RELOAD_CHECK;
        // Some filesystems keep whole-second times: make the change visible.
        state.stamps = (None, None);
    }

    #[test]
    fn a_renewed_certificate_is_served_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_pair(dir.path(), "a.test");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = CertFiles::load(
            &dir.path().join("tls.crt"),
            &dir.path().join("tls.key"),
            provider,
        )
        .unwrap();
        assert_eq!(files.current().cert[0].as_ref(), first.as_slice());

        // Not looked at again before RELOAD_CHECK.
        let second = write_pair(dir.path(), "b.test");
        assert_eq!(files.current().cert[0].as_ref(), first.as_slice());
        force_check(&files);
        assert_eq!(files.current().cert[0].as_ref(), second.as_slice());

        // A key that is not the certificate's: the previous pair stays.
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(dir.path().join("tls.key"), other.serialize_pem()).unwrap();
        force_check(&files);
        assert_eq!(files.current().cert[0].as_ref(), second.as_slice());
        // Refused, not taken: the pair is tried again at the next check.
        assert_eq!(files.state.lock().unwrap().stamps, (None, None));
        std::fs::write(dir.path().join("tls.crt"), "not PEM").unwrap();
        force_check(&files);
        assert_eq!(files.current().cert[0].as_ref(), second.as_slice());
        assert_eq!(files.state.lock().unwrap().stamps, (None, None));
    }
}
