//! The sidecar injector: [`inject`] decides whether a pod gets weft's proxy and makes
//! the JSON patch (RFC 6902) that adds it; the mutating admission webhook ([`serve`])
//! and `weft inject` (offline, on YAML) both call it, so both inject the same way.
//!
//! An injected pod gets:
//! - `weft-init`, an init container running `weft-proxy init` (the pod's iptables
//!   rules, the same as the local mesh's) as root with NET_ADMIN and NET_RAW;
//! - `weft-proxy`, the proxy as a native sidecar (an init container with
//!   `restartPolicy: Always`, started after `weft-init` and before the pod's own init
//!   containers, whose traffic it then carries) as UID 2102, configured through its
//!   `WEFT_*` environment (pod, namespace and service account from the downward API),
//!   with its identity token (a projected ServiceAccount token for the audience
//!   [`IDENTITY_AUDIENCE`]) in the `weft-identity` volume and the mesh's trust anchors
//!   inline in `WEFT_TRUST_ANCHORS_PEM` (the injector's own copy: no object in the
//!   pod's namespace to create or keep in step);
//! - the annotation `weft.io/injected: <version>`, which makes a second injection a
//!   no-op.

mod annotations;
mod pod;
mod webhook;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use annotations::{
    quantity_value, Settings, MAX_OPAQUE_PORTS, OPAQUE_PORTS, PROXY_CPU_LIMIT, PROXY_CPU_REQUEST,
    PROXY_DEFAULT_OPAQUE_PORTS, PROXY_LOG_LEVEL, PROXY_MEMORY_LIMIT, PROXY_MEMORY_REQUEST,
    SKIP_INBOUND_PORTS, SKIP_OUTBOUND_PORTS,
};
pub use webhook::{serve, tls_config, Answer, Metrics, ServeError, Webhook};

/// `weft.io/inject: enabled | disabled`, on a pod (or its template) or its namespace
/// (annotation or label). The pod's word wins.
pub const INJECT_ANNOTATION: &str = "weft.io/inject";
/// Set on every injected pod to the injector's version; a pod that has it is left as it
/// is. The controller's kube source knows meshed pods by it.
pub const INJECTED_ANNOTATION: &str = "weft.io/injected";
/// The proxy's container (a native sidecar).
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// The init container that installs the iptables rules.
pub const INIT_CONTAINER: &str = "weft-init";
/// The projected volume with the proxy's identity token.
pub const IDENTITY_VOLUME: &str = "weft-identity";
/// A writable /run for `weft-init` (iptables' lock file) on a read-only root.
pub const INIT_RUN_VOLUME: &str = "weft-init-run";
/// The audience of the proxy's projected ServiceAccount token: the controller's
/// TokenReview asks for it, so the token is good for weft's identity service only (not
/// for the Kubernetes API, not for another audience's service).
pub const IDENTITY_AUDIENCE: &str = weft_core::identity::KUBE_TOKEN_AUDIENCE;
/// Where the controller serves identity and destination in a cluster.
pub const DEFAULT_CONTROLLER: &str = "weft-controller.weft-system.svc:8090";
/// Where the proxy finds its identity volume.
pub const IDENTITY_DIR: &str = "/var/run/weft/identity";
/// The proxy's and the init container's image by default.
pub const DEFAULT_PROXY_IMAGE: &str =
    concat!("ghcr.io/weft-mesh/weft-proxy:v", env!("CARGO_PKG_VERSION"));

/// How pods are injected: the same for every pod the injector sees.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// Image of both containers; its entrypoint is `weft-proxy`.
    pub proxy_image: String,
    /// `imagePullPolicy` of both containers (`None`: Kubernetes' default).
    pub image_pull_policy: Option<String>,
    /// The value of `weft.io/injected`.
    pub version: String,
    /// The controller's identity and destination services, `host:port`.
    pub controller: String,
    /// Trust domain of identities (`WEFT_TRUST_DOMAIN`).
    pub trust_domain: String,
    /// The trust anchors (PEM bundle), given to the proxy as `WEFT_TRUST_ANCHORS_PEM`;
    /// [`read_trust_anchors`] reads and checks them (empty by default: a proxy given
    /// none refuses to start, naming the variable).
    pub trust_anchors_pem: String,
    /// Lifetime of the projected identity token (the kubelet renews it at 80 %).
    pub token_expiration_seconds: i64,
    /// The proxy's log filter unless the pod's annotation says otherwise.
    pub log_level: String,
    /// The proxy's resources unless the pod's annotations say otherwise.
    pub cpu_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_request: Option<String>,
    pub memory_limit: Option<String>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            proxy_image: DEFAULT_PROXY_IMAGE.into(),
            image_pull_policy: None,
            version: env!("CARGO_PKG_VERSION").into(),
            controller: DEFAULT_CONTROLLER.into(),
            trust_domain: "cluster.local".into(),
            trust_anchors_pem: String::new(),
            token_expiration_seconds: 3600,
            log_level: "info".into(),
            cpu_request: Some("100m".into()),
            cpu_limit: None,
            memory_request: Some("20Mi".into()),
            memory_limit: Some("250Mi".into()),
        }
    }
}

/// What to do with a pod.
#[derive(Debug)]
pub enum Decision {
    Inject(Injection),
    Skip(Skip),
}

/// The patch that injects a pod, relative to the pod's root (`/spec/...`,
/// `/metadata/...`); it only adds.
#[derive(Debug)]
pub struct Injection {
    pub patch: json_patch::Patch,
}

/// Why a pod is left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace asks for injection.
    NotEnabled,
    /// The pod says `weft.io/inject: disabled`.
    Disabled,
    /// Injected already (`weft.io/injected`): injecting is idempotent.
    AlreadyInjected { version: String },
    /// The pod shares its node's network: iptables rules there would redirect the
    /// node's traffic.
    HostNetwork,
    /// The pod has a container or volume of that name already (its own proxy?).
    NameTaken { name: String },
}

impl Skip {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotEnabled => "not_enabled",
            Skip::Disabled => "disabled",
            Skip::AlreadyInjected { .. } => "already_injected",
            Skip::HostNetwork => "host_network",
            Skip::NameTaken { .. } => "name_taken",
        }
    }

    /// Whoever creates the pod should hear of it: it asked for the proxy and does not
    /// get it. (Not asking, saying `disabled` or being injected already are normal.)
    pub fn warning(&self) -> Option<String> {
        match self {
            Skip::HostNetwork => Some(format!(
                "{INJECT_ANNOTATION}: not injected: the pod uses the host's network (hostNetwork: true)"
            )),
            Skip::NameTaken { name } => Some(format!(
                "{INJECT_ANNOTATION}: not injected: the pod already has a container or volume named {name}"
            )),
            _ => None,
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::NotEnabled => write!(
                f,
                "neither the pod nor its namespace has {INJECT_ANNOTATION}: enabled"
            ),
            Skip::Disabled => write!(f, "the pod has {INJECT_ANNOTATION}: disabled"),
            Skip::AlreadyInjected { version } => {
                write!(f, "injected already ({INJECTED_ANNOTATION}: {version})")
            }
            Skip::HostNetwork => write!(f, "the pod uses the host's network"),
            Skip::NameTaken { name } => {
                write!(f, "the pod has a container or volume named {name} already")
            }
        }
    }
}

/// An annotation whose value cannot be used: the pod is refused with this message
/// rather than injected without it (a skipped port left out would break the pod's
/// traffic in ways much harder to trace).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?}: {problem}")]
pub struct InvalidAnnotation {
    pub annotation: &'static str,
    pub value: String,
    pub problem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TrustAnchorsError {
    #[error("cannot read trust anchors {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("trust anchors {path}: {problem}")]
    Bad {
        path: std::path::PathBuf,
        problem: String,
    },
}

/// The trust anchors the injected proxies get, from the injector's own copy: a PEM
/// bundle of at least one certificate, checked here so that a bad file stops the
/// injector rather than every injected proxy.
pub fn read_trust_anchors(path: &std::path::Path) -> Result<String, TrustAnchorsError> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer};
    let pem = std::fs::read_to_string(path).map_err(|source| TrustAnchorsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |problem: String| TrustAnchorsError::Bad {
        path: path.to_owned(),
        problem,
    };
    let mut certificates = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err(bad("no certificate in the bundle".into()));
    }
    Ok(pem)
}

/// Decides whether `pod` gets the proxy and, if so, makes its patch. `namespace` is the
/// metadata of the pod's namespace (`None` when unknown, as offline).
pub fn inject(
    pod: &Pod,
    namespace: Option<&ObjectMeta>,
    config: &InjectConfig,
) -> Result<Decision, InvalidAnnotation> {
    decide(pod, namespace, config, None)
}

/// [`inject`] for a pod template offline (`weft inject`), with the name of the
/// Deployment it belongs to, if any: the pods made from it pass the webhook as injected
/// already, so the template carries the name of the proxy's `deployment` label (the
/// webhook finds it from a pod's ReplicaSet).
pub fn inject_template(
    template: &Pod,
    deployment: Option<&str>,
    config: &InjectConfig,
) -> Result<Decision, InvalidAnnotation> {
    decide(template, None, config, deployment)
}

fn decide(
    pod: &Pod,
    namespace: Option<&ObjectMeta>,
    config: &InjectConfig,
    deployment: Option<&str>,
) -> Result<Decision, InvalidAnnotation> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if let Some(version) = annotations.get(INJECTED_ANNOTATION) {
        return Ok(Decision::Skip(Skip::AlreadyInjected {
            version: version.clone(),
        }));
    }
    match annotations.get(INJECT_ANNOTATION).map(|v| v.trim()) {
        Some("enabled") => {}
        Some("disabled") => return Ok(Decision::Skip(Skip::Disabled)),
        Some(other) => {
            return Err(InvalidAnnotation {
                annotation: INJECT_ANNOTATION,
                value: other.to_owned(),
                problem: "expected enabled or disabled".into(),
            })
        }
        None => {
            let says = |m: Option<&BTreeMap<String, String>>| {
                m.and_then(|m| m.get(INJECT_ANNOTATION))
                    .is_some_and(|v| v.trim() == "enabled")
            };
            let ns_enabled = namespace
                .is_some_and(|ns| says(ns.annotations.as_ref()) || says(ns.labels.as_ref()));
            if !ns_enabled {
                return Ok(Decision::Skip(Skip::NotEnabled));
            }
        }
    }
    let spec = pod.spec.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        return Ok(Decision::Skip(Skip::HostNetwork));
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c| c.name.as_str());
    let volumes = spec.volumes.iter().flatten().map(|v| v.name.as_str());
    let ours = [
        PROXY_CONTAINER,
        INIT_CONTAINER,
        IDENTITY_VOLUME,
        INIT_RUN_VOLUME,
    ];
    if let Some(name) = containers.chain(volumes).find(|n| ours.contains(n)) {
        return Ok(Decision::Skip(Skip::NameTaken {
            name: name.to_owned(),
        }));
    }
    let settings = Settings::parse(annotations)?;
    Ok(Decision::Inject(Injection {
        patch: pod::patch(pod, &settings, config, deployment),
    }))
}
