//! What the custom resources share: the name patterns the API server checks and the
//! status conditions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A DNS label (RFC 1123): what Kubernetes takes as a namespace or Service name and
/// what the controller checks names against (`weft_core::mesh::is_dns_label`).
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A DNS subdomain (RFC 1123), or empty: an API group (`""` is the core group).
pub const API_GROUP: &str = "^$|^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A condition's reason, as `metav1.Condition` takes it.
pub const CONDITION_REASON: &str = "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$";

/// A condition's type, as `metav1.Condition` takes it (an optional DNS-subdomain prefix).
pub const CONDITION_TYPE: &str =
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$";

/// An observation of one aspect of an object (`metav1.Condition`'s shape), written by
/// the controller or the operator with server-side apply: the list is a map keyed by
/// `type`, so two writers may each own their own conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs`, `Ready`, `Progressing`, ...
    #[serde(rename = "type")]
    #[schemars(pattern(CONDITION_TYPE), length(max = 316))]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// The object's `metadata.generation` the condition was set from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
    /// When `status` last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// Why, in one CamelCase word (`TargetNotFound`).
    #[schemars(pattern(CONDITION_REASON), length(min = 1, max = 1024))]
    pub reason: String,
    /// For people: what is wrong and where.
    #[schemars(length(max = 32768))]
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

/// Conditions as a list-map keyed by `type` (for server-side apply).
pub(crate) fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <Vec<Condition>>::json_schema(generator);
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}
