//! The Kubernetes objects of the mesh directory's other `*.yaml` files: which kinds the
//! local mesh reads (`Service`), which it hands over as written (`HTTPRoute`,
//! `GRPCRoute`, `ReferenceGrant`: the controller's routes check them; `Server`,
//! `AuthorizationPolicy`, `MeshTLSAuthentication`, `NetworkAuthentication`: its
//! policy does), and which it
//! warns about and ignores (any other kind).
//!
//! A Service is read as `k8s-openapi`'s `Service` ([`super::strict`]: wrong types and
//! fields Kubernetes does not know are refused at their field), then the fields the
//! local mesh does not read are refused too, and [`Service::from_object`] makes the
//! mesh's view of it.

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::{is_dns_label, GatewayObject, Mesh, Service, ServicePort, TargetPort};
use super::parse::Report;
use super::strict::{self, FieldProblem};
use super::MESH_FILE;

impl Mesh {
    pub(super) fn parse_objects(&mut self, file: &str, text: &str, report: &mut Report) {
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
                    if let Some(s) = read_service(file, &location, &value, report) {
                        self.services.push(s);
                    }
                }
                // Routes, and the policy kinds of policy.weft.io (the controller's
                // weft_controller::policy checks them).
                "HTTPRoute"
                | "GRPCRoute"
                | "ReferenceGrant"
                | "Server"
                | "AuthorizationPolicy"
                | "MeshTLSAuthentication"
                | "NetworkAuthentication" => self.gateway.push(GatewayObject {
                    file: file.to_owned(),
                    location,
                    kind: kind.to_owned(),
                    value,
                }),
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
}

/// What the local mesh reads of a Service, by place in the object: other fields, even
/// ones Kubernetes knows (`spec.sessionAffinity`, `metadata.uid`), are refused, as
/// settings it would silently not apply.
const SERVICE_FIELDS: [(&str, &[&str]); 3] = [
    ("", &["apiVersion", "kind", "metadata", "spec", "status"]),
    ("metadata", &["name", "namespace", "labels", "annotations"]),
    ("spec", &["selector", "ports", "type", "clusterIP"]),
];
const SERVICE_PORT_FIELDS: [&str; 5] = ["name", "port", "targetPort", "appProtocol", "protocol"];

/// Reads one Service object of `file` (at `location`, e.g. `Service default/books`),
/// reporting every problem at its field.
fn read_service(file: &str, location: &str, value: &Value, report: &mut Report) -> Option<Service> {
    let at = |field: &str| {
        if field.is_empty() {
            location.to_owned()
        } else {
            format!("{location}: {field}")
        }
    };
    // Checked before the typed read, whose message for it names no field.
    if let Some(version) = value.get("apiVersion").filter(|v| !v.is_null()) {
        if version.as_str() != Some("v1") {
            let version = serde_yaml_ng::to_string(version).unwrap_or_default();
            report.error(
                file,
                &at("apiVersion"),
                format!("is {}; a Service is read as v1", version.trim_end()),
            );
            return None;
        }
    }
    let object: K8sService = match strict::from_value(value) {
        Ok(object) => object,
        Err((field, message)) => {
            report.error(file, &at(&field), message);
            return None;
        }
    };
    let mut unsupported = Vec::new();
    for (path, allowed) in SERVICE_FIELDS {
        for field in strict::fields_outside(value, path, allowed) {
            unsupported.push((path.to_owned(), field, allowed));
        }
    }
    let ports = value.get("spec").and_then(|s| s.get("ports"));
    for (j, _) in ports
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let path = format!("spec.ports[{j}]");
        for field in strict::fields_outside(&ports.unwrap()[j], "", &SERVICE_PORT_FIELDS) {
            unsupported.push((path.clone(), field, &SERVICE_PORT_FIELDS[..]));
        }
    }
    for (path, field, allowed) in &unsupported {
        report.error(
            file,
            &at(path),
            format!(
                "`{field}` is not supported by the local mesh (it reads {})",
                allowed
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    for required in ["metadata", "spec"] {
        if value.get(required).is_none_or(Value::is_null) {
            report.error(file, location, format!("missing field `{required}`"));
        }
    }
    if value.get("metadata").is_some_and(|m| !m.is_null()) && object.metadata.name.is_none() {
        report.error(file, &at("metadata"), "missing field `name`");
    }
    if !unsupported.is_empty() || object.metadata.name.is_none() || object.spec.is_none() {
        return None;
    }
    match Service::from_object(file, &object) {
        Ok(service) => Some(service),
        Err(problems) => {
            for (field, message) in problems {
                report.error(file, &at(&field), message);
            }
            None
        }
    }
}

impl Service {
    /// The mesh's view of a Kubernetes Service: what the local source reads from the
    /// mesh directory, and what a source watching an API server would read from its
    /// objects. `file` is where it came from (a file of the mesh directory). On an
    /// error, every problem with the field it is at (`spec.ports[0].protocol`).
    pub fn from_object(file: &str, object: &K8sService) -> Result<Service, Vec<FieldProblem>> {
        let mut problems: Vec<FieldProblem> = Vec::new();
        let mut err = |field: &str, message: String| problems.push((field.to_owned(), message));
        let name = object.metadata.name.clone().unwrap_or_default();
        let namespace = object
            .metadata
            .namespace
            .clone()
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
        let spec = object.spec.clone().unwrap_or_default();
        match spec.type_.as_deref() {
            None | Some("ClusterIP") => {}
            Some(other) => err(
                "spec.type",
                format!("{other} is not supported by the local mesh (only ClusterIP)"),
            ),
        }
        let spec_ports = spec.ports.unwrap_or_default();
        if spec_ports.is_empty() {
            err("spec.ports", "no ports: list at least one".into());
        }
        let mut ports: Vec<ServicePort> = Vec::new();
        for (j, p) in spec_ports.into_iter().enumerate() {
            let field = format!("spec.ports[{j}]");
            let port = match u16::try_from(p.port) {
                Ok(0) => {
                    err(&format!("{field}.port"), "port 0 is not a port".into());
                    continue;
                }
                Ok(port) => port,
                Err(_) => {
                    err(
                        &format!("{field}.port"),
                        format!("{} is not a port number (1-65535)", p.port),
                    );
                    continue;
                }
            };
            if let Some(proto) = p.protocol.as_deref().filter(|p| *p != "TCP") {
                err(
                    &format!("{field}.protocol"),
                    format!("{proto} is not supported (only TCP)"),
                );
            }
            if ports.iter().any(|q| q.port == port) {
                err(
                    &format!("{field}.port"),
                    format!("port {port} is listed twice"),
                );
            }
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                    Ok(0) | Err(_) => {
                        err(
                            &format!("{field}.targetPort"),
                            format!("{n} is not a port number (1-65535)"),
                        );
                        continue;
                    }
                    Ok(n) => TargetPort::Number(n),
                },
                Some(IntOrString::String(s)) => match s.parse::<u16>() {
                    Ok(n) if n > 0 => TargetPort::Number(n),
                    _ => TargetPort::Name(s.clone()),
                },
            };
            ports.push(ServicePort {
                name: p.name,
                port,
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
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Service {
            name,
            namespace,
            file: file.to_owned(),
            selector: spec.selector.unwrap_or_default(),
            ports,
        })
    }
}
