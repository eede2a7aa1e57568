//! The destination index from the Kubernetes objects the reflectors hold: the same
//! [`Mesh`] and [`PodsFile`] the local source builds (one workload per pod, so that
//! its service account, labels and ports are there for identity, routes and policy),
//! and each Service's endpoints as its EndpointSlices list them ([`Listed`]); the
//! Gateway API objects as the mesh's gateway objects, which the routes index reads.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ::kube::api::DynamicObject;
use k8s_openapi::api::core::v1::{Node, Pod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_core::mesh::{
    ContainerPort, GatewayObject, Mesh, ProxySettings, Service, ServicePort, TargetPort, Workload,
};
use weft_core::pods::{PodEntry, PodsFile, ServiceAddress};

use super::{INJECTED_ANNOTATION, SERVICE_NAME_LABEL, ZONE_LABEL};
use crate::destination::{Index, Listed, ListedEndpoint};

/// What the reflectors hold at one moment.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Arc<K8sService>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub pods: Vec<Arc<Pod>>,
    pub nodes: Vec<Arc<Node>>,
    /// Gateway API and policy objects by kind (`HTTPRoute`, `GRPCRoute`,
    /// `ReferenceGrant`, `Server`, `AuthorizationPolicy`, ...).
    pub gateway: Vec<(String, Vec<Arc<DynamicObject>>)>,
}

/// The index of `objects`; identities are named in `trust_domain`.
pub fn index(objects: &Objects, trust_domain: &str, opaque_ports: &[u16]) -> Index {
    let zones: HashMap<&str, &str> = objects
        .nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref()?;
            let zone = n.metadata.labels.as_ref()?.get(ZONE_LABEL)?;
            Some((name, zone.as_str()))
        })
        .collect();

    let mut services = Vec::new();
    let mut addresses = Vec::new();
    for s in &objects.services {
        let Some((service, vip)) = service(s) else {
            continue;
        };
        if let Some(ip) = vip {
            addresses.push(ServiceAddress {
                name: service.name.clone(),
                namespace: service.namespace.clone(),
                ip,
            });
        }
        services.push(service);
    }
    // Deterministic order: the index compares equal when nothing changed, whatever
    // order the stores give.
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    addresses.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut workloads = Vec::new();
    let mut pods = Vec::new();
    let mut unmeshed: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for p in &objects.pods {
        let Some((workload, entry)) = pod(p, &zones) else {
            continue;
        };
        if !is_injected(p) {
            unmeshed
                .entry(workload.namespace.clone())
                .or_default()
                .insert(workload.name.clone());
        }
        workloads.push(workload);
        pods.push(entry);
    }
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut listed = Listed {
        endpoints: BTreeMap::new(),
        unmeshed,
    };
    let by_name: HashMap<(&str, &str), &Service> = services
        .iter()
        .map(|s| ((s.namespace.as_str(), s.name.as_str()), s))
        .collect();
    for slice in &objects.slices {
        let Some(namespace) = slice.metadata.namespace.as_deref() else {
            continue;
        };
        let Some(name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let Some(service) = by_name.get(&(namespace, name.as_str())) else {
            continue;
        };
        let ports = listed
            .endpoints
            .entry((namespace.to_owned(), name.clone()))
            .or_default();
        add_slice(ports, service, slice, &zones);
    }

    let mut gateway: Vec<GatewayObject> = objects
        .gateway
        .iter()
        .flat_map(|(kind, objects)| objects.iter().filter_map(|o| gateway_object(kind, o)))
        .collect();
    gateway.sort_by(|a, b| a.location.cmp(&b.location));

    let mesh = Mesh {
        trust_domain: trust_domain.to_owned(),
        default_inbound_policy: None,
        workloads,
        services,
        warnings: Vec::new(),
        gateway,
    };
    let pods = PodsFile {
        pods,
        services: addresses,
    };
    Index::listed(mesh, pods, listed, trust_domain, opaque_ports)
}

/// The Service as the mesh models it, and its cluster IP; `None` for what has no
/// endpoints to give (ExternalName, no name) — a port the mesh cannot serve (UDP,
/// out of range) is left out.
fn service(s: &K8sService) -> Option<(Service, Option<IpAddr>)> {
    let name = s.metadata.name.clone()?;
    let namespace = s.metadata.namespace.clone()?;
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(u16::try_from(*n).ok().filter(|n| *n != 0)?)
                }
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n > 0 => TargetPort::Number(n),
                    _ => TargetPort::Name(s.clone()),
                },
            };
            Some(ServicePort {
                name: p.name.clone(),
                port,
                target_port,
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    // "None": headless, no virtual IP.
    let vip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
    Some((
        Service {
            name,
            namespace,
            file: String::new(),
            selector: spec.selector.clone().unwrap_or_default(),
            ports,
        },
        vip,
    ))
}

/// A pod as a one-replica workload of its own name and its entry in the pods file;
/// `None` for a pod that has no address of its own to serve (not scheduled or
/// started yet, finished, or on the node's network).
fn pod(p: &Pod, zones: &HashMap<&str, &str>) -> Option<(Workload, PodEntry)> {
    let name = p.metadata.name.clone()?;
    let namespace = p.metadata.namespace.clone()?;
    let spec = p.spec.as_ref()?;
    let status = p.status.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let zone = spec
        .node_name
        .as_deref()
        .and_then(|n| zones.get(n))
        .map(|z| (*z).to_owned());
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            Some(ContainerPort {
                port: u16::try_from(p.container_port).ok().filter(|p| *p != 0)?,
                name: p.name.clone(),
            })
        })
        .collect();
    let workload = Workload {
        name: name.clone(),
        namespace: namespace.clone(),
        service_account: spec
            .service_account_name
            .clone()
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| "default".to_owned()),
        zone: zone.clone(),
        replicas: 1,
        ports,
        command: Vec::new(),
        env: BTreeMap::new(),
        labels: p.metadata.labels.clone().unwrap_or_default(),
        opaque_ports: Vec::new(),
        skip_ports: Vec::new(),
        proxy: ProxySettings::default(),
        user: None,
    };
    let entry = PodEntry {
        name: name.clone(),
        namespace,
        workload: name,
        index: 0,
        ip,
        zone,
        ready,
    };
    Some((workload, entry))
}

/// Whether the pod runs weft's proxy (the injector marked it).
fn is_injected(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECTED_ANNOTATION))
        .is_some_and(|v| v != "false")
}

/// The slice's ready addresses under each of the Service's ports the slice serves: a
/// Service port is the slice's port of the same name, whose number is the target
/// port resolved on the pods (a named targetPort too).
fn add_slice(
    ports: &mut BTreeMap<u16, BTreeMap<SocketAddr, ListedEndpoint>>,
    service: &Service,
    slice: &EndpointSlice,
    zones: &HashMap<&str, &str>,
) {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return;
    }
    let slice_ports: Vec<(Option<&str>, u16)> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| {
            let number = u16::try_from(p.port?).ok().filter(|n| *n != 0)?;
            Some((p.name.as_deref().filter(|n| !n.is_empty()), number))
        })
        .collect();
    for sp in &service.ports {
        let name = sp.name.as_deref().filter(|n| !n.is_empty());
        let Some(&(_, target)) = slice_ports.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let addrs = ports.entry(sp.port).or_default();
        for e in slice.endpoints.iter().flatten() {
            // Unset means ready (the API's convention).
            if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            let zone = e.zone.clone().or_else(|| {
                let node = e.node_name.as_deref()?;
                zones.get(node).map(|z| (*z).to_owned())
            });
            for a in &e.addresses {
                let Ok(ip) = a.parse::<IpAddr>() else {
                    continue;
                };
                addrs.insert(
                    SocketAddr::new(ip, target),
                    ListedEndpoint {
                        zone: zone.clone(),
                        pod: pod.clone(),
                    },
                );
            }
        }
    }
}

/// What the mesh's gateway objects say of where an object came from.
pub const GATEWAY_FILE: &str = "kubernetes";

/// A Gateway API or policy object as the local mesh reads it from a file: its kind and
/// API version set (items of a list may come without them), `HTTPRoute ns/name` as its
/// location; a policy object's metadata only what a file's may hold, without status.
fn gateway_object(kind: &str, object: &DynamicObject) -> Option<GatewayObject> {
    let name = object.metadata.name.as_deref()?;
    let namespace = object.metadata.namespace.as_deref()?;
    let policy = crate::policy::parse::policy_kind(kind).is_some();
    let mut value = serde_json::to_value(object).ok()?;
    let fields = value.as_object_mut()?;
    let api_version = object
        .types
        .as_ref()
        .map(|t| t.api_version.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            if policy {
                return crate::policy::API_VERSION.to_owned();
            }
            let version = if kind == "ReferenceGrant" {
                "v1beta1"
            } else {
                "v1"
            };
            format!("{}/{version}", crate::routes::GATEWAY_GROUP)
        });
    fields.insert("apiVersion".into(), api_version.into());
    fields.insert("kind".into(), kind.into());
    if policy {
        // The policy parser takes a file's object: what the API server adds to the
        // metadata (uid, resourceVersion, timestamps, owners) and the status are not
        // in it.
        fields.remove("status");
        let metadata = fields.get_mut("metadata")?.as_object_mut()?;
        metadata.retain(|field, _| {
            matches!(
                field.as_str(),
                "name" | "namespace" | "generation" | "labels" | "annotations"
            )
        });
    }
    Some(GatewayObject {
        file: GATEWAY_FILE.to_owned(),
        location: format!("{kind} {namespace}/{name}"),
        kind: kind.to_owned(),
        value: serde_yaml_ng::to_value(&value).ok()?,
    })
}
