//! The destination client's metrics: `destination_*`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `kind` of `destination_updates_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    /// `add`, `remove` or `no_endpoints`.
    pub kind: &'static str,
}

/// `result` of `destination_lookups_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `service` (resolved), `unknown` (the controller does not know it: original
    /// destination), `timeout` (no answer in time: original destination), `over_limit`
    /// (every one of `--max-destinations` in use: not followed, as if unanswered).
    pub result: &'static str,
}

/// The destination client's metrics.
#[derive(Clone, Debug, Default)]
pub struct DestinationMetrics {
    /// `destination_updates_total{kind}`: updates applied.
    pub updates: Family<UpdateLabels, Counter>,
    /// `destination_update_timestamp_seconds`: when the last update was applied (Unix
    /// time, sub-second): with the controller's index timestamp, how long it took.
    pub last_update: Gauge<f64, AtomicU64>,
    /// `destination_streams`: Destination.Get streams open now.
    pub streams: Gauge,
    /// `destination_stream_errors_total`: streams that failed or could not open.
    pub errors: Counter,
    /// `destination_lookups_total{result}`: connections (or explicit-mode requests)
    /// that looked a destination up.
    pub lookups: Family<LookupLabels, Counter>,
}

impl DestinationMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "destination_updates",
            "Destination service updates applied, by kind (add, remove, no_endpoints)",
            self.updates.clone(),
        );
        registry.register(
            "destination_update_timestamp_seconds",
            "When the last destination service update was applied (Unix time)",
            self.last_update.clone(),
        );
        registry.register(
            "destination_streams",
            "Destination.Get streams open now",
            self.streams.clone(),
        );
        registry.register(
            "destination_stream_errors",
            "Destination.Get streams that failed or could not open (endpoints are kept)",
            self.errors.clone(),
        );
        registry.register(
            "destination_lookups",
            "Destinations looked up by connections or requests, by result (service, unknown, timeout, over_limit)",
            self.lookups.clone(),
        );
    }

    pub(super) fn lookup(&self, result: &'static str) {
        self.lookups.get_or_create(&LookupLabels { result }).inc();
    }
}
