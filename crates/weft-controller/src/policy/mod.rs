//! Authorization policy: who may call whom. The mesh directory's `Server`,
//! `AuthorizationPolicy`, `MeshTLSAuthentication` and `NetworkAuthentication` objects
//! (`policy.weft.io/v1alpha1`, shaped like Linkerd's policy API), checked and served to
//! inbound proxies through `io.linkerd.proxy.inbound.InboundServerPolicies`
//! (`GetPort`/`WatchPort`): for a workload's port, the `Server` that selects it and
//! the authorizations of the policies that target that Server (or its namespace), or,
//! for a port no Server selects, the default policy's.
//!
//! - [`parse`]: the objects, strictly (unknown fields refused, with the file, object
//!   and field).
//! - [`index`]: every object at one moment: references resolved, conditions
//!   (`Accepted`, `ResolvedRefs`), the last valid version of an object that turned
//!   invalid (it keeps serving), and the [`Server`] message of a workload's port.
//! - [`serve`]: the gRPC service and the task that rebuilds the index when the mesh
//!   directory changes.
//!
//! The default policy: the workload's label [`DEFAULT_POLICY_LABEL`] in `mesh.yaml`,
//! else the controller's `--default-inbound-policy` ([`PolicyConfig::default_policy`]).
//!
//! [`Server`]: linkerd2_proxy_api::inbound::Server

pub mod index;
pub mod parse;
pub mod serve;

use std::fmt;

pub use index::{Condition, ObjectReport, PolicyIndex};
pub use serve::InboundPolicyService;

/// The API group of the policy objects.
pub const POLICY_GROUP: &str = "policy.weft.io";
/// The version they are read at.
pub const API_VERSION: &str = "policy.weft.io/v1alpha1";

/// A workload's label (in `mesh.yaml`) naming its default inbound policy: for its
/// ports no Server selects, in place of the controller's `--default-inbound-policy`.
/// Linkerd's equivalent is the `config.linkerd.io/default-inbound-policy` annotation.
pub const DEFAULT_POLICY_LABEL: &str = "config.weft.io/default-inbound-policy";

pub use weft_core::policy::DefaultPolicy;

/// The policy service's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// For ports no Server selects, on workloads without [`DEFAULT_POLICY_LABEL`].
    pub default_policy: DefaultPolicy,
    /// The networks `cluster-authenticated` allows (`--cluster-networks`).
    pub cluster_networks: Vec<ipnet::IpNet>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            default_policy: DefaultPolicy::default(),
            cluster_networks: default_cluster_networks(),
        }
    }
}

/// The private networks, the local mesh's pods (198.18.0.0/15) and loopback: the
/// proxies' `--mesh-networks` and the loopback mesh.
pub fn default_cluster_networks() -> Vec<ipnet::IpNet> {
    [
        "10.0.0.0/8",
        "100.64.0.0/10",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "127.0.0.0/8",
        "fd00::/8",
        "::1/128",
    ]
    .iter()
    .filter_map(|n| n.parse().ok())
    .collect()
}

/// An object's identity: kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests;
