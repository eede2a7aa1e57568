//! weft on Kubernetes (kube-rs). The proxy never depends on this crate: it is for the
//! controller, the CLI and the operator.
//!
//! - custom resource types derived in Rust with their OpenAPI schemas: the
//!   `policy.weft.io` policy objects and the `operator.weft.io` `ControlPlane` and
//!   `DataPlane`;
//! - the sidecar injector (a mutating admission webhook and `weft inject`);
//! - the lifecycle operator.

pub mod crd;
pub mod inject;
pub mod install;
pub mod operator;
