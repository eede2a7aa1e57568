//! The control plane's manifests, as `weft install` prints them (after the CRDs) and
//! the Helm chart renders them: typed `k8s-openapi` objects serialized to YAML.
//!
//! - Namespace `weft-system` (labelled `weft.io/inject: disabled`: the injector never
//!   touches the control plane);
//! - ServiceAccounts, ClusterRoles and bindings for the controller (the kube source's
//!   reads, TokenReview, route and policy status) and the injector (namespaces), a Role
//!   for the controller's leader-election Lease;
//! - the controller's Deployment and Service (gRPC 8090, admin 9990), a
//!   PodDisruptionBudget with high availability;
//! - the injector's Deployment, Service `weft-injector` (443 → 8443) and the
//!   MutatingWebhookConfiguration calling it at `/inject`.
//!
//! The webhook's `failurePolicy` is `Ignore`: when the injector is down, pods are
//! created without the proxy rather than not at all, so a broken mesh never stops a
//! cluster from scheduling (its own control plane and kube-system included); such pods
//! run unmeshed until restarted, and `weft check` reports them. `Fail` is the choice
//! for a cluster where an unmeshed pod is worse than no pod ([`InstallOptions::fail_closed`]).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, HTTPGetAction, KeyToPath, Namespace,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde::Serialize;

use crate::crd::operator::{ComponentValues, ControlPlaneValues, PullPolicy};
use crate::crd::{self, RenderError, PART_OF};

/// The control plane's default namespace.
pub const DEFAULT_NAMESPACE: &str = "weft-system";
/// Where the images are, by default: `{registry}/weft-controller:{version}`,
/// `weft-injector`, `weft-proxy` (the injector's default proxy image is the same).
pub const DEFAULT_IMAGE_REGISTRY: &str = "ghcr.io/weft-mesh";
/// The default version: the images' tag, `v` and this crate's version.
pub const DEFAULT_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));
/// The controller's Deployment, Service and ServiceAccount.
pub const CONTROLLER: &str = "weft-controller";
/// The injector's Deployment, Service and ServiceAccount, and the webhook configuration.
pub const INJECTOR: &str = "weft-injector";
/// The injected proxy's image name (`{registry}/weft-proxy:{version}`).
pub const PROXY: &str = "weft-proxy";
/// The injector's Service port (the API server calls it there) and container port.
pub const INJECTOR_PORT: i32 = 443;
pub const INJECTOR_TARGET_PORT: i32 = 8443;
/// The injector's path.
pub const INJECT_PATH: &str = "/inject";
/// The label and annotation that turn injection on (`enabled`) or off (`disabled`).
pub const INJECT_KEY: &str = "weft.io/inject";
/// The controller's ports.
pub const CONTROLLER_GRPC_PORT: i32 = 8090;
pub const CONTROLLER_ADMIN_PORT: i32 = 9990;
/// The Secret with the controller's `trust-anchors.pem`, `issuer.crt` and `issuer.key`
/// (made by `weft identity init`, created by the user: nothing generates it in the
/// cluster).
pub const IDENTITY_SECRET: &str = "weft-identity";
/// The `kubernetes.io/tls` Secret with the injector's serving certificate.
pub const INJECTOR_TLS_SECRET: &str = "weft-injector-tls";
/// The controller's leader-election Lease.
pub const LEASE: &str = "weft-controller";
/// The field manager weft writes with (server-side apply).
pub const FIELD_MANAGER: &str = "weft";

const IDENTITY_DIR: &str = "/var/run/weft/identity";
const INJECTOR_TLS_DIR: &str = "/var/run/weft/injector-tls";
/// The injector's copy of the trust anchors (the `weft-identity` Secret's
/// `trust-anchors.pem` alone), which it gives every injected proxy inline.
const INJECTOR_ANCHORS_DIR: &str = "/var/run/weft/trust-anchors";
/// The UID the control plane's containers run as (not the proxy's 2102).
const CONTROL_PLANE_UID: i64 = 2103;

/// What `weft install` may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallOptions {
    /// The images' tag.
    pub version: String,
    pub namespace: String,
    /// `{registry}/weft-controller:{version}`, `weft-injector`, `weft-proxy`.
    pub image_registry: String,
    /// Controller replicas; more than one adds a PodDisruptionBudget and spreads them.
    pub controller_replicas: i32,
    /// The PEM that signed the injector's certificate, for the webhook's `caBundle`
    /// (absent: filled in by whoever makes the certificate, e.g. cert-manager's CA
    /// injector or the operator).
    pub webhook_ca_bundle: Option<String>,
    /// `failurePolicy: Fail` instead of `Ignore`.
    pub fail_closed: bool,
    /// The controller's and the injected proxies' images, log levels and resources (a
    /// `ControlPlane`'s `values`; its `imageRegistry` is [`Self::image_registry`]).
    pub values: ControlPlaneValues,
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            version: DEFAULT_VERSION.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            image_registry: DEFAULT_IMAGE_REGISTRY.to_owned(),
            controller_replicas: 1,
            webhook_ca_bundle: None,
            fail_closed: false,
            values: ControlPlaneValues::default(),
        }
    }
}

/// High availability's controller replicas (`weft install --ha`).
pub const HA_REPLICAS: i32 = 3;

/// Options that cannot make valid objects.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("namespace {0:?} is not a DNS label (lowercase letters, digits and '-', at most 63)")]
    Namespace(String),
    #[error("version {0:?} is not an image tag (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')")]
    Version(String),
    #[error("image registry {0:?} is not an image repository (like ghcr.io/weft or registry.local:5000/weft)")]
    Registry(String),
    #[error("controller replicas {0} is not from 1 to 9")]
    Replicas(i32),
    #[error("the webhook CA bundle is not PEM (no -----BEGIN CERTIFICATE----- line)")]
    CaBundle,
    #[error("values.{component}.image.name {0:?} is not an image repository (like ghcr.io/weft-mesh/weft-proxy)", component = .1)]
    ImageName(String, &'static str),
    #[error("values.{component}.image.tag {0:?} is not an image tag", component = .1)]
    ImageTag(String, &'static str),
    #[error("values.{component}.logLevel {0:?} is not a log filter (letters, digits, '_', ':', '=', ',', '.', '-')", component = .1)]
    LogLevel(String, &'static str),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl InstallOptions {
    fn check(&self) -> Result<(), InstallError> {
        if !is_dns_label(&self.namespace) {
            return Err(InstallError::Namespace(self.namespace.clone()));
        }
        if !is_image_tag(&self.version) {
            return Err(InstallError::Version(self.version.clone()));
        }
        if !is_image_repository(&self.image_registry) {
            return Err(InstallError::Registry(self.image_registry.clone()));
        }
        if !(1..=9).contains(&self.controller_replicas) {
            return Err(InstallError::Replicas(self.controller_replicas));
        }
        if let Some(pem) = &self.webhook_ca_bundle {
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(InstallError::CaBundle);
            }
        }
        for (component, values) in [
            ("controller", &self.values.controller),
            ("proxy", &self.values.proxy),
        ] {
            let Some(values) = values else { continue };
            if let Some(image) = &values.image {
                if let Some(name) = image.name.as_ref().filter(|n| !is_image_repository(n)) {
                    return Err(InstallError::ImageName(name.clone(), component));
                }
                if let Some(tag) = image.tag.as_ref().filter(|t| !is_image_tag(t)) {
                    return Err(InstallError::ImageTag(tag.clone(), component));
                }
            }
            if let Some(level) = values.log_level.as_ref().filter(|l| !is_log_filter(l)) {
                return Err(InstallError::LogLevel(level.clone(), component));
            }
        }
        Ok(())
    }

    /// `{registry}/{component}:{version}`, or what `values` says for the controller
    /// and the proxy.
    fn image(&self, component: &str) -> String {
        let image = self.component(component).and_then(|c| c.image.as_ref());
        let name = image.and_then(|i| i.name.clone());
        let tag = image
            .and_then(|i| i.tag.as_deref())
            .unwrap_or(&self.version);
        match name {
            Some(name) => format!("{name}:{tag}"),
            None => format!("{}/{component}:{tag}", self.image_registry),
        }
    }

    /// The injected proxies' image: what `weft.io/injected` pods run after an upgrade
    /// (the `DataPlane`'s target).
    pub fn proxy_image(&self) -> String {
        self.image(PROXY)
    }

    fn component(&self, component: &str) -> Option<&ComponentValues> {
        match component {
            CONTROLLER => self.values.controller.as_ref(),
            PROXY => self.values.proxy.as_ref(),
            _ => None,
        }
    }

    fn pull_policy(&self, component: &str) -> Option<String> {
        let policy = self.component(component)?.image.as_ref()?.pull_policy?;
        Some(
            match policy {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            }
            .to_owned(),
        )
    }

    fn log_level(&self, component: &str) -> Option<&str> {
        self.component(component)?.log_level.as_deref()
    }

    /// The resources `values` gives a component, over `default`.
    fn resources(&self, component: &str, default: ResourceRequirements) -> ResourceRequirements {
        let Some(given) = self.component(component).and_then(|c| c.resources.as_ref()) else {
            return default;
        };
        let merge = |base: Option<BTreeMap<String, Quantity>>,
                     list: &Option<crd::operator::ResourceList>| {
            let mut out = base.unwrap_or_default();
            if let Some(list) = list {
                for (key, q) in [("cpu", &list.cpu), ("memory", &list.memory)] {
                    if let Some(q) = q {
                        out.insert(key.to_owned(), quantity(q));
                    }
                }
            }
            (!out.is_empty()).then_some(out)
        };
        ResourceRequirements {
            requests: merge(default.requests, &given.requests),
            limits: merge(default.limits, &given.limits),
            ..Default::default()
        }
    }
}

fn quantity(q: &crd::operator::Quantity) -> Quantity {
    match q {
        crd::operator::Quantity::Number(n) => Quantity(n.to_string()),
        crd::operator::Quantity::Text(t) => Quantity(t.clone()),
    }
}

/// A tracing filter as the CRD's `logLevel` pattern takes it.
fn is_log_filter(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'=' | b',' | b'.' | b'-')
        })
}

pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// [`crd::operator::IMAGE_TAG`].
fn is_image_tag(s: &str) -> bool {
    let mut bytes = s.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    s.len() <= 128
        && (first.is_ascii_alphanumeric() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// [`crd::operator::IMAGE_REPOSITORY`]: host[:port] and path components of lowercase
/// letters and digits joined by '.', '_' or '-'.
fn is_image_repository(s: &str) -> bool {
    let (host, rest) = match s.split_once('/') {
        Some((h, r)) => (h, Some(r)),
        None => (s, None),
    };
    let (host, port) = match host.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    };
    let component = |c: &str| {
        c.split(['.', '_', '-']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    };
    s.len() <= 255
        && component(host)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && rest.is_none_or(|r| r.split('/').all(component))
}

/// One object of the manifests: what it is and its YAML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub yaml: String,
}

impl Manifest {
    pub(crate) fn of<T>(object: &T) -> Result<Manifest, RenderError>
    where
        T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Serialize,
    {
        let meta = object.metadata();
        let name = meta.name.clone().unwrap_or_default();
        Ok(Manifest {
            api_version: T::API_VERSION.to_owned(),
            kind: T::KIND.to_owned(),
            namespace: meta.namespace.clone(),
            yaml: crd::yaml(&format!("{} {name}", T::KIND), object)?,
            name,
        })
    }

    /// The object reduced to what `kubectl delete -f -` needs.
    pub(crate) fn reference(&self) -> String {
        let mut out = format!(
            "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n",
            self.api_version, self.kind, self.name
        );
        if let Some(ns) = &self.namespace {
            out.push_str(&format!("  namespace: {ns}\n"));
        }
        out
    }
}

/// The CRDs as manifests.
pub fn crd_manifests() -> Result<Vec<Manifest>, RenderError> {
    crd::all().iter().map(Manifest::of).collect()
}

/// The control plane's objects, in the order they apply (the namespace and RBAC
/// first, the webhook configuration last, so it never calls an injector that does not
/// exist yet).
pub fn control_plane(opts: &InstallOptions) -> Result<Vec<Manifest>, InstallError> {
    opts.check()?;
    let ns = opts.namespace.as_str();
    let mut out = vec![
        Manifest::of(&namespace(ns))?,
        Manifest::of(&service_account(CONTROLLER, ns))?,
        Manifest::of(&service_account(INJECTOR, ns))?,
        Manifest::of(&controller_cluster_role())?,
        Manifest::of(&cluster_role_binding(CONTROLLER, ns))?,
        Manifest::of(&injector_cluster_role())?,
        Manifest::of(&cluster_role_binding(INJECTOR, ns))?,
        Manifest::of(&lease_role(CONTROLLER, ns))?,
        Manifest::of(&lease_role_binding(CONTROLLER, ns))?,
        Manifest::of(&controller_deployment(opts))?,
        Manifest::of(&controller_service(ns))?,
    ];
    if opts.controller_replicas > 1 {
        out.push(Manifest::of(&controller_pdb(ns))?);
    }
    out.push(Manifest::of(&injector_deployment(opts))?);
    out.push(Manifest::of(&injector_service(ns))?);
    out.push(Manifest::of(&webhook(opts))?);
    Ok(out)
}

/// `weft install`'s output: the CRDs (unless `crds` is false), then the control plane.
pub fn render(opts: &InstallOptions, crds: bool) -> Result<String, InstallError> {
    let mut manifests = Vec::new();
    if crds {
        manifests.extend(crd_manifests()?);
    }
    manifests.extend(control_plane(opts)?);
    Ok(crd::documents(manifests.into_iter().map(|m| m.yaml)))
}

/// `weft uninstall`'s output: references to everything `weft install` made, the
/// webhook configuration first (pods stop being sent to the injector before it goes)
/// and the namespace, then the CRDs (and with them every custom resource) last.
pub fn uninstall(opts: &InstallOptions, crds: bool) -> Result<String, InstallError> {
    let mut manifests = control_plane(opts)?;
    manifests.reverse();
    if crds {
        manifests.extend(crd_manifests()?);
    }
    Ok(crd::documents(manifests.iter().map(Manifest::reference)))
}

pub(crate) fn labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), component.to_owned()),
        (PART_OF.0.to_owned(), PART_OF.1.to_owned()),
    ])
}

pub(crate) fn meta(name: &str, namespace: Option<&str>, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(labels(component)),
        ..Default::default()
    }
}

pub(crate) fn selector(component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_owned(),
            component.to_owned(),
        )])),
        ..Default::default()
    }
}

fn namespace(ns: &str) -> Namespace {
    let mut m = meta(ns, None, CONTROLLER);
    m.labels
        .get_or_insert_with(Default::default)
        .insert(INJECT_KEY.to_owned(), "disabled".to_owned());
    Namespace {
        metadata: m,
        ..Default::default()
    }
}

pub(crate) fn service_account(name: &str, ns: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(name, Some(ns), name),
        ..Default::default()
    }
}

pub(crate) fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        api_groups: strings(groups),
        resources: strings(resources),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    }
}

pub(crate) const READ: &[&str] = &["get", "list", "watch"];
const WRITE_STATUS: &[&str] = &["get", "patch", "update"];

fn controller_cluster_role() -> ClusterRole {
    const POLICY: &[&str] = &[
        "servers",
        "authorizationpolicies",
        "meshtlsauthentications",
        "networkauthentications",
    ];
    const POLICY_STATUS: &[&str] = &[
        "servers/status",
        "authorizationpolicies/status",
        "meshtlsauthentications/status",
        "networkauthentications/status",
    ];
    ClusterRole {
        metadata: meta(CONTROLLER, None, CONTROLLER),
        rules: Some(vec![
            // The kube source: discovery, zones, workload identities.
            rule(&[""], &["services", "pods", "nodes", "namespaces"], READ),
            rule(&["discovery.k8s.io"], &["endpointslices"], READ),
            // Routes, and their status (server-side apply, our own parent statuses).
            rule(
                &["gateway.networking.k8s.io"],
                &["httproutes", "grpcroutes", "referencegrants"],
                READ,
            ),
            rule(
                &["gateway.networking.k8s.io"],
                &["httproutes/status", "grpcroutes/status"],
                WRITE_STATUS,
            ),
            // Policy objects and their conditions.
            rule(&[crd::policy::GROUP], POLICY, READ),
            rule(&[crd::policy::GROUP], POLICY_STATUS, WRITE_STATUS),
            rule(
                &[crd::operator::GROUP],
                &["controlplanes", "dataplanes"],
                READ,
            ),
            rule(
                &[crd::operator::GROUP],
                &["controlplanes/status", "dataplanes/status"],
                WRITE_STATUS,
            ),
            // Identity: a Certify request's ServiceAccount token checked by the API server.
            rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
        ]),
        ..Default::default()
    }
}

fn injector_cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(INJECTOR, None, INJECTOR),
        // A pod's namespace's annotations decide injection and its defaults.
        rules: Some(vec![rule(&[""], &["namespaces"], READ)]),
        ..Default::default()
    }
}

pub(crate) fn cluster_role_binding(component: &str, ns: &str) -> ClusterRoleBinding {
    let name = component.to_owned();
    ClusterRoleBinding {
        metadata: meta(&name, None, component),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: component.to_owned(),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        }]),
    }
}

/// The Role letting `component`'s ServiceAccount hold its leader-election Lease.
pub(crate) fn lease_role(component: &str, ns: &str) -> Role {
    Role {
        metadata: meta(&format!("{component}-lease"), Some(ns), component),
        rules: Some(vec![rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "list", "watch", "create", "update", "patch"],
        )]),
    }
}

pub(crate) fn lease_role_binding(component: &str, ns: &str) -> RoleBinding {
    let name = format!("{component}-lease");
    RoleBinding {
        metadata: meta(&name, Some(ns), component),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: component.to_owned(),
            namespace: Some(ns.to_owned()),
            ..Default::default()
        }]),
    }
}

pub(crate) fn quantities(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect(),
    )
}

pub(crate) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(CONTROL_PLANE_UID),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn probe(path: &str, port: i32, scheme: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(port),
            scheme: Some(scheme.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: &str, keys: &[&str]) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(
                keys.iter()
                    .map(|k| KeyToPath {
                        key: (*k).to_owned(),
                        path: (*k).to_owned(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The controller's arguments on Kubernetes: the kube source for discovery, routes and
/// policy, ServiceAccount tokens checked with TokenReview, the identity files from the
/// `weft-identity` Secret, the leader-election Lease in the control plane's namespace.
pub fn controller_args(opts: &InstallOptions) -> Vec<String> {
    let mut args = vec![
        "--source=kube".to_owned(),
        "--identity-tokens=kube".to_owned(),
        format!("--identity-dir={IDENTITY_DIR}"),
        format!("--lease-namespace={}", opts.namespace),
        format!("--listen=0.0.0.0:{CONTROLLER_GRPC_PORT}"),
        format!("--admin-listen=0.0.0.0:{CONTROLLER_ADMIN_PORT}"),
    ];
    if let Some(level) = opts.log_level(CONTROLLER) {
        args.push(format!("--log={level}"));
    }
    args
}

/// The injector's arguments (`weft-injector`: HTTPS with the certificate from the
/// `weft-injector-tls` Secret; the trust anchors from the `weft-identity` Secret; the
/// proxy image of the same version).
pub fn injector_args(opts: &InstallOptions) -> Vec<String> {
    let mut args = vec![
        format!("--listen=0.0.0.0:{INJECTOR_TARGET_PORT}"),
        format!("--cert={INJECTOR_TLS_DIR}/tls.crt"),
        format!("--key={INJECTOR_TLS_DIR}/tls.key"),
        format!("--trust-anchors={INJECTOR_ANCHORS_DIR}/trust-anchors.pem"),
        format!("--proxy-image={}", opts.proxy_image()),
        format!(
            "--controller={CONTROLLER}.{}.svc:{CONTROLLER_GRPC_PORT}",
            opts.namespace
        ),
    ];
    if let Some(policy) = opts.pull_policy(PROXY) {
        args.push(format!("--image-pull-policy={policy}"));
    }
    if let Some(level) = opts.log_level(PROXY) {
        args.push(format!("--proxy-log-level={level}"));
    }
    let proxy = opts.resources(PROXY, ResourceRequirements::default());
    for (flag, list, key) in [
        ("--proxy-cpu-request", &proxy.requests, "cpu"),
        ("--proxy-memory-request", &proxy.requests, "memory"),
        ("--proxy-cpu-limit", &proxy.limits, "cpu"),
        ("--proxy-memory-limit", &proxy.limits, "memory"),
    ] {
        if let Some(q) = list.as_ref().and_then(|l| l.get(key)) {
            args.push(format!("{flag}={}", q.0));
        }
    }
    args
}

fn deployment(
    opts: &InstallOptions,
    component: &str,
    replicas: i32,
    container: Container,
    volumes: Vec<Volume>,
) -> Deployment {
    let ns = opts.namespace.as_str();
    let mut pod_labels = labels(component);
    pod_labels.insert(INJECT_KEY.to_owned(), "disabled".to_owned());
    let affinity = (replicas > 1).then(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(component)),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    });
    Deployment {
        metadata: meta(component, Some(ns), component),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: selector(component),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(if replicas > 1 { 1 } else { 0 })),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(component.to_owned()),
                    security_context: Some(pod_security()),
                    affinity,
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn controller_deployment(opts: &InstallOptions) -> Deployment {
    let container = Container {
        name: "controller".to_owned(),
        image: Some(opts.image(CONTROLLER)),
        image_pull_policy: Some(
            opts.pull_policy(CONTROLLER)
                .unwrap_or_else(|| "IfNotPresent".to_owned()),
        ),
        args: Some(controller_args(opts)),
        ports: Some(vec![
            container_port("grpc", CONTROLLER_GRPC_PORT),
            container_port("admin", CONTROLLER_ADMIN_PORT),
        ]),
        readiness_probe: Some(probe("/ready", CONTROLLER_ADMIN_PORT, "HTTP")),
        liveness_probe: Some(probe("/live", CONTROLLER_ADMIN_PORT, "HTTP")),
        resources: Some(opts.resources(
            CONTROLLER,
            ResourceRequirements {
                requests: quantities(&[("cpu", "100m"), ("memory", "64Mi")]),
                limits: quantities(&[("memory", "256Mi")]),
                ..Default::default()
            },
        )),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "identity".to_owned(),
            mount_path: IDENTITY_DIR.to_owned(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let volumes = vec![secret_volume(
        "identity",
        IDENTITY_SECRET,
        &["trust-anchors.pem", "issuer.crt", "issuer.key"],
    )];
    deployment(
        opts,
        CONTROLLER,
        opts.controller_replicas,
        container,
        volumes,
    )
}

fn injector_deployment(opts: &InstallOptions) -> Deployment {
    let container = Container {
        name: "injector".to_owned(),
        image: Some(opts.image(INJECTOR)),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(injector_args(opts)),
        ports: Some(vec![container_port("https", INJECTOR_TARGET_PORT)]),
        readiness_probe: Some(probe("/ready", INJECTOR_TARGET_PORT, "HTTPS")),
        liveness_probe: Some(probe("/live", INJECTOR_TARGET_PORT, "HTTPS")),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", "50m"), ("memory", "32Mi")]),
            limits: quantities(&[("memory", "128Mi")]),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "tls".to_owned(),
                mount_path: INJECTOR_TLS_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "trust-anchors".to_owned(),
                mount_path: INJECTOR_ANCHORS_DIR.to_owned(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    // Of the identity Secret, the public anchors only: never the issuer's key.
    let volumes = vec![
        secret_volume("tls", INJECTOR_TLS_SECRET, &["tls.crt", "tls.key"]),
        secret_volume("trust-anchors", IDENTITY_SECRET, &["trust-anchors.pem"]),
    ];
    let replicas = opts.controller_replicas.min(2);
    let mut deployment = deployment(opts, INJECTOR, replicas, container, volumes);
    // The injector reads the trust anchors once, at start: a change of them (known
    // here as the webhook's caBundle) changes the pod template, which restarts it.
    if let Some(pem) = &opts.webhook_ca_bundle {
        if let Some(meta) = deployment
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
        {
            meta.annotations = Some(BTreeMap::from([(
                TRUST_ANCHORS_CHECKSUM.to_owned(),
                checksum(pem.as_bytes()),
            )]));
        }
    }
    deployment
}

/// The injector's pod-template annotation holding a checksum of the trust anchors.
pub const TRUST_ANCHORS_CHECKSUM: &str = "weft.io/trust-anchors-checksum";

/// FNV-1a (64 bits) as hex: a change detector, not a cryptographic digest.
fn checksum(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

pub(crate) fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn service_port(name: &str, port: i32, target: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn controller_service(ns: &str) -> Service {
    Service {
        metadata: meta(CONTROLLER, Some(ns), CONTROLLER),
        spec: Some(ServiceSpec {
            selector: selector(CONTROLLER).match_labels,
            ports: Some(vec![
                service_port("grpc", CONTROLLER_GRPC_PORT, CONTROLLER_GRPC_PORT),
                service_port("admin", CONTROLLER_ADMIN_PORT, CONTROLLER_ADMIN_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn controller_pdb(ns: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(CONTROLLER, Some(ns), CONTROLLER),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(CONTROLLER)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn injector_service(ns: &str) -> Service {
    Service {
        metadata: meta(INJECTOR, Some(ns), INJECTOR),
        spec: Some(ServiceSpec {
            selector: selector(INJECTOR).match_labels,
            ports: Some(vec![service_port(
                "https",
                INJECTOR_PORT,
                INJECTOR_TARGET_PORT,
            )]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn not_in(key: &str, values: &[&str]) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.to_owned(),
        operator: "NotIn".to_owned(),
        values: Some(values.iter().map(|s| (*s).to_owned()).collect()),
    }
}

/// Every pod created outside the control plane, kube-system and namespaces or pods
/// labelled `weft.io/inject: disabled` is sent to the injector, which decides by the
/// pod's and its namespace's `weft.io/inject` annotation or label (an annotation cannot
/// be selected on here).
fn webhook(opts: &InstallOptions) -> MutatingWebhookConfiguration {
    let ns = opts.namespace.as_str();
    MutatingWebhookConfiguration {
        metadata: meta(INJECTOR, None, INJECTOR),
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.weft.io".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            client_config: WebhookClientConfig {
                service: Some(ServiceReference {
                    name: INJECTOR.to_owned(),
                    namespace: ns.to_owned(),
                    path: Some(INJECT_PATH.to_owned()),
                    port: Some(INJECTOR_PORT),
                }),
                ca_bundle: opts
                    .webhook_ca_bundle
                    .as_ref()
                    .map(|pem| ByteString(pem.as_bytes().to_vec())),
                ..Default::default()
            },
            failure_policy: Some(if opts.fail_closed { "Fail" } else { "Ignore" }.to_owned()),
            side_effects: "None".to_owned(),
            timeout_seconds: Some(5),
            reinvocation_policy: Some("IfNeeded".to_owned()),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    not_in(INJECT_KEY, &["disabled"]),
                    not_in(
                        "kubernetes.io/metadata.name",
                        &["kube-system", "kube-node-lease", ns],
                    ),
                ]),
                ..Default::default()
            }),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![not_in(INJECT_KEY, &["disabled"])]),
                ..Default::default()
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_owned()]),
                operations: Some(vec!["CREATE".to_owned()]),
                resources: Some(vec!["pods".to_owned()]),
                scope: Some("Namespaced".to_owned()),
            }]),
            ..Default::default()
        }]),
    }
}

#[cfg(test)]
mod tests;
