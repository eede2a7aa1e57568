//! `Identity.Certify` of the linkerd2-proxy-api protocol, served with tonic.

use std::sync::Arc;

use linkerd2_proxy_api::identity::identity_server::{Identity, IdentityServer};
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse};

use super::Certifier;

/// The largest Certify request decoded: a CSR and a token are a few KiB. Larger ones
/// are refused with OUT_OF_RANGE from their gRPC frame header, before being buffered.
pub const MAX_CERTIFY_MESSAGE: usize = 64 * 1024;

/// The gRPC identity service.
#[derive(Clone, Debug)]
pub struct IdentityService {
    certifier: Arc<Certifier>,
}

impl IdentityService {
    pub fn new(certifier: Arc<Certifier>) -> IdentityService {
        IdentityService { certifier }
    }

    /// The service ready to add to a tonic server (requests up to
    /// [`MAX_CERTIFY_MESSAGE`]).
    pub fn into_server(self) -> IdentityServer<IdentityService> {
        IdentityServer::new(self).max_decoding_message_size(MAX_CERTIFY_MESSAGE)
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        let req = request.into_inner();
        let certified = self
            .certifier
            .certify(&req.identity, &req.token, &req.certificate_signing_request)
            .await?;
        Ok(tonic::Response::new(CertifyResponse {
            leaf_certificate: certified.leaf,
            intermediate_certificates: certified.intermediates,
            valid_until: Some(prost_types::Timestamp::from(certified.valid_until)),
        }))
    }
}
