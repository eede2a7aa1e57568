//! The validated mesh: what `weft up` and the controller's local source use.

use std::collections::BTreeMap;
use std::fmt;

use serde_yaml_ng::Value;

use super::parse::{Problem, ProxySpec};
use super::PROXY_UID;
use crate::identity::Identity;

/// A validated mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mesh {
    pub trust_domain: String,
    /// `policy.default`: the mesh-wide default inbound policy, one of
    /// [`DEFAULT_INBOUND_POLICIES`](super::DEFAULT_INBOUND_POLICIES); `None`: the
    /// controller's default.
    pub default_inbound_policy: Option<String>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    /// Legal but suspicious things, for the user to see.
    pub warnings: Vec<Problem>,
    /// The Gateway API objects (HTTPRoute, GRPCRoute, ReferenceGrant) and the policy
    /// objects (Server, AuthorizationPolicy, MeshTLSAuthentication,
    /// NetworkAuthentication), as written: the controller parses and checks them
    /// (weft_controller::routes, weft_controller::policy), so that a bad one is a
    /// status of that object, not a mesh that does not load.
    pub gateway: Vec<GatewayObject>,
}

/// A Gateway API object of the mesh directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayObject {
    /// File name relative to the mesh directory.
    pub file: String,
    /// `HTTPRoute default/books` (or `document 3` without a name).
    pub location: String,
    pub kind: String,
    pub value: Value,
}

/// A workload: `replicas` pods running `command` behind a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub zone: Option<String>,
    pub replicas: u32,
    pub ports: Vec<ContainerPort>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub opaque_ports: Vec<u16>,
    pub skip_ports: Vec<u16>,
    /// Settings of its pods' proxies: the mesh's `proxy:` with the workload's on top.
    pub proxy: ProxySettings,
    /// The user its command runs as: the workload's `user:`, else the mesh's; `None`:
    /// neither names one ([`DEFAULT_APP_UID`](super::DEFAULT_APP_UID)).
    pub user: Option<AppUser>,
}

/// Who a workload's command runs as (`user:` in `mesh.yaml`). Never root nor the
/// proxies' UID (validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppUser {
    /// `user: 2103` (the group is the same number) or `user: "1000:1000"`.
    Id { uid: u32, gid: u32 },
    /// `user: nobody`: a user of the machine, with its primary group (`weft up`
    /// resolves it).
    Name(String),
}

impl fmt::Display for AppUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppUser::Id { uid, gid } => write!(f, "{uid}:{gid}"),
            AppUser::Name(name) => f.write_str(name),
        }
    }
}

impl AppUser {
    /// Parses a `user:` value: a UID, `"UID:GID"` or a user name.
    pub(super) fn parse(value: &Value) -> Result<AppUser, String> {
        const EXPECTED: &str =
            "expected a UID (2103), \"UID:GID\" (\"2103:2103\") or a user name (nobody)";
        let id = |s: &str| -> Result<u32, String> {
            s.parse::<u32>()
                .ok()
                .filter(|n| *n != u32::MAX)
                .ok_or_else(|| format!("{s:?} is not a UID or GID (0-4294967294)"))
        };
        let user = match value {
            Value::Number(n) => {
                let uid = id(&n.to_string())?;
                AppUser::Id { uid, gid: uid }
            }
            Value::String(s) if s.starts_with(|c: char| c.is_ascii_digit()) => {
                match s.split_once(':') {
                    Some((uid, gid)) => AppUser::Id {
                        uid: id(uid)?,
                        gid: id(gid)?,
                    },
                    None => {
                        let uid = id(s)?;
                        AppUser::Id { uid, gid: uid }
                    }
                }
            }
            Value::String(s) => {
                let name_ok = s.len() <= 32
                    && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                    && s.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !name_ok {
                    return Err(format!("{s:?} is not a user name; {EXPECTED}"));
                }
                AppUser::Name(s.clone())
            }
            _ => return Err(EXPECTED.to_owned()),
        };
        match &user {
            AppUser::Id { uid: 0, .. } | AppUser::Id { gid: 0, .. } => Err(format!(
                "{user} is root (UID or GID 0): apps run unprivileged, so that they cannot read the mesh's CA key or the proxies' tokens"
            )),
            AppUser::Name(name) if name == "root" => Err(
                "root: apps run unprivileged, so that they cannot read the mesh's CA key or the proxies' tokens".to_owned(),
            ),
            AppUser::Id { uid, gid } if *uid == PROXY_UID || *gid == PROXY_UID => Err(format!(
                "{user}: UID/GID {PROXY_UID} is the proxies'; an app running as it would bypass its proxy (the outbound rule lets that UID through)"
            )),
            _ => Ok(user),
        }
    }
}

/// Settings of a pod's proxy, from `proxy:` in `mesh.yaml` (mesh-wide, and per workload
/// where a field set there replaces the mesh's).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// `--zone-mode`: one of [`ZONE_MODES`](super::ZONE_MODES); the proxy's default (aware) when unset.
    pub zone_mode: Option<String>,
    /// More weft-proxy flags, passed after the ones `weft up` sets.
    pub args: Vec<String>,
}

impl ProxySettings {
    /// The weft-proxy flags these settings add.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        if let Some(mode) = &self.zone_mode {
            flags.extend(["--zone-mode".to_owned(), mode.clone()]);
        }
        flags.extend(self.args.iter().cloned());
        flags
    }

    /// `over`'s fields where it sets them, else this one's.
    pub(super) fn overlaid(&self, over: &ProxySpec) -> ProxySettings {
        ProxySettings {
            zone_mode: over.zone_mode.clone().or_else(|| self.zone_mode.clone()),
            args: over.args.clone().unwrap_or_else(|| self.args.clone()),
        }
    }
}

impl Workload {
    /// The workload's identity in `trust_domain` (validated at load).
    pub fn identity(&self, trust_domain: &str) -> Identity {
        Identity::new(&self.service_account, &self.namespace, trust_domain)
            .expect("validated when the mesh was loaded")
    }

    /// Whether every `selector` label is among this workload's labels.
    pub fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
    }

    /// The container port a Service's `targetPort` names on this workload, if any.
    pub fn resolve(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.port),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    pub port: u16,
    pub name: Option<String>,
}

/// A Kubernetes `Service` (the parts a mesh uses).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// The file it came from, relative to the mesh directory.
    pub file: String,
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub target_port: TargetPort,
    pub app_protocol: Option<String>,
}

impl ServicePort {
    /// Whether the port's protocol is declared as opaque TCP (no detection).
    pub fn is_opaque(&self) -> bool {
        matches!(
            self.app_protocol.as_deref(),
            Some("tcp" | "opaque" | "linkerd.io/opaque")
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// A DNS-1123 label, as Kubernetes names are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Mesh {
    /// The workloads a Service selects.
    pub fn backends<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Workload> {
        self.workloads
            .iter()
            .filter(move |w| w.namespace == service.namespace && w.matches(&service.selector))
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }
}
