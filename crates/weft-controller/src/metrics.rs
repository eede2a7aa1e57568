//! The controller's metrics, all under `weft_controller_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `result` of `weft_controller_identity_certify_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertifyLabels {
    pub result: &'static str,
}

/// The identity service's metrics.
#[derive(Clone, Debug, Default)]
pub struct IdentityMetrics {
    /// `weft_controller_identity_certify_total{result}`: one per Certify call, by
    /// outcome (see [`crate::identity::CertifyError::result`]).
    pub certify: Family<CertifyLabels, Counter>,
    /// `weft_controller_identity_issuer_expiration_timestamp_seconds`.
    pub issuer_expiration: Gauge,
}

/// Every metric of the controller, and their registry.
pub struct Metrics {
    pub identity: IdentityMetrics,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("weft_controller");
        let identity = IdentityMetrics::default();
        registry.register(
            "identity_certify",
            "Identity.Certify requests, by result",
            identity.certify.clone(),
        );
        registry.register(
            "identity_issuer_expiration_timestamp_seconds",
            "When the issuer certificate expires (Unix time)",
            identity.issuer_expiration.clone(),
        );
        Metrics { identity, registry }
    }

    /// OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        out
    }
}
