//! Obtains and renews the proxy's certificate from the controller's identity service
//! (`Identity.Certify` of the linkerd2-proxy-api protocol, gRPC over TLS). Renewal
//! happens at 70 % of the certificate's lifetime; failures back off and the current
//! certificate keeps serving until it expires.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use linkerd2_proxy_api::identity::identity_client::IdentityClient;
use linkerd2_proxy_api::identity::CertifyRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::backoff::Backoff;
use crate::identity::LocalIdentity;
use crate::metrics::{IdentityMetrics, RefreshLabels};

/// Where and how to ask for certificates.
#[derive(Clone, Debug)]
pub struct CertifyConfig {
    /// The controller's gRPC address, `host:port`.
    pub controller: String,
    /// The controller's identity (its TLS server name).
    pub controller_name: String,
    /// The token that proves this workload's identity.
    pub token: TokenSource,
    /// The trust anchors (PEM) the controller's certificate must chain to.
    pub anchors_pem: Vec<u8>,
}

/// Where the identity token comes from.
#[derive(Clone)]
pub enum TokenSource {
    /// A file, read again for every request (a rotated token is picked up).
    File(PathBuf),
    /// The token itself, given once at start-up (`--identity-token -`: read from stdin,
    /// so no file readable by the proxy's user needs to hold it).
    Inline(Arc<[u8]>),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
            // Never the token itself in logs.
            TokenSource::Inline(token) => write!(f, "Inline({} bytes)", token.len()),
        }
    }
}

impl TokenSource {
    async fn read(&self) -> Result<Vec<u8>, CertifyError> {
        match self {
            TokenSource::File(path) => {
                tokio::fs::read(path)
                    .await
                    .map_err(|source| CertifyError::Token {
                        path: path.clone(),
                        source,
                    })
            }
            TokenSource::Inline(token) => Ok(token.to_vec()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot read the identity token {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid controller address {0:?}: {1}")]
    Address(String, tonic::transport::Error),
    #[error("the identity service refused: {0}")]
    Refused(tonic::Status),
    #[error("the identity service answered without a validity")]
    NoValidity,
    #[error(transparent)]
    Certificate(#[from] crate::identity::IdentityError),
}

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Renews forever (until the task is dropped).
pub async fn run(local: Arc<LocalIdentity>, config: CertifyConfig, metrics: IdentityMetrics) {
    let channel = match channel(&config) {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "identity service unusable; the proxy stays not ready");
            return;
        }
    };
    let mut client = IdentityClient::new(channel);
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        match certify(&mut client, &local, &config).await {
            Ok((expiry, lifetime)) => {
                metrics
                    .refreshes
                    .get_or_create(&RefreshLabels { result: "ok" })
                    .inc();
                if let Ok(secs) = expiry.duration_since(SystemTime::UNIX_EPOCH) {
                    metrics.expiration.set(secs.as_secs() as i64);
                }
                backoff.reset();
                let renew_in = lifetime.mul_f64(0.7);
                tracing::info!(identity = %local.name(), renew_in = ?renew_in, "certificate installed");
                tokio::time::sleep(renew_in).await;
            }
            Err(error) => {
                metrics
                    .refreshes
                    .get_or_create(&RefreshLabels { result: "error" })
                    .inc();
                let wait = backoff.next_wait();
                tracing::warn!(identity = %local.name(), %error, retry_in = ?wait, "certificate request failed; keeping the current certificate");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn channel(config: &CertifyConfig) -> Result<Channel, CertifyError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.anchors_pem))
        .domain_name(config.controller_name.clone());
    let endpoint = Endpoint::from_shared(format!("https://{}", config.controller))
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| CertifyError::Address(config.controller.clone(), e))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    Ok(endpoint.connect_lazy())
}

/// One request; returns the new certificate's expiry and lifetime from now.
async fn certify(
    client: &mut IdentityClient<Channel>,
    local: &LocalIdentity,
    config: &CertifyConfig,
) -> Result<(SystemTime, Duration), CertifyError> {
    let token = config.token.read().await?;
    let rsp = client
        .certify(CertifyRequest {
            identity: local.name().dns_name(),
            token,
            certificate_signing_request: local.csr().to_vec(),
        })
        .await
        .map_err(CertifyError::Refused)?
        .into_inner();
    rsp.valid_until.as_ref().ok_or(CertifyError::NoValidity)?;
    let expiry = local.set_certificate(rsp.leaf_certificate, rsp.intermediate_certificates)?;
    let lifetime = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    Ok((expiry, lifetime))
}
