//! The kube source's metrics, registered with the controller's under
//! `weft_controller_kube_*`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `kind` of the kube source's metrics: `service`, `endpointslice`, `pod` or `node`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Labels of `weft_controller_kube_status_writes_total`: the object's `kind`
/// (`HTTPRoute`, `GRPCRoute`, `Server`, `AuthorizationPolicy`, ...) and the `result`:
/// `written`, `unchanged` (the object had weft's status already), `stale` (gone, or of
/// a newer generation than the index's) or `failed` (tried again later).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct KubeMetrics {
    /// `weft_controller_kube_events_total{kind}`: watch events received (objects
    /// applied or deleted, lists begun and done).
    pub events: Family<KindLabels, Counter>,
    /// `weft_controller_kube_errors_total{kind}`: failed lists and watches (each is
    /// retried with backoff).
    pub errors: Family<KindLabels, Counter>,
    /// `weft_controller_kube_initial_sync_seconds`: how long the first list of every
    /// kind took, from the source's start (0 until then).
    pub sync_seconds: Gauge<f64, AtomicU64>,
    /// `weft_controller_kube_index_builds_total`: indexes built from the reflected
    /// objects (published when they differ from the current one).
    pub builds: Counter,
    /// `weft_controller_kube_status_writes_total{kind,result}`: status writes the
    /// leader attempted (an object read, then written if its status differed).
    pub status_writes: Family<StatusLabels, Counter>,
}

impl KubeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_events",
            "Kubernetes watch events received by the kube source, by kind of object",
            self.events.clone(),
        );
        registry.register(
            "kube_errors",
            "Failed Kubernetes lists and watches of the kube source (retried with backoff), by kind of object",
            self.errors.clone(),
        );
        registry.register(
            "kube_initial_sync_seconds",
            "How long the kube source's first list of Services, EndpointSlices, Pods and Nodes took (0 until done)",
            self.sync_seconds.clone(),
        );
        registry.register(
            "kube_index_builds",
            "Destination indexes built by the kube source from the reflected objects",
            self.builds.clone(),
        );
        registry.register(
            "kube_status_writes",
            "Status writes of routes and policy objects attempted by the leader, by kind of object and result (written, unchanged, stale, failed)",
            self.status_writes.clone(),
        );
    }
}
