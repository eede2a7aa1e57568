//! The pods file: where a local mesh's pods run and which Service addresses it handed
//! out. `weft up` allocates both (pod IPs from 198.18.0.0/16, Service VIPs from
//! 198.19.0.0/16) and rewrites this file atomically whenever a pod becomes ready or
//! goes away; the controller's `local` source watches it next to the mesh directory.
//!
//! ```yaml
//! # written by weft up
//! pods:
//!   - {name: books-0, namespace: default, workload: books, index: 0, ip: 198.18.0.3, zone: zone-a, ready: true}
//! services:
//!   - {name: books, namespace: default, ip: 198.19.0.1}
//! ```
//!
//! `ready: false` pods exist but take no traffic (starting, or leaving: a pod being
//! removed is marked not ready first so proxies stop using it before it stops).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mesh::is_dns_label;

/// One replica of a workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodEntry {
    /// `{workload}-{index}` (the pod's name in metrics).
    pub name: String,
    pub namespace: String,
    pub workload: String,
    pub index: u32,
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Whether it takes traffic.
    #[serde(default)]
    pub ready: bool,
}

/// A Service's virtual IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceAddress {
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodsFile {
    #[serde(default)]
    pub pods: Vec<PodEntry>,
    #[serde(default)]
    pub services: Vec<ServiceAddress>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodsFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {location}: {message}")]
    Invalid {
        path: PathBuf,
        /// The entry and field, e.g. `pods[3] (books-1): ip`.
        location: String,
        message: String,
    },
}

impl PodsFile {
    /// Reads and checks `path`; `Ok(None)` when it does not exist (yet).
    pub fn load(path: &Path) -> Result<Option<PodsFile>, PodsFileError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PodsFileError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        PodsFile::parse(path, &text).map(Some)
    }

    /// Parses and checks the text of the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<PodsFile, PodsFileError> {
        let file: PodsFile = if text.trim().is_empty() {
            PodsFile::default()
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| PodsFileError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        file.check(path)?;
        Ok(file)
    }

    fn check(&self, path: &Path) -> Result<(), PodsFileError> {
        let invalid = |location: String, message: String| PodsFileError::Invalid {
            path: path.to_owned(),
            location,
            message,
        };
        let mut ips = HashSet::new();
        let mut names = HashSet::new();
        for (i, p) in self.pods.iter().enumerate() {
            let at = |field: &str| format!("pods[{i}] ({}): {field}", p.name);
            for (field, value) in [("namespace", &p.namespace), ("workload", &p.workload)] {
                if !is_dns_label(value) {
                    return Err(invalid(at(field), format!("{value:?} is not a DNS label")));
                }
            }
            if p.name.is_empty() {
                return Err(invalid(at("name"), "is empty".into()));
            }
            if !names.insert((&p.namespace, &p.name)) {
                return Err(invalid(at("name"), "is listed twice".into()));
            }
            if !ips.insert(p.ip) {
                return Err(invalid(
                    at("ip"),
                    format!("{} is used by another pod or Service", p.ip),
                ));
            }
        }
        let mut services = HashSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let at = |field: &str| format!("services[{i}] ({}.{}): {field}", s.name, s.namespace);
            for (field, value) in [("name", &s.name), ("namespace", &s.namespace)] {
                if !is_dns_label(value) {
                    return Err(invalid(at(field), format!("{value:?} is not a DNS label")));
                }
            }
            if !services.insert((&s.namespace, &s.name)) {
                return Err(invalid(at("name"), "is listed twice".into()));
            }
            if !ips.insert(s.ip) {
                return Err(invalid(
                    at("ip"),
                    format!("{} is used by another pod or Service", s.ip),
                ));
            }
        }
        Ok(())
    }

    /// The YAML text of the file.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("# written by weft up: where pods run, and Service addresses\n");
        out.push_str(&serde_yaml_ng::to_string(self).unwrap_or_default());
        out
    }

    /// Writes the file atomically (a temporary file renamed over it), so a reader never
    /// sees half of it.
    pub fn write(&self, path: &Path) -> Result<(), PodsFileError> {
        let tmp = path.with_extension("yaml.tmp");
        let write = |p: &Path, r: std::io::Result<()>| {
            r.map_err(|source| PodsFileError::Write {
                path: p.to_owned(),
                source,
            })
        };
        write(&tmp, std::fs::write(&tmp, self.to_yaml()))?;
        write(path, std::fs::rename(&tmp, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str) -> PodEntry {
        PodEntry {
            name: name.into(),
            namespace: "default".into(),
            workload: "books".into(),
            index: 0,
            ip: ip.parse().unwrap(),
            zone: Some("zone-a".into()),
            ready: true,
        }
    }

    #[test]
    fn round_trips_through_yaml() {
        let file = PodsFile {
            pods: vec![pod("books-0", "198.18.0.3")],
            services: vec![ServiceAddress {
                name: "books".into(),
                namespace: "default".into(),
                ip: "198.19.0.1".parse().unwrap(),
            }],
        };
        let text = file.to_yaml();
        assert_eq!(
            PodsFile::parse(Path::new("pods.yaml"), &text).unwrap(),
            file
        );
    }

    #[test]
    fn empty_text_is_an_empty_mesh() {
        let file = PodsFile::parse(Path::new("pods.yaml"), "\n").unwrap();
        assert_eq!(file, PodsFile::default());
    }

    #[test]
    fn names_the_entry_and_field_at_fault() {
        let text = "pods:\n  - {name: a-0, namespace: default, workload: a, index: 0, ip: 198.18.0.2, ready: true}\n  - {name: b-0, namespace: default, workload: b, index: 0, ip: 198.18.0.2}\n";
        let err = PodsFile::parse(Path::new("/run/weft/pods.yaml"), text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/run/weft/pods.yaml: pods[1] (b-0): ip: 198.18.0.2 is used by another pod or Service"
        );
        let err = PodsFile::parse(
            Path::new("pods.yaml"),
            "pods:\n  - {name: a-0, namespace: Default, workload: a, index: 0, ip: 198.18.0.2}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "pods.yaml: pods[0] (a-0): namespace: \"Default\" is not a DNS label"
        );
        let err = PodsFile::parse(Path::new("pods.yaml"), "pods:\n  - {nme: x}\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `nme`"), "{err}");
    }

    #[test]
    fn a_missing_file_is_none_and_write_is_atomic() {
        let dir = std::env::temp_dir().join(format!("weft-pods-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pods.yaml");
        let _ = std::fs::remove_file(&path);
        assert_eq!(PodsFile::load(&path).unwrap(), None);
        let file = PodsFile {
            pods: vec![pod("books-0", "198.18.0.3")],
            services: vec![],
        };
        file.write(&path).unwrap();
        assert_eq!(PodsFile::load(&path).unwrap(), Some(file));
        assert!(!path.with_extension("yaml.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
