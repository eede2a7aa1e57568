//! The local mesh model: a directory holding `mesh.yaml` (the workloads) and Kubernetes
//! `Service` objects in any other `*.yaml` file. `weft up` runs it; the controller's
//! `local` source will read the same directory.
//!
//! ```yaml
//! # mesh.yaml
//! kind: Mesh
//! trustDomain: cluster.local          # default
//! proxy:                              # every pod's proxy (optional)
//!   zoneMode: aware                   # aware (default) | unaware | local-only
//!   args: [--zone-high, "3"]          # more weft-proxy flags
//! user: 2103                          # apps' user (default 2103): UID, "UID:GID" or a name
//! policy:
//!   default: all-authenticated        # the mesh-wide default inbound policy (the
//!                                     # controller's; default all-unauthenticated)
//! workloads:
//!   - name: books
//!     namespace: default              # default
//!     serviceAccount: books           # default: the name
//!     zone: zone-a
//!     replicas: 2                     # default 1
//!     ports: [8080, {name: admin, port: 9090}]
//!     command: [weft-demo-app, serve, --name, books, --port, "8080"]
//!     env: {RUST_LOG: info}
//!     labels: {app: books}            # default: {app: NAME}
//!     opaquePorts: [9090]             # forwarded as TCP, no protocol detection
//!     skipPorts: []                   # never redirected through the proxy
//!     proxy: {zoneMode: unaware}      # replaces the mesh's proxy fields it sets
//!     user: nobody                    # replaces the mesh's user
//! ```
//!
//! Parsing is strict: unknown fields, wrong types and broken references are errors that
//! name the file, the object and the field (`mesh.yaml: workloads[2] (books): unknown
//! field `replica``). Every problem found is reported, not only the first. Things that
//! are legal but probably unintended (a selector matching no workload) are warnings.
//!
//! Where things live: `model` the validated types (`Mesh`, `Workload`, `Service`);
//! `parse` reading the directory, `mesh.yaml`'s workloads and the located
//! [`Problem`]s; `objects` the Kubernetes objects of the other files (which kinds the
//! local mesh reads, hands over or warns about; a `Service` as `k8s-openapi`'s, made
//! into the mesh's view by [`Service::from_object`]); [`strict`] reading an object into
//! `k8s-openapi`'s types with wrong types and unknown fields refused at their field;
//! `validate` the checks across objects (duplicates, selectors, target ports).

mod model;
mod objects;
mod parse;
pub mod strict;
#[cfg(test)]
mod tests;
mod validate;

pub use model::{
    is_dns_label, AppUser, ContainerPort, GatewayObject, Mesh, ProxySettings, Service, ServicePort,
    TargetPort, Workload,
};
pub use parse::{yaml_files, MeshError, Problem};

use crate::iptables::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// The file holding the workloads.
pub const MESH_FILE: &str = "mesh.yaml";

/// Ports the proxy itself listens on in every pod; workloads cannot use them.
pub const PROXY_PORTS: [(u16, &str); 3] = [
    (OUTBOUND_PORT, "outbound"),
    (INBOUND_PORT, "inbound"),
    (ADMIN_PORT, "admin"),
];

/// The proxy's `--zone-mode` values.
pub const ZONE_MODES: [&str; 3] = ["aware", "unaware", "local-only"];

/// The default inbound policies (`policy.default` in `mesh.yaml`, the controller's
/// `--default-inbound-policy`): what a workload's port that no Server selects allows.
pub const DEFAULT_INBOUND_POLICIES: [&str; 4] = crate::policy::DefaultPolicy::NAMES;

/// weft-proxy flags `weft up` manages (discovery, identity, listeners, labels); `proxy.args`
/// cannot give them.
pub const PROXY_FLAGS_MANAGED_BY_WEFT_UP: [&str; 21] = [
    "--mode",
    "--endpoints",
    "--namespace",
    "--deployment",
    "--pod",
    "--service-account",
    "--trust-domain",
    "--trust-anchors",
    "--controller",
    "--controller-name",
    "--identity-token",
    "--destination",
    "--opaque-ports",
    "--drain-grace",
    "--log",
    "--zone",
    "--zone-mode",
    "--outbound-listen",
    "--inbound-listen",
    "--admin-listen",
    "--inbound-forward",
];

/// The UID every pod's proxy runs as (namespace mode). Apps cannot use it: the pod's
/// outbound rule lets this UID's traffic past the proxy.
pub use crate::iptables::PROXY_UID;

/// The user (and group) apps run as when `mesh.yaml` names none (namespace mode): an
/// unprivileged UID of their own, neither root nor the proxies'.
pub const DEFAULT_APP_UID: u32 = 2103;

/// Most pods one mesh may run (addresses, names and sanity).
pub const MAX_PODS: u32 = 1000;
