//! The Kubernetes objects of the mesh directory's other `*.yaml` files: which kinds the
//! local mesh reads (`Service`), which it hands over as written (`HTTPRoute`,
//! `GRPCRoute`, `ReferenceGrant`: the controller's routes check them; `Server`,
//! `AuthorizationPolicy`, `MeshTLSAuthentication`, `NetworkAuthentication`: its
//! policy does), and which it
//! warns about and ignores (any other kind).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::model::{is_dns_label, GatewayObject, Mesh, Service, ServicePort, TargetPort};
use super::parse::{locate, strip_position, Problem, Report};
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
