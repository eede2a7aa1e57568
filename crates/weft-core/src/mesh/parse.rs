//! Reading a mesh directory: `mesh.yaml`'s workloads (the other files' objects are in
//! `objects`), with every problem located by file, object and field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::{is_dns_label, AppUser, ContainerPort, Mesh, ProxySettings, Workload};
use super::validate::proxy_problems;
use super::{DEFAULT_INBOUND_POLICIES, MAX_PODS, MESH_FILE, PROXY_PORTS};
use crate::identity::{Identity, DEFAULT_TRUST_DOMAIN};

/// A problem in one place of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// File name relative to the mesh directory.
    pub file: String,
    /// Object and field, e.g. `workloads[2] (books): ports[0]`; empty for the whole file.
    pub location: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.location, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: no {MESH_FILE} (a mesh directory holds {MESH_FILE} with the workloads, and Services in other *.yaml files)")]
    NoMeshFile { dir: PathBuf },
    #[error("{}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid { problems: Vec<Problem> },
}

impl MeshError {
    /// The problems found (empty for read errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            MeshError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

// ----- the YAML shapes -----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MeshFile {
    #[serde(default)]
    #[allow(dead_code)]
    api_version: Option<String>,
    kind: String,
    trust_domain: Option<String>,
    proxy: Option<ProxySpec>,
    user: Option<Value>,
    policy: Option<PolicySpec>,
    #[serde(default)]
    workloads: Vec<WorkloadSpec>,
}

/// `policy:` in `mesh.yaml`: the mesh-wide authorization settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    default: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ProxySpec {
    pub(super) zone_mode: Option<String>,
    pub(super) args: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WorkloadSpec {
    name: String,
    namespace: Option<String>,
    service_account: Option<String>,
    zone: Option<String>,
    replicas: Option<u32>,
    #[serde(default)]
    ports: Vec<Value>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, Value>,
    labels: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    opaque_ports: Vec<u16>,
    #[serde(default)]
    skip_ports: Vec<u16>,
    proxy: Option<ProxySpec>,
    user: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedPort {
    name: Option<String>,
    port: u16,
}

/// Collects problems while loading.
#[derive(Default)]
pub(super) struct Report {
    pub(super) errors: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl Report {
    pub(super) fn error(&mut self, file: &str, location: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            file: file.to_owned(),
            location: location.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn warn(&mut self, file: &str, location: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            file: file.to_owned(),
            location: location.to_owned(),
            message: message.into(),
        });
    }
}

/// A YAML scalar as a string (env values and labels are often written as numbers).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// serde's message for a value that did not fit.
fn serde_message(e: &serde_yaml_ng::Error) -> String {
    strip_position(&e.to_string())
}

/// Drops the YAML library's ` at line L column C` suffix (for values that were parsed
/// again on their own, where the position is not the file's).
pub(super) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

/// Splits serde_yaml's `path.to.field: message` into a location (through `decorate`)
/// and the message. Messages without a path keep an empty location.
pub(super) fn locate(message: &str, decorate: impl Fn(&str) -> Option<String>) -> (String, String) {
    if let Some((path, rest)) = message.split_once(": ") {
        let looks_like_path = !path.is_empty()
            && !path.contains(' ')
            && path
                .chars()
                .all(|c| c.is_alphanumeric() || "._[]-".contains(c));
        if looks_like_path {
            if let Some(at) = decorate(path) {
                return (at, rest.to_owned());
            }
        }
    }
    (String::new(), message.to_owned())
}

impl Mesh {
    /// Reads `dir/mesh.yaml` and every other `*.yaml` / `*.yml` file in `dir`.
    pub fn load(dir: &Path) -> Result<Mesh, MeshError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| MeshError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mesh_path = dir.join(MESH_FILE);
        if !mesh_path.exists() {
            if !dir.is_dir() {
                return Err(MeshError::Read {
                    path: dir.to_owned(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
                });
            }
            return Err(MeshError::NoMeshFile {
                dir: dir.to_owned(),
            });
        }
        let mut files = vec![(MESH_FILE.to_owned(), read(&mesh_path)?)];
        for path in yaml_files(dir).map_err(|source| MeshError::Read {
            path: dir.to_owned(),
            source,
        })? {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name != MESH_FILE {
                files.push((name, read(&path)?));
            }
        }
        Mesh::parse(&files)
    }

    /// Builds a mesh from `(file name, text)` pairs; the one named [`MESH_FILE`] holds
    /// the workloads, the others hold Services.
    pub fn parse(files: &[(String, String)]) -> Result<Mesh, MeshError> {
        let mut report = Report::default();
        let mut mesh = Mesh {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            default_inbound_policy: None,
            workloads: Vec::new(),
            services: Vec::new(),
            warnings: Vec::new(),
            gateway: Vec::new(),
        };
        match files.iter().find(|(n, _)| n == MESH_FILE) {
            Some((_, text)) => mesh.parse_mesh_file(text, &mut report),
            None => report.error(MESH_FILE, "", "missing"),
        }
        for (name, text) in files.iter().filter(|(n, _)| n != MESH_FILE) {
            mesh.parse_objects(name, text, &mut report);
        }
        mesh.validate(&mut report);
        mesh.warnings = report.warnings;
        if report.errors.is_empty() {
            Ok(mesh)
        } else {
            Err(MeshError::Invalid {
                problems: report.errors,
            })
        }
    }

    fn parse_mesh_file(&mut self, text: &str, report: &mut Report) {
        let file = MESH_FILE;
        let parsed: MeshFile = match serde_yaml_ng::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                // Name the workload the error is in, when it is in one.
                let names: Vec<Option<String>> = serde_yaml_ng::from_str::<Value>(text)
                    .ok()
                    .and_then(|v| v.get("workloads").and_then(Value::as_sequence).cloned())
                    .unwrap_or_default()
                    .iter()
                    .map(|w| w.get("name").and_then(Value::as_str).map(str::to_owned))
                    .collect();
                let (location, message) = locate(&e.to_string(), |path| {
                    let rest = path.strip_prefix("workloads[")?;
                    let (index, field) = rest.split_once(']')?;
                    let i: usize = index.parse().ok()?;
                    let field = field.trim_start_matches('.');
                    let mut at = format!("workloads[{i}]");
                    if let Some(Some(name)) = names.get(i) {
                        at.push_str(&format!(" ({name})"));
                    }
                    if !field.is_empty() {
                        at.push_str(&format!(": {field}"));
                    }
                    Some(at)
                });
                return report.error(file, &location, message);
            }
        };
        if parsed.kind != "Mesh" {
            report.error(
                file,
                "kind",
                format!("is {:?}; {file} holds one object of kind Mesh", parsed.kind),
            );
        }
        if let Some(td) = parsed.trust_domain {
            self.trust_domain = td;
        }
        if Identity::new("a", "a", &self.trust_domain).is_err() {
            report.error(
                file,
                "trustDomain",
                format!(
                    "{:?} is not a DNS name (lowercase labels joined by dots)",
                    self.trust_domain
                ),
            );
        }
        match parsed.policy.and_then(|p| p.default) {
            Some(p) if DEFAULT_INBOUND_POLICIES.contains(&p.as_str()) => {
                self.default_inbound_policy = Some(p);
            }
            Some(p) => report.error(
                file,
                "policy.default",
                format!(
                    "{p:?} is not a default inbound policy; expected one of {}",
                    DEFAULT_INBOUND_POLICIES.join(", ")
                ),
            ),
            None => {}
        }
        if parsed.workloads.is_empty() {
            report.error(file, "workloads", "no workloads: list at least one");
        }
        let mesh_proxy = ProxySettings::default().overlaid(&parsed.proxy.unwrap_or_default());
        for (field, message) in proxy_problems(&mesh_proxy) {
            report.error(file, &format!("proxy.{field}"), message);
        }
        let mesh_user = match parsed.user.as_ref().map(AppUser::parse) {
            None => None,
            Some(Ok(user)) => Some(user),
            Some(Err(message)) => {
                report.error(file, "user", message);
                None
            }
        };
        for (i, spec) in parsed.workloads.into_iter().enumerate() {
            let location = format!("workloads[{i}] ({})", spec.name);
            let defaults = (&mesh_proxy, &mesh_user);
            if let Some(w) = self.parse_workload(spec, defaults, &location, report) {
                self.workloads.push(w);
            }
        }
    }

    fn parse_workload(
        &self,
        spec: WorkloadSpec,
        (mesh_proxy, mesh_user): (&ProxySettings, &Option<AppUser>),
        location: &str,
        report: &mut Report,
    ) -> Option<Workload> {
        let file = MESH_FILE;
        let before = report.errors.len();
        let mut err = |field: &str, message: String| {
            let at = if field.is_empty() {
                location.to_owned()
            } else {
                format!("{location}: {field}")
            };
            report.errors.push(Problem {
                file: file.to_owned(),
                location: at,
                message,
            });
        };
        if !is_dns_label(&spec.name) {
            err("name", format!("{:?} is not a DNS label (lowercase letters, digits and '-', at most 63, starting and ending alphanumeric)", spec.name));
        }
        let namespace = spec.namespace.unwrap_or_else(|| "default".to_owned());
        if !is_dns_label(&namespace) {
            err("namespace", format!("{namespace:?} is not a DNS label"));
        }
        let service_account = spec.service_account.unwrap_or_else(|| spec.name.clone());
        if !is_dns_label(&service_account) {
            err(
                "serviceAccount",
                format!("{service_account:?} is not a DNS label"),
            );
        }
        if let Some(zone) = &spec.zone {
            if zone.is_empty() || zone.chars().any(|c| c.is_whitespace() || c == '"') {
                err(
                    "zone",
                    format!("{zone:?} must be a non-empty word without spaces or quotes"),
                );
            }
        }
        let replicas = spec.replicas.unwrap_or(1);
        if replicas > MAX_PODS {
            err(
                "replicas",
                format!("{replicas} is more than a local mesh runs ({MAX_PODS} pods)"),
            );
        }
        if spec.command.is_empty() || spec.command[0].is_empty() {
            err("command", "is empty: give the program and its arguments, e.g. [weft-demo-app, serve, --port, \"8080\"]".into());
        }
        let mut ports = Vec::new();
        for (j, p) in spec.ports.iter().enumerate() {
            let field = format!("ports[{j}]");
            let port = match p {
                Value::Number(n) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                    Some(port) => ContainerPort { port, name: None },
                    None => {
                        err(&field, format!("{n} is not a port number (1-65535)"));
                        continue;
                    }
                },
                Value::Mapping(_) => match serde_yaml_ng::from_value::<NamedPort>(p.clone()) {
                    Ok(np) => ContainerPort {
                        port: np.port,
                        name: np.name,
                    },
                    Err(e) => {
                        err(&field, serde_message(&e));
                        continue;
                    }
                },
                _ => {
                    err(
                        &field,
                        "expected a port number or {name: NAME, port: NUMBER}".into(),
                    );
                    continue;
                }
            };
            if port.port == 0 {
                err(&field, "port 0 is not a port (1-65535)".into());
            }
            if let Some((_, what)) = PROXY_PORTS.iter().find(|(pp, _)| *pp == port.port) {
                err(
                    &field,
                    format!(
                        "port {} conflicts with the proxy's {what} port in every pod",
                        port.port
                    ),
                );
            }
            if ports.iter().any(|q: &ContainerPort| q.port == port.port) {
                err(&field, format!("port {} is listed twice", port.port));
            }
            if let Some(name) = &port.name {
                if !is_dns_label(name) {
                    err(
                        &format!("{field}.name"),
                        format!("{name:?} is not a DNS label"),
                    );
                } else if ports
                    .iter()
                    .any(|q: &ContainerPort| q.name.as_ref() == Some(name))
                {
                    err(
                        &format!("{field}.name"),
                        format!("port name {name:?} is used twice"),
                    );
                }
            }
            ports.push(port);
        }
        for (field, list) in [
            ("opaquePorts", &spec.opaque_ports),
            ("skipPorts", &spec.skip_ports),
        ] {
            for (j, port) in list.iter().enumerate() {
                if *port == 0 {
                    err(&format!("{field}[{j}]"), "port 0 is not a port".into());
                }
                if let Some((_, what)) = PROXY_PORTS.iter().find(|(pp, _)| pp == port) {
                    err(
                        &format!("{field}[{j}]"),
                        format!("port {port} is the proxy's {what} port"),
                    );
                }
            }
        }
        let mut env = BTreeMap::new();
        for (k, v) in spec.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                err(
                    "env",
                    format!("{k:?} is not a variable name (non-empty, no '=')"),
                );
            }
            match scalar(&v) {
                Some(s) => {
                    env.insert(k, s);
                }
                None => err(
                    &format!("env.{k}"),
                    "expected a string, number or boolean".into(),
                ),
            }
        }
        let proxy = match &spec.proxy {
            None => mesh_proxy.clone(),
            Some(own) => {
                let proxy = mesh_proxy.overlaid(own);
                // Only what the workload sets itself: the mesh's are reported once.
                let own = ProxySettings::default().overlaid(own);
                for (field, message) in proxy_problems(&own) {
                    err(&format!("proxy.{field}"), message);
                }
                proxy
            }
        };
        let user = match spec.user.as_ref().map(AppUser::parse) {
            None => mesh_user.clone(),
            Some(Ok(user)) => Some(user),
            Some(Err(message)) => {
                err("user", message);
                None
            }
        };
        let labels = match spec.labels {
            None => BTreeMap::from([("app".to_owned(), spec.name.clone())]),
            Some(labels) => {
                let mut out = BTreeMap::new();
                for (k, v) in labels {
                    match scalar(&v) {
                        Some(s) => {
                            out.insert(k, s);
                        }
                        None => err(
                            &format!("labels.{k}"),
                            "expected a string, number or boolean".into(),
                        ),
                    }
                }
                out
            }
        };
        if report.errors.len() > before {
            return None;
        }
        Some(Workload {
            name: spec.name,
            namespace,
            service_account,
            zone: spec.zone,
            replicas,
            ports,
            command: spec.command,
            env,
            labels,
            opaque_ports: spec.opaque_ports,
            skip_ports: spec.skip_ports,
            proxy,
            user,
        })
    }
}

/// The `*.yaml` and `*.yml` files of `dir`, sorted by name (hidden files skipped).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !path.is_file() {
            continue;
        }
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
