//! The connection to the controller that the destination, route and policy clients
//! share.

use std::sync::Arc;

use super::{DestinationConfig, DestinationError};
use crate::identity::LocalIdentity;

/// Opens the connections to the controller: TCP to `host:port`, then TLS verifying
/// the controller's certificate against the trust anchors for its identity name and
/// presenting this proxy's current workload certificate (the one renewed in place by
/// [`crate::certify`]), ALPN h2.
#[derive(Clone)]
pub(super) struct ControllerConnector {
    addr: Arc<str>,
    server_name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    identity: Option<Arc<LocalIdentity>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ControllerConnector {
    pub(super) fn new(
        config: &DestinationConfig,
        identity: Option<Arc<LocalIdentity>>,
    ) -> Result<ControllerConnector, DestinationError> {
        let server_name = rustls::pki_types::ServerName::try_from(config.controller_name.clone())
            .map_err(|e| {
            DestinationError::ControllerName(config.controller_name.clone(), e.to_string())
        })?;
        let mut tls = match &identity {
            // The mTLS client settings: the anchors, and the current certificate.
            Some(local) => (*local.client_config()).clone(),
            // No identity: the controller will refuse to answer, but says why.
            None => {
                let roots = crate::identity::anchors_from_pem(&config.anchors_pem)
                    .map_err(DestinationError::Anchors)?;
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| DestinationError::Anchors(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth()
            }
        };
        tls.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ControllerConnector {
            addr: config.controller.as_str().into(),
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            identity,
        })
    }
}

impl tonic::codegen::Service<http::Uri> for ControllerConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if let Some(local) = &this.identity {
                if !local.is_ready() {
                    return Err(format!(
                        "{} has no valid workload certificate yet, and the destination service answers only mesh workloads presenting one",
                        local.name()
                    )
                    .into());
                }
            }
            let tcp = tokio::net::TcpStream::connect(&*this.addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = this.tls.connect(this.server_name.clone(), tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
