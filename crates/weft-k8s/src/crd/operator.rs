//! `operator.weft.io/v1alpha1`: the lifecycle operator's resources. One `ControlPlane`
//! says which weft runs (version, trust anchor, high availability, values) and the
//! operator makes the control plane's objects from it; a `DataPlane` says which
//! workloads follow the control plane's proxy version, and the operator restarts them
//! onto it after an upgrade, a few at a time.

// kube's printcolumn(...) lists repeat `type_ = "string"`, which clippy takes for a
// repeated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::common::{conditions_schema, Condition, DNS_LABEL};

/// The API group.
pub const GROUP: &str = "operator.weft.io";
/// The version served and stored.
pub const VERSION: &str = "v1alpha1";

/// An image tag or a version: what a registry takes as a tag.
pub const IMAGE_TAG: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$";
/// An image repository (`ghcr.io/weft/proxy`, `registry:5000/weft/proxy`).
pub const IMAGE_REPOSITORY: &str =
    "^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$";
/// A DNS subdomain: a Secret's or ConfigMap's name.
pub const DNS_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key of a Secret's or ConfigMap's data.
pub const DATA_KEY: &str = "^[-._a-zA-Z0-9]+$";

/// The mesh's control plane (cluster-scoped: one per cluster).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "operator.weft.io",
    version = "v1alpha1",
    kind = "ControlPlane",
    status = "ControlPlaneStatus",
    derive = "PartialEq",
    category = "weft",
    doc = "weft's control plane: the version to run, its trust anchor, high availability and values; the operator makes and upgrades the control plane's objects from it.",
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(
        name = "Current",
        type_ = "string",
        json_path = ".status.currentVersion"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    /// weft's version: the tag of the controller's and the proxy's images.
    #[schemars(pattern(IMAGE_TAG))]
    pub version: String,
    /// Where the control plane runs (default `weft-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The mesh's trust anchors (PEM). Absent: the operator creates a trust anchor and
    /// an issuer in the control plane's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_anchor: Option<TrustAnchorRef>,
    /// Present: more than one controller replica (leader election for the status
    /// writers, a PodDisruptionBudget, spread over nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_availability: Option<HighAvailability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<ControlPlaneValues>,
}

/// The trust anchors' PEM, in a Secret or a ConfigMap (exactly one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.secret) != has(self.configMap)", "message": "give a secret or a configMap, not both"}
]))]
pub struct TrustAnchorRef {
    /// A Secret; key default `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KeyRef>,
    /// A ConfigMap; key default `ca-bundle.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<KeyRef>,
    /// A `kubernetes.io/tls` Secret with the issuer's certificate and key, signed by the
    /// trust anchor. Absent: the operator makes an issuer, which needs the trust
    /// anchor's key (`tls.key` in the trust anchor's Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub issuer_secret: Option<String>,
}

/// A key of a Secret or ConfigMap in the control plane's namespace (or `namespace`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    #[schemars(pattern(DNS_SUBDOMAIN), length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DATA_KEY), length(min = 1, max = 253))]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// High availability: `{}` runs 3 controller replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HighAvailability {
    /// Controller replicas (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 2, max = 9))]
    pub replicas: Option<i32>,
}

/// Settings of the control plane's parts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneValues {
    /// Prefix of the default images (`ghcr.io/weft`): `{registry}/controller`,
    /// `{registry}/proxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IMAGE_REPOSITORY), length(min = 1, max = 255))]
    pub image_registry: Option<String>,
    /// The injected proxies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ComponentValues>,
    /// The controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<ComponentValues>,
}

/// One component's image, log level and resources.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentValues {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// A tracing filter (`info`, `warn,weft_proxy=debug`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^[A-Za-z0-9_:=,.\\-]+$"), length(min = 1, max = 256))]
    pub log_level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// An image; what is absent comes from `imageRegistry` and `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// The repository (`ghcr.io/weft/proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IMAGE_REPOSITORY), length(min = 1, max = 255))]
    pub name: Option<String>,
    /// The tag (default: `spec.version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(IMAGE_TAG))]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// Requests and limits of CPU and memory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ResourceList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ResourceList>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceList {
    /// `100m`, `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// `64Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// A Kubernetes quantity (`100m`, `64Mi`, `1`), as a string or a number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Quantity {
    Number(i64),
    Text(String),
}

impl JsonSchema for Quantity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "x-kubernetes-validations": [{
                "rule": "type(self) == int ? self >= 0 : (size(self) <= 64 && isQuantity(self))",
                "message": "must be a quantity (100m, 1, 64Mi)"
            }]
        })
    }
}

/// What the operator observed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneStatus {
    /// `Ready`, `Progressing`, `Degraded`: each with the reason when it is not so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The version running (all controller replicas on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
}

/// Workloads that follow the control plane's proxy version (cluster-scoped).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "operator.weft.io",
    version = "v1alpha1",
    kind = "DataPlane",
    status = "DataPlaneStatus",
    derive = "PartialEq",
    category = "weft",
    doc = "Meshed workloads the operator restarts onto the control plane's proxy version after an upgrade, a few at a time.",
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.workloadSelector.namespace"
    ),
    printcolumn(
        name = "Restarted",
        type_ = "integer",
        json_path = ".status.workloadsRestarted"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.workloadsPending"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneSpec {
    /// Which workloads (Deployments, StatefulSets, DaemonSets with injected pods).
    #[serde(default)]
    pub workload_selector: WorkloadSelector,
    /// At most this many workloads restarting at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_unavailable: Option<i32>,
}

/// Workloads by namespace and labels; empty: every meshed workload of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// One namespace; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The workloads' labels; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// A Kubernetes label selector (`metav1.LabelSelector`'s shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
        "message": "In and NotIn need values; Exists and DoesNotExist take none"
    }
]))]
pub struct LabelSelectorRequirement {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// What the operator observed and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Workloads restarted onto the current proxy version since the last upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads_restarted: Option<i32>,
    /// Workloads still on another proxy version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workloads_pending: Option<i32>,
}
