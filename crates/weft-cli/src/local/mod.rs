//! The local mesh: `weft up`, `weft down`, `weft check`.
//!
//! Layout on the machine (names with the default prefix `wf`):
//!
//! - a hub network namespace `wf-hub` holding the bridge `weft0` (address 198.18.0.1/15,
//!   so the CLI can reach every pod's admin port from a thread inside the hub);
//! - per replica, a network namespace `wf-{workload}-{i}` (`wf-{workload}.{ns}-{i}`
//!   outside the `default` namespace) with `eth0` at an address from 198.18.0.0/16, a
//!   veth to the bridge, the sidecar's iptables rules, `/etc/netns/{netns}/hosts` naming
//!   every Service, a `weft-proxy` (UID 2102) and the workload's command;
//! - Service virtual IPs from 198.19.0.0/16 (inside the pods' /15, so they route to
//!   `eth0` and the outbound rule catches them);
//! - weft-controller in the hub namespace: identity for every proxy, and destinations:
//!   it joins the mesh directory with the pods file (`pods.yaml`: where pods run, which
//!   are ready, the VIPs) and streams each Service's endpoints to the proxies;
//! - the state file, pods file, identity files, a copy of the proxy binary and the logs
//!   under the state directory (`/run/weft`).
//!
//! The bridge lives in its own namespace rather than the root one: nothing appears in
//! the host's links, routes or firewall (Docker's `FORWARD` policy, `br_netfilter`), and
//! deleting the hub removes every link at once.

pub mod check;
pub mod down;
pub mod state;
pub mod sys;
pub mod up;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use weft_core::mesh::Workload;

/// The UID the proxies run as; the outbound rules let its traffic through.
pub const PROXY_UID: u32 = 2102;
pub const OUTBOUND_PORT: u16 = 4140;
pub const INBOUND_PORT: u16 = 4143;
pub const ADMIN_PORT: u16 = 4191;
/// weft-controller's gRPC (identity) and admin ports, on the hub's address.
pub const CONTROLLER_PORT: u16 = 8090;
pub const CONTROLLER_ADMIN_PORT: u16 = 9990;
/// The bridge inside the hub namespace.
pub const BRIDGE: &str = "weft0";
/// The hub's address on the bridge; pods are in the same /15.
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Prefix length of pod addresses: 198.18.0.0/15 holds pods (198.18/16) and VIPs (198.19/16).
pub const POD_PREFIX_LEN: u8 = 15;
/// The proxy's default opaque ports (as `weft-proxy --help` lists them).
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

const NOT_ROOT: &str = "weft up needs root: it creates network namespaces, veth links and \
iptables rules. Run it as root (e.g. `sudo weft up DIR`). Running without root (every \
proxy on loopback ports in explicit mode) is planned but not implemented yet.";

/// Settings shared by `up`, `down` and `check`.
#[derive(clap::Args, Clone, Debug)]
pub struct LocalArgs {
    /// Where the state file, the pods file and the logs go.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/run/weft")]
    pub state_dir: PathBuf,
    /// Prefix of the network namespaces' names (meshes side by side need distinct
    /// prefixes and state directories).
    #[arg(long, env = "WEFT_PREFIX", default_value = "wf")]
    pub prefix: String,
}

impl LocalArgs {
    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.prefix.is_empty()
                && self.prefix.len() <= 12
                && self
                    .prefix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "--prefix {:?}: 1-12 lowercase letters or digits",
            self.prefix
        );
        Ok(())
    }
}

/// `{workload}-{i}`, or `{workload}.{ns}-{i}` outside the default namespace: the pod's
/// name in logs and file names (the netns adds the prefix).
pub fn pod_name(w: &Workload, index: u32) -> String {
    if w.namespace == "default" {
        format!("{}-{index}", w.name)
    } else {
        format!("{}.{}-{index}", w.name, w.namespace)
    }
}
