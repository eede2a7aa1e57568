//! Static discovery: a YAML file naming services and their endpoints. Used before the
//! controller's destination service is available and for non-root (explicit) runs.
//!
//! ```yaml
//! services:
//!   - name: books
//!     authorities: ["books.default.svc:8080", "books:8080"]  # HTTP authorities (explicit mode)
//!     address: 198.18.0.10:8080                              # service address (transparent mode)
//!     listen: 127.0.0.1:15001                                # local port for this service (explicit mode)
//!     opaque: false                                          # skip protocol detection
//!     identity: books.default.serviceaccount.identity.weft.cluster.local  # meshed: use mTLS
//!     endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use weft_core::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("cannot read endpoints file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("endpoints file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml_ng::Error,
    },
    #[error("endpoints file {path}: service #{index} ({name:?}): {problem}")]
    Invalid {
        path: PathBuf,
        index: usize,
        name: String,
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointsFile {
    #[serde(default)]
    services: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    name: String,
    #[serde(default)]
    authorities: Vec<String>,
    address: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    #[serde(default)]
    opaque: bool,
    identity: Option<String>,
    endpoints: Vec<SocketAddr>,
}

/// A destination service and the endpoints that serve it.
#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub address: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    pub opaque: bool,
    /// The identity of the workloads behind the service: connections to them use mTLS.
    pub identity: Option<Identity>,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Service {
    pub fn new(name: &str, endpoints: Vec<SocketAddr>) -> Self {
        Service {
            name: name.into(),
            address: None,
            listen: None,
            opaque: false,
            identity: None,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks the endpoint for the next request (HTTP) or connection (TCP).
    pub fn pick(&self) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        Some(self.endpoints[i])
    }

    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }
}

/// Services indexed by the ways a connection or request can name them.
#[derive(Clone, Debug, Default)]
pub struct ServiceIndex {
    by_authority: HashMap<String, Arc<Service>>,
    by_address: HashMap<SocketAddr, Arc<Service>>,
    listeners: Vec<Arc<Service>>,
}

impl ServiceIndex {
    pub fn load(path: &Path) -> Result<Self, EndpointsError> {
        let text = std::fs::read_to_string(path).map_err(|source| EndpointsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, EndpointsError> {
        let file: EndpointsFile =
            serde_yaml_ng::from_str(text).map_err(|source| EndpointsError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut index = ServiceIndex::default();
        for (i, spec) in file.services.into_iter().enumerate() {
            let invalid = |problem: String| EndpointsError::Invalid {
                path: path.to_owned(),
                index: i,
                name: spec.name.clone(),
                problem,
            };
            if spec.name.is_empty() {
                return Err(invalid("`name` is empty".into()));
            }
            if spec.endpoints.is_empty() {
                return Err(invalid(
                    "`endpoints` is empty: list at least one address".into(),
                ));
            }
            let identity = match &spec.identity {
                Some(name) => Some(
                    name.parse::<Identity>()
                        .map_err(|e| invalid(format!("identity: {e}")))?,
                ),
                None => None,
            };
            let service = Arc::new(Service {
                name: spec.name.as_str().into(),
                address: spec.address,
                listen: spec.listen,
                opaque: spec.opaque,
                identity,
                endpoints: spec.endpoints.clone(),
                next: AtomicUsize::new(0),
            });
            for authority in &spec.authorities {
                let key = normalize_authority(authority);
                if key.is_empty() || key.contains('/') {
                    return Err(invalid(format!(
                        "authority {authority:?} is not host[:port]"
                    )));
                }
                if index.by_authority.insert(key, service.clone()).is_some() {
                    return Err(invalid(format!(
                        "authority {authority:?} is already used by another service"
                    )));
                }
            }
            if let Some(address) = spec.address {
                if index.by_address.insert(address, service.clone()).is_some() {
                    return Err(invalid(format!(
                        "address {address} is already used by another service"
                    )));
                }
            }
            if let Some(listen) = spec.listen {
                if index.listeners.iter().any(|s| s.listen == Some(listen)) {
                    return Err(invalid(format!(
                        "listen address {listen} is already used by another service"
                    )));
                }
                index.listeners.push(service.clone());
            }
        }
        Ok(index)
    }

    /// Adds a service; later entries replace earlier ones with the same names.
    pub fn insert(&mut self, authorities: &[&str], service: Service) {
        let service = Arc::new(service);
        for a in authorities {
            self.by_authority
                .insert(normalize_authority(a), service.clone());
        }
        if let Some(address) = service.address {
            self.by_address.insert(address, service.clone());
        }
        if service.listen.is_some() {
            self.listeners.push(service);
        }
    }

    pub fn by_authority(&self, authority: &str) -> Option<&Arc<Service>> {
        self.by_authority.get(authority).or_else(|| {
            // Requests often omit the default port.
            let lower = authority.to_ascii_lowercase();
            self.by_authority
                .get(&lower)
                .or_else(|| self.by_authority.get(&format!("{lower}:80")))
        })
    }

    pub fn by_address(&self, address: SocketAddr) -> Option<&Arc<Service>> {
        self.by_address.get(&address)
    }

    /// Services that want a listener of their own (explicit mode).
    pub fn listeners(&self) -> &[Arc<Service>] {
        &self.listeners
    }
}

fn normalize_authority(authority: &str) -> String {
    authority.trim().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceIndex, EndpointsError> {
        ServiceIndex::parse(Path::new("endpoints.yaml"), text)
    }

    #[test]
    fn parses_services_and_balances_round_robin() {
        let index = parse(
            r#"
services:
  - name: books
    authorities: ["Books.default.svc:8080"]
    address: 198.18.0.10:8080
    listen: 127.0.0.1:15001
    endpoints: ["127.0.0.1:9001", "127.0.0.1:9002"]
"#,
        )
        .unwrap();
        let svc = index.by_authority("books.default.svc:8080").unwrap();
        assert_eq!(&*svc.name, "books");
        let picks: Vec<_> = (0..4).map(|_| svc.pick().unwrap().port()).collect();
        assert_eq!(picks, [9001, 9002, 9001, 9002]);
        assert!(index
            .by_address("198.18.0.10:8080".parse().unwrap())
            .is_some());
        assert_eq!(index.listeners().len(), 1);
    }

    #[test]
    fn rejects_unknown_fields_and_names_the_file() {
        let err = parse("services:\n  - name: a\n    endpoint: [\"127.0.0.1:1\"]\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("endpoints.yaml"), "{msg}");
        assert!(msg.contains("unknown field `endpoint`"), "{msg}");
    }

    #[test]
    fn rejects_empty_endpoints_and_duplicates() {
        let err = parse("services:\n  - name: a\n    endpoints: []\n").unwrap_err();
        assert!(err
            .to_string()
            .contains("service #0 (\"a\"): `endpoints` is empty"));
        let err = parse(
            "services:\n  - {name: a, authorities: [x], endpoints: [\"127.0.0.1:1\"]}\n  - {name: b, authorities: [X], endpoints: [\"127.0.0.1:2\"]}\n",
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("service #1 (\"b\"): authority \"X\" is already used"));
    }

    #[test]
    fn rejects_bad_addresses() {
        let err = parse("services:\n  - name: a\n    endpoints: [\"nope\"]\n").unwrap_err();
        assert!(err.to_string().contains("invalid socket address"), "{err}");
    }
}
