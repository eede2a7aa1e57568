//! The controller's metrics, all under `weft_controller_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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
    /// `weft_controller_identity_reloads_total{result}`: changes of the identity files
    /// loaded (`ok`) or refused (`error`, the current issuer kept signing).
    pub reloads: Family<CertifyLabels, Counter>,
    /// `weft_controller_identity_token_reviews_total{result}`: tokens checked with the
    /// Kubernetes TokenReview API (`--identity-tokens kube`): `authenticated`, `cached`
    /// (an accepted review reused), `unauthenticated` or `error` (the API did not answer).
    pub token_reviews: Family<CertifyLabels, Counter>,
}

/// `kind` of `weft_controller_destination_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// `add`, `remove` or `no_endpoints`.
    pub kind: &'static str,
}

/// `file` and `result` of `weft_controller_local_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `mesh` (the mesh directory) or `pods` (the pods file).
    pub file: &'static str,
    /// `ok` or `error` (the last good one kept serving).
    pub result: &'static str,
}

/// The destination service's metrics.
#[derive(Clone, Debug, Default)]
pub struct DestinationMetrics {
    /// `weft_controller_destination_streams`: Destination.Get streams open now.
    pub streams: Gauge,
    /// `weft_controller_destination_updates_total{kind}`: updates sent on all streams.
    pub updates: Family<UpdateLabels, Counter>,
    /// `weft_controller_destination_index_timestamp_seconds`: when the index last
    /// changed (Unix time, sub-second), i.e. when streams started sending its updates.
    pub index_timestamp: Gauge<f64, AtomicU64>,
    /// `weft_controller_local_reloads_total{file,result}`.
    pub reloads: Family<ReloadLabels, Counter>,
}

/// Every metric of the controller, and their registry.
pub struct Metrics {
    pub identity: IdentityMetrics,
    pub destination: DestinationMetrics,
    pub kube: crate::kube::KubeMetrics,
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
        registry.register(
            "identity_reloads",
            "Changes of the identity files (trust anchors, issuer), by result: ok (loaded) or error (refused; the current issuer kept signing)",
            identity.reloads.clone(),
        );
        registry.register(
            "identity_token_reviews",
            "Tokens checked with the Kubernetes TokenReview API, by result: authenticated, cached, unauthenticated or error (the API did not answer)",
            identity.token_reviews.clone(),
        );
        let destination = DestinationMetrics::default();
        registry.register(
            "destination_streams",
            "Destination.Get streams open now",
            destination.streams.clone(),
        );
        registry.register(
            "destination_updates",
            "Destination.Get updates sent, by kind (add, remove, no_endpoints)",
            destination.updates.clone(),
        );
        registry.register(
            "destination_index_timestamp_seconds",
            "When the destination index last changed (Unix time)",
            destination.index_timestamp.clone(),
        );
        registry.register(
            "local_reloads",
            "Reloads of the local source's files (mesh directory, pods file), by result",
            destination.reloads.clone(),
        );
        let kube = crate::kube::KubeMetrics::default();
        kube.register(&mut registry);
        Metrics {
            identity,
            destination,
            kube,
            registry,
        }
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
