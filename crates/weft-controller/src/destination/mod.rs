//! The destination service: `Destination.Get` of the linkerd2-proxy-api protocol.
//! A proxy names a destination (`books.default.svc.cluster.local:8080`, or the
//! `ip:port` a connection was going to) and receives a long-lived stream of updates:
//! `Add` with every endpoint (address, weight, zone and pod labels, TLS identity,
//! protocol hint), `Remove` when endpoints go, `NoEndpoints` when there are none
//! (`exists: false`: no such Service or address, the proxy may fall back to the
//! original destination). `GetProfile` answers UNIMPLEMENTED.
//!
//! What the answers come from is an [`Index`] (Services, workloads and the pods that
//! run them) that a source keeps current: the [`local`] source, which watches a mesh
//! directory and the pods file `weft up` writes, or the kube source
//! ([`crate::kube`]), which reflects the Kubernetes API's Services, EndpointSlices,
//! Pods and Nodes ([`Index::listed`]).

mod index;
pub mod local;
mod service;

pub use index::{Endpoint, Index, Listed, ListedEndpoint, Protocol, Resolution};
pub use local::{LocalSource, LocalSourceConfig, SourceError};
pub use service::{DestinationService, MAX_DESTINATION_MESSAGE};

use std::net::{IpAddr, SocketAddr};

/// The weight of every endpoint (as Linkerd's destination service sends): weights are
/// relative, so equal endpoints share traffic equally.
pub const DEFAULT_WEIGHT: u32 = 10_000;

/// The default cluster domain of Service names (`{svc}.{ns}.svc.{cluster-domain}`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// The port of a path without one (as Linkerd assumes).
const DEFAULT_PORT: u16 = 80;

/// What a `Destination.Get` path names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Service port, by name.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
    /// An address: a Service's virtual IP or a pod's IP, and a port.
    Addr(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Service {
                namespace,
                name,
                port,
            } => write!(f, "{name}.{namespace}.svc:{port}"),
            Target::Addr(addr) => write!(f, "{addr}"),
        }
    }
}

/// Why a path names no destination.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path is empty: give a Service as NAME.NAMESPACE[.svc[.{cluster_domain}]]:PORT or an address as IP:PORT")]
    Empty { cluster_domain: String },
    #[error("{path:?}: {port:?} is not a port number (1-65535)")]
    Port { path: String, port: String },
    #[error("{path:?}: {host:?} is not a Service name of this cluster: expected NAME.NAMESPACE, NAME.NAMESPACE.svc or NAME.NAMESPACE.svc.{cluster_domain}")]
    NotAService {
        path: String,
        host: String,
        cluster_domain: String,
    },
    #[error("{path:?}: {what} {value:?} is not a DNS label (lowercase letters, digits and '-', at most 63)")]
    Label {
        path: String,
        what: &'static str,
        value: String,
    },
}

impl Target {
    /// Parses a `Destination.Get` path: `name.namespace[.svc[.{cluster_domain}]][:port]`
    /// or `ip[:port]` (`[v6]:port`); the port defaults to 80.
    pub fn parse(path: &str, cluster_domain: &str) -> Result<Target, PathError> {
        let path = path.trim();
        if path.is_empty() {
            return Err(PathError::Empty {
                cluster_domain: cluster_domain.to_owned(),
            });
        }
        if let Ok(addr) = path.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        if let Ok(ip) = path.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(Target::Addr(SocketAddr::new(ip, DEFAULT_PORT)));
        }
        let (host, port) = match path.rsplit_once(':') {
            Some((host, port)) => {
                let number = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| PathError::Port {
                        path: path.to_owned(),
                        port: port.to_owned(),
                    })?;
                (host, number)
            }
            None => (path, DEFAULT_PORT),
        };
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = lower.split('.').collect();
        let not_a_service = || PathError::NotAService {
            path: path.to_owned(),
            host: host.to_owned(),
            cluster_domain: cluster_domain.to_owned(),
        };
        let (name, namespace) = match labels.as_slice() {
            [name, namespace] | [name, namespace, "svc"] => (*name, *namespace),
            [name, namespace, "svc", domain @ ..] if domain.join(".") == cluster_domain => {
                (*name, *namespace)
            }
            _ => return Err(not_a_service()),
        };
        for (what, value) in [("Service name", name), ("namespace", namespace)] {
            if !weft_core::mesh::is_dns_label(value) {
                return Err(PathError::Label {
                    path: path.to_owned(),
                    what,
                    value: value.to_owned(),
                });
            }
        }
        Ok(Target::Service {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests;
