//! `policy.weft.io/v1alpha1`: who may call whom (Linkerd's policy shapes, in weft's own
//! group). The fields are exactly those the controller reads from the mesh directory
//! (`weft_controller::policy::parse`, docs/policy.md), so one YAML file works in a
//! local mesh and on a cluster; the schemas add what the API server can check at once
//! (required fields, enums, names, port ranges, CIDRs), and the controller still
//! checks everything it checks in a local mesh.

// kube's printcolumn(...) lists repeat `type_ = "string"`, which clippy takes for a
// repeated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::common::{conditions_schema, Condition, API_GROUP, DNS_LABEL};

/// The API group.
pub const GROUP: &str = "policy.weft.io";
/// The version served and stored.
pub const VERSION: &str = "v1alpha1";

/// A port of some pods (`kubectl get servers.policy.weft.io`). Without an
/// AuthorizationPolicy targeting it (or its namespace) it denies every caller.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "Server",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    category = "weft",
    shortname = "wsrv",
    doc = "A port of the pods a selector picks, which only the AuthorizationPolicies targeting it (or its namespace) open.",
    printcolumn(name = "Port", type_ = "string", json_path = ".spec.port"),
    printcolumn(name = "Protocol", type_ = "string", json_path = ".spec.proxyProtocol"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerSpec {
    /// The pods, by label; `{}` selects every pod of the namespace.
    pub pod_selector: PodSelector,
    /// The container port: a number (1-65535) or a port's name.
    #[schemars(schema_with = "port_schema")]
    pub port: PortRef,
    /// The port's protocol; `unknown` (the default) detects it.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

/// Pods by label: every label listed must match (`matchExpressions` are not supported).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub match_labels: BTreeMap<String, String>,
}

/// A container port by number or by name (as the mesh directory takes it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

/// The port as an int-or-string with its range or name checked in CEL: a structural
/// schema cannot give an int-or-string's two types their own `minimum` and `pattern`.
fn port_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The container port: a number (1-65535) or a port's name.",
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "type(self) == int ? (self >= 1 && self <= 65535) : (size(self) >= 1 && size(self) <= 15 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
            "message": "must be a port number from 1 to 65535 or a port name (lowercase letters, digits and '-', 1 to 15 characters)"
        }]
    })
}

/// What the proxy takes the port's traffic to be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ProxyProtocol {
    #[default]
    #[serde(rename = "unknown")]
    Unknown,
    #[serde(rename = "HTTP/1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    #[serde(rename = "gRPC")]
    Grpc,
    #[serde(rename = "opaque")]
    Opaque,
    #[serde(rename = "TLS")]
    Tls,
}

/// Allows callers to reach a Server (or every Server of a namespace) when all of its
/// required authentications do.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    category = "weft",
    doc = "Allows callers to reach a Server, or every Server of its namespace, when every one of its required authentications does.",
    printcolumn(
        name = "Target-Kind",
        type_ = "string",
        json_path = ".spec.targetRef.kind"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Resolved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ResolvedRefs\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// A Server of the policy's namespace, or the policy's own Namespace.
    pub target_ref: TargetRef,
    /// At most one MeshTLSAuthentication and one NetworkAuthentication, all required;
    /// none allows every caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2), extend("x-kubernetes-validations" = [
        {
            "rule": "self.filter(r, r.kind == 'MeshTLSAuthentication').size() <= 1 && self.filter(r, r.kind == 'NetworkAuthentication').size() <= 1",
            "message": "at most one MeshTLSAuthentication and one NetworkAuthentication (write one listing everything)"
        }
    ]))]
    pub required_authentication_refs: Vec<AuthenticationRef>,
}

/// What an AuthorizationPolicy targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// `policy.weft.io` for a Server; empty (or absent) for a Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(API_GROUP), length(max = 253))]
    pub group: Option<String>,
    #[schemars(extend("enum" = ["Server", "Namespace"]))]
    pub kind: String,
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub name: String,
    /// The policy's own (the only one allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// An authentication an AuthorizationPolicy requires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthenticationRef {
    /// `policy.weft.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(API_GROUP), length(max = 253))]
    pub group: Option<String>,
    #[schemars(extend("enum" = ["MeshTLSAuthentication", "NetworkAuthentication"]))]
    pub kind: String,
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Callers by mTLS identity: `identities` or `identityRefs`, not both.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "MeshTLSAuthentication",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    category = "weft",
    doc = "Callers by their mTLS identity: identity names (or * and *. suffixes), or ServiceAccounts and Namespaces.",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.identities) != has(self.identityRefs)",
        "message": "give identities or identityRefs, not both"
    }
]))]
pub struct MeshTLSAuthenticationSpec {
    /// Identity names (`web.default.serviceaccount.identity.weft.cluster.local`), `*`
    /// (any mesh identity) or `*.` and a suffix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        inner(pattern(IDENTITY), length(min = 1, max = 255))
    )]
    pub identities: Option<Vec<String>>,
    /// ServiceAccounts, or Namespaces (every service account in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub identity_refs: Option<Vec<IdentityRef>>,
}

/// An identity name, `*`, or `*.` and a DNS suffix.
pub const IDENTITY: &str =
    "^(\\*|(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$";

/// A ServiceAccount (its namespace defaults to the object's) or a Namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentityRef {
    /// The core group: empty, `core`, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^(core)?$"))]
    pub group: Option<String>,
    #[schemars(extend("enum" = ["ServiceAccount", "Namespace"]))]
    pub kind: String,
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(DNS_LABEL), length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// Callers by source address.
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "policy.weft.io",
    version = "v1alpha1",
    kind = "NetworkAuthentication",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    category = "weft",
    doc = "Callers by source address: in one of the networks and not in its exceptions.",
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkAuthenticationSpec {
    #[schemars(length(min = 1, max = 256))]
    pub networks: Vec<Network>,
}

/// A network and the parts of it excluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Network {
    /// `198.18.0.0/15`, or one address.
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub except: Vec<Cidr>,
}

/// A CIDR or an address (serialized as the plain string the mesh directory takes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cidr(pub String);

impl JsonSchema for Cidr {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cidr".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 49,
            "x-kubernetes-validations": [{
                "rule": "isCIDR(self) || isIP(self)",
                "message": "must be a CIDR (198.18.0.0/15) or an address"
            }]
        })
    }
}

/// What the controller observed of a policy object: `Accepted`, and for an
/// AuthorizationPolicy `ResolvedRefs` (docs/policy.md, "Bad input").
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
