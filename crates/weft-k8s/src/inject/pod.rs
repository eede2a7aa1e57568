//! What an injection adds to a pod: the two containers, the volumes, the annotation,
//! as RFC 6902 `add` operations on the pod as it is.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;
use weft_core::admin::APP_PROBE_PREFIX;
use weft_core::iptables::{ADMIN_PORT, INBOUND_PORT, PROXY_UID};

use super::annotations::{Settings, PROXY_DEFAULT_OPAQUE_PORTS};
use super::{
    InjectConfig, IDENTITY_AUDIENCE, IDENTITY_DIR, IDENTITY_VOLUME, INIT_CONTAINER,
    INIT_RUN_VOLUME, INJECTED_ANNOTATION, PROXY_CONTAINER,
};

/// The patch adding weft to `pod` (whose spec decides between creating and extending
/// each list and map); `deployment` names its Deployment when the pod cannot tell.
pub(super) fn patch(
    pod: &Pod,
    settings: &Settings,
    config: &InjectConfig,
    deployment: Option<&str>,
) -> Patch {
    let spec = pod.spec.clone().unwrap_or_default();
    let mut ops = Vec::new();
    let init = value(&init_container(settings, config));
    let deployment = deployment.map(str::to_owned).or_else(|| deployment_of(pod));
    let (probe_ops, app_probes) = rewrite_probes(&spec);
    let proxy = value(&proxy_container(deployment, settings, config, app_probes));
    // weft-init first (the rules), then the proxy, then the pod's own init containers,
    // whose traffic the rules send to the proxy.
    match &spec.init_containers {
        None => ops.push(add("/spec/initContainers", Value::Array(vec![init, proxy]))),
        Some(_) => {
            ops.push(add("/spec/initContainers/0", init));
            ops.push(add("/spec/initContainers/1", proxy));
        }
    }
    ops.extend(probe_ops);
    let volumes: Vec<Value> = volumes(config).iter().map(value).collect();
    match &spec.volumes {
        None => ops.push(add("/spec/volumes", Value::Array(volumes))),
        Some(_) => ops.extend(volumes.into_iter().map(|v| add("/spec/volumes/-", v))),
    }
    let version = Value::String(config.version.clone());
    match &pod.metadata.annotations {
        None => ops.push(add(
            "/metadata/annotations",
            serde_json::json!({ INJECTED_ANNOTATION: version }),
        )),
        Some(_) => ops.push(add(
            &format!("/metadata/annotations/{}", escape(INJECTED_ANNOTATION)),
            version,
        )),
    }
    Patch(ops)
}

fn value<T: serde::Serialize>(t: &T) -> Value {
    // k8s-openapi's types serialize to JSON objects infallibly.
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn add(path: &str, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::parse(path).unwrap_or_default(),
        value,
    })
}

/// A JSON pointer token: `~` and `/` escaped.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The downward-API field of the pod's zone label.
pub const ZONE_FIELD: &str = "metadata.labels['topology.kubernetes.io/zone']";

fn env_field(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn ports_arg(ports: &[weft_core::iptables::PortRange]) -> String {
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn init_container(settings: &Settings, config: &InjectConfig) -> Container {
    let mut args = vec!["init".to_owned()];
    if !settings.skip_inbound.is_empty() {
        args.extend([
            "--skip-inbound-ports".into(),
            ports_arg(&settings.skip_inbound),
        ]);
    }
    if !settings.skip_outbound.is_empty() {
        args.extend([
            "--skip-outbound-ports".into(),
            ports_arg(&settings.skip_outbound),
        ]);
    }
    args.extend(["--proxy-uid".into(), PROXY_UID.to_string()]);
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.into())),
            ("memory".to_owned(), Quantity(memory.into())),
        ]))
    };
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(args),
        resources: Some(ResourceRequirements {
            requests: quantities("10m", "10Mi"),
            limits: quantities("100m", "50Mi"),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: INIT_RUN_VOLUME.into(),
            mount_path: "/run".into(),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// The workload's name for the `deployment` metric label: a pod of a ReplicaSet owned
/// by a Deployment is named after the ReplicaSet, `{deployment}-{pod-template-hash}`.
fn deployment_of(pod: &Pod) -> Option<String> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    if owner.kind != "ReplicaSet" {
        return None;
    }
    let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
    owner
        .name
        .strip_suffix(hash.as_str())?
        .strip_suffix('-')
        .map(str::to_owned)
}

/// The application's HTTP probes pointed at the proxy's admin port
/// (`/app-probe/CONTAINER/KIND`), which makes them on loopback: the kubelet's calls
/// from the node then pass neither the inbound proxy nor the inbound policy. Returns
/// the `replace` operations and the originals as the proxy's `WEFT_APP_PROBES` (JSON);
/// HTTPS probes, probes naming another host and ports that cannot be resolved are left
/// as they are.
fn rewrite_probes(
    spec: &k8s_openapi::api::core::v1::PodSpec,
) -> (Vec<PatchOperation>, Option<String>) {
    let mut ops = Vec::new();
    let mut originals = serde_json::Map::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (field, kind, probe) in [
            ("readinessProbe", "readiness", &c.readiness_probe),
            ("livenessProbe", "liveness", &c.liveness_probe),
            ("startupProbe", "startup", &c.startup_probe),
        ] {
            let Some(get) = probe.as_ref().and_then(|p| p.http_get.as_ref()) else {
                continue;
            };
            if get.scheme.as_deref().is_some_and(|s| s != "HTTP")
                || get.host.as_deref().is_some_and(|h| !h.is_empty())
            {
                continue;
            }
            let port = match &get.port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => c
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            };
            let Some(port) = port.filter(|p| *p != 0 && *p != ADMIN_PORT) else {
                continue;
            };
            let name = format!("{}/{kind}", c.name);
            let headers: Vec<Value> = get
                .http_headers
                .iter()
                .flatten()
                .map(|h| serde_json::json!([h.name, h.value]))
                .collect();
            originals.insert(
                name.clone(),
                serde_json::json!({
                    "port": port,
                    "path": get.path.clone().filter(|p| p.starts_with('/')).unwrap_or_else(|| "/".into()),
                    "headers": headers,
                }),
            );
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: PointerBuf::parse(format!("/spec/containers/{i}/{field}/httpGet"))
                    .unwrap_or_default(),
                value: serde_json::json!({
                    "path": format!("{APP_PROBE_PREFIX}{name}"),
                    "port": ADMIN_PORT,
                    "scheme": "HTTP",
                }),
            }));
        }
    }
    let json = (!originals.is_empty()).then(|| Value::Object(originals).to_string());
    (ops, json)
}

fn proxy_container(
    deployment: Option<String>,
    settings: &Settings,
    config: &InjectConfig,
    app_probes: Option<String>,
) -> Container {
    let mut opaque: Vec<u16> = PROXY_DEFAULT_OPAQUE_PORTS.to_vec();
    opaque.extend(&settings.opaque);
    opaque.sort_unstable();
    opaque.dedup();
    let opaque = opaque
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut vars = vec![
        env(
            "WEFT_LOG",
            settings
                .log_level
                .clone()
                .unwrap_or_else(|| config.log_level.clone()),
        ),
        env_field("WEFT_POD", "metadata.name"),
        // The controller's kube source knows each pod as a workload of its own.
        env_field("WEFT_POLICY_WORKLOAD", "metadata.name"),
        env_field("WEFT_NAMESPACE", "metadata.namespace"),
        env_field("WEFT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        // The Node's zone, copied onto the pod at binding by the API server's
        // PodTopologyLabels admission (Kubernetes 1.35+, beta); empty (no zone-aware
        // balancing) where it does not run or the Node has no zone label.
        env_field("WEFT_ZONE", ZONE_FIELD),
        env("WEFT_TRUST_DOMAIN", config.trust_domain.clone()),
        env("WEFT_TRUST_ANCHORS_PEM", config.trust_anchors_pem.clone()),
        env("WEFT_IDENTITY_TOKEN", format!("{IDENTITY_DIR}/token")),
        env("WEFT_CONTROLLER", config.controller.clone()),
        env("WEFT_DESTINATION", config.controller.clone()),
        env("WEFT_OPAQUE_PORTS", opaque),
    ];
    if let Some(deployment) = deployment {
        vars.push(env("WEFT_DEPLOYMENT", deployment));
    }
    if let Some(probes) = app_probes {
        vars.push(env("WEFT_APP_PROBES", probes));
    }
    let resources = |cpu: &Option<String>, memory: &Option<String>| {
        let map: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), Quantity(v))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let pick = |annotation: &Option<String>, default: &Option<String>| {
        annotation.clone().or_else(|| default.clone())
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(ADMIN_PORT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.proxy_image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        // A native sidecar: started before the app's containers, stopped after them.
        restart_policy: Some("Always".into()),
        env: Some(vars),
        ports: Some(vec![
            ContainerPort {
                name: Some("weft-proxy".into()),
                container_port: INBOUND_PORT.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("weft-admin".into()),
                container_port: ADMIN_PORT.into(),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        // The pod's next containers start once the proxy has its certificate (/ready):
        // up to two minutes, then the kubelet restarts it.
        startup_probe: Some(probe("/ready", 1, 120)),
        readiness_probe: Some(probe("/ready", 10, 3)),
        liveness_probe: Some(probe("/live", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: resources(
                &pick(&settings.cpu_request, &config.cpu_request),
                &pick(&settings.memory_request, &config.memory_request),
            ),
            limits: resources(
                &pick(&settings.cpu_limit, &config.cpu_limit),
                &pick(&settings.memory_limit, &config.memory_limit),
            ),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_user: Some(PROXY_UID.into()),
            run_as_group: Some(PROXY_UID.into()),
            run_as_non_root: Some(true),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                add: None,
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: IDENTITY_VOLUME.into(),
            mount_path: IDENTITY_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
}

fn volumes(config: &InjectConfig) -> Vec<Volume> {
    vec![
        Volume {
            name: IDENTITY_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(IDENTITY_AUDIENCE.into()),
                        expiration_seconds: Some(config.token_expiration_seconds),
                        path: "token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                default_mode: None,
            }),
            ..Volume::default()
        },
        Volume {
            name: INIT_RUN_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Volume::default()
        },
    ]
}
