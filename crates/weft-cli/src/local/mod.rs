//! The local mesh: `weft up`, `weft down`, `weft check`.
//!
//! Layout on the machine (names with the default prefix `wf`):
//!
//! - a hub network namespace `wf-hub` holding the bridge `weft0` (address 198.18.0.1/15,
//!   so the CLI can reach every pod's admin port from a thread inside the hub);
//! - per replica, a network namespace `wf-{workload}-{i}` (`wf-{workload}.{ns}-{i}`
//!   outside the `default` namespace) with `eth0` at an address from 198.18.0.0/16, a
//!   veth to the bridge, the sidecar's iptables rules, `/etc/netns/{netns}/hosts` naming
//!   every Service, a `weft-proxy` (UID 2102, its token on stdin) and the workload's
//!   command (as its `user:`, default UID 2103, in a mount namespace where the state
//!   directory is an empty tmpfs); IPv6 is off in every pod and the hub, as the rules
//!   redirect IPv4 only;
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
//!
//! Loopback mode (without root, or `weft up --loopback`): no namespaces, links, rules or
//! hosts files. Every pod is an address from 127.18.0.0/16 (Linux lets any user bind
//! any 127/8 address); its proxy runs in explicit mode on that address, forwards
//! inbound traffic to the workload's first port, and routes the HTTP requests the app
//! sends through `HTTP_PROXY` by the endpoints files `weft up` writes (one per
//! namespace: each Service's names → its ready pods' inbound proxies, so calls are
//! proxy-to-proxy mTLS). The controller (identity only) runs on the block's first
//! address. Every process runs as the invoking user.

pub mod apps;
pub mod check;
pub mod control;
pub mod down;
pub mod exec;
pub mod logs;
pub mod ps;
pub mod scale;
pub mod scrape;
pub mod state;
pub mod sys;
pub mod teardown;
pub mod up;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use weft_core::mesh::Workload;

/// The UID the proxies run as and the ports the pods' iptables rules send traffic to.
pub use weft_core::iptables::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_UID};
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

/// Loopback mode: each mesh takes a block of 127.18.0.0/16, `127.18.{16 k}.0/20` for
/// block `k` (so meshes side by side do not meet); the controller gets the block's
/// first address and pods the ones after it.
pub const LOOPBACK_BLOCKS: u8 = 16;

/// Block `k`'s `i`-th address (`i` from 1; at most [`LOOPBACK_BLOCK_SIZE`] - 2).
pub fn loopback_ip(block: u8, i: u16) -> Ipv4Addr {
    let n = u32::from(block) * u32::from(LOOPBACK_BLOCK_SIZE) + u32::from(i);
    Ipv4Addr::new(127, 18, (n >> 8) as u8, n as u8)
}

/// Addresses per loopback block (a /20).
pub const LOOPBACK_BLOCK_SIZE: u16 = 4096;

/// What `weft up` says when it runs in loopback mode (`why`: not root, or --loopback).
pub fn loopback_notice(why: &str) -> String {
    format!(
        "{why}: running every pod on loopback addresses (127.18.0.0/16) with proxies in \
explicit mode; apps must listen on $WEFT_LISTEN_ADDR and send HTTP through $HTTP_PROXY"
    )
}

/// Settings shared by `up`, `down` and `check`.
#[derive(clap::Args, Clone, Debug)]
pub struct LocalArgs {
    /// Where the state file, the pods file and the logs go [default: /run/weft as root,
    /// else $XDG_RUNTIME_DIR/weft, or /tmp/weft-{uid} without XDG_RUNTIME_DIR].
    #[arg(long, env = "WEFT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Prefix of the network namespaces' names (meshes side by side need distinct
    /// prefixes and state directories).
    #[arg(long, env = "WEFT_PREFIX", default_value = "wf")]
    pub prefix: String,
}

impl LocalArgs {
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        if sys::is_root() {
            return PathBuf::from("/run/weft");
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("weft"),
            _ => std::env::temp_dir().join(format!("weft-{}", nix::unistd::geteuid())),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// The running mesh's state, or `no local mesh is up (STATE not found): {hint}`.
    /// What every command that reads the running mesh (`weft stat`, `ps`, `logs`, ...)
    /// starts with.
    pub fn running_mesh(&self, hint: &str) -> anyhow::Result<state::State> {
        self.validate()?;
        let path = self.state_path();
        match state::State::load(&path)? {
            Some(state) => Ok(state),
            None => anyhow::bail!("no local mesh is up ({} not found): {hint}", path.display()),
        }
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
