//! The controller's gRPC server: TLS with a serving certificate the controller issues
//! itself (identity `weft-controller.weft-system.serviceaccount.identity.weft.{td}`,
//! key made in memory, renewed at 70 % of its lifetime), so proxies verify it against
//! the trust anchors with that server name.
//!
//! Callers are asked for a client certificate, verified against the trust anchors
//! (the current bundle: [`ClientVerifier::set_anchors`] follows its reloads), but may
//! present none at the TLS level: a proxy asking for its
//! first certificate has none (its token authenticates it). The destination service
//! serves only callers that presented a mesh workload certificate.
//!
//! Limits, so that callers cannot make the controller hold unbounded memory: at most
//! [`MAX_CONNECTIONS`] connections (TLS handshakes included; more wait in the listen
//! backlog), [`MAX_STREAMS_PER_CONNECTION`] concurrent HTTP/2 streams per connection,
//! small HTTP/2 receive windows and header lists, and per-service message size limits
//! checked on the gRPC frame header, before a message is buffered
//! ([`crate::identity::MAX_CERTIFY_MESSAGE`],
//! [`crate::destination::MAX_DESTINATION_MESSAGE`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::ring as provider;
use rustls::pki_types::UnixTime;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use weft_core::identity::Identity;

use crate::destination::DestinationService;
use crate::identity::{Certifier, CertifyError, IdentityService, TrustAnchors};
use crate::policy::InboundPolicyService;
use crate::routes::OutboundPolicyService;

/// The controller's service account and namespace: its identity in the mesh.
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "weft-controller";
pub const CONTROLLER_NAMESPACE: &str = "weft-system";

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once (TLS handshakes in progress included); beyond it the
/// controller stops accepting until one closes. A proxy keeps two (identity,
/// destination).
pub const MAX_CONNECTIONS: usize = 2048;
/// Concurrent HTTP/2 streams per connection: a proxy follows one Destination.Get stream
/// per destination over one connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;
/// HTTP/2 receive windows: how much request data one stream, and one connection, may
/// have buffered in the controller before it is read. Requests are a few KiB.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// Largest header list (all of a request's headers) accepted.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// The controller's identity in `trust_domain`.
pub fn controller_identity(
    trust_domain: &str,
) -> Result<Identity, weft_core::identity::IdentityError> {
    Identity::new(
        CONTROLLER_SERVICE_ACCOUNT,
        CONTROLLER_NAMESPACE,
        trust_domain,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("cannot make the serving key: {0}")]
    Key(rcgen::Error),
    #[error("cannot issue the serving certificate: {0}")]
    Issue(#[from] CertifyError),
    #[error("the serving key is not usable for TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// The controller's own TLS certificate, reissued before it expires.
pub struct ServingCert {
    identity: Identity,
    certifier: Arc<Certifier>,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert")
            .field("identity", &self.identity.dns_name())
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Issues the first certificate for `identity`.
    pub fn new(
        identity: Identity,
        certifier: Arc<Certifier>,
    ) -> Result<Arc<ServingCert>, ServingError> {
        let current = issue(&identity, &certifier)?;
        Ok(Arc::new(ServingCert {
            identity,
            certifier,
            current: RwLock::new(current),
        }))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// When the current certificate expires.
    pub fn expiry(&self) -> SystemTime {
        self.current.read().unwrap_or_else(|e| e.into_inner()).1
    }

    /// The current certificate chain (leaf, issuer).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .cert
            .clone()
    }

    /// Issues a new certificate now (the issuer changed): new handshakes present a
    /// certificate from the current issuer.
    pub fn reissue(&self) -> Result<(), ServingError> {
        let next = issue(&self.identity, &self.certifier)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// Reissues the certificate at 70 % of its lifetime, forever (drop the task to
    /// stop); failures are retried every few seconds while the current one serves.
    pub async fn renew(self: Arc<Self>) {
        loop {
            let remaining = self
                .expiry()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // At least 500 ms apart: near the issuer's end every new certificate is
            // shorter (it never outlives the issuer) and whole seconds are the unit.
            let wait = self.certifier.lifetime().min(remaining).mul_f64(0.7);
            tokio::time::sleep(wait.max(Duration::from_millis(500))).await;
            loop {
                match issue(&self.identity, &self.certifier) {
                    Ok(next) => {
                        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
                        tracing::debug!("serving certificate renewed");
                        break;
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot renew the serving certificate");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
        }
    }

    /// TLS settings serving this certificate (TLS 1.2 and 1.3, ALPN h2), asking for an
    /// optional client certificate that, when presented, `clients` must accept.
    pub fn server_config(
        self: &Arc<Self>,
        clients: Arc<ClientVerifier>,
    ) -> Result<Arc<ServerConfig>, rustls::Error> {
        let crypto = Arc::new(provider::default_provider());
        let mut config = ServerConfig::builder_with_provider(crypto)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(clients)
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .clone(),
        )
    }
}

/// Verifies client certificates against the trust anchors, which may change while the
/// controller runs (an anchor rotation adds one to the bundle). A client may present
/// no certificate at all; one that it presents must chain to an anchor.
pub struct ClientVerifier {
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier").finish_non_exhaustive()
    }
}

impl ClientVerifier {
    pub fn new(anchors: &TrustAnchors) -> Result<Arc<ClientVerifier>, rustls::Error> {
        Ok(Arc::new(ClientVerifier {
            current: RwLock::new(Self::build(anchors)?),
        }))
    }

    /// Verifies against `anchors` from the next handshake on.
    pub fn set_anchors(&self, anchors: &TrustAnchors) -> Result<(), rustls::Error> {
        let next = Self::build(anchors)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn build(anchors: &TrustAnchors) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        WebPkiClientVerifier::builder_with_provider(
            anchors.root_store(),
            Arc::new(provider::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(format!("client certificate verifier: {e}")))
    }

    fn get(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    // No hints: a proxy presents its one certificate whatever the server names.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

fn issue(
    identity: &Identity,
    certifier: &Certifier,
) -> Result<(Arc<CertifiedKey>, SystemTime), ServingError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(ServingError::Key)?;
    let certified = certifier.issue(identity, &key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider::sign::any_ecdsa_type(&der)?;
    let mut chain = vec![CertificateDer::from(certified.leaf)];
    chain.extend(
        certified
            .intermediates
            .into_iter()
            .map(CertificateDer::from),
    );
    Ok((
        Arc::new(CertifiedKey::new(chain, signing_key)),
        certified.valid_until,
    ))
}

/// Serves the controller's gRPC services (Identity, and Destination, OutboundPolicies
/// and InboundServerPolicies when given; others answer UNIMPLEMENTED) over TLS on `listener`
/// until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    certifier: Arc<Certifier>,
    destination: Option<DestinationService>,
    policies: Option<OutboundPolicyService>,
    inbound: Option<InboundPolicyService>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let accept = tokio::spawn(async move {
        let mut at_limit = false;
        loop {
            // At the limit, stop accepting: new connections wait in the backlog.
            if connections.available_permits() == 0 && !at_limit {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "gRPC connection limit reached: not accepting until a connection closes"
                );
            }
            at_limit = connections.available_permits() == 0;
            let Ok(permit) = connections.clone().acquire_owned().await else {
                return;
            };
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx
                            .send(Counted {
                                io: stream,
                                _permit: permit,
                            })
                            .await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let _stop_accepting = AbortOnDrop(accept);
    let incoming = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|stream| (Ok::<_, std::io::Error>(stream), rx))
    });
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .add_service(IdentityService::new(certifier).into_server())
        .add_optional_service(destination.map(DestinationService::into_server))
        .add_optional_service(policies.map(OutboundPolicyService::into_server))
        .add_optional_service(inbound.map(InboundPolicyService::into_server))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// A served connection, holding its place under [`MAX_CONNECTIONS`] until it closes.
struct Counted {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Counted {
    // The TLS stream's own, so handlers see the peer's address and certificates.
    type ConnectInfo = <tokio_rustls::server::TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
