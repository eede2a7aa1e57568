//! Reading the mesh directory's Gateway API objects (`HTTPRoute`, `GRPCRoute` and
//! `ReferenceGrant` of `gateway.networking.k8s.io/v1`) into the gateway-api crate's
//! types, as strictly as the Kubernetes API server would take them: a wrong type, a
//! missing required field or an unknown field is refused with the file, the object and
//! the field (`routes.yaml: HTTPRoute default/books: spec.rules[0].matchs: unknown
//! field`). HTTPRoutes are read with the experimental channel's types, a superset of
//! the standard ones that has `rules[].retry`.

use gateway_api::experimental::grpcroutes::{GrpcRoute, GrpcRouteSpec};
use gateway_api::experimental::httproutes::{HttpRoute, HttpRouteSpec};
use gateway_api::referencegrants::{ReferenceGrant, ReferenceGrantSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value as Json;
use serde_yaml_ng::Value;
use weft_core::mesh::GatewayObject;

use crate::objects;

use super::{ParentRef, RouteKey, RouteKind};

/// The API version every object of the group is read at.
pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// Accepted for ReferenceGrants too (most manifests still use it).
const REFERENCE_GRANT_BETA: &str = "gateway.networking.k8s.io/v1beta1";

/// A route's spec, as written.
#[derive(Clone, Debug, PartialEq)]
pub enum RouteSpec {
    Http(HttpRouteSpec),
    Grpc(GrpcRouteSpec),
}

/// A route that parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedRoute {
    pub key: RouteKey,
    /// The file it is in, relative to the mesh directory.
    pub file: String,
    /// `metadata.generation` when given (a controller counts spec changes otherwise).
    pub generation: Option<i64>,
    /// `metadata.creationTimestamp`: the oldest route wins a conflict.
    pub created: Option<Time>,
    pub spec: RouteSpec,
}

impl ParsedRoute {
    /// The parent references, in the order written.
    pub fn parent_refs(&self) -> Vec<ParentRef> {
        match &self.spec {
            RouteSpec::Http(s) => s
                .parent_refs
                .iter()
                .flatten()
                .map(|p| ParentRef {
                    group: p.group.clone(),
                    kind: p.kind.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    port: p.port,
                    section_name: p.section_name.clone(),
                })
                .collect(),
            RouteSpec::Grpc(s) => s
                .parent_refs
                .iter()
                .flatten()
                .map(|p| ParentRef {
                    group: p.group.clone(),
                    kind: p.kind.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    port: p.port,
                    section_name: p.section_name.clone(),
                })
                .collect(),
        }
    }

    pub fn hostnames(&self) -> &[String] {
        match &self.spec {
            RouteSpec::Http(s) => s.hostnames.as_deref().unwrap_or_default(),
            RouteSpec::Grpc(s) => s.hostnames.as_deref().unwrap_or_default(),
        }
    }
}

/// A route that did not parse: what is known of it, for its status.
#[derive(Clone, Debug, PartialEq)]
pub struct Unparsed {
    /// `None` when the object has no name.
    pub key: Option<RouteKey>,
    pub file: String,
    /// `HTTPRoute default/books: spec.rules[0]` (object and field).
    pub location: String,
    pub message: String,
    /// Its parentRefs as far as they could be read.
    pub parent_refs: Vec<ParentRef>,
    pub generation: Option<i64>,
}

/// A ReferenceGrant: which kinds of which namespaces may refer to objects of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub namespace: String,
    pub name: String,
    pub spec: ReferenceGrantSpec,
}

/// Everything the mesh directory says about routes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub routes: Vec<ParsedRoute>,
    pub unparsed: Vec<Unparsed>,
    pub grants: Vec<Grant>,
    /// ReferenceGrants that did not parse (`file: location: message`): they grant
    /// nothing.
    pub bad_grants: Vec<String>,
}

/// Parses the Gateway API objects the mesh directory handed over.
pub fn parse(objects: &[GatewayObject]) -> Parsed {
    let mut parsed = Parsed::default();
    for object in objects {
        match object.kind.as_str() {
            "HTTPRoute" => route::<HttpRoute>(object, RouteKind::Http, &mut parsed, |r| {
                (r.metadata, RouteSpec::Http(r.spec))
            }),
            "GRPCRoute" => route::<GrpcRoute>(object, RouteKind::Grpc, &mut parsed, |r| {
                (r.metadata, RouteSpec::Grpc(r.spec))
            }),
            "ReferenceGrant" => {
                match typed::<ReferenceGrant>(object, &[API_VERSION, REFERENCE_GRANT_BETA]) {
                    Ok(g) => parsed.grants.push(Grant {
                        namespace: g
                            .metadata
                            .namespace
                            .clone()
                            .unwrap_or_else(|| "default".into()),
                        name: g.metadata.name.clone().unwrap_or_default(),
                        spec: g.spec,
                    }),
                    Err((location, message)) => parsed
                        .bad_grants
                        .push(format!("{}: {location}: {message}", object.file)),
                }
            }
            _ => {}
        }
    }
    parsed
}

fn route<T: serde::de::DeserializeOwned + serde::Serialize>(
    object: &GatewayObject,
    kind: RouteKind,
    parsed: &mut Parsed,
    split: impl FnOnce(
        T,
    ) -> (
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        RouteSpec,
    ),
) {
    let meta = |key: &str| {
        object
            .value
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let name = meta("name");
    let namespace = meta("namespace").unwrap_or_else(|| "default".into());
    let key = name.map(|name| RouteKey {
        kind,
        namespace: namespace.clone(),
        name,
    });
    match typed::<T>(object, &[API_VERSION]) {
        Ok(t) => {
            let (metadata, spec) = split(t);
            let problem = check_meta(&metadata);
            match (key, problem) {
                (Some(key), None) => parsed.routes.push(ParsedRoute {
                    key,
                    file: object.file.clone(),
                    generation: metadata.generation,
                    created: metadata.creation_timestamp,
                    spec,
                }),
                (key, problem) => parsed.unparsed.push(Unparsed {
                    key,
                    file: object.file.clone(),
                    location: object.location.clone(),
                    message: problem.unwrap_or_else(|| "metadata.name is required".into()),
                    parent_refs: lenient_parent_refs(&object.value),
                    generation: metadata.generation,
                }),
            }
        }
        Err((location, message)) => parsed.unparsed.push(Unparsed {
            key,
            file: object.file.clone(),
            location,
            message,
            parent_refs: lenient_parent_refs(&object.value),
            generation: object
                .value
                .get("metadata")
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64),
        }),
    }
}

fn check_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    for (what, value) in [("name", &meta.name), ("namespace", &meta.namespace)] {
        if let Some(v) = value {
            if !weft_core::mesh::is_dns_label(v) {
                return Some(format!(
                    "metadata.{what}: {v:?} is not a DNS label (lowercase letters, digits and '-', at most 63)"
                ));
            }
        }
    }
    None
}

fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    object: &GatewayObject,
    versions: &[&str],
) -> Result<T, (String, String)> {
    objects::check_api_version(object, versions)?;
    let typed: T = objects::deserialize(object)?;
    // The types ignore unknown fields; the API server (with strict field validation)
    // and weft do not: what the typed value does not carry back is unknown.
    let written = serde_json::to_value(&object.value).unwrap_or(Json::Null);
    let read = serde_json::to_value(&typed).unwrap_or(Json::Null);
    if let Some(field) = unknown_field(&written, &read, String::new()) {
        return Err((objects::at(object, &field), "unknown field".to_owned()));
    }
    Ok(typed)
}

/// The first field of `written` that `read` does not have (nulls do not count).
fn unknown_field(written: &Json, read: &Json, path: String) -> Option<String> {
    match (written, read) {
        (Json::Object(w), Json::Object(r)) => {
            for (k, v) in w {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match r.get(k) {
                    None if !v.is_null() => return Some(here),
                    None => {}
                    Some(rv) => {
                        if let Some(f) = unknown_field(v, rv, here) {
                            return Some(f);
                        }
                    }
                }
            }
            None
        }
        (Json::Array(w), Json::Array(r)) => w
            .iter()
            .zip(r)
            .enumerate()
            .find_map(|(i, (w, r))| unknown_field(w, r, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The parentRefs of an object that did not parse, as far as they read.
fn lenient_parent_refs(value: &Value) -> Vec<ParentRef> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    value
        .get("spec")
        .and_then(|s| s.get("parentRefs"))
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(ParentRef {
                group: s(p, "group"),
                kind: s(p, "kind"),
                namespace: s(p, "namespace"),
                name: s(p, "name")?,
                port: p
                    .get("port")
                    .and_then(Value::as_i64)
                    .and_then(|n| i32::try_from(n).ok()),
                section_name: s(p, "sectionName"),
            })
        })
        .collect()
}
