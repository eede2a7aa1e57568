//! The operator's own objects, as `weft install --operator` prints them and the Helm
//! chart renders them: its namespace `weft-operator`, ServiceAccount, ClusterRole and
//! binding, Deployment, and the `ControlPlane` it then reconciles into the control plane.
//!
//! The operator runs outside the control plane's namespace: that namespace belongs to
//! the `ControlPlane`, and deleting the resource deletes it.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, PodTemplateSpec, ResourceRequirements,
};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::crd::operator::{ControlPlane, ControlPlaneSpec, HighAvailability};
use crate::crd::{self, RenderError};
use crate::install::{
    self, cluster_role_binding, container_port, labels, lease_role, lease_role_binding, meta,
    pod_security, probe, quantities, restricted_container_security, rule, selector,
    service_account, InstallError, InstallOptions, Manifest, CONTROLLER_ADMIN_PORT, HA_REPLICAS,
    INJECT_KEY, READ,
};

/// The operator's Deployment, ServiceAccount, ClusterRole and binding, and its default
/// namespace.
pub const OPERATOR: &str = "weft-operator";
/// The `ControlPlane` `weft install --operator` makes.
pub const CONTROL_PLANE_NAME: &str = "weft";
/// The operator's admin port (`/metrics`, `/ready`, `/live`).
pub const OPERATOR_ADMIN_PORT: i32 = CONTROLLER_ADMIN_PORT;

const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// What the operator may do: make and delete the control plane's objects (and grant
/// the roles it gives the controller and the injector: `escalate` and `bind`), read
/// and restart workloads, read pods, write its resources' status.
fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: meta(OPERATOR, None, OPERATOR),
        rules: Some(vec![
            rule(
                &[crd::operator::GROUP],
                &["controlplanes", "dataplanes"],
                READ,
            ),
            rule(
                &[crd::operator::GROUP],
                &["controlplanes/status", "dataplanes/status"],
                &["get", "patch", "update"],
            ),
            rule(
                &[""],
                &["namespaces", "serviceaccounts", "services", "secrets"],
                WRITE,
            ),
            rule(&[""], &["configmaps", "pods"], READ),
            rule(&["apps"], &["deployments"], WRITE),
            rule(
                &["apps"],
                &["statefulsets", "daemonsets"],
                &["get", "list", "watch", "patch"],
            ),
            rule(&["policy"], &["poddisruptionbudgets"], WRITE),
            rule(
                &["rbac.authorization.k8s.io"],
                &[
                    "clusterroles",
                    "clusterrolebindings",
                    "roles",
                    "rolebindings",
                ],
                WRITE,
            ),
            rule(
                &["rbac.authorization.k8s.io"],
                &["clusterroles", "roles"],
                &["escalate", "bind"],
            ),
            rule(
                &["admissionregistration.k8s.io"],
                &["mutatingwebhookconfigurations"],
                WRITE,
            ),
        ]),
        ..Default::default()
    }
}

fn deployment(opts: &InstallOptions, namespace: &str) -> Deployment {
    let mut pod_labels = labels(OPERATOR);
    pod_labels.insert(INJECT_KEY.to_owned(), "disabled".to_owned());
    let container = Container {
        name: "operator".to_owned(),
        image: Some(format!(
            "{}/{OPERATOR}:{}",
            opts.image_registry, opts.version
        )),
        image_pull_policy: Some("IfNotPresent".to_owned()),
        args: Some(vec![
            format!("--admin-listen=0.0.0.0:{OPERATOR_ADMIN_PORT}"),
            format!("--lease-namespace={namespace}"),
        ]),
        ports: Some(vec![container_port("admin", OPERATOR_ADMIN_PORT)]),
        readiness_probe: Some(probe("/ready", OPERATOR_ADMIN_PORT, "HTTP")),
        liveness_probe: Some(probe("/live", OPERATOR_ADMIN_PORT, "HTTP")),
        resources: Some(ResourceRequirements {
            requests: quantities(&[("cpu", "50m"), ("memory", "32Mi")]),
            limits: quantities(&[("memory", "128Mi")]),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        ..Default::default()
    };
    Deployment {
        metadata: meta(OPERATOR, Some(namespace), OPERATOR),
        spec: Some(DeploymentSpec {
            // Two with high availability: the Lease's holder reconciles, the other
            // waits to take over.
            replicas: Some(if opts.controller_replicas > 1 { 2 } else { 1 }),
            selector: selector(OPERATOR),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(OPERATOR.to_owned()),
                    security_context: Some(pod_security()),
                    containers: vec![container],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `ControlPlane` for `opts`.
pub fn control_plane_resource(opts: &InstallOptions) -> ControlPlane {
    let mut values = opts.values.clone();
    values.image_registry = Some(opts.image_registry.clone());
    let mut cp = ControlPlane::new(
        CONTROL_PLANE_NAME,
        ControlPlaneSpec {
            version: opts.version.clone(),
            namespace: Some(opts.namespace.clone()),
            trust_anchor: None,
            high_availability: (opts.controller_replicas > 1).then(|| HighAvailability {
                replicas: (opts.controller_replicas != HA_REPLICAS)
                    .then_some(opts.controller_replicas),
            }),
            values: Some(values),
        },
    );
    cp.metadata.labels = Some(BTreeMap::from([(
        crd::PART_OF.0.to_owned(),
        crd::PART_OF.1.to_owned(),
    )]));
    cp
}

/// The operator's objects in `namespace`, then the `ControlPlane` for `opts` (unless
/// `control_plane` is false).
pub fn operator(
    opts: &InstallOptions,
    namespace: &str,
    control_plane: bool,
) -> Result<Vec<Manifest>, InstallError> {
    // The same checks as the control plane's own objects.
    install::control_plane(opts)?;
    if !install::is_dns_label(namespace) {
        return Err(InstallError::Namespace(namespace.to_owned()));
    }
    let ns = namespace;
    let mut namespace = Namespace {
        metadata: meta(ns, None, OPERATOR),
        ..Default::default()
    };
    namespace
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(INJECT_KEY.to_owned(), "disabled".to_owned());
    let mut out = vec![
        Manifest::of(&namespace)?,
        Manifest::of(&service_account(OPERATOR, ns))?,
        Manifest::of(&cluster_role())?,
        Manifest::of(&cluster_role_binding(OPERATOR, ns))?,
        Manifest::of(&lease_role(OPERATOR, ns))?,
        Manifest::of(&lease_role_binding(OPERATOR, ns))?,
        Manifest::of(&deployment(opts, ns))?,
    ];
    if control_plane {
        out.push(custom_resource(&control_plane_resource(opts))?);
    }
    Ok(out)
}

/// `weft install --operator`'s output: the CRDs (unless `crds` is false), the
/// operator, and the `ControlPlane`.
pub fn render(opts: &InstallOptions, namespace: &str, crds: bool) -> Result<String, InstallError> {
    let mut manifests = Vec::new();
    if crds {
        manifests.extend(install::crd_manifests()?);
    }
    manifests.extend(operator(opts, namespace, true)?);
    Ok(crd::documents(manifests.into_iter().map(|m| m.yaml)))
}

/// `weft uninstall --operator`'s output: the `ControlPlane` first (Kubernetes' garbage
/// collector then deletes the control plane it owns), the operator, the CRDs last.
pub fn uninstall(
    opts: &InstallOptions,
    namespace: &str,
    crds: bool,
) -> Result<String, InstallError> {
    let mut manifests = operator(opts, namespace, true)?;
    manifests.reverse();
    if crds {
        manifests.extend(install::crd_manifests()?);
    }
    Ok(crd::documents(manifests.iter().map(Manifest::reference)))
}

fn custom_resource(cp: &ControlPlane) -> Result<Manifest, RenderError> {
    Ok(Manifest {
        api_version: format!("{}/{}", crd::operator::GROUP, crd::operator::VERSION),
        kind: "ControlPlane".to_owned(),
        name: CONTROL_PLANE_NAME.to_owned(),
        namespace: None,
        yaml: crd::yaml("ControlPlane weft", cp)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::DEFAULT_IMAGE_REGISTRY;

    #[test]
    fn the_control_plane_resource_says_what_the_options_say() {
        let cp = control_plane_resource(&InstallOptions::default());
        assert_eq!(cp.spec.version, install::DEFAULT_VERSION);
        assert_eq!(cp.spec.high_availability, None);
        assert_eq!(
            cp.spec.values.unwrap().image_registry.as_deref(),
            Some(DEFAULT_IMAGE_REGISTRY)
        );
        let ha = control_plane_resource(&InstallOptions {
            controller_replicas: HA_REPLICAS,
            image_registry: "registry.local/weft".into(),
            ..InstallOptions::default()
        });
        assert_eq!(
            ha.spec.high_availability,
            Some(HighAvailability { replicas: None })
        );
        assert_eq!(
            ha.spec.values.unwrap().image_registry.as_deref(),
            Some("registry.local/weft")
        );
    }

    #[test]
    fn the_operator_may_grant_what_it_installs() {
        let objects = operator(&InstallOptions::default(), OPERATOR, true).unwrap();
        let kinds: Vec<_> = objects.iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "Deployment",
                "ControlPlane"
            ]
        );
        let role = &objects[2].yaml;
        assert!(role.contains("escalate") && role.contains("bind"), "{role}");
        assert!(objects[4].yaml.contains("leases"), "{}", objects[4].yaml);
        assert!(
            objects[6].yaml.contains("--lease-namespace=weft-operator"),
            "{}",
            objects[6].yaml
        );
        assert!(
            objects[7]
                .yaml
                .contains("apiVersion: operator.weft.io/v1alpha1"),
            "{}",
            objects[7].yaml
        );
    }
}
