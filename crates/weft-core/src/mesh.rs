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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::identity::{Identity, DEFAULT_TRUST_DOMAIN};
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

/// A validated mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mesh {
    pub trust_domain: String,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    /// Legal but suspicious things, for the user to see.
    pub warnings: Vec<Problem>,
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
    /// neither names one ([`DEFAULT_APP_UID`]).
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
    fn parse(value: &Value) -> Result<AppUser, String> {
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
    /// `--zone-mode`: one of [`ZONE_MODES`]; the proxy's default (aware) when unset.
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
    fn overlaid(&self, over: &ProxySpec) -> ProxySettings {
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
    #[serde(default)]
    workloads: Vec<WorkloadSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProxySpec {
    zone_mode: Option<String>,
    args: Option<Vec<String>>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceObject {
    #[allow(dead_code)]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceSpec,
    #[serde(default)]
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectMeta {
    name: String,
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceSpec {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<ServicePortSpec>,
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(rename = "clusterIP")]
    #[allow(dead_code)]
    cluster_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServicePortSpec {
    name: Option<String>,
    port: u16,
    target_port: Option<Value>,
    app_protocol: Option<String>,
    protocol: Option<String>,
}

/// Collects problems while loading.
#[derive(Default)]
struct Report {
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Report {
    fn error(&mut self, file: &str, location: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            file: file.to_owned(),
            location: location.to_owned(),
            message: message.into(),
        });
    }

    fn warn(&mut self, file: &str, location: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            file: file.to_owned(),
            location: location.to_owned(),
            message: message.into(),
        });
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
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(" column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

/// Splits serde_yaml's `path.to.field: message` into a location (through `decorate`)
/// and the message. Messages without a path keep an empty location.
fn locate(message: &str, decorate: impl Fn(&str) -> Option<String>) -> (String, String) {
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
            workloads: Vec::new(),
            services: Vec::new(),
            warnings: Vec::new(),
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

    fn parse_objects(&mut self, file: &str, text: &str, report: &mut Report) {
        for (d, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = match Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    report.error(file, &format!("document {}", d + 1), e.to_string());
                    // The parser cannot continue past a syntax error.
                    return;
                }
            };
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let ns = value
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("default");
            let location = if name.is_empty() {
                format!("document {}", d + 1)
            } else {
                format!(
                    "{} {ns}/{name}",
                    if kind.is_empty() { "object" } else { kind }
                )
            };
            match kind {
                "Service" => {
                    // Deserialized from text again so that errors carry the field's path.
                    let text = serde_yaml_ng::to_string(&value).unwrap_or_default();
                    let object: ServiceObject = match serde_yaml_ng::from_str(&text) {
                        Ok(o) => o,
                        Err(e) => {
                            let message = strip_position(&e.to_string());
                            let (at, message) =
                                locate(&message, |path| Some(format!("{location}: {path}")));
                            let at = if at.is_empty() { location.clone() } else { at };
                            report.error(file, &at, message);
                            continue;
                        }
                    };
                    if let Some(s) = service(file, &location, object, report) {
                        self.services.push(s);
                    }
                }
                "" => report.error(
                    file,
                    &location,
                    "no `kind`: every object needs one (e.g. kind: Service)",
                ),
                "Mesh" => report.error(
                    file,
                    &location,
                    format!("the Mesh object belongs in {MESH_FILE}"),
                ),
                other => report.warn(
                    file,
                    &location,
                    format!("kind {other} is not used by the local mesh yet; ignored"),
                ),
            }
        }
    }

    fn validate(&mut self, report: &mut Report) {
        let file = MESH_FILE;
        let mut seen = BTreeSet::new();
        let mut total: u64 = 0;
        for (i, w) in self.workloads.iter().enumerate() {
            if !seen.insert((&w.namespace, &w.name)) {
                report.error(
                    file,
                    &format!("workloads[{i}] ({})", w.name),
                    format!(
                        "duplicate workload: {}/{} is defined twice",
                        w.namespace, w.name
                    ),
                );
            }
            total += u64::from(w.replicas);
        }
        if total > u64::from(MAX_PODS) {
            report.error(
                file,
                "workloads",
                format!("{total} pods in all; a local mesh runs at most {MAX_PODS}"),
            );
        }
        let mut names = BTreeSet::new();
        for s in &self.services {
            let location = format!("Service {}/{}", s.namespace, s.name);
            if !names.insert((&s.namespace, &s.name)) {
                report.error(
                    &s.file,
                    &location,
                    "duplicate Service: defined twice in this mesh",
                );
            }
            if s.selector.is_empty() {
                report.warn(
                    &s.file,
                    &location,
                    "no spec.selector: the Service has no endpoints",
                );
                continue;
            }
            let backends: Vec<&Workload> = self
                .workloads
                .iter()
                .filter(|w| w.namespace == s.namespace && w.matches(&s.selector))
                .collect();
            if backends.is_empty() {
                report.warn(
                    &s.file,
                    &location,
                    format!(
                        "spec.selector {} matches no workload in namespace {}",
                        selector_text(&s.selector),
                        s.namespace
                    ),
                );
            }
            for (j, p) in s.ports.iter().enumerate() {
                for w in &backends {
                    match w.resolve(&p.target_port) {
                        None => report.error(
                            &s.file,
                            &format!("{location}: spec.ports[{j}].targetPort"),
                            format!(
                                "{} names no port of workload {} (its ports: {})",
                                p.target_port,
                                w.name,
                                port_list(&w.ports)
                            ),
                        ),
                        Some(port) if PROXY_PORTS.iter().any(|(pp, _)| *pp == port) => report
                            .error(
                                &s.file,
                                &format!("{location}: spec.ports[{j}].targetPort"),
                                format!("port {port} conflicts with the proxy's ports"),
                            ),
                        Some(port) if !w.ports.iter().any(|c| c.port == port) => report.warn(
                            &s.file,
                            &format!("{location}: spec.ports[{j}].targetPort"),
                            format!(
                                "port {port} is not among workload {}'s ports ({})",
                                w.name,
                                port_list(&w.ports)
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
        }
    }

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

fn service(
    file: &str,
    location: &str,
    object: ServiceObject,
    report: &mut Report,
) -> Option<Service> {
    let before = report.errors.len();
    let mut err = |field: &str, message: String| {
        report.errors.push(Problem {
            file: file.to_owned(),
            location: format!("{location}: {field}"),
            message,
        });
    };
    let name = object.metadata.name;
    let namespace = object
        .metadata
        .namespace
        .unwrap_or_else(|| "default".to_owned());
    if !is_dns_label(&name) {
        err("metadata.name", format!("{name:?} is not a DNS label"));
    }
    if !is_dns_label(&namespace) {
        err(
            "metadata.namespace",
            format!("{namespace:?} is not a DNS label"),
        );
    }
    match object.spec.type_.as_deref() {
        None | Some("ClusterIP") => {}
        Some(other) => err(
            "spec.type",
            format!("{other} is not supported by the local mesh (only ClusterIP)"),
        ),
    }
    if object.spec.ports.is_empty() {
        err("spec.ports", "no ports: list at least one".into());
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for (j, p) in object.spec.ports.into_iter().enumerate() {
        let field = format!("spec.ports[{j}]");
        if p.port == 0 {
            err(&format!("{field}.port"), "port 0 is not a port".into());
        }
        if let Some(proto) = p.protocol.as_deref().filter(|p| *p != "TCP") {
            err(
                &format!("{field}.protocol"),
                format!("{proto} is not supported (only TCP)"),
            );
        }
        if ports.iter().any(|q| q.port == p.port) {
            err(
                &format!("{field}.port"),
                format!("port {} is listed twice", p.port),
            );
        }
        let target_port = match &p.target_port {
            None => TargetPort::Number(p.port),
            Some(Value::Number(n)) => match n.as_u64().and_then(|n| u16::try_from(n).ok()) {
                Some(0) | None => {
                    err(
                        &format!("{field}.targetPort"),
                        format!("{n} is not a port number (1-65535)"),
                    );
                    continue;
                }
                Some(n) => TargetPort::Number(n),
            },
            Some(Value::String(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s.clone()),
            },
            Some(_) => {
                err(
                    &format!("{field}.targetPort"),
                    "expected a port number or a port name".into(),
                );
                continue;
            }
        };
        ports.push(ServicePort {
            name: p.name,
            port: p.port,
            target_port,
            app_protocol: p.app_protocol,
        });
    }
    if ports.len() > 1 && ports.iter().any(|p| p.name.is_none()) {
        err(
            "spec.ports",
            "a Service with several ports needs a name for each".into(),
        );
    }
    if report.errors.len() > before {
        return None;
    }
    Some(Service {
        name,
        namespace,
        file: file.to_owned(),
        selector: object.spec.selector,
        ports,
    })
}

/// What is wrong with proxy settings: (field, message) pairs.
fn proxy_problems(proxy: &ProxySettings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(mode) = &proxy.zone_mode {
        if !ZONE_MODES.contains(&mode.as_str()) {
            out.push((
                "zoneMode".to_owned(),
                format!(
                    "{mode:?} is not a zone mode (one of {})",
                    ZONE_MODES.join(", ")
                ),
            ));
        }
    }
    for (i, arg) in proxy.args.iter().enumerate() {
        let field = format!("args[{i}]");
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        if arg.is_empty() || arg.contains('\0') {
            out.push((
                field,
                "an empty argument (or one with a NUL byte)".to_owned(),
            ));
        } else if flag == "--zone-mode" {
            out.push((field, "--zone-mode: use proxy.zoneMode".to_owned()));
        } else if PROXY_FLAGS_MANAGED_BY_WEFT_UP.contains(&flag) {
            out.push((
                field,
                format!("{flag} is managed by weft up (discovery, identity, listeners, labels); it cannot be given here"),
            ));
        }
    }
    out
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(", "))
}

fn port_list(ports: &[ContainerPort]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(|p| match &p.name {
            Some(n) => format!("{} ({n})", p.port),
            None => p.port.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = r#"
kind: Mesh
workloads:
  - name: web
    zone: zone-a
    ports: [8080]
    command: [app, serve]
  - name: books
    replicas: 2
    zone: zone-b
    ports: [8080, {name: admin, port: 9090}]
    command: [app]
    env: {PORT: 8080, NAME: books}
    labels: {app: books, version: v1}
"#;

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: books}
spec:
  selector: {app: books}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default, labels: {x: y}}
spec:
  type: ClusterIP
  selector: {app: web}
  ports:
    - {name: http, port: 8080, appProtocol: http}
"#;

    fn parse(mesh: &str, services: &str) -> Result<Mesh, MeshError> {
        Mesh::parse(&[
            (MESH_FILE.into(), mesh.into()),
            ("services.yaml".into(), services.into()),
        ])
    }

    fn error(mesh: &str, services: &str) -> String {
        let err = parse(mesh, services).expect_err("should be refused");
        err.to_string()
    }

    #[test]
    fn parses_workloads_with_defaults_and_services() {
        let mesh = parse(MESH, SERVICES).unwrap();
        assert_eq!(mesh.trust_domain, "cluster.local");
        let web = &mesh.workloads[0];
        assert_eq!(web.namespace, "default");
        assert_eq!(web.service_account, "web");
        assert_eq!(web.replicas, 1);
        assert_eq!(web.labels, BTreeMap::from([("app".into(), "web".into())]));
        let books = &mesh.workloads[1];
        assert_eq!(books.env["PORT"], "8080");
        assert_eq!(books.ports[1].name.as_deref(), Some("admin"));
        assert_eq!(mesh.services.len(), 2);
        let svc = &mesh.services[0];
        assert_eq!(svc.ports[0].target_port, TargetPort::Number(8080));
        assert_eq!(
            mesh.backends(svc).map(|w| &w.name).collect::<Vec<_>>(),
            ["books"]
        );
        assert_eq!(
            mesh.services[1].ports[0].target_port,
            TargetPort::Number(8080)
        );
        assert!(mesh.warnings.is_empty(), "{:?}", mesh.warnings);
        assert_eq!(
            books.identity(&mesh.trust_domain).dns_name(),
            "books.default.serviceaccount.identity.weft.cluster.local"
        );
    }

    #[test]
    fn malformed_yaml_names_the_file_and_position() {
        let msg = error("kind: Mesh\nworkloads:\n  - name: [web\n", "");
        assert!(msg.starts_with("mesh.yaml: "), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn unknown_workload_field_names_the_workload() {
        let mesh = MESH.replace("replicas: 2", "replica: 2");
        let msg = error(&mesh, SERVICES);
        assert!(
            msg.contains("mesh.yaml: workloads[1] (books): unknown field `replica`"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_top_level_field_and_wrong_kind() {
        let msg = error("kind: Mesh\nworkload: []\n", "");
        assert!(msg.contains("unknown field `workload`"), "{msg}");
        let msg = error(
            "kind: Deployment\nworkloads: [{name: a, command: [x]}]\n",
            "",
        );
        assert!(msg.contains("mesh.yaml: kind: is \"Deployment\""), "{msg}");
    }

    #[test]
    fn duplicate_workload_in_a_namespace() {
        let mesh = format!("{MESH}  - name: web\n    command: [other]\n");
        let msg = error(&mesh, SERVICES);
        assert!(
            msg.contains("mesh.yaml: workloads[2] (web): duplicate workload: default/web"),
            "{msg}"
        );
        // The same name in another namespace is another workload.
        let mesh = format!("{MESH}  - name: web\n    namespace: shop\n    command: [other]\n");
        parse(&mesh, SERVICES).unwrap();
    }

    #[test]
    fn port_conflicts() {
        let msg = error(
            &MESH.replace("ports: [8080]", "ports: [8080, 4143]"),
            SERVICES,
        );
        assert!(
            msg.contains(
                "workloads[0] (web): ports[1]: port 4143 conflicts with the proxy's inbound port"
            ),
            "{msg}"
        );
        let msg = error(
            &MESH.replace("ports: [8080]", "ports: [8080, 8080]"),
            SERVICES,
        );
        assert!(
            msg.contains("workloads[0] (web): ports[1]: port 8080 is listed twice"),
            "{msg}"
        );
        let msg = error(&MESH.replace("ports: [8080]", "ports: [70000]"), SERVICES);
        assert!(
            msg.contains("ports[0]: 70000 is not a port number"),
            "{msg}"
        );
        let svc = SERVICES.replace("targetPort: 8080", "targetPort: 4191");
        let msg = error(MESH, &svc);
        assert!(
            msg.contains("services.yaml: Service default/books: spec.ports[0].targetPort: port 4191 conflicts"),
            "{msg}"
        );
    }

    #[test]
    fn bad_names_and_empty_command() {
        let msg = error(
            "kind: Mesh\nworkloads:\n  - name: Web_1\n    command: []\n",
            "",
        );
        assert!(
            msg.contains("workloads[0] (Web_1): name: \"Web_1\" is not a DNS label"),
            "{msg}"
        );
        assert!(
            msg.contains("workloads[0] (Web_1): command: is empty"),
            "{msg}"
        );
        let msg = error("kind: Mesh\nworkloads: []\n", "");
        assert!(msg.contains("no workloads"), "{msg}");
        let msg = error(
            "kind: Mesh\ntrustDomain: Bad Domain\nworkloads: [{name: a, command: [x]}]\n",
            "",
        );
        assert!(
            msg.contains("trustDomain: \"Bad Domain\" is not a DNS name"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let msg = error(&MESH.replace("replicas: 2", "replicas: many"), SERVICES);
        assert!(msg.contains("workloads[1] (books): "), "{msg}");
        assert!(msg.contains("replicas"), "{msg}");
        let msg = error(&MESH.replace("NAME: books", "NAME: [books]"), SERVICES);
        assert!(
            msg.contains("workloads[1] (books): env.NAME: expected a string"),
            "{msg}"
        );
    }

    #[test]
    fn service_errors_name_the_object_and_field() {
        let svc = SERVICES.replace("selector: {app: books}", "selecter: {app: books}");
        let msg = error(MESH, &svc);
        assert!(
            msg.contains("services.yaml: Service default/books: spec: unknown field `selecter`"),
            "{msg}"
        );
        let svc = SERVICES.replace("targetPort: 8080", "targetPort: metrics");
        let msg = error(MESH, &svc);
        assert!(
            msg.contains("spec.ports[0].targetPort: \"metrics\" names no port of workload books"),
            "{msg}"
        );
        let svc = format!("{SERVICES}---\nkind: Service\nmetadata: {{name: books}}\nspec: {{selector: {{app: books}}, ports: [{{port: 80}}]}}\n");
        let msg = error(MESH, &svc);
        assert!(
            msg.contains("Service default/books: duplicate Service"),
            "{msg}"
        );
        let svc = "kind: Service\nmetadata: {name: x}\nspec: {selector: {app: x}, ports: [{port: 80, protocol: UDP}]}\n";
        let msg = error(MESH, svc);
        assert!(
            msg.contains("spec.ports[0].protocol: UDP is not supported"),
            "{msg}"
        );
        let msg = error(MESH, "metadata: {name: x}\n");
        assert!(msg.contains("no `kind`"), "{msg}");
    }

    #[test]
    fn named_target_ports_resolve() {
        let svc = "kind: Service\nmetadata: {name: books-admin}\nspec: {selector: {app: books}, ports: [{port: 9090, targetPort: admin}]}\n";
        let mesh = parse(MESH, svc).unwrap();
        let s = &mesh.services[0];
        let w = mesh.backends(s).next().unwrap();
        assert_eq!(w.resolve(&s.ports[0].target_port), Some(9090));
    }

    #[test]
    fn selectors_matching_nothing_and_other_kinds_are_warnings() {
        let svc = "kind: Service\nmetadata: {name: ghost}\nspec: {selector: {app: ghost}, ports: [{port: 80}]}\n---\nkind: HTTPRoute\nmetadata: {name: r}\n";
        let mesh = parse(MESH, svc).unwrap();
        let warnings: Vec<String> = mesh.warnings.iter().map(|w| w.to_string()).collect();
        assert!(
            warnings.iter().any(|w| w
                .contains("Service default/ghost: spec.selector {app=ghost} matches no workload")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("HTTPRoute default/r: kind HTTPRoute is not used")),
            "{warnings:?}"
        );
    }

    #[test]
    fn every_problem_is_reported() {
        // Syntax and type errors stop the parse; everything after it is collected.
        let mesh = MESH
            .replace("ports: [8080]", "ports: [4140]")
            .replace("command: [app]", "command: []");
        let err = parse(&mesh, SERVICES).unwrap_err();
        assert_eq!(err.problems().len(), 2, "{err}");
    }

    #[test]
    fn proxy_settings_mesh_wide_and_per_workload() {
        let mesh = MESH.replace(
            "kind: Mesh\n",
            "kind: Mesh\nproxy: {zoneMode: unaware, args: [--zone-high, \"3\"]}\n",
        );
        let mesh = mesh.replace(
            "    labels: {app: books, version: v1}\n",
            "    labels: {app: books, version: v1}\n    proxy: {zoneMode: local-only}\n",
        );
        let mesh = parse(&mesh, SERVICES).unwrap();
        let web = &mesh.workloads[0].proxy;
        assert_eq!(web.zone_mode.as_deref(), Some("unaware"));
        assert_eq!(web.flags(), ["--zone-mode", "unaware", "--zone-high", "3"]);
        // The workload's zoneMode replaces the mesh's; the mesh's args stay.
        let books = &mesh.workloads[1].proxy;
        assert_eq!(
            books.flags(),
            ["--zone-mode", "local-only", "--zone-high", "3"]
        );
        // Without any: no flags.
        assert!(parse(MESH, SERVICES).unwrap().workloads[0]
            .proxy
            .flags()
            .is_empty());
    }

    #[test]
    fn app_user_mesh_wide_and_per_workload() {
        let mesh = parse(MESH, SERVICES).unwrap();
        assert_eq!(mesh.workloads[0].user, None);
        let mesh = parse(
            &MESH
                .replace("kind: Mesh\n", "kind: Mesh\nuser: \"3000:3001\"\n")
                .replace(
                    "    command: [app]\n",
                    "    command: [app]\n    user: nobody\n",
                ),
            SERVICES,
        )
        .unwrap();
        assert_eq!(
            mesh.workloads[0].user,
            Some(AppUser::Id {
                uid: 3000,
                gid: 3001
            })
        );
        assert_eq!(mesh.workloads[1].user, Some(AppUser::Name("nobody".into())));
        let mesh = parse(
            &MESH.replace(
                "    command: [app]\n",
                "    command: [app]\n    user: 4000\n",
            ),
            SERVICES,
        )
        .unwrap();
        assert_eq!(
            mesh.workloads[1].user,
            Some(AppUser::Id {
                uid: 4000,
                gid: 4000
            })
        );
    }

    #[test]
    fn bad_app_users_name_the_field() {
        let msg = error(
            &MESH.replace("kind: Mesh\n", "kind: Mesh\nuser: 0\n"),
            SERVICES,
        );
        assert!(
            msg.contains("mesh.yaml: user: 0:0 is root (UID or GID 0): apps run unprivileged"),
            "{msg}"
        );
        for (user, expected) in [
            ("root", "user: root: apps run unprivileged"),
            ("\"1000:0\"", "user: 1000:0 is root"),
            ("2102", "user: 2102:2102: UID/GID 2102 is the proxies'"),
            (
                "\"2103:2102\"",
                "user: 2103:2102: UID/GID 2102 is the proxies'",
            ),
            ("Bad!", "user: \"Bad!\" is not a user name; expected a UID"),
            ("\"12x\"", "user: \"12x\" is not a UID or GID"),
            ("4294967295", "user: \"4294967295\" is not a UID or GID"),
            ("-5", "user: \"-5\" is not a UID or GID"),
            ("[1]", "user: expected a UID (2103)"),
        ] {
            let msg = error(
                &MESH.replace(
                    "    command: [app]\n",
                    &format!("    command: [app]\n    user: {user}\n"),
                ),
                SERVICES,
            );
            assert!(
                msg.contains(&format!("mesh.yaml: workloads[1] (books): {expected}")),
                "{user}: {msg}"
            );
        }
    }

    #[test]
    fn bad_proxy_settings_name_the_field() {
        let msg = error(
            &MESH.replace("kind: Mesh\n", "kind: Mesh\nproxy: {zoneMode: nearby}\n"),
            SERVICES,
        );
        assert!(
            msg.contains("mesh.yaml: proxy.zoneMode: \"nearby\" is not a zone mode (one of aware, unaware, local-only)"),
            "{msg}"
        );
        let msg = error(
            &MESH.replace(
                "    command: [app]\n",
                "    command: [app]\n    proxy: {args: [--zone-low, \"0.5\", --zone=x, --mode]}\n",
            ),
            SERVICES,
        );
        assert!(
            msg.contains(
                "mesh.yaml: workloads[1] (books): proxy.args[2]: --zone is managed by weft up"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("proxy.args[3]: --mode is managed by weft up"),
            "{msg}"
        );
        assert!(
            !msg.contains("args[0]") && !msg.contains("args[1]"),
            "{msg}"
        );
        let msg = error(
            &MESH.replace(
                "kind: Mesh\n",
                "kind: Mesh\nproxy: {args: [--zone-mode, aware]}\n",
            ),
            SERVICES,
        );
        assert!(
            msg.contains("proxy.args[0]: --zone-mode: use proxy.zoneMode"),
            "{msg}"
        );
        let msg = error(
            &MESH.replace(
                "    command: [app]\n",
                "    command: [app]\n    proxy: {zone_mode: aware}\n",
            ),
            SERVICES,
        );
        assert!(
            msg.contains("workloads[1] (books): proxy: unknown field `zone_mode`"),
            "{msg}"
        );
    }

    #[test]
    fn loads_a_directory() {
        let dir = std::env::temp_dir().join(format!("weft-mesh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
        std::fs::write(dir.join("services.yaml"), SERVICES).unwrap();
        std::fs::write(dir.join("notes.txt"), "not yaml").unwrap();
        let mesh = Mesh::load(&dir).unwrap();
        assert_eq!(mesh.services.len(), 2);
        std::fs::remove_file(dir.join("mesh.yaml")).unwrap();
        let err = Mesh::load(&dir).unwrap_err();
        assert!(err.to_string().contains("no mesh.yaml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
